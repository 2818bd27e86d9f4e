// Real socket.io-client peers against unmodified Node workers (workers/socketio-worker.cjs) under
// `clusterd --protocol node`. Connects N clients (half polling-only, half polling then WebSocket),
// checks that every request of a session reaches the same worker, then exercises what the
// cluster adapter carries between workers through clusterd: a broadcast with a Buffer,
// fetchSockets, serverSideEmit with acks, a broadcast with acks, socketsJoin.
// Prints one JSON line; exits 1 on error, 2 on timeout.
//
//   node node_cluster.mjs <url>[,<url>...] <clients> [after-kill|load|big]
//
// With several URLs (the default phase), the clients spread over them in turn.
// With `after-kill`, the clients connect, print {"ready": true, ...} and wait for a line on stdin
// (the test kills a worker meanwhile); then the clients of the surviving workers ask fetchSockets
// and serverSideEmit, timed, and the dead worker's clients connect again. With `load`, the clients (polling and WebSocket) all start at once
// and each asks `whoami` several times; any lost request or session is a failure.
// With `big`, polling-only clients all start at once and each echoes payloads of alternating
// sizes (200 B and 150 KiB: a POST body clusterd hands over with the connection, larger than
// one read of the worker's channel); every answer must be the payload sent.
import { io } from "socket.io-client";
import { asker } from "./lib.mjs";
import { createInterface } from "node:readline";

const [urlArg, count = "6", phase = ""] = process.argv.slice(2);
// Several URLs, comma-separated (several clusterd hosts): client i connects to URL i mod n.
const urls = (urlArg || "").split(",");
const url = urls[0];
const urlOf = (index) => urls[index % urls.length];
if (!url) {
  console.error("usage: node node_cluster.mjs <url> <clients> [after-kill|load|big]");
  process.exit(64);
}
const timer = setTimeout(() => {
  console.log(JSON.stringify({ ok: false, error: "timed out after 40s" }));
  process.exit(2);
}, 40_000);

const errors = [];
const ask = asker(10_000);

async function connect(index) {
  const transports = index % 2 === 0 ? ["polling"] : ["polling", "websocket"];
  const socket = io(urlOf(index), { transports, forceNew: true, reconnection: false });
  socket.on("connect_error", (e) => errors.push(`client ${index}: connect_error ${e.message}`));
  socket.on("question", (ack) => ack({ index }));
  await new Promise((resolve) => socket.once("connect", resolve));
  const workers = new Set();
  for (let i = 0; i < 5; i++) workers.add((await ask(socket, "whoami")).worker);
  if (transports.length === 2 && socket.io.engine.transport.name !== "websocket") {
    await new Promise((resolve) => socket.io.engine.once("upgrade", resolve));
  }
  for (let i = 0; i < 3; i++) workers.add((await ask(socket, "whoami")).worker);
  return { index, socket, workers: [...workers], transport: socket.io.engine.transport.name };
}

// Connects a client that must stay connected: resolves once it is, with `{ failed }`, a promise
// that rejects if it cannot connect or is disconnected (race every later step against it).
async function connected(socket) {
  const failed = new Promise((_, reject) => {
    socket.on("connect_error", (e) => reject(new Error(`connect_error ${e.message}`)));
    socket.on("disconnect", (reason) => reject(new Error(`disconnected (${reason})`)));
  });
  failed.catch(() => {});
  await Promise.race([new Promise((resolve) => socket.once("connect", resolve)), failed]);
  return { failed };
}

async function loadClient(index) {
  const websocket = index % 2 === 1;
  const socket = io(url, { transports: websocket ? ["websocket"] : ["polling"], forceNew: true, reconnection: false });
  try {
    const { failed } = await connected(socket);
    const first = await Promise.race([ask(socket, "whoami"), failed]);
    for (let i = 0; i < (websocket ? 2 : 10); i++) {
      const me = await Promise.race([ask(socket, "whoami"), failed]);
      if (me.worker !== first.worker) throw new Error(`session moved from worker ${first.worker} to ${me.worker}`);
    }
    return true;
  } catch (e) {
    return `client ${index} (${websocket ? "websocket" : "polling"}): ${e.message}`;
  } finally {
    socket.disconnect();
  }
}

