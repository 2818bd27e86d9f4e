// `ws` clients against tests/node/workers/ws-worker.cjs: N connections at once, each sends 3
// messages on its socket and checks the echoes come from one worker. Prints one JSON line
// {ok, slots: [slot of each connection]}; exits 1 on an error, 2 on timeout.
//
//   node ws_clients.mjs <ws://host:port> <connections>
import WebSocket from "ws";

const [url, count = "6"] = process.argv.slice(2);
setTimeout(() => { console.log(JSON.stringify({ ok: false, error: "timed out after 30s" })); process.exit(2); }, 30_000);

async function client(index) {
  const ws = new WebSocket(url);
  await new Promise((resolve, reject) => { ws.once("open", resolve); ws.once("error", reject); });
  const slots = new Set();
  for (let i = 0; i < 3; i++) {
    const text = `client ${index} message ${i}`;
    const reply = await new Promise((resolve, reject) => { ws.once("message", (d) => resolve(String(d))); ws.once("error", reject); ws.send(text); });
    if (!reply.startsWith(`${text} slot `)) throw new Error(`client ${index}: echo ${JSON.stringify(reply)}`);
    slots.add(reply.split(" ")[5]);
  }
  ws.close();
  if (slots.size !== 1) throw new Error(`client ${index}: answers from slots ${[...slots]}`);
  return Number([...slots][0]);
}

try {
  const slots = await Promise.all(Array.from({ length: Number(count) }, (_, i) => client(i)));
  console.log(JSON.stringify({ ok: true, slots }));
  process.exit(0);
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e && e.message) }));
  process.exit(1);
}
