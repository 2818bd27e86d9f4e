"""python-socketio under clusterd: sticky sessions and a client manager over clusterd's bus.

::

    import socketio
    from clusterd_worker.socketio import ClusterdManager

    worker = await clusterd_worker.Worker.start()
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=ClusterdManager(worker))

That is all a python-socketio application changes to run on every core:

- **Sticky sessions.** The manager hooks the Engine.IO server's ``connect`` and ``disconnect``
  events (:func:`sticky_sessions`): each new polling session is reported to clusterd
  (``SessionOpen``) and the handshake response leaves only after clusterd's ``SessionAck``, so the
  client's next request, on whatever connection, reaches this worker. A WebSocket-only session is
  reported too (without waiting: its id travels inside its one connection), so clusterd's
  ``status`` counts every live session whatever its transport. A session is reported ended
  (``SessionClose``) as soon as the Engine.IO server closes it (the client left or closed, its ping
  timed out, or the server disconnected it). The server integrations (:mod:`clusterd_worker.aiohttp`,
  :mod:`clusterd_worker.asgi`) close the connection of every HTTP response of such a worker, so a
  kept-alive connection (a browser's, opened for the page) never carries a request of another
  worker's session.
- **Cross-worker emits.** :class:`ClusterdManager` is python-socketio's ``AsyncPubSubManager``
  over clusterd's bus instead of Redis: ``emit`` to everyone or a room, ``enter_room``,
  ``leave_room``, ``close_room``, ``disconnect`` and emits with callbacks (``call``) reach the
  clients of every worker. :meth:`ClusterdManager.cluster_sids` lists the clients of all workers
  (a bus request with gathered answers).
"""

from __future__ import annotations

import inspect
import json
import logging
import uuid
from typing import Any, AsyncIterator, Dict, List, Optional, Set

import socketio
from socketio.async_pubsub_manager import AsyncPubSubManager

from ._engineio import is_polling
from .bus import IncomingRequest
from .errors import ClusterdError
from .worker import Worker

__all__ = ["ClusterdManager", "sticky_sessions", "SIDS_PREFIX"]

log = logging.getLogger("clusterd_worker.socketio")

#: Marks an emit of this worker that went to the bus before its local deliveries.
_PUBLISHED = "_clusterd_published"

#: Reserved prefix of the bus requests that ask every worker for its clients' sids.
SIDS_PREFIX = b"\x00clusterd:python-socketio:sids\x00"


