// A request across workers while a worker dies: connects N clients, each answering a "question"
// with its own id, and prints them (id, worker, pid). Then, for a line "ask <index> <event>" on
// stdin, that client sends the event ("sockets": io.fetch_sockets; "ask all": a broadcast with
// acknowledgements) and the ids it gets back are printed with how long it took. The test stops
// and kills a worker meanwhile. Exits 1 on an error, 2 on timeout.
//
//   node dies_during_request.mjs <url> <clients>
import { answeringClients, asker } from "./lib.mjs";
import { createInterface } from "node:readline";

const [url, count = "6"] = process.argv.slice(2);
setTimeout(() => { console.log(JSON.stringify({ phase: "error", error: "timed out after 30s" })); process.exit(2); }, 30_000);
const ask = asker(15_000);
try {
  const sockets = await answeringClients(url, Number(count));
  const clients = await Promise.all(sockets.map(async (s) => {
    const me = await ask(s, "whoami");
    return { id: s.id, worker: me.worker, pid: me.pid };
  }));
  console.log(JSON.stringify({ phase: "connected", clients }));
  const lines = createInterface({ input: process.stdin });
  const line = await new Promise((resolve) => lines.once("line", resolve));
  const [, index, ...event] = line.split(" ");
  const start = performance.now();
  let ids, errors = [];
  if (event.join(" ") === "ask all") {
    const answer = await ask(sockets[Number(index)], "ask all", "who is there?");
    ids = answer.answers.map((a) => a.id);
    errors = answer.errors;
  } else {
    ids = await ask(sockets[Number(index)], event.join(" "));
  }
  const ms = Math.round(performance.now() - start);
  console.log(JSON.stringify({ phase: "answered", ms, ids, errors }));
  for (const s of sockets) s.disconnect();
  process.exit(0);
} catch (e) {
  console.log(JSON.stringify({ phase: "error", error: String(e) }));
  process.exit(1);
}
