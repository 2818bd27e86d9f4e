// A complete Node.js cluster program, as Socket.IO's documentation writes it ("Using Node.js
// Cluster"): `cluster.isMaster` forks the workers and runs `setupMaster` and `setupPrimary`;
// every worker runs `setupWorker(io)` and `io.adapter(createAdapter())`. It runs unchanged under
// `clusterd --listen ADDR -- node cluster-app.cjs`: clusterd sets NODE_UNIQUE_ID, so Node's
// `cluster.isMaster` is false in every process clusterd starts, and only the worker half runs.
// Run by itself it is its own primary on PORT (default 3000).
//
// Handlers for tests/node/broadcast.mjs: "whoami" acks {worker, pid}; "chat message" goes to
// every client of every worker.
"use strict";
const cluster = require("cluster");
const http = require("http");
const { Server } = require("socket.io");
const numCPUs = require("os").cpus().length;
const { setupMaster, setupWorker } = require("@socket.io/sticky");
const { createAdapter, setupPrimary } = require("@socket.io/cluster-adapter");

if (cluster.isMaster) {
  console.log(`Master ${process.pid} is running`);
  const httpServer = http.createServer();
  setupMaster(httpServer, { loadBalancingMethod: "least-connection" });
  setupPrimary();
  cluster.setupPrimary({ serialization: "advanced" });
  httpServer.listen(Number(process.env.PORT || 3000));
  for (let i = 0; i < numCPUs; i++) {
    cluster.fork();
  }
  cluster.on("exit", (worker) => {
    console.log(`Worker ${worker.process.pid} died`);
    cluster.fork();
  });
} else {
  console.log(`Worker ${process.pid} started`);
  const httpServer = http.createServer();
  const io = new Server(httpServer);
  io.adapter(createAdapter());
  setupWorker(io);
  io.on("connection", (socket) => {
    socket.on("whoami", (ack) => ack({ worker: cluster.worker.id, pid: process.pid }));
    socket.on("chat message", (msg) => io.emit("chat message", msg));
  });
}
