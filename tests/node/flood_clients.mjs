// Clients of one host's Node workers (workers/socketio-worker.cjs), for tests/bridge.rs's Redis
// flood test. Connects <n> WebSocket clients to <url> and prints {"workers": [...]} (the worker
// slot each landed on); then, for each line "go <slot>" on stdin (worker <slot> is stopped and
// Redis floods the host), every client of another worker emits "broadcast" with a payload of its
// own, and every client of another worker must receive every such payload: the local relay keeps
// delivering. Prints one JSON line per round ("done" ends it); exits 1 on an error, 2 on timeout.
//
//   node flood_clients.mjs <url> <n>
import readline from "node:readline";
import { io } from "socket.io-client";
import { asker } from "./lib.mjs";

const [url, n] = process.argv.slice(2);
const fail = (error, code = 1) => {
  console.log(JSON.stringify({ ok: false, error }));
  process.exit(code);
};
setTimeout(() => fail("timed out after 120s", 2), 120_000);
const ask = asker(15_000);

try {
  const clients = await Promise.all(
    Array.from({ length: Number(n) }, async () => {
      const socket = io(url, { transports: ["websocket"], forceNew: true, reconnection: false });
      await new Promise((resolve, reject) => {
        socket.once("connect", resolve);
        socket.once("connect_error", reject);
      });
      const { worker } = await ask(socket, "whoami");
      return { socket, worker };
    }),
  );
  console.log(JSON.stringify({ workers: clients.map((c) => c.worker) }));
  let round = 0;
  for await (const line of readline.createInterface({ input: process.stdin })) {
    if (line === "done") break;
    const stopped = Number(line.split(" ")[1]);
    const live = clients.filter((c) => c.worker !== stopped);
    round += 1;
    const payloads = live.map((_, i) => `round ${round} from ${i}`);
    const received = Promise.all(
      live.map(
        ({ socket }) =>
          new Promise((resolve) => {
            const missing = new Set(payloads);
            const on = (payload) => {
              missing.delete(payload);
              if (missing.size === 0) {
                socket.off("broadcast", on);
                resolve();
              }
            };
            socket.on("broadcast", on);
          }),
      ),
    );
    const start = performance.now();
    live.forEach(({ socket }, i) => socket.emit("broadcast", payloads[i]));
    await Promise.race([received, new Promise((_, reject) => setTimeout(() => reject(new Error(`round ${round}: broadcasts not all received in 20s`)), 20_000))]);
    console.log(JSON.stringify({ ok: true, round, clients: live.length, ms: Math.round(performance.now() - start) }));
  }
  for (const { socket } of clients) socket.disconnect();
  process.exit(0);
} catch (e) {
  fail(String(e));
}
