// One Node worker for the rows of the README's Node.js compatibility matrix (tests/node_matrix.rs).
// It uses Node's own `cluster`, `process.send`, `net`, `http` and `dgram` APIs as a worker of a
// Node primary would, and prints what it sees as `matrix <role> <json>` lines on stdout.
//
// ROLE selects what it does:
//   api       prints the cluster API as seen in the worker (isPrimary, isMaster, isWorker,
//             worker.id, NODE_APP_INSTANCE, the serialization, and the primary's answers to
//             `process.send`), then listens on port 0 through clusterd and answers
//             `slot <n> id <worker.id> pid <pid>`.
//   servers   several servers in one worker: http on port 0 (twice), on PORT, and on the Unix path
//             UNIX_PATH; each answers `<server> slot <n> pid <pid>`. A UDP bind prints its outcome.
//   misbehave listens on PORT_<slot> through clusterd. On `GET /bad` it sends the primary what no
//             primary expects (unknown messages, a 16 MiB one, a net.Server, a net.Socket and a
//             dgram socket as handles), then listens on port 0 through clusterd, which needs the
//             channel to still work, and answers with that port. On `GET /huge` it sends one
//             message over clusterd's 32 MiB limit. `GET /session?sid=<id>` reports a session as
//             @socket.io/sticky's worker half does; `GET /sids` reports 200 ids of 1 MiB.
//   maxconn   listens on PORT through clusterd; slot 0 with `server.maxConnections = 1`.
//   disconnect listens on PORT through clusterd; `GET /worker` calls `cluster.worker.disconnect()`,
//             `GET /process` calls `process.disconnect()`, `GET /process-and-stay` too but keeps
//             running until SIGTERM; other requests answer `slot <n> pid <pid>`.
"use strict";
const cluster = require("node:cluster");
const dgram = require("node:dgram");
const http = require("node:http");
const net = require("node:net");

const role = process.env.ROLE;
const slot = Number(process.env.NODE_APP_INSTANCE);
const say = (what, value) => console.log(`matrix ${what} ${JSON.stringify(value)}`);
const send = (message, handle) =>
  new Promise((resolve) => {
    const ok = process.send(message, handle, {}, (err) => resolve(err ? String(err.message || err) : null));
    if (ok === undefined) resolve("process.send returned undefined");
  });
const answer = (text) => (req, res) => {
  res.setHeader("connection", "close");
  res.end(text);
};

async function api() {
  const messages = [];
  process.on("message", (m) => messages.push(m));
  // What a worker says to its primary that clusterd has no use for: each send must complete.
  const sent = [];
  for (const message of ["hello", 42, null, [1, 2], { type: "custom", data: { a: 1 } }, { cmd: "NODE_NOT_A_COMMAND" }]) {
    sent.push(await send(message));
  }
  // Node deletes NODE_CHANNEL_SERIALIZATION_MODE from the environment once it has read it; only
  // `advanced` serializes a BigInt. With it, the values only V8's format carries go too.
  let serialization = "advanced";
  try {
    process.send({ detect: 1n });
  } catch {
    serialization = "json";
  }
  if (serialization === "advanced") {
    const values = [new Map([[1, { a: new Set(["x"]) }]]), new Date(0), /re/g, Buffer.from([1, 2]), new Uint16Array([1, 2]), new Error("e"), { n: 10n }, { big: -(2n ** 70n), when: new Date(1), nested: [undefined, NaN, -0, Infinity] }, [new ArrayBuffer(8)]];
    for (const message of values) sent.push(await send(message));
  }
  say("api", {
    isPrimary: cluster.isPrimary,
    isMaster: cluster.isMaster,
    isWorker: cluster.isWorker,
    workerId: cluster.worker && cluster.worker.id,
    appInstance: process.env.NODE_APP_INSTANCE,
    clusterdWorkerId: process.env.CLUSTERD_WORKER_ID,
    serialization,
    connected: process.connected,
    sendErrors: sent,
    pid: process.pid,
  });
  const server = http.createServer(answer(`slot ${slot} id ${cluster.worker.id} pid ${process.pid}\n`));
  server.listen(0, "127.0.0.1", () => say("listening", { port: server.address().port, messages: messages.length }));
}

function servers() {
  const listening = {};
  const done = () => Object.keys(listening).length === 4 && say("servers", listening);
  const start = (name, ...where) => {
    const server = http.createServer(answer(`${name} slot ${slot} pid ${process.pid}\n`));
    server.on("error", (e) => say("error", { name, error: String(e.message) }));
    server.listen(...where, () => {
      const address = server.address();
      listening[name] = typeof address === "string" ? address : address.port;
      done();
    });
  };
  // UDP is not shared through clusterd: the bind fails (EINVAL) instead of hanging.
  const udp = dgram.createSocket("udp4");
  udp.on("error", (e) => say("udp", { error: e.code }));
  udp.bind(0, "127.0.0.1", () => say("udp", { bound: udp.address().port }));
  // Two listens on port 0 in one worker: as under Node's primary, each gets a port of its own,
  // and the n-th one of every worker shares one port.
  start("zero", 0, "127.0.0.1");
  start("zero2", 0, "127.0.0.1");
  start("port", Number(process.env.PORT), "127.0.0.1");
  start("unix", process.env.UNIX_PATH);
}

