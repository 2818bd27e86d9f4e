// A Node worker that abuses clusterd's handback message (tests/node_drain.rs): a
// NODE_CLUSTERD_HANDBACK with no handle, with a listening server, with a UDP socket, then a flood
// of connections clusterd never handed it. Then it serves as keepalive-worker.cjs does, and
// prints `garbage sent` once every handle was written.
"use strict";
const http = require("node:http");
const net = require("node:net");
const dgram = require("node:dgram");

const slot = Number(process.env.NODE_APP_INSTANCE);
const server = http.createServer((req, res) => res.end(`worker ${slot} pid ${process.pid}\n`));
server.listen(0, "127.0.0.1", () => console.log(`listening on ${server.address().port}`));

const send = (message, handle) => new Promise((resolve) => process.send(message, handle, {}, () => resolve()));
// GARBAGE_SLOT: only that slot sends the garbage (the others serve); it waits for SIGUSR2 first,
// so that a test can open connections to the other workers before.
const garbage = process.env.GARBAGE_SLOT === undefined || Number(process.env.GARBAGE_SLOT) === slot;
const start = (go) => (process.env.GARBAGE_SLOT === undefined ? go() : process.once("SIGUSR2", go));
const own = net.createServer(() => {});
if (garbage) start(() => own.listen({ port: 0, host: "127.0.0.1", exclusive: true }, async () => {
  await send({ cmd: "NODE_CLUSTERD_HANDBACK" });
  await send({ cmd: "NODE_CLUSTERD_HANDBACK" }, own);
  const udp = dgram.createSocket("udp4");
  await new Promise((resolve) => udp.bind({ port: 0, address: "127.0.0.1", exclusive: true }, resolve));
  await send({ cmd: "NODE_CLUSTERD_HANDBACK" }, udp);
  const flood = [];
  for (let i = 0; i < Number(process.env.FLOOD || 50); i++) flood.push(net.connect(own.address().port, "127.0.0.1"));
  await Promise.all(flood.map((s) => new Promise((resolve) => s.once("connect", resolve))));
  for (const socket of flood) await send({ cmd: "NODE_CLUSTERD_HANDBACK" }, socket._handle);
  console.log("garbage sent");
}));
