// What the Socket.IO client scripts of the tests share.
import { io } from "socket.io-client";

// An `ask(socket, event, ...args)` that emits with an acknowledgement and resolves with the
// answer, or rejects (naming the event) when none comes within `timeoutMs`.
export const asker = (timeoutMs) => (socket, event, ...args) =>
  new Promise((resolve, reject) =>
    socket.timeout(timeoutMs).emit(event, ...args, (err, answer) => (err ? reject(new Error(`${event}: ${err.message}`)) : resolve(answer))),
  );

// Connects `count` WebSocket clients that each answer a "question" with their own id; resolves
// once all are connected, rejects on the first connect error.
export async function answeringClients(url, count) {
  const sockets = Array.from({ length: count }, () => io(url, { transports: ["websocket"], forceNew: true, reconnection: false }));
  await Promise.all(sockets.map((s) => new Promise((resolve, reject) => {
    s.once("connect", resolve);
    s.once("connect_error", reject);
  })));
  for (const s of sockets) s.on("question", (question, ack) => ack({ id: s.id, question }));
  return sockets;
}
