// Express and Socket.IO on one http server, the worker half of the sticky recipe (setupWorker,
// cluster adapter): clusterd hands each connection of its --listen address to a worker, and
// setupWorker gives it to the http server, so Express serves plain requests and Socket.IO its own.
// `GET /hello` answers JSON `{slot, pid}`; Socket.IO: "whoami" acks {worker, pid}, "chat message"
// goes to every client (tests/node/broadcast.mjs).
"use strict";
const http = require("node:http");
const express = require("express");
const { Server } = require("socket.io");
const { setupWorker } = require("@socket.io/sticky");
const { createAdapter } = require("@socket.io/cluster-adapter");

const slot = Number(process.env.NODE_APP_INSTANCE);
const app = express();
app.get("/hello", (req, res) => res.json({ slot, pid: process.pid }));
const httpServer = http.createServer(app);
const io = new Server(httpServer);
io.adapter(createAdapter());
setupWorker(io);
io.on("connection", (socket) => {
  socket.on("whoami", (ack) => ack({ worker: slot, pid: process.pid }));
  socket.on("chat message", (msg) => io.emit("chat message", msg));
});
