// Steady Socket.IO load while workers are killed: `count` clients (half WebSocket, half polling
// then upgrading) each emit a numbered "chat message" every `everyMs`; every client records what it
// receives from whom. Prints one JSON line per phase:
//   {"phase":"connected","clients":[{"id","worker","pid"}]}   once all are connected
//   then, after a "stop" line on stdin: each client stops sending, every client waits until it has
//   the last message of every undisturbed sender, and the script prints
//   {"phase":"done","ok","undisturbed","disturbed","disconnectedFrom":[pid],"sent","lost","duplicated",
//    "reordered","unreconnected"}
// A client is *disturbed* once it lost its connection. Between undisturbed clients every message
// must arrive exactly once and in order ("lost" counts what did not); duplicates and reordering
// are counted for every pair. Exits 2 on timeout.
//
//   node chaos.mjs <url> <count> <everyMs>
import { io } from "socket.io-client";
import { createInterface } from "node:readline";
import { asker } from "./lib.mjs";

const [url, countText = "24", everyText = "100"] = process.argv.slice(2);
const count = Number(countText);
const everyMs = Number(everyText);
const ask = asker(5_000);
const fail = (error) => { console.log(JSON.stringify({ phase: "done", ok: false, error })); process.exit(2); };
setTimeout(() => fail("timed out after 90s"), 90_000);

const clients = Array.from({ length: count }, (_, id) => {
  const transports = id % 2 === 0 ? ["websocket"] : ["polling", "websocket"];
  const socket = io(url, { transports, forceNew: true, reconnectionDelay: 50, reconnectionDelayMax: 300 });
  const client = { id, socket, pid: null, worker: null, disturbed: false, disconnectedFrom: [], sent: 0, got: new Map(), dup: 0, reorder: 0 };
  socket.on("chat message", (text) => {
    const [from, seq] = String(text).split(":").map(Number);
    const seen = client.got.get(from) ?? [];
    if (seen.includes(seq)) client.dup += 1;
    else if (seen.length > 0 && seq < seen[seen.length - 1]) client.reorder += 1;
    seen.push(seq);
    client.got.set(from, seen);
  });
  socket.on("disconnect", () => {
    client.disturbed = true;
    client.disconnectedFrom.push(client.pid);
  });
  socket.on("connect", async () => {
    try {
      const me = await ask(socket, "whoami");
      client.pid = me.pid;
      client.worker = me.worker;
    } catch {
      // The worker died before it answered: the next connect asks again.
    }
  });
  return client;
});

// Connected, and each knows its worker.
const deadline = Date.now() + 30_000;
while (clients.some((c) => !c.socket.connected || c.pid === null)) {
  if (Date.now() > deadline) fail("clients did not all connect");
  await new Promise((resolve) => setTimeout(resolve, 20));
}
console.log(JSON.stringify({ phase: "connected", clients: clients.map((c) => ({ id: c.id, worker: c.worker, pid: c.pid })) }));

let sending = true;
const senders = clients.map((client) => (async () => {
  while (sending) {
    if (client.socket.connected) {
      client.socket.emit("chat message", `${client.id}:${client.sent}`);
      client.sent += 1;
    }
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
})());

const lines = createInterface({ input: process.stdin });
await new Promise((resolve) => lines.on("line", (line) => line.trim() === "stop" && resolve()));
sending = false;
await Promise.all(senders);

// Every client must be connected again; then each waits for the last message of every
// undisturbed sender (the only ones whose every message is owed to everyone undisturbed).
const settle = Date.now() + 20_000;
const undisturbed = () => clients.filter((c) => !c.disturbed);
const complete = (receiver) => undisturbed().every((sender) => (receiver.got.get(sender.id) ?? []).includes(sender.sent - 1));
while (clients.some((c) => !c.socket.connected) || undisturbed().some((r) => !complete(r))) {
  if (Date.now() > settle) break;
  await new Promise((resolve) => setTimeout(resolve, 20));
}
let lost = 0;
for (const receiver of undisturbed()) {
  for (const sender of undisturbed()) {
    const seen = new Set(receiver.got.get(sender.id) ?? []);
    for (let seq = 0; seq < sender.sent; seq += 1) if (!seen.has(seq)) lost += 1;
  }
}
const result = {
  phase: "done",
  ok: true,
  undisturbed: undisturbed().map((c) => ({ id: c.id, worker: c.worker })),
  disturbed: clients.filter((c) => c.disturbed).map((c) => c.id),
  disconnectedFrom: clients.flatMap((c) => c.disconnectedFrom),
  sent: clients.reduce((n, c) => n + c.sent, 0),
  received: clients.reduce((n, c) => n + [...c.got.values()].reduce((m, s) => m + s.length, 0), 0),
  lost,
  duplicated: clients.reduce((n, c) => n + c.dup, 0),
  reordered: clients.reduce((n, c) => n + c.reorder, 0),
  unreconnected: clients.filter((c) => !c.socket.connected).map((c) => c.id),
};
console.log(JSON.stringify(result));
for (const c of clients) c.socket.disconnect();
process.exit(0);
