// Cluster-adapter traffic past a Node worker that does not read (tests/bus_memory.rs). By slot
// (NODE_APP_INSTANCE): 0 blocks its event loop once online (it never reads its channel again);
// 1 counts the adapter messages it receives and prints `got from=<slot> len=<bytes>` for each;
// the others send `FLOOD_TOTAL` bytes of adapter messages of the sizes in `FLOOD_SIZES` (comma-
// separated), each once the previous one is written (Node's own backpressure), once
// `FLOOD_START` exists, then print `flooded bytes=<n> messages=<m>`.
"use strict";
const fs = require("fs");

const slot = Number(process.env.NODE_APP_INSTANCE);
process.on("disconnect", () => process.exit(0));
if (slot === 0) {
  setImmediate(() => {
    console.log("blocking");
    for (;;) {}
  });
} else if (slot === 1) {
  process.on("message", (m) => {
    if (m && m.source === "_sio_adapter") console.log(`got from=${m.from} len=${m.data.length}`);
  });
  setInterval(() => {}, 1 << 30);
} else {
  const total = Number(process.env.FLOOD_TOTAL);
  const sizes = process.env.FLOOD_SIZES.split(",").map(Number);
  const payload = Buffer.alloc(Math.max(...sizes), 7);
  const send = (message) => new Promise((resolve, reject) => process.send(message, (err) => (err ? reject(err) : resolve())));
  (async () => {
    while (!fs.existsSync(process.env.FLOOD_START)) await new Promise((resolve) => setTimeout(resolve, 20));
    let sent = 0;
    let messages = 0;
    for (let i = 0; sent < total; i += 1) {
      const size = sizes[i % sizes.length];
      await send({ source: "_sio_adapter", type: 1, from: slot, data: payload.subarray(0, size) });
      sent += size;
      messages += 1;
    }
    console.log(`flooded bytes=${sent} messages=${messages}`);
  })();
  setInterval(() => {}, 1 << 30);
}
