"""A small worker for the SDK's tests, served by clusterd_worker.asgi (uvicorn) or
clusterd_worker.aiohttp (``probe.py asgi|aiohttp``). Routes:

- ``GET /``: ``worker <id>``;
- ``POST /echo``: ``<length> <sha256>`` of the body (handoff: nothing lost or repeated);
- ``GET /session?sid=S``: reports session S and answers ``acked`` once clusterd acknowledged it;
- ``GET /publish?m=M``: publishes M on bus channel ``probe``; ``GET /big``: a publish over the
  bus limit, answered ``refused`` when the SDK refuses it before sending;
- ``GET /ask``: a bus request; answers the gathered answers as JSON;
- ``GET /raise``: the handler raises (a 500); other clients must not notice.

With ``LISTEN=ADDR`` it asks clusterd to listen there and prints ``listening on <addr>``.

With ``PROBE_NOFILE=N`` its fd limit is N (``resource.setrlimit``, before the worker starts); with
``PROBE_FILL_FDS=1`` it then opens ``/dev/null`` until no fd is left and prints ``filled <n>
fds``, so the next handed-off connection cannot be received (``MSG_CTRUNC``); ``SIGUSR1`` closes
them again and it prints ``freed <n> fds``.
"""

import asyncio
import hashlib
import json
import os
import resource
import signal
import sys
from urllib.parse import parse_qs

import clusterd_worker
from clusterd_worker.bus_protocol import MAX_BUS_FRAME


async def handle(worker, method, path, query, body):
    """(status, text) for one request."""
    if path == "/":
        return 200, f"worker {worker.id}"
    if path == "/wait":
        # An answer that awaits, as a handler that queries a database does (at most 10 s).
        await asyncio.sleep(min(float(query.get("ms", ["0"])[0]), 10_000) / 1000)
        return 200, f"worker {worker.id}"
    if path == "/echo" and method == "POST":
        return 200, f"{len(body)} {hashlib.sha256(body).hexdigest()}"
    if path == "/session":
        try:
            await worker.session_open(query.get("sid", [""])[0])
        except clusterd_worker.BadSessionId as error:
            return 400, str(error)
        return 200, "acked"
    if path == "/publish":
        await worker.bus.publish("probe", query["m"][0].encode())
        return 200, "published"
    if path == "/big":
        try:
            await worker.bus.publish("probe", bytes(MAX_BUS_FRAME))
        except clusterd_worker.Oversized:
            return 200, "refused"
        return 500, "sent"
    if path == "/ask":
        answers = await worker.bus.request(b"question", timeout=5)
        return 200, json.dumps({"answers": [[w, a.decode()] for w, a in answers.answers],
                                "missing": answers.missing})
    if path == "/raise":
        raise RuntimeError("a handler that raises")
    return 404, "not found"


def asgi_app(worker):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        query = parse_qs(scope["query_string"].decode())
        status, text = await handle(worker, scope["method"], scope["path"], query, body)
        data = text.encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})
    return app


def aiohttp_app(worker):
    from aiohttp import web

    async def any_route(request):
        body = await request.read()
        status, text = await handle(worker, request.method, request.path, parse_qs(request.query_string), body)
        return web.Response(status=status, text=text)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_route)
    return app


def fill_fds():
    """Opens /dev/null until the fd table is full; SIGUSR1 closes them all again."""
    filler = []
    while True:
        try:
            filler.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            break
    print(f"filled {len(filler)} fds", flush=True)

    def free():
        for fd in filler:
            os.close(fd)
        print(f"freed {len(filler)} fds", flush=True)
        filler.clear()

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, free)


async def main(kind):
    if os.environ.get("PROBE_NOFILE"):
        limit = int(os.environ["PROBE_NOFILE"])
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    worker = await clusterd_worker.Worker.start()
    if os.environ.get("PROBE_FILL_FDS"):
        # Once the server is set up (it needs no fd of its own for a handed-off connection).
        asyncio.get_running_loop().call_later(0, fill_fds)
    if os.environ.get("LISTEN"):
        print(f"listening on {await worker.listen(os.environ['LISTEN'])}", flush=True)
    if kind == "asgi":
        from clusterd_worker import asgi
        await asgi.serve(worker, asgi_app(worker))
    else:
        from clusterd_worker import aiohttp as aiohttp_worker
        await aiohttp_worker.serve(worker, aiohttp_app(worker))
    print(f"worker {worker.id} drained", flush=True)
    worker.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "asgi"))
