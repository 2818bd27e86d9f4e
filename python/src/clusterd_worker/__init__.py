"""clusterd-worker: run Python servers (python-socketio, aiohttp, ASGI) as clusterd workers.

clusterd (the ``clusterd`` binary of this repository) is the primary process of a
multi-process server: it forks the workers, owns the listening sockets, hands each connection to
a worker (sticky by Engine.IO session id) and relays messages between workers. This package is the
worker's side of its native protocol (``worker-sdk/PROTOCOL.md``), pure Python on asyncio:

- :class:`Worker`: greeting, readiness, heartbeats, drain (frame, ``SIGTERM`` or channel end),
  handed-off connections into any asyncio server, sessions, ``listen``;
- :class:`Bus`: publish/subscribe with counts, sends, requests with gathered answers;
- :mod:`clusterd_worker.aiohttp` and :mod:`clusterd_worker.asgi`: serve an aiohttp application or
  any ASGI application (uvicorn's protocol) on the handed-off connections;
- :mod:`clusterd_worker.socketio`: sticky Engine.IO sessions and :class:`ClusterdManager
  <clusterd_worker.socketio.ClusterdManager>`, python-socketio's client manager over the bus.

Run a worker under clusterd::

    clusterd --workers 4 --listen 127.0.0.1:3000 -- python3 app.py
"""

from .bus import Answers, Bus, BusEvent, BusMessage, IncomingRequest, Subscription
from .codec import CodecError, Oversized
from .errors import (
    AlreadyTaken, BadEnvironment, BadSessionId, ClusterdError, Disconnected, ListenFailed,
    NotUnderClusterd, ProtocolError, SessionTimeout,
)
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "Worker", "Bus", "BusMessage", "BusEvent", "Answers", "IncomingRequest", "Subscription",
    "ClusterdError", "NotUnderClusterd", "BadEnvironment", "ProtocolError", "Disconnected",
    "BadSessionId", "SessionTimeout", "ListenFailed", "AlreadyTaken", "CodecError", "Oversized",
    "__version__",
]