async function bigClient(index) {
  const socket = io(url, { transports: ["polling"], forceNew: true, reconnection: false });
  try {
    const { failed } = await connected(socket);
    for (let i = 0; i < 4; i++) {
      const size = (index + i) % 2 === 0 ? 200 : 150 * 1024;
      const payload = `${index}:${i}:`.padEnd(size, String.fromCharCode(97 + ((index + i) % 26)));
      const echoed = await Promise.race([ask(socket, "echo", payload), failed]);
      if (echoed !== payload) throw new Error(`echo ${i}: ${String(echoed).length} bytes back for ${size}`);
    }
    return true;
  } catch (e) {
    return `client ${index}: ${e.message}`;
  } finally {
    socket.disconnect();
  }
}

async function timed(promise) {
  const started = Date.now();
  const value = await promise;
  return { value, ms: Date.now() - started };
}

try {
  // `load`: many sessions at once, as fast as they go: every polling request must reach its
  // session's worker ("Session ID unknown" is a failure), and a WebSocket client's first message,
  // sent the moment it connects, must be answered. `big`: large and small echoes at once.
  const perClient = { load: loadClient, big: bigClient }[phase];
  if (perClient) {
    const outcomes = await Promise.all(Array.from({ length: Number(count) }, (_, i) => perClient(i)));
    const failures = outcomes.filter((r) => r !== true);
    const ok = failures.length === 0 && errors.length === 0;
    console.log(JSON.stringify({ ok, sessions: outcomes.length, failures, errors }));
    clearTimeout(timer);
    process.exit(ok ? 0 : 1);
  }
  const clients = await Promise.all(Array.from({ length: Number(count) }, (_, i) => connect(i)));
  const summary = clients.map((c) => ({ index: c.index, workers: c.workers, transport: c.transport }));
  const result = { ok: true, errors, clients: summary };
  if (phase === "after-kill") {
    for (const c of clients) c.socket.on("disconnect", () => {});
    console.log(JSON.stringify({ ready: true, clients: summary }));
    const line = createInterface({ input: process.stdin });
    const dead = Number(await new Promise((resolve) => line.once("line", resolve)));
    line.close();
    const survivor = clients.find((c) => c.workers[0] !== dead);
    const fetch = await timed(ask(survivor.socket, "fetch"));
    const serverAsk = await timed(ask(survivor.socket, "server ask"));
    // The dead worker's clients connect again (a new session) and reach a live worker (its pid).
    const reconnected = await Promise.all(
      clients.filter((c) => c.workers[0] === dead).map(async (c) => {
        if (c.socket.connected) await new Promise((resolve) => c.socket.once("disconnect", resolve));
        c.socket.connect();
        await new Promise((resolve) => c.socket.once("connect", resolve));
        return (await ask(c.socket, "whoami")).pid;
      }),
    );
    Object.assign(result, { dead, fetch, serverAsk, reconnected });
  } else {
    // A broadcast with a Buffer from one client reaches every client: as binary, or as what
    // arrived instead (`value`: Node's JSON channel turns a Buffer into `{type, data}`).
    const payload = Buffer.from([1, 2, 3, 250]);
    const received = Promise.all(
      clients.map((c) => new Promise((resolve) => c.socket.once("broadcast", (data, from) => resolve({ binary: Buffer.isBuffer(data) || data instanceof ArrayBuffer, bytes: [...new Uint8Array(Buffer.isBuffer(data) ? data : data instanceof ArrayBuffer ? data : [])], value: Buffer.isBuffer(data) || data instanceof ArrayBuffer ? null : data, from })))),
    );
    clients[0].socket.emit("broadcast", payload);
    result.broadcast = await received;
    result.fetch = await ask(clients[1].socket, "fetch");
    result.serverAsk = await ask(clients[0].socket, "server ask");
    result.askAll = await ask(clients[1].socket, "ask all");
    await ask(clients[0].socket, "join all", "everyone");
    // Asked on the same worker: its fetch request follows its join message to the other workers
    // on the same ordered path, so the count includes every join (another worker might count
    // before the join reached it).
    result.roomCount = await ask(clients[0].socket, "room count", "everyone");
    result.ids = clients.map((c) => c.socket.id);
  }
  for (const c of clients) c.socket.disconnect();
  result.ok = errors.length === 0;
  console.log(JSON.stringify(result));
  clearTimeout(timer);
  process.exit(result.ok ? 0 : 1);
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e && e.stack), errors }));
  process.exit(1);
}
