// A WebSocket server on the `ws` package, no Socket.IO: `server.listen(0)` goes through clusterd
// (it binds once, all workers share the port, each connection goes whole to one worker). Every
// message is answered `<message> slot <n> pid <pid>`. Prints `listening on <port>`.
"use strict";
const http = require("node:http");
const { WebSocketServer } = require("ws");

const slot = Number(process.env.NODE_APP_INSTANCE);
const server = http.createServer();
const wss = new WebSocketServer({ server });
wss.on("connection", (ws) => ws.on("message", (data) => ws.send(`${data} slot ${slot} pid ${process.pid}`)));
server.listen(0, "127.0.0.1", () => console.log(`listening on ${server.address().port}`));
