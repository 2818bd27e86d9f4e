// A Node worker whose own HTTP routes the health-check tests use:
//   /health -> 200 (and a line `health check worker=N` on stdout);
//   /spin -> `while (true) {}`, the event loop stuck for good.
// By default it is a Socket.IO worker of the documented cluster recipe (`setupWorker(io)`, so that
// clusterd's --listen connections reach it as sticky connections); with PLAIN=1 it is a plain
// server that calls `server.listen(0)` itself, and gets its connections as `newconn`.
"use strict";
const http = require("http");

const worker = Number(process.env.NODE_APP_INSTANCE);
const httpServer = http.createServer((req, res) => {
  if (req.url === "/spin") {
    console.log(`spinning worker=${worker} pid=${process.pid}`);
    // eslint-disable-next-line no-constant-condition
    while (true) {}
  }
  if (req.url === "/health") {
    console.log(`health check worker=${worker}`);
  }
  const body = `worker=${worker} pid=${process.pid}\n`;
  res.writeHead(req.url === "/health" ? 200 : 404, { "Content-Length": body.length, Connection: "close" });
  res.end(body);
});
if (process.env.PLAIN === "1") {
  httpServer.listen(0, "127.0.0.1", () => console.log(`listening on ${httpServer.address().port}`));
} else {
  const { Server } = require("socket.io");
  const { setupWorker } = require("@socket.io/sticky");
  setupWorker(new Server(httpServer));
}
console.log(`health-worker ${worker} pid=${process.pid}`);
