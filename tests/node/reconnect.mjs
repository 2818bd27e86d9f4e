// A socket.io-client that survives the death of its worker: connects, prints the serving pid,
// waits for a line on stdin (the test kills that worker meanwhile), then waits to be connected
// again and prints the new pid. Exits 2 on timeout.
//
//   node reconnect.mjs <url> <polling|websocket|default>
import { io } from "socket.io-client";
import { createInterface } from "node:readline";

const [url, mode] = process.argv.slice(2);
const transports = { polling: ["polling"], websocket: ["websocket"], default: ["polling", "websocket"] }[mode];
setTimeout(() => { console.log(JSON.stringify({ error: "timed out after 30s" })); process.exit(2); }, 30_000);
const socket = io(url, { transports, reconnectionDelay: 50, reconnectionDelayMax: 200 });
const whoami = () => new Promise((resolve, reject) =>
  socket.timeout(5_000).emit("whoami", (err, me) => (err ? reject(err) : resolve(me))));
await new Promise((resolve) => socket.once("connect", resolve));
console.log(JSON.stringify({ phase: "connected", ...(await whoami()) }));
const lines = createInterface({ input: process.stdin });
await new Promise((resolve) => lines.once("line", resolve));
// The worker is dead: the client notices, reconnects through clusterd, and is served again.
for (;;) {
  if (!socket.connected) await new Promise((resolve) => socket.once("connect", resolve));
  try {
    console.log(JSON.stringify({ phase: "reconnected", ...(await whoami()) }));
    break;
  } catch {
    // The ack was lost with the dead worker: ask again once connected.
  }
}
socket.disconnect();
process.exit(0);
