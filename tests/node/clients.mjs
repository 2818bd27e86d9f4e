// Real socket.io-client peers for clusterd's tests: connects N clients through clusterd with the
// given transports, asks each `whoami` many times (every polling request must reach the worker
// that owns its session), and checks that a chat message reaches the sender's worker's clients.
// Prints one JSON line with the results; exits 1 on any error, 2 on timeout.
//
//   node clients.mjs <url> <polling|websocket|default> <clients> <asks>
import { io } from "socket.io-client";

const [url, mode, clientCount = "4", asks = "20"] = process.argv.slice(2);
const transports = { polling: ["polling"], websocket: ["websocket"], default: ["polling", "websocket"] }[mode];
if (!url || !transports) {
  console.error("usage: node clients.mjs <url> <polling|websocket|default> <clients> <asks>");
  process.exit(64);
}
const timer = setTimeout(() => {
  console.log(JSON.stringify({ ok: false, error: "timed out after 30s" }));
  process.exit(2);
}, 30_000);

const errors = [];
function whoami(socket) {
  return new Promise((resolve, reject) => {
    socket.timeout(10_000).emit("whoami", (err, me) => (err ? reject(err) : resolve(me)));
  });
}

async function runClient(index) {
  const socket = io(url, { transports, forceNew: true, reconnection: false });
  socket.on("connect_error", (e) => errors.push(`client ${index}: connect_error ${e.message}`));
  socket.on("disconnect", (reason) => {
    if (reason !== "io client disconnect") errors.push(`client ${index}: disconnected (${reason})`);
  });
  await new Promise((resolve) => socket.once("connect", resolve));
  const workers = new Set();
  let transport;
  for (let i = 0; i < Number(asks); i++) {
    const me = await whoami(socket);
    workers.add(me.worker);
    transport = socket.io.engine.transport.name;
  }
  return { index, socket, workers: [...workers], transport };
}

try {
  const clients = await Promise.all(Array.from({ length: Number(clientCount) }, (_, i) => runClient(i)));
  // A chat message reaches every client of the sender's worker (io.emit on that worker).
  const sender = clients[0];
  const sameWorker = clients.filter((c) => c.workers[0] === sender.workers[0]);
  const text = `hello from ${sender.index} at ${Date.now()}`;
  const received = await Promise.all(
    sameWorker.map((c) => new Promise((resolve) => c.socket.on("chat message", (m) => m === text && resolve(true)))
      .then(() => true)),
    sender.socket.emit("chat message", text),
  );
  for (const c of clients) c.socket.disconnect();
  const result = {
    ok: errors.length === 0,
    errors,
    clients: clients.map((c) => ({ index: c.index, workers: c.workers, transport: c.transport })),
    chat_received: received.length,
  };
  console.log(JSON.stringify(result));
  clearTimeout(timer);
  process.exit(result.ok ? 0 : 1);
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e), errors }));
  process.exit(1);
}
