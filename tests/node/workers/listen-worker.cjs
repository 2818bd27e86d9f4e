// A Node worker that calls `server.listen()` itself, as plain `cluster` workers do: under
// `clusterd --protocol node` the listen goes through clusterd (queryServer), which binds once and
// hands each connection to one of the workers that listen (`newconn`). Port 0 is allowed: every
// worker listening on port 0 shares the one port clusterd picked, as with Node's own primary.
// Prints `listening on <port>` once listening; answers `worker <slot> pid <pid>`.
"use strict";
const http = require("http");

const worker = Number(process.env.NODE_APP_INSTANCE);
const server = http.createServer((req, res) => {
  res.setHeader("connection", "close");
  res.end(`worker ${worker} pid ${process.pid}\n`);
});
server.listen(Number(process.env.LISTEN_PORT || 0), "127.0.0.1", () => {
  console.log(`listening on ${server.address().port}`);
});
