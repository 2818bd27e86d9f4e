// Connection state recovery across workers (`@socket.io/redis-streams-adapter`, workers/socketio-worker.cjs
// with ADAPTER=redis-streams): N clients connect (WebSocket only), get a first broadcast, lose their
// transport, miss two broadcasts sent meanwhile by another client, and connect again: each must be
// recovered (`socket.recovered`, on the client and on the worker it lands on, whichever that is)
// with the two packets it missed, in order. Prints one JSON line
// {ok, clients: [{before, after, recovered, missed}]}; exits 1 on an error, 2 on timeout.
//
//   node recovery.mjs <url> <clients>
import { io } from "socket.io-client";
import { asker } from "./lib.mjs";

const [url, count = "4"] = process.argv.slice(2);
setTimeout(() => { console.log(JSON.stringify({ ok: false, error: "timed out after 40s" })); process.exit(2); }, 40_000);
const ask = asker(10_000);
const open = (socket) => new Promise((resolve, reject) => { socket.once("connect", resolve); socket.once("connect_error", reject); });

try {
  const clients = [];
  for (let i = 0; i < Number(count); i++) {
    const socket = io(url, { transports: ["websocket"], forceNew: true, reconnection: false });
    const received = [];
    socket.on("broadcast", (data) => received.push(data));
    await open(socket);
    clients.push({ socket, received, before: (await ask(socket, "whoami")).worker });
  }
  const sender = io(url, { transports: ["websocket"], forceNew: true, reconnection: false });
  await open(sender);
  // Resolves once the sender got its own broadcast back: it went through the stream.
  const broadcast = (text) => new Promise((resolve) => {
    const seen = (data) => { if (data === text) { sender.off("broadcast", seen); resolve(); } };
    sender.on("broadcast", seen);
    sender.emit("broadcast", text);
  });
  await broadcast("first");
  const until = async (what, check) => {
    for (let i = 0; i < 400 && !(await check()); i++) await new Promise((r) => setTimeout(r, 25));
    if (!(await check())) throw new Error(`never: ${what}`);
  };
  await until("every client got the first broadcast", () => clients.every((c) => c.received.includes("first")));
  const ids = clients.map((c) => c.socket.id);
  // The transports drop (as when a network goes away): "transport close", a recoverable reason.
  await Promise.all(clients.map((c) => new Promise((resolve) => { c.socket.once("disconnect", resolve); c.socket.io.engine.close(); })));
  // The workers saw the disconnections (and stored the sessions) once no worker has those sockets.
  await until("the workers saw the clients go", async () => {
    const { ids: live } = await ask(sender, "fetch");
    return !live.some((id) => ids.includes(id));
  });
  await broadcast("missed 1");
  await broadcast("missed 2");
  const results = [];
  for (const c of clients) {
    c.received.length = 0;
    c.socket.connect();
    await open(c.socket);
    const me = await ask(c.socket, "whoami");
    results.push({ before: c.before, after: me.worker, recovered: c.socket.recovered, serverRecovered: me.recovered, missed: [...c.received] });
  }
  for (const c of clients) c.socket.disconnect();
  sender.disconnect();
  const ok = results.every((r) => r.recovered === true && r.serverRecovered === true && JSON.stringify(r.missed) === JSON.stringify(["missed 1", "missed 2"]));
  console.log(JSON.stringify({ ok, clients: results }));
  process.exit(ok ? 0 : 1);
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e && e.stack) }));
  process.exit(1);
}
