"""Serve any ASGI application with uvicorn's protocol on the connections clusterd hands over.

::

    import clusterd_worker.asgi

    async def app(scope, receive, send):
        ...

    clusterd_worker.asgi.run(app)                 # or: await clusterd_worker.asgi.serve(worker, app)

uvicorn does not listen: each handed-off socket becomes a connection of uvicorn's HTTP protocol
(``h11`` or ``httptools``, with WebSocket upgrades) through ``loop.connect_accepted_socket``, with
the bytes clusterd already read delivered first. The lifespan protocol runs as under uvicorn
(startup before ready, shutdown after the drain). Engine.IO polling responses carry
``Connection: close`` (PROTOCOL.md), and so does every HTTP response of a worker whose Socket.IO
server holds sessions (:attr:`Worker.serves_socketio`). A request head must arrive within
:attr:`Worker.header_timeout` (uvicorn's own ``timeout_keep_alive`` is not armed before the first
request, and any byte of a next head disarms it). On drain, uvicorn's graceful shutdown runs:
requests in flight finish within ``timeout_graceful_shutdown``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Dict, MutableMapping, Optional

from ._engineio import is_polling
from .worker import Worker

__all__ = ["serve", "run", "close_polling_connections", "close_connections", "SHUTDOWN_TIMEOUT"]

#: Seconds the requests in flight get to finish on drain, by default (keep it below ``--grace``).
SHUTDOWN_TIMEOUT = 10.0

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def close_polling_connections(app: ASGIApp) -> ASGIApp:
    """Wraps an ASGI app so that its Engine.IO polling responses carry ``Connection: close``."""
    return close_connections(app, lambda: False)


def close_connections(app: ASGIApp, every: Callable[[], bool]) -> ASGIApp:
    """Wraps an ASGI app so that its Engine.IO polling responses carry ``Connection: close``, and
    all its HTTP responses while ``every()`` is true (a worker whose Socket.IO server holds
    sessions: a browser reuses a page's kept-alive connection for its polling requests)."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (
                every() or is_polling(scope.get("query_string", b"").decode("latin-1"))):
            await app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"connection"]
                headers.append((b"connection", b"close"))
                message = dict(message, headers=headers)
            await send(message)

        await app(scope, receive, send_closing)

    return wrapped


async def serve(worker: Worker, app: ASGIApp, *, ready: bool = True, **config: Any) -> None:
    """Serves ``app`` with uvicorn on the handed-off connections until clusterd asks this worker
    to drain, then shuts down gracefully. ``config`` goes to ``uvicorn.Config`` (``ws``,
    ``http``, ``lifespan``, ``log_level``, ``timeout_graceful_shutdown``...; ``host``/``port``
    mean nothing here). Tells clusterd the worker is ready once it serves (unless ``ready=False``).
    """
    import uvicorn

    settings: Dict[str, Any] = {"timeout_graceful_shutdown": SHUTDOWN_TIMEOUT, "log_level": "warning"}
    settings.update(config)
    cfg = uvicorn.Config(close_connections(app, lambda: worker.serves_socketio), **settings)
    if not cfg.loaded:
        cfg.load()
    server = uvicorn.Server(cfg)
    server.servers = []  # uvicorn's shutdown closes its listeners: it has none here
    server.lifespan = cfg.lifespan_class(cfg)
    await server.lifespan.startup()
    if server.lifespan.should_exit:
        raise RuntimeError("the ASGI application's lifespan startup failed")

    loop = asyncio.get_running_loop()
    head_timeout = worker.header_timeout

    def protocol() -> asyncio.Protocol:
        made: asyncio.Protocol = cfg.http_protocol_class(  # type: ignore[call-arg]
            config=cfg, server_state=server.server_state, app_state=server.lifespan.state)
        if head_timeout is not None and hasattr(made, "cycle"):
            _HeadWatch(made, head_timeout, loop)
        return made

    # uvicorn's own tick keeps its Date header fresh and stops when asked.
    ticking = asyncio.ensure_future(server.main_loop())
    try:
        worker.serve(protocol)
        if ready:
            await worker.ready()
        await worker.draining()
        # WebSockets end spread out first: the server's shutdown would end them all at once.
        await worker.end_upgraded()
    finally:
        server.should_exit = True
        await ticking
        await server.shutdown()


class _HeadWatch:
    """Closes a uvicorn connection that takes over ``timeout`` to send a request head.

    uvicorn's protocols (h11 and httptools) set ``cycle`` when a head is parsed and mark it
    ``response_complete`` after its response. A check every ``timeout`` closes the connection when
    no head came at all, or when the same finished cycle was already finished at the previous
    check (a next head that has not come in one whole period: at most twice ``timeout``). One timer
    per connection and period, nothing per read.
    """

    __slots__ = ("_proto", "_timeout", "_loop", "_seen", "_seen_complete")

    def __init__(self, proto: asyncio.Protocol, timeout: float, loop: asyncio.AbstractEventLoop) -> None:
        self._proto = proto
        self._timeout = timeout
        self._loop = loop
        self._seen: Any = None
        self._seen_complete = False
        loop.call_later(timeout, self._check)

    def _check(self) -> None:
        proto = self._proto
        transport: Optional[asyncio.BaseTransport] = getattr(proto, "transport", None)
        if transport is None or transport.is_closing() or transport.get_protocol() is not proto:
            return  # closed, or switched to another protocol (a WebSocket): not ours to time
        cycle = getattr(proto, "cycle", None)
        if cycle is None or (cycle is self._seen and self._seen_complete):
            transport.close()
            return
        self._seen = cycle
        self._seen_complete = bool(getattr(cycle, "response_complete", False))
        self._loop.call_later(self._timeout, self._check)


def run(app: ASGIApp, **config: Any) -> None:
    """Runs a worker process serving ``app`` (see :func:`serve`) and returns after the drain.
    Raises :class:`~clusterd_worker.NotUnderClusterd` when not started by clusterd."""

    async def main() -> None:
        worker = await Worker.start()
        await serve(worker, app, **config)
        worker.close()

    asyncio.run(main())
