// A bounded Socket.IO load client for benches/node_primary.rs: <concurrency> loops run for <seconds>;
// each loop repeatedly connects a new socket.io-client over HTTP long-polling only, waits for
// `connect`, asks "whoami" once (ack), and disconnects. Counts the completed sessions and the errors
// by kind, and times each completed session (from its start to the ack); prints one JSON line:
//
//   {"sessions", "errors", "seconds", "error_kinds": {...}, "workers": {...}, "error_samples": [...],
//    "latency_ms": {"p50", "p99"}}
//
//   node polling_load.mjs <url> [concurrency=16] [seconds=5]
//
// Before that line it prints `loops started` when the loops begin and `loops done` when the last
// one ends, so that a caller can measure CPU over exactly the measured seconds (not Node's start
// and exit).
//
// Error kinds: `session_id_unknown` (an HTTP 400 on a polling request: Engine.IO answers
// "Session ID unknown" when a request of a session reaches a worker that does not hold it),
// `connect_error` (any other failure before `connect`), `disconnected` (the session dropped before
// the ack), `ack_timeout`, `connect_timeout`. Each step has a 5 s timeout; loops start no new
// session after <seconds>; the process exits after at most <seconds> + 15 s whatever happens
// (exit 2 then).
import { io } from "socket.io-client";

const [url, concurrencyArg = "16", secondsArg = "5"] = process.argv.slice(2);
const concurrency = Number(concurrencyArg);
const seconds = Number(secondsArg);
if (!url || !(concurrency > 0) || !(seconds > 0)) {
  console.error("usage: node polling_load.mjs <url> [concurrency=16] [seconds=5]");
  process.exit(64);
}
const STEP_TIMEOUT_MS = 5000;
const MAX_SAMPLES = 10;

let sessions = 0;
// How long each completed session took, ms.
const durations = [];
const errorKinds = {};
const workers = {};
const samples = [];
function error(kind, detail) {
  errorKinds[kind] = (errorKinds[kind] || 0) + 1;
  if (samples.length < MAX_SAMPLES) samples.push(`${kind}: ${detail}`);
}
const totalErrors = () => Object.values(errorKinds).reduce((a, b) => a + b, 0);

const started = performance.now();
const deadline = started + seconds * 1000;
const hardStop = setTimeout(() => {
  report(2, "hard timeout");
}, seconds * 1000 + 15_000);

function report(code, note) {
  const out = {
    sessions,
    errors: totalErrors(),
    seconds: (performance.now() - started) / 1000,
    error_kinds: errorKinds,
    workers,
    error_samples: samples,
    latency_ms: { p50: percentile(0.5), p99: percentile(0.99) },
  };
  if (note) out.note = note;
  console.log(JSON.stringify(out));
  process.exit(code);
}

// The nearest-rank percentile of the completed sessions' durations, null with none.
function percentile(p) {
  if (durations.length === 0) return null;
  const sorted = [...durations].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)];
}

// The HTTP status of a transport error, where the client exposes it.
function describe(err) {
  const status = err && typeof err.description === "number" ? err.description : undefined;
  const text = `${err && err.message}${err && err.description !== undefined ? ` (${err.description})` : ""}`;
  return { status, text };
}

function oneSession() {
  return new Promise((resolve) => {
    const begun = performance.now();
    const socket = io(url, {
      transports: ["polling"],
      forceNew: true,
      reconnection: false,
      timeout: STEP_TIMEOUT_MS,
    });
    let done = false;
    const finish = (kind, detail) => {
      if (done) return;
      done = true;
      if (kind) error(kind, detail);
      socket.disconnect();
      resolve();
    };
    socket.on("connect_error", (err) => {
      const { status, text } = describe(err);
      if (/timeout/i.test(err && err.message)) finish("connect_timeout", text);
      else finish(status === 400 ? "session_id_unknown" : "connect_error", text);
    });
    socket.on("disconnect", (reason, details) => {
      if (reason === "io client disconnect") return;
      const { status, text } = describe(details);
      finish(status === 400 ? "session_id_unknown" : "disconnected", `${reason}: ${text}`);
    });
    socket.once("connect", () => {
      socket.timeout(STEP_TIMEOUT_MS).emit("whoami", (err, me) => {
        if (err) return finish("ack_timeout", String(err.message || err));
        workers[me.worker] = (workers[me.worker] || 0) + 1;
        sessions++;
        durations.push(performance.now() - begun);
        finish();
      });
    });
  });
}

async function loop() {
  while (performance.now() < deadline) await oneSession();
}

console.log("loops started");
await Promise.all(Array.from({ length: concurrency }, loop));
console.log("loops done");
clearTimeout(hardStop);
report(0);
