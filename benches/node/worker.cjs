// The worker of Socket.IO's documented cluster recipe ("Using Node.js Cluster",
// socket.io/docs/v4/cluster-adapter), unmodified between the two primaries of
// benches/node_workers.rs: the Node.js primary (primary.cjs forks it with
// `cluster.setupPrimary({ exec })`) and `clusterd --protocol node -- node worker.cjs`.
//
// An http server that never listens (the primary owns the port and passes each connection with
// @socket.io/sticky's "sticky:connection"), a Socket.IO server on it with
// `io.adapter(createAdapter())` and `setupWorker(io)`. For the load:
//   GET / or /hello  -> 200, a short text naming the worker (the handoff rate, with wrk);
//   "whoami" (ack)   -> ack({worker, pid, transport}) (polling sessions, fan-out clients);
//   "chat message" (a string) -> io.emit("chat message", text) to every client of every worker,
//                       through the cluster adapter (the broadcast fan-out).
//
// Prints `ready worker <id> pid <pid>` once set up (<id> is `cluster.worker.id`).
"use strict";
const cluster = require("cluster");
const http = require("http");
const { Server } = require("socket.io");
const { setupWorker } = require("@socket.io/sticky");
const { createAdapter } = require("@socket.io/cluster-adapter");

const id = cluster.worker.id;
const httpServer = http.createServer((req, res) => {
  if (req.method === "GET" && (req.url === "/" || req.url === "/hello")) {
    const body = `hello from worker ${id} (pid ${process.pid})\n`;
    res.writeHead(200, { "Content-Type": "text/plain; charset=utf-8", "Content-Length": Buffer.byteLength(body) });
    res.end(body);
  } else {
    res.writeHead(404, { "Content-Length": 0 });
    res.end();
  }
});
const io = new Server(httpServer);
io.adapter(createAdapter());
setupWorker(io);

io.on("connection", (socket) => {
  socket.on("whoami", (ack) => {
    if (typeof ack === "function") ack({ worker: id, pid: process.pid, transport: socket.conn.transport.name });
  });
  socket.on("chat message", (text) => {
    if (typeof text === "string") io.emit("chat message", text);
  });
});
console.log(`ready worker ${id} pid ${process.pid}`);
