// Unmodified Node workers (workers/socketio-worker.cjs, @socket.io/cluster-adapter 0.3) on several
// clusterd hosts joined by the Redis bridge. WebSocket clients on every host; then, from a client
// of each host: a broadcast reaches every client of every host, fetchSockets sees every client,
// serverSideEmit with acks is answered by every other worker of every host, and a broadcast with
// acks gets every client's answer. Prints one JSON line; exits 1 on an error, 2 on timeout.
//
//   node node_hosts.mjs <clients per host> <workers in all> <url>...
import { io } from "socket.io-client";
import { asker } from "./lib.mjs";

const [perHost, workers, ...urls] = process.argv.slice(2);
const fail = (error, code = 1) => {
  console.log(JSON.stringify({ ok: false, error }));
  process.exit(code);
};
setTimeout(() => fail("timed out after 60s", 2), 60_000);
const ask = asker(15_000);

try {
  const hosts = await Promise.all(
    urls.map((url) =>
      Promise.all(
        Array.from({ length: Number(perHost) }, async (_, i) => {
          const socket = io(url, { transports: ["websocket"], forceNew: true, reconnection: false });
          await new Promise((resolve, reject) => {
            socket.once("connect", resolve);
            socket.once("connect_error", reject);
          });
          socket.on("question", (ack) => ack({ id: socket.id }));
          return socket;
        }),
      ),
    ),
  );
  const all = hosts.flat();
  // The adapters learn each other's servers from their heartbeats (clusterd makes them say hello
  // when a host joins): wait, bounded, until the first host's adapter counts every worker.
  const until = Date.now() + 15_000;
  for (;;) {
    const { answers } = await ask(hosts[0][0], "server ask");
    if (answers.length === Number(workers) - 1) break;
    if (Date.now() > until) fail(`serverSideEmit still got ${answers.length} answers, expected ${Number(workers) - 1}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const ids = all.map((s) => s.id).sort();
  const problems = [];
  const results = [];
  for (const [h, clients] of hosts.entries()) {
    const asker = clients[0];
    const payload = `from host ${h} at ${Date.now()}`;
    const received = Promise.all(all.map((s) => new Promise((resolve) => s.on("broadcast", (p) => p === payload && resolve()))));
    asker.emit("broadcast", payload);
    await Promise.race([received, new Promise((_, reject) => setTimeout(() => reject(new Error(`broadcast from host ${h}`)), 10_000))]);
    const fetched = await ask(asker, "fetch");
    const start = performance.now();
    const server = await ask(asker, "server ask");
    const serverMs = Math.round(performance.now() - start);
    const asked = await ask(asker, "ask all");
    const got = (fetched.ids ?? []).slice().sort();
    if (JSON.stringify(got) !== JSON.stringify(ids)) problems.push(`host ${h}: fetchSockets saw ${got.length} of ${ids.length}`);
    if (server.error || server.answers.length !== Number(workers) - 1) {
      problems.push(`host ${h}: serverSideEmit got ${server.answers.length} answers (${server.error}), expected ${Number(workers) - 1}`);
    }
    const answered = asked.answers.map((a) => a.id).sort();
    if (asked.error || JSON.stringify(answered) !== JSON.stringify(ids)) {
      problems.push(`host ${h}: a broadcast with acks got ${answered.length} of ${ids.length} (${asked.error})`);
    }
    results.push({ fetched: got.length, serverAnswers: server.answers.length, serverMs, acks: answered.length });
  }
  for (const s of all) s.disconnect();
  console.log(JSON.stringify({ ok: problems.length === 0, problems, clients: all.length, results }));
  process.exit(problems.length === 0 ? 0 : 1);
} catch (e) {
  fail(String(e));
}
