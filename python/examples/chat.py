#!/usr/bin/env python3
"""chat: the classic Socket.IO chat on python-socketio + aiohttp, served by several workers.

The same chat as the Rust example (examples/chat.rs): the same page at ``/`` (it says which
worker serves it) and the same events. Run it under clusterd::

    scripts/python-env   # the project's venv with python-socketio, aiohttp and this package
    clusterd --workers 4 --listen 127.0.0.1:3000 -- .venv/bin/python python/examples/chat.py
    # open http://127.0.0.1:3000/ in two browser tabs

(``python3 python/examples/chat.py`` works the same where python3 has the packages installed.)
The package's ClusterdManager makes Engine.IO sessions sticky (long-polling clients always reach
the worker that holds their session) and carries emits over clusterd's bus to the clients of every
worker.

Events: ``"chat message"`` (string, broadcast to every client on every worker), ``"whoami"``
(ack: ``{worker, pid, transport}``), ``"join"`` (room name; ack ``"joined"``), ``"room message"``
(room, text: to that room's clients on every worker), ``"clients"`` (ack: how many clients all
workers have), ``"sockets"`` (ack: the ids of all the clients of all workers), ``"ask all"`` (any
value; ack: ``{answers, errors}``, the answers of every client of every worker to a ``"question"``
with that value: emits with callbacks across workers).

With ``--asgi`` the same chat is a ``socketio.ASGIApp`` served by uvicorn's protocol
(clusterd_worker.asgi) instead of aiohttp.

Logs go to stderr, at the level of ``LOG_LEVEL`` (default ``WARNING``).
"""

import asyncio
import logging
import os
import sys

from aiohttp import web
import socketio

import clusterd_worker
import clusterd_worker.aiohttp
from clusterd_worker.socketio import ClusterdManager

#: How long ``"ask all"`` waits for the clients' answers, in seconds.
ASK_TIMEOUT = 5.0
#: How long a draining worker waits for its clients to take their close packet, in seconds.
DISCONNECT_WAIT = 2.0


def make_server(worker: clusterd_worker.Worker, async_mode: str):
    """The chat's Socket.IO server, page and drain hook for this worker."""
    manager = ClusterdManager(worker)
    sio = socketio.AsyncServer(async_mode=async_mode, client_manager=manager, cors_allowed_origins="*")
    pid = os.getpid()

    @sio.on("chat message")
    async def chat_message(sid, text):
        await sio.emit("chat message", text)

    @sio.on("whoami")
    async def whoami(sid, *_):
        return {"worker": worker.id, "pid": pid, "transport": sio.transport(sid)}

    @sio.on("join")
    async def join(sid, room):
        await sio.enter_room(sid, room)
        return "joined"

    @sio.on("room message")
    async def room_message(sid, room, text):
        await sio.emit("room message", text, room=room)

    @sio.on("clients")
    async def clients(sid, *_):
        return len(await manager.cluster_sids())

    @sio.on("sockets")
    async def sockets(sid, *_):
        return await manager.cluster_sids()

    @sio.on("ask all")
    async def ask_all(sid, question=None):
        # A question to every client of every worker, each an emit with a callback: the answers
        # of clients on other workers come back over the bus.
        answers, errors = [], []

        async def ask(client):
            try:
                answers.append(await sio.call("question", question, to=client, timeout=ASK_TIMEOUT))
            except Exception as error:  # a client that does not answer in time
                errors.append(f"{client}: {type(error).__name__} {error}")

        await asyncio.gather(*(ask(client) for client in await manager.cluster_sids()))
        return {"answers": answers, "errors": errors}

    page = PAGE.replace("{worker}", str(worker.id)).replace("{pid}", str(pid))

    async def disconnect_clients(*_):
        # Draining: the clients of this worker reconnect to the others now, not at the grace's end.
        # A polling session whose client is gone would hold eio.disconnect() forever (it waits for
        # the close packet to be polled): bounded.
        await sio.shutdown()
        if sio.eio.sockets:
            try:
                await asyncio.wait_for(sio.eio.disconnect(), DISCONNECT_WAIT)
            except asyncio.TimeoutError:
                pass

    print(f"worker {worker.id} serving the chat", flush=True)
    return sio, page, disconnect_clients


