// A Node worker with no npm package: it takes clusterd's `sticky:connection` handles the way
// @socket.io/sticky's setupWorker does (emit the socket on the http server, put back the bytes
// clusterd read) and answers every request with the peer address Node sees for the socket.
// tests/ops.rs runs it behind --proxy-protocol to pin down what a Node worker sees there.
"use strict";
const http = require("http");

const server = http.createServer((req, res) => {
  res.setHeader("Connection", "close");
  res.end(`worker=${process.env.NODE_APP_INSTANCE} peer=${req.socket.remoteAddress}:${req.socket.remotePort}\n`);
});
process.on("message", (message, socket) => {
  if (!socket || !message || message.type !== "sticky:connection") return;
  server.emit("connection", socket);
  socket.unshift(Buffer.from(message.data));
  socket.resume();
});