async def _call(handler: Any, *args: Any) -> Any:
    result = handler(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


def sticky_sessions(server: "socketio.AsyncServer", worker: Worker) -> None:
    """Makes ``server``'s Engine.IO sessions sticky under clusterd (see the module docs).

    :class:`ClusterdManager` calls it; call it yourself only with another client manager.
    """
    eio = server.eio
    if getattr(eio, "_clusterd_sticky", False):
        return
    eio._clusterd_sticky = True
    worker.serves_socketio = True
    connect = eio.handlers.get("connect")
    disconnect = eio.handlers.get("disconnect")
    reported: Set[str] = set()

    async def report(eio_sid: str) -> None:
        try:
            await worker.session_open(eio_sid)
        except ClusterdError as error:
            # The session works while its requests reach this worker anyway.
            log.warning("cannot register session %s with clusterd: %s", eio_sid, error)

    async def on_connect(eio_sid: str, environ: Dict[str, Any]) -> Any:
        reported.add(eio_sid)
        if is_polling(environ.get("QUERY_STRING", "")):
            await report(eio_sid)
        else:
            # WebSocket only: the session lives on its one connection and its client gets its id
            # inside it, so nothing waits for clusterd; it is reported so that status counts it.
            worker.session_report(eio_sid)
        accepted = True if connect is None else await _call(connect, eio_sid, environ)
        if accepted is not None and accepted is not True and eio_sid in reported:
            reported.discard(eio_sid)
            worker.session_close(eio_sid)
        return accepted

    async def on_disconnect(eio_sid: str, reason: Any = None) -> Any:
        if eio_sid in reported:
            reported.discard(eio_sid)
            worker.session_close(eio_sid)
        if disconnect is not None:
            return await _call(disconnect, eio_sid, reason)
        return None

    eio.on("connect", on_connect)
    eio.on("disconnect", on_disconnect)


class ClusterdManager(AsyncPubSubManager):  # type: ignore[misc]
    """python-socketio's client manager across the workers of a clusterd pool, over its bus.

    :param worker: this process's :class:`~clusterd_worker.Worker`.
    :param channel: the bus channel the managers of the pool share.
    :param sticky: also make the server's Engine.IO sessions sticky (:func:`sticky_sessions`).
    :param write_only: only emit (no server attached), as with the other pub/sub managers.

    Messages are python-socketio's own pub/sub messages (JSON), published without echo: this
    worker handles its own emits locally before publishing, as ``AsyncPubSubManager`` does.
    """

    name = "clusterd"

    def __init__(self, worker: Worker, channel: str = "socketio", *, sticky: bool = True,
                 write_only: bool = False, logger: Any = None, json: Any = None) -> None:
        super().__init__(channel=channel, write_only=write_only, logger=logger, json=json)
        self.worker = worker
        self.bus = worker.bus
        self.host_id = f"{worker.id}-{uuid.uuid4().hex}"
        self._sticky = sticky
        self._started = False
        # Subscribed now, so that nothing published after this worker took a client is missed.
        self._subscription = None if write_only else self.bus.subscribe_nowait(self._bus_channel)
        self.bus._hook_requests(SIDS_PREFIX, self._answer_sids)

    @property
    def _bus_channel(self) -> str:
        return "python-socketio:" + self.channel

    def set_server(self, server: Any) -> None:
        """Called by python-socketio's server; starts listening and makes sessions sticky."""
        super().set_server(server)
        if self._sticky and isinstance(server, socketio.AsyncServer):
            sticky_sessions(server, self.worker)
        # Listen from now on, not from the first client: messages for this worker must never
        # pile up unread on the bus (that would hold up its other traffic).
        self.initialize()

    def initialize(self) -> None:
        """Starts the listening task once (python-socketio calls it again on the first client)."""
        if self._started:
            return
        self._started = True
        super().initialize()

    async def _handle_emit(self, message: Dict[str, Any]) -> None:
        # AsyncPubSubManager.emit delivers to this worker's clients, then publishes: the other
        # workers would wait for this one's deliveries. Publish first, so they deliver meanwhile.
        if message.get("host_id") == self.host_id and not message.get(_PUBLISHED):
            await self._publish(message)
            message[_PUBLISHED] = True
        await super()._handle_emit(message)

    async def _publish(self, data: Dict[str, Any]) -> None:
        if data.pop(_PUBLISHED, False):
            return  # published already by _handle_emit
        await self.bus.publish(self._bus_channel, self.json.dumps(data).encode("utf-8"))

    async def _listen(self) -> AsyncIterator[bytes]:
        if self._subscription is None:
            return
        async for message in self._subscription:
            yield message.payload

    # -- the clients of every worker --------------------------------------------------------------

    def _local_sids(self, namespace: str) -> List[str]:
        return [sid for sid, _ in self.get_participants(namespace, None)]

    def _answer_sids(self, request: IncomingRequest) -> None:
        namespace = request.payload[len(SIDS_PREFIX):].decode("utf-8", "replace") or "/"
        request.reply(json.dumps(self._local_sids(namespace)).encode("utf-8"))

    async def cluster_sids(self, namespace: str = "/", *, timeout: Optional[float] = None) -> List[str]:
        """The sids of the clients of every worker in ``namespace``: this worker's, and the
        answers of the others gathered by clusterd (a worker that does not answer in time is
        left out)."""
        answers = await self.bus.request(SIDS_PREFIX + namespace.encode("utf-8"), timeout=timeout)
        sids = self._local_sids(namespace)
        for _, payload in answers.answers:
            sids.extend(json.loads(payload))
        return sids
