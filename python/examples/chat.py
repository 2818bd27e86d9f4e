#!/usr/bin/env python3
"""chat: the classic Socket.IO chat on python-socketio + aiohttp, served by several workers.

The same chat as the Rust example (examples/chat.rs): the same page at ``/``, served from the
Rust example's files in examples/chat/ (the page says which worker served it and which one serves
its Socket.IO connection, updated after a reconnection; it loads the vendored socket.io-client
bundle from ``/assets/socket.io-4.8.4.min.js``, and its messages typed while disconnected are sent
after the reconnection, each until acknowledged), the icon, and the same events. Run it under clusterd::

    scripts/python-env   # the project's venv with python-socketio, aiohttp and this package
    clusterd --workers 4 --listen 127.0.0.1:3000 -- .venv/bin/python python/examples/chat.py
    # open http://127.0.0.1:3000/ in two browser tabs

(``python3 python/examples/chat.py`` works the same where python3 has the packages installed.)
The package's ClusterdManager makes Engine.IO sessions sticky (long-polling clients always reach
the worker that holds their session) and carries emits over clusterd's bus to the clients of every
worker.

Events: ``"chat message"`` (string, broadcast to every client on every worker; acknowledged with
``true`` once emitted when the client asks for an acknowledgement, as the page does), ``"whoami"``
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
        # The acknowledgement tells the page's client that the message was taken, so that it does
        # not send it again after a reconnection (a client that asks for none gets none).
        await sio.emit("chat message", text)
        return True

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

    def static(path):
        content_type, cache, body = STATIC[path]

        async def serve(request):
            return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": cache})
        return serve

    app = web.Application()
    app.router.add_get("/", index)
    for path in STATIC:
        app.router.add_get(path, static(path))
    sio.attach(app)
    app.on_shutdown.append(disconnect_clients)
    return app


def make_asgi(worker: clusterd_worker.Worker):
    """The chat as an ASGI application (``--asgi``), served by uvicorn's protocol."""
    sio, page, disconnect_clients = make_server(worker, "asgi")
    body = page.encode()

    async def index(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/":
            content_type, cache, data = "text/html; charset=utf-8", "no-cache", body
        elif scope["path"] in STATIC:
            content_type, cache, data = STATIC[scope["path"]]
        else:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"not found"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", content_type.encode()), (b"cache-control", cache.encode()),
            (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    return socketio.ASGIApp(sio, other_asgi_app=index, on_shutdown=disconnect_clients)


async def serve_asgi() -> None:
    from clusterd_worker import asgi

    worker = await clusterd_worker.Worker.start()
    await asgi.serve(worker, make_asgi(worker))
    worker.close()


#: The page, the vendored socket.io-client bundle and the icon: the Rust example's files
#: (examples/chat/), read from there rather than copied.
ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "chat")
#: The version of the vendored bundle (examples/chat/README.md); the page loads it from a path with
#: the version in it, so browsers may keep it for a year and never run an old copy.
SOCKET_IO_CLIENT_VERSION = "4.8.4"
CLIENT_JS = f"/assets/socket.io-{SOCKET_IO_CLIENT_VERSION}.min.js"
BUNDLE_CACHE = "public, max-age=31536000, immutable"
ICON_CACHE = "public, max-age=86400"


def read_asset(name: str) -> bytes:
    with open(os.path.join(ASSETS, name), "rb") as f:
        return f.read()


PAGE = read_asset("index.html").decode("utf-8").replace("{client_js}", CLIENT_JS)
CLIENT_BUNDLE = read_asset("socket.io.min.js")
FAVICON = read_asset("favicon.svg")
if f"Socket.IO v{SOCKET_IO_CLIENT_VERSION}\n".encode() not in CLIENT_BUNDLE:
    sys.exit(f"chat: examples/chat/socket.io.min.js is not socket.io-client {SOCKET_IO_CLIENT_VERSION}: "
             "update SOCKET_IO_CLIENT_VERSION in python/examples/chat.py")
#: Path -> (content type, cache control, body) of the static files.
STATIC = {
    CLIENT_JS: ("text/javascript; charset=utf-8", BUNDLE_CACHE, CLIENT_BUNDLE),
    # Browsers ask for /favicon.ico on their own: answer it too, rather than with a 404.
    "/favicon.svg": ("image/svg+xml", ICON_CACHE, FAVICON),
    "/favicon.ico": ("image/svg+xml", ICON_CACHE, FAVICON),
}


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
