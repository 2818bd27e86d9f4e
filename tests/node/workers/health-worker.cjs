// A Socket.IO worker of the documented cluster recipe (`setupWorker(io)`, so that clusterd's
// --listen connections reach it) whose own HTTP routes the health-check tests use:
//   /health -> 200; /spin -> `while (true) {}`, the event loop stuck for good.
"use strict";
const http = require("http");
const { Server } = require("socket.io");
const { setupWorker } = require("@socket.io/sticky");

const worker = Number(process.env.NODE_APP_INSTANCE);
const httpServer = http.createServer((req, res) => {
  if (req.url === "/spin") {
    console.log(`spinning worker=${worker} pid=${process.pid}`);
    // eslint-disable-next-line no-constant-condition
    while (true) {}
  }
  const body = `worker=${worker} pid=${process.pid}\n`;
  res.writeHead(req.url === "/health" ? 200 : 404, { "Content-Length": body.length, Connection: "close" });
  res.end(body);
});
const io = new Server(httpServer);
setupWorker(io);
console.log(`health-worker ${worker} pid=${process.pid}`);
