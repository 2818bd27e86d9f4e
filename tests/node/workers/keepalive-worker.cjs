// A Node worker that keeps connections alive, as plain `cluster` workers do: an `http` server
// (or, with EXPRESS=1, an Express app on it) that calls `server.listen(0)` itself, so under
// `clusterd --protocol node` every worker shares the port clusterd bound for the first. Nothing
// in it knows about clusterd or drains (tests/node_drain.rs). Prints `listening on <port>`;
// answers `worker <slot> pid <pid>`.
"use strict";
const http = require("node:http");

const slot = Number(process.env.NODE_APP_INSTANCE);
let handler = (req, res) => res.end(`worker ${slot} pid ${process.pid}\n`);
if (process.env.EXPRESS === "1") {
  const app = require("express")();
  app.get("/", (req, res) => res.send(`worker ${slot} pid ${process.pid}\n`));
  handler = app;
}
const server = http.createServer(handler);
server.listen(0, "127.0.0.1", () => console.log(`listening on ${server.address().port}`));