def make_app(worker: clusterd_worker.Worker) -> web.Application:
    """The chat as an aiohttp application (the default)."""
    sio, page, disconnect_clients = make_server(worker, "aiohttp")

    async def index(request):
        return web.Response(text=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    sio.attach(app)
    app.on_shutdown.append(disconnect_clients)
    return app


def make_asgi(worker: clusterd_worker.Worker):
    """The chat as an ASGI application (``--asgi``), served by uvicorn's protocol."""
    sio, page, disconnect_clients = make_server(worker, "asgi")
    body = page.encode()

    async def index(scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"not found"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return socketio.ASGIApp(sio, other_asgi_app=index, on_shutdown=disconnect_clients)


async def serve_asgi() -> None:
    from clusterd_worker import asgi

    worker = await clusterd_worker.Worker.start()
    await asgi.serve(worker, make_asgi(worker))
    worker.close()


#: The chat page, with a small Socket.IO client over WebSocket (Engine.IO 4, Socket.IO 5) so that
#: the example needs no JavaScript download. The same page as the Rust example's.
PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>clusterd chat</title>
<style>
  body { font: 16px system-ui, sans-serif; margin: 0; display: flex; flex-direction: column; height: 100vh; }
  header { padding: .5rem 1rem; background: #223; color: #eee; }
  #messages { flex: 1; overflow-y: auto; list-style: none; margin: 0; padding: 0; }
  #messages li { padding: .4rem 1rem; border-bottom: 1px solid #eee; }
  form { display: flex; padding: .5rem; gap: .5rem; background: #f4f4f4; }
  input { flex: 1; padding: .5rem; font: inherit; }
</style>
</head>
<body>
<header>clusterd chat: this page came from worker {worker} (pid {pid}); <span id="state">connecting</span></header>
<ul id="messages"></ul>
<form id="form"><input id="input" autocomplete="off" placeholder="Say something"><button>Send</button></form>
<script>
const messages = document.getElementById("messages"), state = document.getElementById("state");
function show(text) { const li = document.createElement("li"); li.textContent = text; messages.appendChild(li); li.scrollIntoView(); }
let ws, acks = {}, nextAck = 0;
function emit(event, data, ack) {
  let id = "";
  if (ack) { id = String(nextAck++); acks[id] = ack; }
  ws.send("42" + id + JSON.stringify(data === undefined ? [event] : [event, data]));
}
function connect() {
  ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/socket.io/?EIO=4&transport=websocket");
  ws.onmessage = (m) => {
    const p = m.data;
    if (p[0] === "0") ws.send("40");                       // Engine.IO open: join the default namespace
    else if (p === "2") ws.send("3");                       // ping -> pong
    else if (p.startsWith("40")) emit("whoami", undefined, (me) => { state.textContent = "connected to worker " + me.worker + " (pid " + me.pid + ")"; });
    else if (p.startsWith("42")) { const [event, text] = JSON.parse(p.slice(2)); if (event === "chat message") show(text); }
    else if (p.startsWith("43")) { const i = p.indexOf("["); const cb = acks[p.slice(2, i)]; delete acks[p.slice(2, i)]; if (cb) cb(...JSON.parse(p.slice(i))); }
  };
  ws.onclose = () => { state.textContent = "disconnected, reconnecting"; setTimeout(connect, 1000); };
}
connect();
document.getElementById("form").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = document.getElementById("input");
  if (input.value) { emit("chat message", input.value); input.value = ""; }
});
</script>
</body>
</html>
"""


def main() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "WARNING"), stream=sys.stderr)
    try:
        if "--asgi" in sys.argv[1:]:
            asyncio.run(serve_asgi())
        else:
            # A long poll whose client went away ends with its connection, not at the next ping:
            # a draining worker then waits only for requests that still have a client.
            clusterd_worker.aiohttp.run_app(make_app, handler_cancellation=True)
    except clusterd_worker.NotUnderClusterd as error:
        sys.exit(f"chat: {error}")
    print(f"worker {os.environ.get('CLUSTERD_WORKER_ID')} drained", flush=True)


if __name__ == "__main__":
    main()
