// Holds Socket.IO sessions open until told to end them, for tests that watch clusterd's session
// counts: connects `count` clients with the given transports, waits until each is upgraded as
// asked, prints {"phase":"connected", "transports": [...]}, then on a line on stdin disconnects
// them all (the client's orderly close) and prints {"phase":"closed"}. Exits 2 on timeout.
//
//   node sessions.mjs <url> <polling|websocket|upgrade> <count>
import { io } from "socket.io-client";
import { createInterface } from "node:readline";

const [url, mode, count] = process.argv.slice(2);
const transports = { polling: ["polling"], websocket: ["websocket"], upgrade: ["polling", "websocket"] }[mode];
setTimeout(() => { console.log(JSON.stringify({ error: "timed out after 60s" })); process.exit(2); }, 60_000);
const sockets = Array.from({ length: Number(count) }, () => io(url, { transports, forceNew: true, reconnection: false }));
await Promise.all(sockets.map((s) => new Promise((resolve, reject) => {
  s.once("connect", resolve);
  s.once("connect_error", reject);
})));
// An upgrade finishes after the connect: wait until every engine runs over WebSocket.
const want = mode === "polling" ? "polling" : "websocket";
await Promise.all(sockets.map((s) => new Promise((resolve) => {
  const engine = s.io.engine;
  if (engine.transport.name === want) return resolve();
  engine.once("upgrade", resolve);
})));
console.log(JSON.stringify({ phase: "connected", transports: sockets.map((s) => s.io.engine.transport.name) }));
const lines = createInterface({ input: process.stdin });
await new Promise((resolve) => lines.once("line", resolve));
for (const s of sockets) s.disconnect();
console.log(JSON.stringify({ phase: "closed" }));
// Let the close packets go out before the process ends.
setTimeout(() => process.exit(0), 200);
