// Malformed cluster adapter packets from one worker cost the other worker nothing: 6 WebSocket
// clients spread over the workers; one asks its worker to send the packets of
// workers/socketio-worker.cjs's "send bad adapter packets"; then a broadcast from a client of that
// worker must reach every client, on every worker, and no client may have been disconnected.
// Prints one JSON line; exits 1 on an error, 2 on timeout.
//
//   node bad_adapter.mjs <url>
import { io } from "socket.io-client";

const [url] = process.argv.slice(2);
setTimeout(() => { console.log(JSON.stringify({ ok: false, error: "timed out after 30s" })); process.exit(2); }, 30_000);
const fail = (error) => { console.log(JSON.stringify({ ok: false, error: String(error) })); process.exit(1); };
const sockets = Array.from({ length: 6 }, () => io(url, { transports: ["websocket"], forceNew: true, reconnection: false }));
const workers = await Promise.all(sockets.map((socket, i) => new Promise((resolve, reject) => {
  socket.once("connect", () => socket.timeout(10_000).emit("whoami", (err, me) => (err ? reject(err) : resolve(me.worker))));
  socket.once("connect_error", reject);
  socket.on("disconnect", (reason) => fail(`client ${i} lost its connection: ${reason}`));
}))).catch(fail);
if (new Set(workers).size < 2) fail(`the clients did not reach both workers: ${workers}`);
const sender = sockets[0];
const sent = await sender.timeout(10_000).emitWithAck("send bad adapter packets").catch(fail);
// The packets travel before the broadcast on the same channels, in order: once the broadcast is
// through, each other worker has read them.
const received = Promise.all(sockets.map((socket) => new Promise((resolve) => {
  socket.on("broadcast", (payload) => payload === "after the bad packets" && resolve(true));
})));
sender.emit("broadcast", "after the bad packets");
await received;
for (const socket of sockets) {
  socket.off("disconnect");
  socket.disconnect();
}
console.log(JSON.stringify({ ok: true, sent, workers }));
process.exit(0);
