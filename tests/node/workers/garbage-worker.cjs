// A Node worker that breaks the channel once: the first process writes `GARBAGE_BYTES` (hex) to
// its IPC fd, as no Node.js would, and its replacement behaves. The marker file `GARBAGE_MARKER`
// says whether the garbage was sent already. Either way it then idles until it is stopped.
"use strict";
const fs = require("fs");

const marker = process.env.GARBAGE_MARKER;
if (!fs.existsSync(marker)) {
  fs.writeFileSync(marker, String(process.pid));
  fs.writeSync(3, Buffer.from(process.env.GARBAGE_BYTES, "hex"));
}
process.on("disconnect", () => process.exit(0));
setInterval(() => {}, 1 << 30);
