// clusterd's preload for Node.js workers (README, "Drains and kept-alive connections"; off with
// `--node-preload off`). clusterd writes this file at start and adds `--require <it>` to the
// workers' NODE_OPTIONS. It does nothing until clusterd drains the worker, except remember the
// sockets of `http.Server`s and keep a malformed cluster adapter packet from another worker from
// ending this one (below, before the drain's handler). At the drain (`{cmd: "NODE_CLUSTERD_DRAIN", spread}` from clusterd,
// before Node's own `disconnect`):
//
// - each idle kept-alive socket (no request begun on it, as Node's own `closeIdleConnections`
//   decides) of a server that listens through clusterd goes back to clusterd over the channel
//   (`process.send({cmd: "NODE_CLUSTERD_HANDBACK"}, handle)`), reading stopped first, so the
//   next request of its client reaches another worker instead of a socket Node is closing;
// - a socket with a request in flight goes back once its response is finished (when it stays
//   open: not after `Connection: close`);
// - upgraded sockets (WebSockets) and long-polling Engine.IO sessions (Socket.IO's, from engine.io's
//   `connection` event) are ended one by one, interleaved, evenly over `spread` ms, so that their
//   clients reconnect a few at a time; then `{cmd: "NODE_CLUSTERD_DRAINED"}` tells clusterd to
//   send the `disconnect`.
//
// It never throws into the application: every step is guarded, and a step that fails leaves the
// socket to Node as without the preload. Only `http.Server` (http, Express, and what builds on
// them) is covered; `https`, `http2` and raw `net` servers are left alone.
"use strict";
(() => {
  let cluster;
  try {
    // Only a cluster worker under clusterd; inert in any other process that inherits
    // NODE_OPTIONS (a child the worker starts has no NODE_UNIQUE_ID, so no cluster.isWorker).
    if (typeof process.send !== "function" || process.env.CLUSTERD_WORKER_ID === undefined) return;
    cluster = require("node:cluster");
    if (!cluster.isWorker) return;
  } catch {
    return;
  }
  const say = (message, handle, callback) => {
    try {
      process.send(message, handle, {}, callback);
    } catch (error) {
      if (callback) callback(error);
    }
  };
  const major = Number(process.versions.node.split(".")[0]);
  if (!(major >= 20)) {
    say({ cmd: "NODE_CLUSTERD_PRELOAD", unsupported: process.version });
    return;
  }
  let http, freeParser;
  try {
    http = require("node:http");
    ({ freeParser } = require("_http_common"));
  } catch {
    return;
  }
  // The handles `process.send` takes (a TCP or Unix socket), by their class's name: the
  // classes themselves are internal.
  const sendable = (handle) =>
    handle != null && handle.constructor != null && (handle.constructor.name === "TCP" || handle.constructor.name === "Pipe");
  const kWatched = Symbol("clusterd.watched");

  // Sockets of http servers, and those upgraded (WebSockets): each forgets itself on close.
  const sockets = new Set();
  // Whether a server's sockets came through clusterd, decided at its first connection: it
  // listens through clusterd (Node's round-robin handle, a plain object) or does not listen at
  // all (sockets handed to it, as @socket.io/sticky's setupWorker does). Not a server that
  // listens on a socket of its own (`exclusive: true`).
  const shared = new WeakMap();
  const upgraded = new Set();
  let draining = false;
  function forget() {
    sockets.delete(this);
    upgraded.delete(this);
  }

  const emit = http.Server.prototype.emit;
  http.Server.prototype.emit = function (event, a, b) {
    if (event === "connection" || event === "upgrade" || (draining && event === "request")) {
      try {
        track(this, event, a, b);
      } catch {
        // Tracking is best effort; the event goes on as it would without the preload.
      }
    }
    return emit.apply(this, arguments);
  };

  function track(server, event, a, b) {
    if (event === "connection") {
      if (!shared.has(server)) {
        const handle = server._handle;
        shared.set(server, !server.listening || (handle != null && Object.getPrototypeOf(handle) === Object.prototype));
      }
      // `server.emit("connection", socket)` by @socket.io/sticky comes here too.
      if (a && typeof a.once === "function" && !sockets.has(a)) {
        sockets.add(a);
        a.once("close", forget);
      }
    } else if (event === "upgrade") {
      if (b && sockets.delete(b)) upgraded.add(b);
    } else {
      // A request that began during the drain: its socket goes back after the response.
      afterResponse(b);
    }
  }

  // The sockets Node itself would close as idle at `server.close()`: no request begun on them.
  const idleOf = new Map();
  function idle(socket) {
    const server = socket.server;
    // A server that does not listen has no such list; its sockets (sticky's) carry one request.
    if (!server || !server.listening) return false;
    let set = idleOf.get(server);
    if (set === undefined) {
      const key = Object.getOwnPropertySymbols(server).find((s) => s.description === "http.server.connections");
      const connections = key && server[key];
      set = new Set(connections && typeof connections.idle === "function" ? connections.idle().map((p) => p.socket) : []);
      idleOf.set(server, set);
    }
    return set.has(socket);
  }

  function afterResponse(res) {
    const socket = res && res.socket;
    if (!socket || res[kWatched]) return;
    res[kWatched] = true;
    // After Node's own listener, which detached the socket (or ended it after Connection: close).
    res.once("finish", () => {
      try {
        if (socket._httpMessage) return afterResponse(socket._httpMessage);
        if (sockets.has(socket) && socket.writable && !socket.destroyed) handBack(socket);
      } catch {
        // Left to Node.
      }
    });
  }

  function handBack(socket) {
    const handle = socket._handle;
    if (!sendable(handle) || shared.get(socket.server) !== true) return;
    // Nothing more is read: every byte the client sent from now on waits in the socket for the
    // next worker. (An idle socket has no byte read and unparsed: its parser is between requests.)
    if (handle.readStop() !== 0) return;
    sockets.delete(socket);
    // Detached as Node detaches a socket it sends (child_process, `net.Socket`), then destroyed
    // without its handle: the server counts it gone, and the fd stays open for the send.
    socket.setTimeout(0);
    if (socket.parser) freeParser(socket.parser, null, socket);
    handle.onread = () => {};
    socket._handle = null;
    socket.destroy();
    // Node sends handles one at a time (each waits for clusterd's acknowledgement), and its
    // `disconnect` waits for them. Once written, the fd is clusterd's too: this process's copy
    // closes without touching the connection.
    say({ cmd: "NODE_CLUSTERD_HANDBACK" }, handle, () => handle.close());
  }

  // Engine.IO sessions (Socket.IO's transport), to end the long-polling ones at the drain: a
  // long-polling session has no socket of its own to end (its polls come on any connection), and
  // ending the connections would leave it to its ping timeout. engine.io's server emits
  // `connection` with each session; its class is patched once, when the module is first loaded.
  const sessions = new Set();
  const kPatched = Symbol("clusterd.engine.io");
  function forgetSession() {
    sessions.delete(this);
  }
  // engine.io exports its `Server` (Node's http) and `uServer` (uWebSockets.js), not their
  // common base: each gets its own wrapper.
  function watchEngineIo(exports) {
    if (exports == null) return;
    for (const name of ["Server", "uServer"]) {
      try {
        watchServer(exports[name]);
      } catch {
        // Left alone.
      }
    }
  }
  function watchServer(Server) {
    const proto = typeof Server === "function" ? Server.prototype : null;
    if (!proto || typeof proto.emit !== "function" || Object.prototype.hasOwnProperty.call(proto, kPatched)) return;
    proto[kPatched] = true;
    const emitSession = proto.emit;
    proto.emit = function (event, socket) {
      if (event === "connection" && !draining) {
        try {
          if (socket && typeof socket.close === "function" && typeof socket.once === "function") {
            sessions.add(socket);
            socket.once("close", forgetSession);
          }
        } catch {
          // Best effort: the session then ends with the process, as without the preload.
        }
      }
      return emitSession.apply(this, arguments);
    };
  }
  try {
    // socket.io loads engine.io with `require("engine.io")`, whether the application requires
    // or imports socket.io; one string comparison per module load, nothing per packet.
    const Module = require("node:module");
    const load = Module._load;
    if (typeof load === "function") {
      Module._load = function (request) {
        const exports = load.apply(this, arguments);
        if (request === "engine.io") {
          try {
            watchEngineIo(exports);
          } catch {
            // Left alone.
          }
        }
        return exports;
      };
    }
  } catch {
    // Long-polling sessions then end with the process.
  }

  // One way to end each connection or session at its turn: an upgraded socket is destroyed (the
  // client sees its WebSocket close); a long-polling session is closed by engine.io, which
  // answers its pending poll (or the next one) with an Engine.IO `close` packet, so its client
  // reconnects ("transport close") instead of waiting for a ping timeout.
  const endSocket = (socket) => {
    if (socket.destroyed) return false;
    socket.destroy();
    return true;
  };
  const endSession = (session) => {
    if (session.readyState !== "open" || !sessions.has(session)) return false;
    session.close();
    return true;
  };
  // The two lists merged evenly by their place in each list, so that WebSockets and long-polling
  // sessions both end over the whole spread.
  function interleave(a, b) {
    const at = (list, end) => list.map((item, i) => ({ item, end, place: (i + 0.5) / list.length }));
    return [...at(a, endSocket), ...at(b, endSession)].sort((x, y) => x.place - y.place);
  }

  function endSpread(spread, done) {
    // Sessions upgraded to a WebSocket end with their socket, among `upgraded`.
    const polling = [...sessions].filter((s) => s.transport != null && s.transport.name === "polling");
    const queue = interleave([...upgraded], polling);
    if (queue.length === 0) return done();
    const step = spread / queue.length;
    let next = 0;
    const endOne = () => {
      const { item, end } = queue[next++];
      try {
        return end(item);
      } catch {
        // This one is left to Node (it ends with the process); the others go on.
        return true;
      }
    };
    const endNext = () => {
      // Skip those already gone, end one (all of them with no spread).
      while (next < queue.length && !endOne());
      while (step === 0 && next < queue.length) endOne();
      if (next >= queue.length) return done();
      setTimeout(endNext, step);
    };
    endNext();
  }

  function drain(message) {
    if (draining) return;
    draining = true;
    for (const socket of [...sockets]) {
      try {
        if (socket._httpMessage) afterResponse(socket._httpMessage);
        else if (idle(socket)) handBack(socket);
      } catch {
        // Left to Node.
      }
    }
    idleOf.clear();
    const spread = Math.max(0, Number(message.spread) || 0);
    endSpread(spread, () => say({ cmd: "NODE_CLUSTERD_DRAINED" }));
  }

  // A cluster adapter packet another worker sent (clusterd relays them as they came, as Node's
  // primary does) that this worker's adapter cannot handle (`data: null`, say) throws in the
  // adapter's `message` listener, out of Node's channel, and would end this worker and its
  // clients for another worker's bug. Such a packet is dropped here instead, with one warning.
  // One property read per message; the application's own messages are left alone.
  try {
    const emit = process.emit;
    let dropped = 0;
    process.emit = function (event, message) {
      if (event !== "message" || message == null || message.source !== "_sio_adapter") {
        return emit.apply(this, arguments);
      }
      try {
        return emit.apply(this, arguments);
      } catch (error) {
        if (dropped++ === 0) {
          process.emitWarning(
            `dropped a cluster adapter packet (type ${String(message.type)}) from another worker that this ` +
              `worker's adapter could not handle: ${error && error.message}; later ones are dropped without a warning`,
            { code: "CLUSTERD_ADAPTER_PACKET" },
          );
        }
        return true;
      }
    };
  } catch {
    // Left alone: such a packet then ends the worker, as under Node's primary.
  }

  process.on("internalMessage", (message) => {
    if (message && message.cmd === "NODE_CLUSTERD_DRAIN") {
      try {
        drain(message);
      } catch {
        say({ cmd: "NODE_CLUSTERD_DRAINED" });
      }
    }
  });
  say({ cmd: "NODE_CLUSTERD_PRELOAD", version: 1 });
})();