async function misbehave() {
  const server = http.createServer(async (req, res) => {
    if (req.url !== "/") res.setHeader("connection", "close");
    if (req.url === "/bad") {
      const errors = [];
      for (const message of ["x", { cmd: "NODE_CLUSTER", act: "no-such-act", seq: 999 }, { cmd: "NODE_CLUSTER", act: "queryServer", port: "nope" }, { type: "sticky:connection" }, { source: "_sio_adapter" }, { cmd: "NODE_HANDLE_ACK" }]) {
        errors.push(await send(message));
      }
      say("step", "unknown messages sent");
      errors.push(await send({ type: "big", data: "y".repeat(16 * 1024 * 1024) }));
      say("step", "16 MiB sent");
      // Handles of every kind a worker can send: clusterd takes none.
      const own = net.createServer();
      await new Promise((resolve) => own.listen({ port: 0, host: "127.0.0.1", exclusive: true }, resolve));
      const client = net.connect(own.address().port, "127.0.0.1");
      await new Promise((resolve) => client.once("connect", resolve));
      const udp = dgram.createSocket("udp4");
      await new Promise((resolve) => udp.bind({ port: 0, address: "127.0.0.1", exclusive: true }, resolve));
      errors.push(await send({ type: "a server" }, own));
      say("step", "net.Server sent");
      errors.push(await send({ type: "a socket" }, client));
      say("step", "net.Socket sent");
      errors.push(await send({ type: "a dgram socket" }, udp));
      say("step", "dgram.Socket sent");
      // The channel still works: a listen through clusterd needs its answer.
      const after = http.createServer(answer("after\n"));
      after.listen(0, "127.0.0.1", () => res.end(JSON.stringify({ errors, port: after.address().port })));
    } else if (req.url.startsWith("/session?sid=")) {
      // Says it opened a Socket.IO session with this id, as @socket.io/sticky's worker half does.
      const error = await send({ type: "sticky:connection", data: decodeURIComponent(req.url.slice(13)) });
      res.end(JSON.stringify({ error }));
    } else if (req.url === "/sids") {
      // 200 session ids of 1 MiB each: no client could send one.
      const errors = [];
      for (let i = 0; i < 200; i++) errors.push(await send({ type: "sticky:connection", data: String(i).padEnd(1 << 20, "s") }));
      res.end(JSON.stringify({ errors }));
    } else if (req.url === "/huge") {
      res.end("sending\n");
      process.send({ type: "huge", data: "z".repeat(33 * 1024 * 1024) });
    } else {
      res.end(`slot ${slot} pid ${process.pid}\n`);
    }
  });
  server.keepAliveTimeout = 60_000;
  server.listen(Number(process.env[`PORT_${slot}`]), "127.0.0.1", () => say("listening", { port: server.address().port }));
}

function disconnect() {
  const server = http.createServer((req, res) => {
    res.setHeader("connection", "close");
    if (req.url === "/worker") {
      res.end(`disconnecting slot ${slot} pid ${process.pid}\n`, () => cluster.worker.disconnect());
    } else if (req.url === "/process") {
      res.end(`disconnecting slot ${slot} pid ${process.pid}\n`, () => process.disconnect());
    } else if (req.url === "/process-and-stay") {
      // Disconnects and keeps running (a timer holds the event loop) until a signal ends it.
      // Node's cluster module ends a worker whose channel closes unexpectedly (exit code 0); a
      // program that removes that listener stays.
      process.removeAllListeners("disconnect");
      setInterval(() => {}, 1 << 30);
      process.on("SIGTERM", () => {
        say("sigterm", { pid: process.pid });
        process.exit(0);
      });
      res.end(`disconnecting slot ${slot} pid ${process.pid}\n`, () => process.disconnect());
    } else {
      res.end(`slot ${slot} pid ${process.pid}\n`);
    }
  });
  server.listen(Number(process.env.PORT), "127.0.0.1", () => say("listening", { port: server.address().port, pid: process.pid }));
}

// Slot 0 takes one connection at a time (`server.maxConnections = 1`): while it holds one, Node's
// cluster module refuses the next (`accepted: false`) and the primary must hand it to another
// worker. Answers `slot <n> pid <pid>`, keeping connections alive.
function maxconn() {
  const server = http.createServer((req, res) => res.end(`slot ${slot} pid ${process.pid}\n`));
  if (slot === 0) server.maxConnections = 1;
  server.keepAliveTimeout = 60_000;
  server.listen(Number(process.env.PORT), "127.0.0.1", () => say("listening", { port: server.address().port, pid: process.pid }));
}

({ api, servers, misbehave, disconnect, maxconn })[role]();
