// The alternative to clusterd's bridge: every Node worker runs @socket.io/redis-adapter itself
// (two Redis connections per worker), with @socket.io/sticky's setupWorker for sticky sessions,
// under `clusterd --protocol node` (which only balances and keeps sessions sticky; its relay is
// not used). REDIS_URL names the Redis. Same events as socketio-worker.cjs.
"use strict";
const http = require("http");
const { Server } = require("socket.io");
const { setupWorker } = require("@socket.io/sticky");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const worker = Number(process.env.NODE_APP_INSTANCE);

// Everything in the first tick: clusterd hands connections as soon as the worker is online, so
// setupWorker must not wait for Redis (node-redis queues commands once connect() was called).
function main() {
  const pub = createClient({ url: process.env.REDIS_URL });
  const sub = pub.duplicate();
  const fail = (e) => {
    console.error(e);
    process.exit(1);
  };
  pub.connect().catch(fail);
  sub.connect().catch(fail);
  const io = new Server(http.createServer());
  io.adapter(createAdapter(pub, sub));
  setupWorker(io);
  io.on("connection", (socket) => {
    socket.on("whoami", (ack) => ack({ worker, pid: process.pid }));
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
}

main();
