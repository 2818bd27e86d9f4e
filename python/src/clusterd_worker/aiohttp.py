"""Serve an aiohttp ``web.Application`` on the connections clusterd hands to this worker.

::

    from aiohttp import web
    import clusterd_worker.aiohttp

    def make_app(worker):
        app = web.Application()
        app.router.add_get("/", lambda request: web.Response(text=f"worker {worker.id}"))
        return app

    clusterd_worker.aiohttp.run_app(make_app)

Each handed-off socket becomes a connection of aiohttp's own server (``web.Server``, the protocol
factory ``AppRunner`` builds), with the bytes clusterd already read delivered first: no proxy, no
copy. Engine.IO polling responses close their connection (PROTOCOL.md: a kept-alive connection
could carry another worker's session), and so does every response of a worker whose Socket.IO
server holds sessions (:attr:`Worker.serves_socketio`: a browser reuses a page's connection for its
polls). A request head must arrive within :attr:`Worker.header_timeout`: that is aiohttp's
``keepalive_timeout``, which is armed from the connection's start and after each response and
closes the connection while no complete head has arrived. On drain, aiohttp's graceful shutdown runs (``on_shutdown``
hooks, requests in flight finish within ``shutdown_timeout``).
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Awaitable, Callable, Union

from aiohttp import web

from ._engineio import is_polling
from .worker import Worker

__all__ = ["serve", "run_app", "SHUTDOWN_TIMEOUT"]

#: Seconds the requests in flight get to finish on drain, by default (keep it below ``--grace``).
SHUTDOWN_TIMEOUT = 10.0


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _closing(worker: Worker) -> Any:
    @web.middleware
    async def close_connections(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if worker.serves_socketio or is_polling(request.query_string):
            response.force_close()
        return response

    return close_connections


async def serve(worker: Worker, app: web.Application, *, shutdown_timeout: float = SHUTDOWN_TIMEOUT,
                ready: bool = True, **runner_kwargs: Any) -> None:
    """Serves ``app`` on the handed-off connections until clusterd asks this worker to drain, then
    shuts it down gracefully. ``keepalive_timeout`` is :attr:`Worker.header_timeout` unless given
    (see the module docs). Tells clusterd the worker is ready once it serves (unless
    ``ready=False``: then call :meth:`Worker.ready` yourself)."""
    app.middlewares.append(_closing(worker))
    if worker.header_timeout is not None:
        runner_kwargs.setdefault("keepalive_timeout", worker.header_timeout)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=shutdown_timeout, **runner_kwargs)
    await runner.setup()
    try:
        assert runner.server is not None, "set up above"
        worker.serve(runner.server)
        if ready:
            await worker.ready()
        await worker.draining()
        # WebSockets end spread out first: the server's shutdown would end them all at once.
        await worker.end_upgraded()
    finally:
        await runner.cleanup()


AppFactory = Callable[[Worker], Union[web.Application, Awaitable[web.Application]]]


def run_app(make_app: AppFactory, *, shutdown_timeout: float = SHUTDOWN_TIMEOUT, **runner_kwargs: Any) -> None:
    """Runs a worker process: starts the :class:`Worker`, builds the application with
    ``make_app(worker)`` (a function or a coroutine function), serves it, and returns after the
    drain. Raises :class:`~clusterd_worker.NotUnderClusterd` when not started by clusterd."""

    async def main() -> None:
        worker = await Worker.start()
        made = make_app(worker)
        app = await made if inspect.isawaitable(made) else made
        await serve(worker, app, shutdown_timeout=shutdown_timeout, **runner_kwargs)
        worker.close()

    asyncio.run(main())


