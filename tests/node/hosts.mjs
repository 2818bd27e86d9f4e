// Socket.IO across clusterd hosts joined by the Redis bridge (the `chat` example on every host):
// clients on every host; each client sends chat messages (in rounds: one each, then wait until all
// arrived), and every client of every host must receive every message exactly once, each sender's
// in the order sent. Then, from a client of each
// host: `clients` (fetch_sockets) must count every client of every host, and `ask all` (a
// broadcast with acknowledgements) must get the answer of every client of every host.
// Prints one JSON line; exits 1 on an error, 2 on timeout.
//
//   node hosts.mjs <clients per host> <messages per client> <url>...
import { answeringClients, asker } from "./lib.mjs";

const [perHost, messages, ...urls] = process.argv.slice(2);
const fail = (error, code = 1) => {
  console.log(JSON.stringify({ ok: false, error }));
  process.exit(code);
};
setTimeout(() => fail("timed out after 60s", 2), 60_000);
const ask = asker(15_000);
const waitFor = (what, probe, ms = 30_000) =>
  new Promise((resolve, reject) => {
    const start = Date.now();
    const poll = () => (probe() ? resolve() : Date.now() - start > ms ? reject(new Error(`waiting for ${what}`)) : setTimeout(poll, 10));
    poll();
  });

try {
  const hosts = await Promise.all(urls.map((url) => answeringClients(url, Number(perHost))));
  const all = hosts.flat();
  const m = Number(messages);
  const tag = `${Date.now()}`;
  const got = all.map(() => []);
  all.forEach((s, r) => s.on("chat message", (text) => text.startsWith(`${tag}:`) && got[r].push(text)));
  // In rounds: every client sends one message, and the next round starts once every client has
  // all of them. socketioxide drops packets for a socket whose buffer (128 packets) is full, so an
  // unbounded burst would lose messages on one host already; this keeps the clients' share of the
  // load bounded while every worker and host is busy.
  for (let i = 0; i < m; i++) {
    all.forEach((s, k) => s.emit("chat message", `${tag}:${k}:${i}`));
    const due = all.length * (i + 1);
    await waitFor(`${due} messages at every client`, () => got.every((g) => g.length >= due)).catch((e) =>
      fail(`${e.message}; received: ${JSON.stringify(got.map((g) => g.length))}`),
    );
  }
  const expected = all.length * m;
  // Nothing more may come (a duplicate): give the last echoes a moment, then count exactly.
  await new Promise((resolve) => setTimeout(resolve, 300));
  const problems = [];
  got.forEach((g, r) => {
    if (g.length !== expected) problems.push(`client ${r} got ${g.length} messages, expected ${expected}`);
    const next = new Map();
    for (const text of g) {
      const [, k, i] = text.split(":").map(Number);
      const want = next.get(k) ?? 0;
      if (i !== want) problems.push(`client ${r}: message ${i} of sender ${k} came when ${want} was due`);
      next.set(k, i + 1);
    }
  });
  const counts = [];
  const asks = [];
  for (const clients of hosts) {
    counts.push(await ask(clients[0], "clients"));
    const question = `who is there? (${Date.now()})`;
    const start = performance.now();
    const { answers, errors } = await ask(clients[0], "ask all", question);
    asks.push({ answers: answers.filter((a) => a.question === question).length, errors: errors.length, ms: Math.round(performance.now() - start) });
  }
  for (const s of all) s.disconnect();
  if (counts.some((c) => c !== all.length)) problems.push(`fetch_sockets counted ${JSON.stringify(counts)}, expected ${all.length}`);
  if (asks.some((a) => a.answers !== all.length || a.errors !== 0)) problems.push(`ask all: ${JSON.stringify(asks)}, expected ${all.length} answers`);
  console.log(JSON.stringify({ ok: problems.length === 0, problems: problems.slice(0, 20), clients: all.length, messages: expected, counts, asks }));
  process.exit(problems.length === 0 ? 0 : 1);
} catch (e) {
  fail(String(e));
}
