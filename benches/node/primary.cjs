// The classic Node.js cluster primary, as @socket.io/sticky's README shows it: a `cluster` primary
// owning the port with `setupMaster(httpServer, { loadBalancingMethod: "least-connection" })`
// (sticky by Engine.IO sid) and @socket.io/cluster-adapter's `setupPrimary()`, `serialization:
// "advanced"`, N forked workers. Each worker runs one http server that answers plain GETs with a
// short text (like examples/hello.rs) and carries a Socket.IO server (`io.adapter(createAdapter())`,
// `setupWorker(io)`) whose "whoami" event acks {worker, pid, transport} and whose "chat message"
// event (a string) is emitted to every client of every worker (`io.emit`), as in examples/chat.rs.
// It is the baseline of benches/node_primary.rs and benches/fanout.rs.
//
//   node primary.cjs <port> [workers=2] [host=127.0.0.1]
//
// Prints `primary <pid> listening on <host>:<port>` once the port is bound, and
// `ready worker <id> pid <pid>` from each worker once its Socket.IO server is set up. On SIGTERM or
// SIGINT the primary stops its workers and exits 0 (workers also exit on their own when the primary
// dies: their IPC channel closes).
"use strict";
const cluster = require("cluster");
const http = require("http");
const { Server } = require("socket.io");
const { setupMaster, setupWorker } = require("@socket.io/sticky");
const { createAdapter, setupPrimary } = require("@socket.io/cluster-adapter");
const stopOnSignals = require("./stop.cjs");

const port = Number(process.argv[2]);
const workers = Number(process.argv[3] || 2);
const host = process.argv[4] || "127.0.0.1";
if (!Number.isInteger(port) || port <= 0 || !Number.isInteger(workers) || workers <= 0) {
  console.error("usage: node primary.cjs <port> [workers=2] [host=127.0.0.1]");
  process.exit(64);
}

if (cluster.isPrimary) {
  const httpServer = http.createServer();
  setupMaster(httpServer, { loadBalancingMethod: "least-connection" });
  setupPrimary();
  cluster.setupPrimary({ serialization: "advanced" });

  const stopping = stopOnSignals(() => httpServer.close());
  httpServer.on("error", (e) => {
    console.error(`primary: ${e.message}`);
    process.exit(1);
  });
  httpServer.listen(port, host, () => {
    console.log(`primary ${process.pid} listening on ${host}:${port}`);
    for (let i = 0; i < workers; i++) cluster.fork();
  });
  cluster.on("exit", (worker, code, signal) => {
    if (stopping()) {
      if (Object.keys(cluster.workers).length === 0) process.exit(0);
      return;
    }
    console.log(`worker ${worker.id} (pid ${worker.process.pid}) died (${signal || code}): forking another`);
    cluster.fork();
  });
} else {
  const id = cluster.worker.id;
  const httpServer = http.createServer((req, res) => {
    if (req.method === "GET" && (req.url === "/" || req.url === "/hello")) {
      const body = `hello from worker ${id} (pid ${process.pid}), you are ${req.socket.remoteAddress}:${req.socket.remotePort}\n`;
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
    socket.on("chat message", (text) => {
      if (typeof text === "string") io.emit("chat message", text);
    });
    socket.on("whoami", (ack) => {
      if (typeof ack === "function") ack({ worker: id, pid: process.pid, transport: socket.conn.transport.name });
    });
  });
  console.log(`ready worker ${id} pid ${process.pid}`);
}
