// A Node worker whose servers come and go, driven over HTTP, for tests/node_listen.rs: the
// lifetime and the bounds of the listeners clusterd binds for `server.listen()`.
//
// It keeps one control server (on CONTROL_PORT_<slot>, or port 0 on 127.0.0.1 when unset) and
// prints `control {"slot", "port", "pid"}` once it listens. The control server answers:
//   /cycle?n=N        N times: listen(0) on 127.0.0.1, then close; answers {cycles, ports}
//   /listen?port=P    listens on 127.0.0.1:P (or ?path=F, a Unix socket) and keeps the server;
//                     answers {port} or {path}, or {error: <code>}
//   /close?port=P     closes that server (or ?path=F); answers {closed}
//   /hold?n=N         N more servers on port 0 of 127.0.0.1 (or &host=H), kept; answers
//                     {listening, errors: [<code>...]}
//   /forge?n=I        sends clusterd a `queryServer` with index I, as no Node makes one (this
//                     worker never listened I times), and answers clusterd's {errno}
//   anything else     `slot <n> pid <pid>`
// Every server it listens on answers `served slot <n> pid <pid>`.
"use strict";
const http = require("node:http");

const slot = Number(process.env.NODE_APP_INSTANCE);
const servers = new Map();
let forged = 1_000_000_000;

const reply = (res, value) => {
  res.setHeader("connection", "close");
  res.end(typeof value === "string" ? value : JSON.stringify(value));
};

// Resolves with {server, where} once listening, or {error} with the listen error's code.
const listen = (...where) =>
  new Promise((resolve) => {
    const server = http.createServer((req, res) => reply(res, `served slot ${slot} pid ${process.pid}\n`));
    server.once("error", (e) => resolve({ error: e.code }));
    server.listen(...where, () => {
      const address = server.address();
      resolve({ server, where: typeof address === "string" ? address : address.port });
    });
  });

const close = (server) => new Promise((resolve) => server.close(() => resolve()));

async function control(req, res) {
  const url = new URL(req.url, "http://control");
  const n = Number(url.searchParams.get("n") || 0);
  const key = url.searchParams.get("path") || Number(url.searchParams.get("port") || 0);
  switch (url.pathname) {
    case "/cycle": {
      const ports = new Set();
      for (let i = 0; i < n; i++) {
        const got = await listen(0, "127.0.0.1");
        if (got.error) return reply(res, { error: got.error, after: i });
        ports.add(got.where);
        await close(got.server);
      }
      return reply(res, { cycles: n, ports: ports.size });
    }
    case "/listen": {
      const got = typeof key === "string" ? await listen(key) : await listen(key, "127.0.0.1");
      if (got.error) return reply(res, { error: got.error });
      servers.set(got.where, got.server);
      return reply(res, typeof key === "string" ? { path: got.where } : { port: got.where });
    }
    case "/close": {
      const server = servers.get(key);
      servers.delete(key);
      if (server) await close(server);
      return reply(res, { closed: Boolean(server) });
    }
    case "/hold": {
      const errors = [];
      const host = url.searchParams.get("host") || "127.0.0.1";
      for (let i = 0; i < n; i++) {
        const got = await listen(0, host);
        if (got.error) errors.push(got.error);
        else servers.set(got.where, got.server);
      }
      return reply(res, { listening: servers.size, errors });
    }
    case "/forge": {
      // The primary's answer comes back as an internal message whose `ack` is our seq; Node's
      // cluster module knows no callback for it and lets it pass.
      const seq = forged++;
      const answer = new Promise((resolve) => {
        const on = (message) => {
          if (message && message.cmd === "NODE_CLUSTER" && message.ack === seq) {
            process.off("internalMessage", on);
            resolve(message);
          }
        };
        process.on("internalMessage", on);
      });
      process.send({ cmd: "NODE_CLUSTER", act: "queryServer", address: "127.0.0.1", port: 0, addressType: 4, fd: -1, index: n, data: null, seq });
      const message = await answer;
      return reply(res, { errno: message.errno === undefined ? null : message.errno });
    }
    default:
      return reply(res, `slot ${slot} pid ${process.pid}\n`);
  }
}

const main = http.createServer((req, res) => {
  control(req, res).catch((e) => reply(res, { error: String(e) }));
});
main.listen(Number(process.env[`CONTROL_PORT_${slot}`] || 0), "127.0.0.1", () => {
  console.log(`control ${JSON.stringify({ slot, port: main.address().port, pid: process.pid })}`);
});
