// Stopping a cluster primary the way the benches need: TERM/INT ask every worker to stop, a second
// signal or 5 s end the primary anyway.
"use strict";
const cluster = require("cluster");

/** Installs the TERM/INT handlers; `beforeStop` runs once, first (close the server, say). */
module.exports = function stopOnSignals(beforeStop = () => {}) {
  let stopping = false;
  const stop = () => {
    if (stopping) process.exit(1);
    stopping = true;
    beforeStop();
    const live = Object.values(cluster.workers);
    if (live.length === 0) process.exit(0);
    for (const worker of live) worker.process.kill("SIGTERM");
    setTimeout(() => process.exit(1), 5000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  return () => stopping;
};
