// A worker of relay_primary.cjs (the Node.js baseline of benches/relay.rs).
//
// RELAY_ROLE=publisher: on the primary's {control: "start"}, sends RELAY_COUNT messages
// {source: "_sio_adapter", type: 2, uid, nsp: "/bench", payload: Buffer(RELAY_SIZE)} with
// process.send; @socket.io/cluster-adapter's setupPrimary() forwards each to every other worker.
// At most WINDOW sends wait for their callback at a time (process.send buffers without bound).
// RELAY_ROLE=subscriber: tells the primary it listens, then counts the relayed messages.
//
// Each payload starts with its send time, 8 bytes little-endian, nanoseconds of
// process.hrtime.bigint() (CLOCK_MONOTONIC on Linux: one clock for every process). A subscriber
// prints `relay done received=N elapsed_ms=E p50_us=P p99_us=Q` once it has all messages (or after
// 10 s without one), E from the first message's send time to the last receipt.
"use strict";
const cluster = require("cluster");

const role = process.env.RELAY_ROLE;
const size = Math.min(Math.max(Number(process.env.RELAY_SIZE || 100), 8), 16 * 1024 * 1024);
const count = Math.min(Math.max(Number(process.env.RELAY_COUNT || 10000), 1), 10000000);
const WINDOW = 256;
const IDLE_TIMEOUT_MS = 10000;
const id = cluster.worker.id;

function quantile(sorted, q) {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(Math.round((sorted.length - 1) * q), sorted.length - 1)];
}

if (role === "publisher") {
  process.on("message", (message) => {
    if (!message || message.control !== "start") return;
    const started = process.hrtime.bigint();
    let sent = 0;
    let inFlight = 0;
    const pump = () => {
      while (sent < count && inFlight < WINDOW) {
        const payload = Buffer.alloc(size, 0xa5);
        payload.writeBigUInt64LE(process.hrtime.bigint(), 0);
        inFlight += 1;
        sent += 1;
        process.send({ source: "_sio_adapter", type: 2, uid: `w${id}`, nsp: "/bench", payload }, null, onSent);
      }
    };
    function onSent(error) {
      if (error) {
        console.error(`worker ${id}: send failed: ${error.message}`);
        process.exit(1);
      }
      inFlight -= 1;
      if (sent < count) {
        pump();
      } else if (inFlight === 0) {
        const ms = Number(process.hrtime.bigint() - started) / 1e6;
        console.log(`relay published count=${count} size=${size} elapsed_ms=${ms.toFixed(3)}`);
      }
    }
    pump();
  });
  console.log(`ready worker ${id} pid ${process.pid} publisher`);
} else {
  const latencies = new Float64Array(count);
  let received = 0;
  let firstSent = null;
  let last = 0n;
  let done = false;
  let idle = null;
  const finish = () => {
    if (done) return;
    done = true;
    clearTimeout(idle);
    const sorted = latencies.subarray(0, received).sort();
    const elapsed = firstSent === null ? 0 : Number(last - firstSent) / 1e6;
    console.log(
      `[node w${id}] relay done received=${received} elapsed_ms=${elapsed.toFixed(3)} ` +
        `p50_us=${(quantile(sorted, 0.5) / 1e3).toFixed(1)} p99_us=${(quantile(sorted, 0.99) / 1e3).toFixed(1)}`,
    );
  };
  const arm = () => {
    clearTimeout(idle);
    idle = setTimeout(() => {
      console.error(`worker ${id}: no message for ${IDLE_TIMEOUT_MS} ms; giving up after ${received}`);
      finish();
    }, IDLE_TIMEOUT_MS);
  };
  process.on("message", (message) => {
    if (done || !message || message.source !== "_sio_adapter") return;
    last = process.hrtime.bigint();
    const payload = message.payload;
    const sent = payload.readBigUInt64LE(0);
    if (firstSent === null) firstSent = sent;
    latencies[received] = Number(last - sent);
    received += 1;
    if (received >= count) finish();
    else if ((received & 1023) === 0) arm();
  });
  arm();
  process.send({ control: "subscribed" });
  console.log(`ready worker ${id} pid ${process.pid} subscriber`);
}
