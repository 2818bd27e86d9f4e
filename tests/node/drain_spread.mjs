// N socket.io-clients (default options: polling, then the WebSocket upgrade; reconnection with
// socket.io-client's own delays) that record when their worker's drain ended their session and
// when they were connected again. Prints {"phase":"connected","pids":[..]} once all N are
// connected (upgraded to WebSocket), then {"phase":"done",...} once all N reconnected: the
// disconnect and reconnect times in ms since the first disconnect, and the disconnect reasons.
// Exits 2 if that takes longer than the timeout. With `polling` after the timeout, the clients
// use long-polling only (`transports: ["polling"]`) and the upgrade is not awaited. With `mixed`,
// every second client is long-polling only, the others upgrade, and "done" also has
// `pollingDisconnects`: the disconnect times of the long-polling ones.
//
//   node drain_spread.mjs <url> <N> <timeout ms> [polling|mixed]
import { io } from "socket.io-client";

const [url, n, timeout] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const polling = process.argv[5] === "polling";
const mixed = process.argv[5] === "mixed";
const pollingOnly = (i) => polling || (mixed && i % 2 === 1);
setTimeout(() => {
  console.log(JSON.stringify({ error: `timed out after ${timeout} ms`, reconnected: reconnects.length }));
  process.exit(2);
}, timeout);

const disconnects = [];
const pollingDisconnects = [];
const reconnects = [];
const reasons = {};
const sockets = [];
for (let i = 0; i < n; i++) {
  sockets.push(io(url, pollingOnly(i) ? { forceNew: true, transports: ["polling"] } : { forceNew: true }));
}
const whoami = (socket) => new Promise((resolve, reject) =>
  socket.timeout(10_000).emit("whoami", (err, me) => (err ? reject(err) : resolve(me))));
const upgraded = (socket, i) => new Promise((resolve) => {
  if (pollingOnly(i) || socket.io.engine.transport.name === "websocket") return resolve();
  socket.io.engine.once("upgrade", () => resolve());
});
await Promise.all(sockets.map((s) => new Promise((resolve) => s.once("connect", resolve))));
await Promise.all(sockets.map(upgraded));
const pids = await Promise.all(sockets.map(async (s) => (await whoami(s)).pid));
for (const [i, socket] of sockets.entries()) {
  socket.on("disconnect", (reason) => {
    const t = performance.now();
    disconnects.push(t);
    if (mixed && pollingOnly(i)) pollingDisconnects.push(t);
    reasons[reason] = (reasons[reason] ?? 0) + 1;
  });
  socket.io.on("reconnect", () => {
    reconnects.push(performance.now());
    if (reconnects.length === n) done();
  });
}
console.log(JSON.stringify({ phase: "connected", pids }));

function done() {
  const t0 = Math.min(...disconnects);
  const rel = (times) => times.map((t) => Math.round(t - t0)).sort((a, b) => a - b);
  const done = { phase: "done", disconnects: rel(disconnects), reconnects: rel(reconnects), reasons };
  if (mixed) done.pollingDisconnects = rel(pollingDisconnects);
  console.log(JSON.stringify(done));
  for (const socket of sockets) socket.disconnect();
  process.exit(0);
}
