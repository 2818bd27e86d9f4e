// The classic Node.js cluster primary, as @socket.io/sticky's README shows it: a `cluster` primary
// owning the port with `setupMaster(httpServer, { loadBalancingMethod: "least-connection" })`
// (sticky by Engine.IO sid) and @socket.io/cluster-adapter's `setupPrimary()`, `serialization:
// "advanced"`, N workers forked from `worker.cjs` (`cluster.setupPrimary({ exec })`): the
// documented Socket.IO worker, the very script `clusterd --protocol node` runs in
// benches/node_workers.rs. Its http server answers plain GETs with a short text (like
// examples/hello.rs), its "whoami" event acks {worker, pid, transport} and its "chat message"
// event is emitted to every client of every worker, as in examples/chat.rs. It is the baseline of
// benches/node_primary.rs, benches/fanout.rs and benches/node_workers.rs.
//
//   node primary.cjs <port> [workers=2] [host=127.0.0.1]
//
// Prints `primary <pid> listening on <host>:<port>` once the port is bound (the workers print
// their `ready worker <id> pid <pid>`). On SIGTERM or SIGINT it stops its workers and exits 0; a
// dead worker is replaced (workers also exit on their own when the primary dies: their IPC
// channel closes).
"use strict";
const cluster = require("cluster");
const http = require("http");
const path = require("path");
const { setupMaster } = require("@socket.io/sticky");
const { setupPrimary } = require("@socket.io/cluster-adapter");
const stopOnSignals = require("./stop.cjs");

const port = Number(process.argv[2]);
const workers = Number(process.argv[3] || 2);
const host = process.argv[4] || "127.0.0.1";
if (!Number.isInteger(port) || port <= 0 || !Number.isInteger(workers) || workers <= 0) {
  console.error("usage: node primary.cjs <port> [workers=2] [host=127.0.0.1]");
  process.exit(64);
}

const httpServer = http.createServer();
setupMaster(httpServer, { loadBalancingMethod: "least-connection" });
setupPrimary();
// BENCH_WORKER names another worker script beside this one (redis_worker.cjs for benches/bridge.rs).
cluster.setupPrimary({ exec: path.join(__dirname, process.env.BENCH_WORKER || "worker.cjs"), serialization: "advanced" });

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
