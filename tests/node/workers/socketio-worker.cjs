// The worker half of Socket.IO's documented cluster recipe ("Using Node.js Cluster",
// socket.io/docs/v4/cluster-adapter): an http server that never listens, a Socket.IO server with
// `io.adapter(createAdapter())` and `setupWorker(io)`. It runs unmodified under
// `clusterd --protocol node`: clusterd is its primary.
//
// Only the packages vary (env STICKY=1|2, ADAPTER=0.2|0.3|redis|redis-streams, from tests/node/package.json),
// and the handlers below give the tests something to ask:
//   whoami -> {worker, pid}; "echo" (payload) -> ack(payload); "broadcast" (payload) -> io.emit("broadcast", payload, worker);
//   "fetch" -> ack(ids of io.fetchSockets()); "server ask" -> serverSideEmit with acks;
//   "ask all" -> io.timeout().emit("question") acks; "join all" (room) -> io.socketsJoin(room);
//   "send bad adapter packets" -> malformed cluster adapter packets to the other workers.
"use strict";
const http = require("http");
const { Server } = require("socket.io");
const { setupWorker } = require(process.env.STICKY === "1" ? "sticky1" : "@socket.io/sticky");

const worker = Number(process.env.NODE_APP_INSTANCE);
const httpServer = http.createServer();
// ADAPTER=redis or redis-streams (with REDIS_URL): no cluster adapter, the workers meet in Redis
// (`@socket.io/redis-adapter`, or `@socket.io/redis-streams-adapter` with connection state
// recovery). The clients connect at once and the adapter is set in the first tick: node-redis
// queues the adapter's commands until its connection is up.
const recovery = process.env.ADAPTER === "redis-streams" ? { connectionStateRecovery: { maxDisconnectionDuration: 60_000 } } : {};
const io = new Server(httpServer, recovery);
if (process.env.ADAPTER === "redis" || process.env.ADAPTER === "redis-streams") {
  const { createClient } = require("redis");
  const pub = createClient({ url: process.env.REDIS_URL });
  pub.on("error", (e) => console.error(`redis: ${e.message}`));
  pub.connect();
  if (process.env.ADAPTER === "redis") {
    const sub = pub.duplicate();
    sub.on("error", (e) => console.error(`redis: ${e.message}`));
    sub.connect();
    io.adapter(require("@socket.io/redis-adapter").createAdapter(pub, sub));
  } else {
    io.adapter(require("@socket.io/redis-streams-adapter").createAdapter(pub));
  }
} else {
  const { createAdapter } = require(process.env.ADAPTER === "0.2" ? "cluster-adapter-02" : "@socket.io/cluster-adapter");
  io.adapter(createAdapter());
}
setupWorker(io);

io.on("connection", (socket) => {
  socket.on("whoami", (ack) => ack({ worker, pid: process.pid, recovered: socket.recovered }));
  socket.on("echo", (payload, ack) => ack(payload));
  socket.on("broadcast", (payload) => io.emit("broadcast", payload, worker));
  socket.on("fetch", async (ack) => {
    try {
      const sockets = await io.fetchSockets();
      ack({ ids: sockets.map((s) => s.id) });
    } catch (e) {
      ack({ error: String(e && e.message) });
    }
  });
  socket.on("server ask", (ack) => {
    io.serverSideEmit("server question", worker, (err, answers) =>
      ack({ error: err ? String(err.message || err) : null, answers: answers || [] }),
    );
  });
  socket.on("ask all", (ack) => {
    io.timeout(4000).emit("question", (err, answers) =>
      ack({ error: err ? String(err.message || err) : null, answers: answers || [] }),
    );
  });
  socket.on("join all", async (room, ack) => {
    io.socketsJoin(room);
    ack(true);
  });
  socket.on("room count", async (room, ack) => {
    const sockets = await io.in(room).fetchSockets();
    ack(sockets.length);
  });
});
io.on("server question", (from, ack) => ack({ from, answeredBy: worker }));
// For tests/node/bad_adapter.mjs: cluster adapter packets no adapter sends (each one throws in a
// 0.3 adapter that gets it), written to the primary as the adapter writes its own.
const BAD_ADAPTER_PACKETS = [
  { type: 3, data: null },
  { type: 3, data: { opts: null, packet: { type: 2, data: ["x"], nsp: "/" } } },
  { type: 3, data: { opts: { rooms: 5, except: [] }, packet: { type: 2, data: ["x"], nsp: "/" } } },
  { type: 7, data: null },
  { type: 9, data: { packet: 5 } },
];
io.on("connection", (socket) => {
  socket.on("send bad adapter packets", (ack) => {
    for (const packet of BAD_ADAPTER_PACKETS) process.send({ source: "_sio_adapter", uid: "bad", nsp: "/", ...packet });
    ack(BAD_ADAPTER_PACKETS.length);
  });
});
