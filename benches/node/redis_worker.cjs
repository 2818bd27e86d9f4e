// worker.cjs with @socket.io/redis-adapter instead of the cluster adapter: every worker talks to
// Redis itself (two connections each), the way Node services run on several hosts without
// clusterd's bridge. The baseline of benches/bridge.rs's Node rows, forked by primary.cjs with
// BENCH_WORKER=redis_worker.cjs and REDIS_URL set. Same events as worker.cjs.
"use strict";
const cluster = require("cluster");
const http = require("http");
const { Server } = require("socket.io");
const { setupWorker } = require("@socket.io/sticky");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const id = cluster.worker.id;
const pub = createClient({ url: process.env.REDIS_URL });
const sub = pub.duplicate();
const io = new Server(http.createServer());
Promise.all([pub.connect(), sub.connect()]).then(
  () => {
    io.adapter(createAdapter(pub, sub));
    setupWorker(io);
    console.log(`ready worker ${id} pid ${process.pid}`);
  },
  (e) => {
    console.error(e);
    process.exit(1);
  },
);

io.on("connection", (socket) => {
  socket.on("whoami", (ack) => {
    if (typeof ack === "function") ack({ worker: id, pid: process.pid, transport: socket.conn.transport.name });
  });
  socket.on("chat message", (text) => {
    if (typeof text === "string") io.emit("chat message", text);
  });
});
