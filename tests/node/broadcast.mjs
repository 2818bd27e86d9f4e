// A chat message from one client reaches the clients on every worker (the cluster adapter).
// Prints one JSON line; exits 1 on an error, 2 on timeout.
//
//   node broadcast.mjs <url> <polling|websocket|default> <clients>
import { io } from "socket.io-client";

const [url, mode, count = "6"] = process.argv.slice(2);
const transports = { polling: ["polling"], websocket: ["websocket"], default: ["polling", "websocket"] }[mode];
setTimeout(() => { console.log(JSON.stringify({ ok: false, error: "timed out after 30s" })); process.exit(2); }, 30_000);
const sockets = Array.from({ length: Number(count) }, () => io(url, { transports, forceNew: true, reconnection: false }));
const workers = await Promise.all(sockets.map((socket) => new Promise((resolve, reject) => {
  socket.once("connect", () => socket.timeout(10_000).emit("whoami", (err, me) => (err ? reject(err) : resolve(me.worker))));
  socket.once("connect_error", reject);
})));
const text = `broadcast at ${Date.now()}`;
const received = Promise.all(sockets.map((socket) => new Promise((resolve) => {
  socket.on("chat message", (m) => m === text && resolve(true));
})));
sockets[0].emit("chat message", text);
await received;
for (const socket of sockets) socket.disconnect();
console.log(JSON.stringify({ ok: true, received: sockets.length, workers }));
process.exit(0);
