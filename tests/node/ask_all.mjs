// A broadcast with acknowledgements across workers (io.timeout(..).emit_with_ack): every client
// answers a "question" with its own id; client 0 sends "ask all" and its worker gathers the answers
// of every client, on every worker. Prints one JSON line; exits 1 on an error, 2 on timeout.
//
//   node ask_all.mjs <url> <clients>
import { answeringClients, asker } from "./lib.mjs";

const [url, count = "9"] = process.argv.slice(2);
setTimeout(() => { console.log(JSON.stringify({ ok: false, error: "timed out after 30s" })); process.exit(2); }, 30_000);
const ask = asker(10_000);
try {
  const sockets = await answeringClients(url, Number(count));
  const workers = await Promise.all(sockets.map(async (s) => (await ask(s, "whoami")).worker));
  const question = `who is there? (${Date.now()})`;
  const start = performance.now();
  const { answers, errors } = await ask(sockets[0], "ask all", question);
  const ms = Math.round(performance.now() - start);
  const ids = sockets.map((s) => s.id).sort();
  for (const s of sockets) s.disconnect();
  const answered = answers.filter((a) => a.question === question).map((a) => a.id).sort();
  const ok = errors.length === 0 && answers.length === ids.length && JSON.stringify(answered) === JSON.stringify(ids);
  console.log(JSON.stringify({ ok, workers, ids, answered, answers: answers.length, errors, ms }));
  process.exit(ok ? 0 : 1);
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e) }));
  process.exit(1);
}
