// Rooms and fetchSockets across workers (the cluster adapter): clients 0, 2, 4 join room "a";
// client 1 sends a room message, then a chat message to all as a marker. Members get the room
// message; non-members reach the marker without it (the bus keeps order). `clients` counts all.
// Prints one JSON line; exits 1 on an error, 2 on timeout.
//
//   node rooms.mjs <url>
import { io } from "socket.io-client";
import { asker } from "./lib.mjs";

const [url] = process.argv.slice(2);
setTimeout(() => { console.log(JSON.stringify({ ok: false, error: "timed out after 30s" })); process.exit(2); }, 30_000);
const ask = asker(10_000);
const sockets = Array.from({ length: 6 }, () => io(url, { transports: ["websocket"], forceNew: true, reconnection: false }));
await Promise.all(sockets.map((s) => new Promise((resolve) => s.once("connect", resolve))));
const workers = await Promise.all(sockets.map(async (s) => (await ask(s, "whoami")).worker));
const members = [0, 2, 4];
await Promise.all(members.map((i) => ask(sockets[i], "join", "a")));
const marker = `marker ${Date.now()}`;
const got = sockets.map(() => []);
const done = Promise.all(sockets.map((s, i) => new Promise((resolve) => {
  s.on("room message", (m) => got[i].push(m));
  s.on("chat message", (m) => m === marker && resolve());
})));
sockets[1].emit("room message", "a", "to room a");
sockets[1].emit("chat message", marker);
await done;
const clients = await ask(sockets[1], "clients");
for (const s of sockets) s.disconnect();
const roomOk = sockets.every((_, i) => (members.includes(i) ? got[i].length === 1 : got[i].length === 0));
console.log(JSON.stringify({ ok: roomOk && clients === 6, workers, got: got.map((g) => g.length), clients }));
process.exit(roomOk && clients === 6 ? 0 : 1);
