// The Node.js baseline of benches/relay.rs: a `cluster` primary with `serialization: "advanced"` and
// @socket.io/cluster-adapter's real `setupPrimary()`, which relays every message whose
// `source === "_sio_adapter"` (and whose type is not a *_RESPONSE) from one worker to all the others
// with `worker.send(message)`. Workers run relay_worker.cjs: worker 1 publishes, the rest subscribe.
//
//   RELAY_SIZE=100 RELAY_COUNT=200000 node relay_primary.cjs [workers=3]
//
// Prints `primary <pid> forked <n> workers`; each worker prints its own lines (see
// relay_worker.cjs). On SIGTERM or SIGINT the primary stops its workers and exits 0.
"use strict";
const cluster = require("cluster");
const path = require("path");
const { setupPrimary } = require("@socket.io/cluster-adapter");
const stopOnSignals = require("./stop.cjs");

const workers = Number(process.argv[2] || 3);
if (!Number.isInteger(workers) || workers < 2) {
  console.error("usage: node relay_primary.cjs [workers>=2]");
  process.exit(64);
}

setupPrimary();
cluster.setupPrimary({ exec: path.join(__dirname, "relay_worker.cjs"), serialization: "advanced" });

const stopping = stopOnSignals();
// The publisher starts once every subscriber said it listens (its "subscribed" message).
let subscribed = 0;
const publisher = cluster.fork({ RELAY_ROLE: "publisher", RELAY_SUBSCRIBERS: String(workers - 1) });
for (let i = 1; i < workers; i++) cluster.fork({ RELAY_ROLE: "subscriber" });
cluster.on("message", (worker, message) => {
  if (message && message.control === "subscribed") {
    subscribed += 1;
    if (subscribed === workers - 1) publisher.send({ control: "start" });
  }
});
console.log(`primary ${process.pid} forked ${workers} workers`);
cluster.on("exit", (worker, code, signal) => {
  if (stopping()) {
    if (Object.keys(cluster.workers).length === 0) process.exit(0);
    return;
  }
  console.log(`worker ${worker.id} (pid ${worker.process.pid}) died (${signal || code})`);
});
