"""The worker's handle on clusterd: greeting, readiness, heartbeats, drain, handoff, sessions.

Theory of operation::

    clusterd                                    Worker (this process, one asyncio loop)
       | -- Hello ------------------------------>  |  read by the channel reader; starts heartbeats
       | <-- Hello {version, pid} ---------------  |  Worker.start(), before anything else
       | <-- Ready ------------------------------  |  await worker.ready()
       | -- Connection + fd + initial ---------->  |  handed to the server's protocol (serve())
       | <-- ConnectionsClosed {ids} ------------  |  when the server closes those sockets
       | <-- SessionOpen {seq, sid} -------------  |  await worker.session_open(sid) ...
       | -- SessionAck {seq} ------------------->  |  ... returns
       | -- Drain {grace_ms} + SIGTERM --------->  |  await worker.draining() returns

Everything runs on the event loop that called :meth:`Worker.start`: the IPC socket is read by a
loop reader callback (no thread), frames are sent without waiting unless the socket is full.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import os
import signal
import socket
import weakref
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

from . import protocol as p
from .bus import Bus
from .bus_protocol import ENV_BUS_FD
from .capacity import RECHECK_EVERY, Capacity
from .channel import LOST, Channel, take_socket_fd
from .codec import CodecError
from .errors import (
    AlreadyTaken, BadEnvironment, BadSessionId, ClusterdError, Disconnected, ListenFailed,
    NotUnderClusterd, ProtocolError, SessionTimeout,
)
from .http1 import Exchanges, close_poll_answer

__all__ = [
    "Worker", "SESSION_ACK_TIMEOUT", "DRAIN_FRAME_WAIT", "DRAIN_ACCEPT_WAIT", "CONNECTION_QUEUE",
    "HEADER_TIMEOUT", "ENV_HEADER_TIMEOUT_MS", "MAX_HEADER_TIMEOUT", "SPREAD_SHARE_OF_GRACE", "MAX_SPREAD",
    "ENV_DRAIN_SPREAD_MS",
]

log = logging.getLogger("clusterd_worker")

#: How long :meth:`Worker.session_open` waits for clusterd's acknowledgement, in seconds.
SESSION_ACK_TIMEOUT = 5.0
#: After ``SIGTERM``, how long the drain waits for clusterd's drain frame (which follows every
#: connection clusterd handed over), in seconds.
DRAIN_FRAME_WAIT = 1.0
#: How long the drain waits for the connections handed over before it to reach the server.
DRAIN_ACCEPT_WAIT = 2.0
#: Connections handed over before :meth:`Worker.serve` was called that wait for it; more are
#: closed (and reported closed).
CONNECTION_QUEUE = 1024
#: How long a handed-off HTTP connection may take to send a request head, by default, in seconds
#: (the Rust SDK's default): a client that never finishes its headers must not keep an fd forever.
HEADER_TIMEOUT = 30.0
#: Environment variable that sets the head timeout in milliseconds (``0``: none), as for the Rust SDK.
ENV_HEADER_TIMEOUT_MS = "CLUSTERD_HEADER_TIMEOUT_MS"
#: The longest head timeout the variable may set, in seconds (a day).
MAX_HEADER_TIMEOUT = 86400.0
#: Frames read per wake-up of the reader, so a flood of frames does not starve the loop.
_READ_BATCH = 64

_taken = False

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


#: The start of a request looked at to tell whether its connection may persist.
_PEEK = 4096
#: The most bytes of an unanswered request a draining worker gives back with its connection
#: (``MAX_HANDBACK`` of PROTOCOL.md: clusterd refuses more).
MAX_HANDBACK = 16 * 1024
#: Requests a draining server may have read without answering that go back to clusterd with their
#: bytes: safe methods, which a client would retry itself (RFC 9110, 9.2.2).
_RETRIABLE = (b"GET ", b"HEAD ", b"OPTIONS ")
#: A draining worker shuts its upgraded connections (WebSockets) down one by one over the grace
#: divided by this (as the Rust SDK does), so that their clients reconnect to the other workers
#: gradually; the rest of the grace is for the server's own shutdown.
SPREAD_SHARE_OF_GRACE = 2
#: The longest that spread lasts, in seconds, whatever the grace.
MAX_SPREAD = 60.0
#: Environment variable that sets the spread in milliseconds (``0``: all at once), as for the Rust SDK.
ENV_DRAIN_SPREAD_MS = "CLUSTERD_DRAIN_SPREAD_MS"


def _persists(start: bytes) -> Tuple[bool, bool]:
    """Whether the request that begins with ``start`` lets its connection carry another one (an
    HTTP/1.1 request without ``Connection: close``, nor an upgrade), and whether it asks for an
    upgrade (a WebSocket: the stream is not HTTP after it)."""
    line, _, head = start.partition(b"\n")
    head = b"\n" + head.lower()
    upgrade = b"\nupgrade:" in head
    persists = line.rstrip(b"\r").endswith(b" HTTP/1.1") and b"\nconnection: close" not in head and not upgrade
    return persists, upgrade


class _HandedSocket(socket.socket):
    """A handed-over connection's socket: closing it reports the close to clusterd, once.

    The report hangs on the socket, not on a protocol, because servers switch protocols on the
    same socket (uvicorn's WebSocket upgrade) and every transport ends by closing its socket.

    It also follows the server's reads and writes (asyncio's transports call ``recv``,
    ``recv_into``, ``send`` and ``sendmsg``), so that a draining worker can give a kept-alive
    connection back to clusterd instead of closing it (see :meth:`Worker.draining`): when the
    server closes it after answering, having read nothing since, any next request is still in the
    kernel's buffer and reaches the worker clusterd picks; when the server read next requests, all
    ``GET``, ``HEAD`` or ``OPTIONS``, and closes without a byte of their answers (aiohttp's
    shutdown drops a request it read but had not begun; a pipelining client's next requests wait
    in the server's buffer), their bytes go back with it. The requests and answers are told apart
    by their framing (:mod:`clusterd_worker.http1`), so each complete answer retires its request.
    """

    __slots__ = ("_report", "_give_back", "_on_upgrade", "_on_poll", "_exchanges", "_fresh", "_start",
                 "_persistent", "_answered", "_ended")

    def _track(self, initial: bytes) -> None:
        self._exchanges = Exchanges()
        self._exchanges.read(initial)  # the first request, whose start clusterd read
        self._note_poll()
        self._answered = False
        self._ended = False
        self._persistent = False
        # Its head may go on past what clusterd read: look at it with the first read, then.
        self._start = b""
        self._fresh = True
        if b"\r\n\r\n" in initial or b"\n\n" in initial or len(initial) >= _PEEK:
            self._begins(initial[:_PEEK])
        elif initial:
            self._start = bytes(initial)

    def _begins(self, start: bytes) -> None:
        """A request begins with ``start``."""
        self._fresh = False
        self._start = b""
        self._persistent, upgrade = _persists(start)
        if upgrade and self._on_upgrade is not None:
            self._on_upgrade(self)

    def _read(self, data: Any, n: int) -> None:
        if n == 0:
            self._ended = True
            return
        if self._fresh:
            self._begins(self._start + bytes(data[:_PEEK]))
        self._exchanges.read(bytes(data))  # ``data`` is what was read: ``n`` bytes
        self._note_poll()

    def _note_poll(self) -> None:
        """The drain's spread may end a session whose long-poll this connection carries."""
        on_poll = getattr(self, "_on_poll", None)
        if on_poll is not None and self._pending_poll() is not None:
            on_poll(self)

    def _pending_poll(self) -> Optional[bytes]:
        """The answer that ends the Engine.IO long-poll the server read and has not begun to
        answer, if that is the one request it has read and not answered."""
        requests = self._exchanges.requests() if self._exchanges.unanswered() else []
        return close_poll_answer(requests[0]) if len(requests) == 1 else None

    def end_poll(self) -> None:
        """Answers the pending long-poll with an Engine.IO ``close`` packet, then shuts the
        connection down both ways (the server's own answer, if it comes, fails). A connection
        between two polls is left alone: its next poll goes back to clusterd and finds the session
        gone (``400``), on which the client reconnects too."""
        answer = self._pending_poll()
        if answer is None or self.fileno() == -1:
            return
        self._ended = True  # never given back after this
        try:
            # The socket's buffer is empty while a poll waits: the few bytes fit.
            socket.socket.send(self, answer, socket.MSG_DONTWAIT)
            self.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the client left meanwhile

    def _wrote(self, data: bytes) -> None:
        if data:
            self._exchanges.wrote(data)
            self._fresh = True
            self._start = b""
            self._answered = True

    def recv(self, *args: Any) -> bytes:
        data = super().recv(*args)
        self._read(data, len(data))
        return data

    def recv_into(self, buffer: Any, *args: Any) -> int:
        n = super().recv_into(buffer, *args)
        self._read(memoryview(buffer)[:n], n)
        return n

    def _between_requests(self) -> Optional[bytes]:
        """What to give back with the connection, if it may go back: ``b""`` between two
        requests, or the bytes of an unanswered retriable request; ``None`` otherwise."""
        if not self._answered or self._ended:
            return None
        held = self._exchanges.unanswered()
        if held is None:
            return None
        if not held:
            return b"" if self._persistent else None
        retriable = all(request.startswith(_RETRIABLE) for request in self._exchanges.requests())
        return held if len(held) <= MAX_HANDBACK and retriable else None

    def send(self, data: Any, *args: Any) -> int:
        n = super().send(data, *args)
        self._wrote(bytes(memoryview(data).cast("B")[:n]))
        return n

    def sendmsg(self, *args: Any) -> int:
        n = super().sendmsg(*args)
        written = bytearray()
        for buffer in args[0] if args else ():
            view = memoryview(buffer).cast("B")
            written += view[:n - len(written)]
            if len(written) >= n:
                break
        self._wrote(bytes(written))
        return n

    def close(self) -> None:
        give_back = getattr(self, "_give_back", None)
        if give_back is not None:
            self._give_back = None
            held = self._between_requests()
            if held is not None and give_back(self, held):
                self._report = None  # the handback counts as its close
        super().close()
        report = getattr(self, "_report", None)
        if report is not None:
            self._report = None
            report()


class _Primer(asyncio.Protocol):
    """Gives the server's protocol the ``initial`` bytes first, then gets out of the way.

    On ``connection_made`` it installs the real protocol on the transport, so from then on the
    transport calls the server directly: no extra call per read. The initial bytes are delivered
    before the transport's first read of the socket, which asyncio schedules after
    ``connection_made``.
    """

    __slots__ = ("_inner", "_initial")

    def __init__(self, inner: asyncio.BaseProtocol, initial: bytes) -> None:
        self._inner = inner
        self._initial = initial

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        inner = self._inner
        transport.set_protocol(inner)
        inner.connection_made(transport)
        initial, self._initial = self._initial, b""
        if initial and not transport.is_closing():
            _feed(inner, initial)

    # Only reached if a transport calls back before connection_made handed over (never in asyncio).
    def data_received(self, data: bytes) -> None:
        _feed(self._inner, data)

    def eof_received(self) -> Optional[bool]:
        return self._inner.eof_received()  # type: ignore[attr-defined, no-any-return]

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._inner.connection_lost(exc)


def _feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buf = memoryview(protocol.get_buffer(len(view)))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]
    else:
        protocol.data_received(data)  # type: ignore[attr-defined]


def _expire(ack: "asyncio.Future[None]", sid: str) -> None:
    if not ack.done():
        ack.set_exception(SessionTimeout(
            f"clusterd did not acknowledge session {sid} within {SESSION_ACK_TIMEOUT}s"))


def _header_timeout() -> Optional[float]:
    value = os.environ.get(ENV_HEADER_TIMEOUT_MS)
    if value is None:
        return HEADER_TIMEOUT
    try:
        ms = int(value.strip())
    except ValueError:
        raise BadEnvironment(f"{ENV_HEADER_TIMEOUT_MS}={value!r} is not a number of milliseconds") from None
    if not 0 <= ms <= MAX_HEADER_TIMEOUT * 1000:
        raise BadEnvironment(f"{ENV_HEADER_TIMEOUT_MS}={ms}: from 0 (none) to {int(MAX_HEADER_TIMEOUT * 1000)}")
    return ms / 1000 if ms else None


def _drain_spread_ms() -> Optional[int]:
    """``CLUSTERD_DRAIN_SPREAD_MS``, or ``None`` (a share of the grace)."""
    value = os.environ.get(ENV_DRAIN_SPREAD_MS)
    if value is None:
        return None
    try:
        ms = int(value.strip())
    except ValueError:
        raise BadEnvironment(f"{ENV_DRAIN_SPREAD_MS}={value!r} is not a number of milliseconds") from None
    if ms < 0:
        raise BadEnvironment(f"{ENV_DRAIN_SPREAD_MS}={ms}: a number of milliseconds, 0 for all at once")
    return ms


def spread_of(grace: Optional[float], spread_ms: Optional[int]) -> float:
    """How long a drain spreads the ends of the upgraded connections, in seconds: as set, or the
    grace divided by :data:`SPREAD_SHARE_OF_GRACE` (at most :data:`MAX_SPREAD`); never longer than
    the grace, and at once without one (no drain frame came)."""
    if grace is None:
        return 0.0
    if spread_ms is None:
        return min(grace / SPREAD_SHARE_OF_GRACE, MAX_SPREAD)
    return min(spread_ms / 1000, grace)


def _env_int(var: str) -> int:
    value = os.environ.get(var)
    if value is None:
        raise NotUnderClusterd(var)
    try:
        return int(value.strip())
    except ValueError:
        raise BadEnvironment(f"{var}={value!r} is not a number") from None


class Worker:
    """A worker's connection to clusterd. Create it with ``await Worker.start()``.

    ::

        worker = await Worker.start()
        worker.serve(protocol_factory)   # handed-off connections go to this asyncio protocol
        await worker.ready()
        await worker.draining()          # clusterd asked this worker to stop
        # ... let the server finish what is in flight, then return ...

    The integrations do all of this for a server: :func:`clusterd_worker.aiohttp.serve`,
    :func:`clusterd_worker.asgi.serve`.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, channel_sock: socket.socket, worker_id: int,
                 count: int, generation: int, bus: Optional[Bus]) -> None:
        """Internal: use :meth:`Worker.start`."""
        self._loop = loop
        self._channel = Channel(channel_sock, self._want_writable)
        #: The worker's slot, ``0..count``, stable across restarts of the slot.
        self.id = worker_id
        #: The pool size when this worker was started.
        self.count = count
        #: The reload generation, from 1.
        self.generation = generation
        #: clusterd's greeting, once read.
        self.hello: Optional[p.Hello] = None
        #: The seconds clusterd gives this worker after the drain request, once known.
        self.grace: Optional[float] = None
        self._bus = bus
        self._drained = asyncio.Event()
        self._asked = asyncio.Event()
        self._drain_started = False
        self._ready_sent = False
        self._factory: Optional[ProtocolFactory] = None
        self._served = asyncio.Event()
        self._waiting: Deque[Tuple[p.Connection, socket.socket]] = collections.deque()
        self._handoffs: Set["asyncio.Task[Any]"] = set()
        self._seq = itertools.count(1)
        self._acks: Dict[int, "asyncio.Future[None]"] = {}
        self._listens: Dict[int, "asyncio.Future[p.ListenResult]"] = {}
        self._closed: List[int] = []
        self._heartbeat: Optional["asyncio.Task[None]"] = None
        self._reading = True
        self._tasks: Set["asyncio.Future[Any]"] = set()
        self._capacity = Capacity()
        self._recheck: Optional[asyncio.TimerHandle] = None
        #: How long the server integrations give a connection to send a request head, in seconds
        #: (``None``: no limit): :data:`HEADER_TIMEOUT`, or ``CLUSTERD_HEADER_TIMEOUT_MS``.
        self.header_timeout: Optional[float] = _header_timeout()
        #: Whether a Socket.IO server of this worker holds sessions (set by
        #: :func:`clusterd_worker.socketio.sticky_sessions`): then the server integrations close
        #: every HTTP response's connection, so that no kept-alive connection carries a request of
        #: a session that lives on another worker.
        self.serves_socketio = False
        #: Connections whose request asked for an upgrade (WebSockets), in that order.
        self._upgraded: "weakref.WeakSet[socket.socket]" = weakref.WeakSet()
        #: Connections that carried an Engine.IO long-poll: the spread ends their sessions too.
        self._polling: "weakref.WeakSet[_HandedSocket]" = weakref.WeakSet()
        self._spread_ms = _drain_spread_ms()
        self._metrics: Optional[Callable[[], Any]] = None
        loop.add_reader(self._channel.fileno(), self._readable)

    @classmethod
    async def start(cls, *, handle_sigterm: bool = True) -> "Worker":
        """Connects to clusterd over the IPC socket (and bus) this process inherited.

        Reads ``CLUSTERD_IPC_FD``, ``CLUSTERD_WORKER_ID``, ``CLUSTERD_WORKER_COUNT``,
        ``CLUSTERD_GENERATION`` (and ``CLUSTERD_BUS_FD``), claims the fds, greets clusterd and
        starts reading its frames on the running loop. With ``handle_sigterm`` (the default),
        ``SIGTERM`` means "drain" from now on instead of ending the process, so the program must
        return once :meth:`draining` resolved and its server finished.

        Raises :class:`NotUnderClusterd` when the program was not started by clusterd (with the
        command that runs it), :class:`BadEnvironment` when the variables or fds are wrong, and
        :class:`AlreadyTaken` when called twice in a process.
        """
        global _taken
        loop = asyncio.get_running_loop()
        fd = _env_int(p.ENV_IPC_FD)
        worker_id = _env_int(p.ENV_WORKER_ID)
        count = _env_int(p.ENV_WORKER_COUNT)
        generation = _env_int(p.ENV_GENERATION)
        if _taken:
            raise AlreadyTaken("Worker.start() was called already in this process")
        sock = take_socket_fd(fd, socket.SOCK_SEQPACKET, p.ENV_IPC_FD)
        _taken = True
        # The greeting goes first, before anything else can be sent, with the socket still blocking.
        try:
            sock.send(p.encode(p.WorkerHello(p.PROTOCOL_VERSION, os.getpid())), socket.MSG_NOSIGNAL)
        except OSError as error:
            sock.close()
            raise BadEnvironment(f"{p.ENV_IPC_FD}={fd}: cannot greet clusterd ({error})") from None
        bus = None
        bus_var = os.environ.get(ENV_BUS_FD)
        if bus_var is not None:
            try:
                bus_fd = int(bus_var.strip())
            except ValueError:
                raise BadEnvironment(f"{ENV_BUS_FD}={bus_var!r} is not a number") from None
            bus = await Bus._start(take_socket_fd(bus_fd, socket.SOCK_STREAM, ENV_BUS_FD))
        worker = cls(loop, sock, worker_id, count, generation, bus)
        if handle_sigterm:
            loop.add_signal_handler(signal.SIGTERM, worker._on_sigterm)
        return worker

    # -- public API ---------------------------------------------------------------------------

    @property
    def bus(self) -> Bus:
        """Messages to and from the other workers, relayed by clusterd."""
        if self._bus is None:
            raise NotUnderClusterd(ENV_BUS_FD)
        return self._bus

    async def ready(self) -> None:
        """Tells clusterd this worker can take work; later calls do nothing.

        clusterd counts the worker as starting until then, and replaces one that is not ready
        within ``--ready-timeout``.
        """
        if self._ready_sent:
            return
        self._ready_sent = True
        self._send(p.Ready())

    def set_metrics(self, source: Any) -> None:
        """Registers this worker's metrics for clusterd's scrapes (``clusterd --metrics``,
        ``clusterd metrics``): on each scrape clusterd asks every ready worker, and this one
        answers with ``source``'s metrics in the Prometheus text format 0.0.4.

        ``source`` is a ``prometheus_client`` registry (``prometheus_client.REGISTRY`` or a
        ``CollectorRegistry``; rendered with ``prometheus_client.generate_latest``), or a function
        of no arguments that returns the text (``str`` or ``bytes``). clusterd adds
        ``worker="<id>"`` to every sample and merges the families of all workers; families named
        ``process_*`` or ``clusterd_*`` are renamed ``worker_process_*`` / ``worker_clusterd_*``.
        A text over :data:`~clusterd_worker.protocol.MAX_METRICS` bytes leaves this worker out of
        the scrape. Calling it again replaces the source; a worker that never calls it is never
        asked.

        ::

            from prometheus_client import Counter, REGISTRY
            hits = Counter("app_hits", "Hits.")
            worker.set_metrics(REGISTRY)
        """
        if callable(source) and not hasattr(source, "collect"):
            render = source
        else:
            from prometheus_client import generate_latest

            def render() -> bytes:
                return generate_latest(source)
        first = self._metrics is None
        self._metrics = render
        if first:
            self._send(p.MetricsAvailable())

    def _answer_metrics(self, request_id: int) -> None:
        """Answers clusterd's metrics request, in chunks sent one after the other."""
        text: bytes = b""
        if self._metrics is not None:
            try:
                rendered = self._metrics()
                text = rendered.encode("utf-8") if isinstance(rendered, str) else bytes(rendered)
            except Exception:  # the application's own code: answer empty, and say why
                log.exception("rendering the metrics failed")
        if len(text) > p.MAX_METRICS:
            log.warning("the metrics are %d bytes, over clusterd's limit of %d: not sent", len(text), p.MAX_METRICS)
            self._send(p.Metrics(request_id, len(text) & 0xFFFF_FFFF, b""))
            return
        if not text:
            self._send(p.Metrics(request_id, 0, b""))
            return
        for start in range(0, len(text), p.MAX_METRICS_CHUNK):
            self._send(p.Metrics(request_id, len(text), text[start:start + p.MAX_METRICS_CHUNK]))

    def serve(self, protocol_factory: ProtocolFactory) -> None:
        """Hands every connection clusterd passes to ``protocol_factory``'s protocols.

        The factory is what ``loop.create_server`` takes (aiohttp's ``web.Server``, uvicorn's
        protocol class bound to its config). Each connection becomes an asyncio transport on the
        handed-over socket (``loop.connect_accepted_socket``), and the protocol receives the bytes
        clusterd already read first. Connections that arrived before this call are served now.
        """
        self._factory = protocol_factory
        self._served.set()
        while self._waiting:
            frame, sock = self._waiting.popleft()
            self._handoff(frame, sock)

    async def session_open(self, sid: str) -> None:
        """Reports that this worker created session ``sid`` and returns once clusterd recorded it.

        Give the session id to the client only after this returns: then its next request, on any
        connection, is routed here. Raises :class:`BadSessionId`, :class:`SessionTimeout` (after
        :data:`SESSION_ACK_TIMEOUT`) or :class:`Disconnected`.
        """
        if not p.valid_sid(sid):
            raise BadSessionId(f"session id {sid!r} is not 1 to {p.MAX_SID} characters of [A-Za-z0-9_-]")
        seq = next(self._seq) & 0xFFFF_FFFF
        ack: "asyncio.Future[None]" = self._loop.create_future()
        self._acks[seq] = ack
        # A timer on the future itself, not wait_for: one handle per session instead of a task
        # (this runs for every polling handshake).
        timer = self._loop.call_later(SESSION_ACK_TIMEOUT, _expire, ack, sid)
        try:
            self._send(p.SessionOpen(seq, sid))
            await ack
        finally:
            timer.cancel()
            self._acks.pop(seq, None)

    def session_report(self, sid: str) -> None:
        """Reports session ``sid`` without waiting for clusterd's acknowledgement.

        For a session whose client has its id already and whose requests all come on one
        connection (a WebSocket-only Engine.IO session): nothing needs routing, but clusterd's
        ``status`` then counts it. Never blocks; errors are logged, not raised.
        """
        if not p.valid_sid(sid):
            return
        try:
            self._send(p.SessionOpen(next(self._seq) & 0xFFFF_FFFF, sid))
        except ClusterdError as error:
            log.debug("cannot report session %s: %s", sid, error)

    def session_close(self, sid: str) -> None:
        """Reports that session ``sid`` ended. Never blocks; errors are logged, not raised."""
        if not p.valid_sid(sid):
            return
        try:
            self._send(p.SessionClose(sid))
        except ClusterdError as error:
            log.debug("cannot report the end of session %s: %s", sid, error)

    async def listen(self, addr: str) -> str:
        """Asks clusterd to listen on ``addr`` (``HOST:PORT``, ``[V6]:PORT``, ``unix:/path``).

        As ``server.listen`` in a Node.js ``cluster`` worker: clusterd binds the address once and
        balances its connections over every worker that asked; they arrive like every handed-off
        connection. Returns the address clusterd listens on (a port 0 resolved); raises
        :class:`ListenFailed` with clusterd's reason.
        """
        seq = next(self._seq) & 0xFFFF_FFFF
        answer: "asyncio.Future[p.ListenResult]" = self._loop.create_future()
        self._listens[seq] = answer
        try:
            self._send(p.Listen(seq, addr))
            result = await answer
        finally:
            self._listens.pop(seq, None)
        if isinstance(result, p.Failed):
            raise ListenFailed(f"clusterd cannot listen on {addr}: {result.reason}")
        return result.addr

    async def draining(self) -> None:
        """Resolves when clusterd asks this worker to stop.

        That is a drain frame, ``SIGTERM``, clusterd's end of the channel closing, or a malformed
        frame from clusterd. It resolves only once every connection handed over before the request
        reached the server (bounded by :data:`DRAIN_ACCEPT_WAIT`), so a server that stops when
        this resolves loses no client.
        """
        await self._drained.wait()

    @property
    def at_capacity(self) -> bool:
        """Whether this worker told clusterd it is full (near its fd limit, or it lost an fd)."""
        return self._capacity.full

    async def end_upgraded(self) -> None:
        """Shuts this worker's upgraded connections (WebSockets, so Socket.IO sessions over them)
        down one by one, evenly over a spread of the grace (see :func:`spread_of`;
        ``CLUSTERD_DRAIN_SPREAD_MS`` sets it), so that their clients do not all reconnect to the
        other workers in the same second. Their clients see the transport close and reconnect
        through clusterd. Long-polling sessions end over the same spread: a pending poll is
        answered with an Engine.IO ``close`` packet (see :meth:`_HandedSocket.end_poll`), on which
        socket.io-client reconnects. The serving integrations call it once the drain began, before their
        server shuts down (which would end them all at once); a program with its own server calls
        it there too."""
        await self._drained.wait()
        spread = spread_of(self.grace, self._spread_ms)
        sockets = list(self._upgraded)
        polls = [sock for sock in self._polling if sock not in self._upgraded and sock._pending_poll() is not None]
        start = self._loop.time()
        for i, sock in enumerate(sockets + polls):
            delay = start + spread * i / len(sockets + polls) - self._loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if i >= len(sockets):
                sock.end_poll()
            elif sock.fileno() != -1:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # the client left meanwhile

    @property
    def is_draining(self) -> bool:
        """Whether the drain was signalled (:meth:`draining` resolved)."""
        return self._drained.is_set()

    def close(self) -> None:
        """Stops reading and closes the IPC socket (and the bus): clusterd sees the channel end."""
        self._stop_reading()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        self._channel.close()
        if self._bus is not None:
            self._bus.close()

    # -- frames from clusterd -------------------------------------------------------------------

    def _readable(self) -> None:
        for _ in range(_READ_BATCH):
            try:
                got = self._channel.recv()
            except BlockingIOError:
                return
            except (ProtocolError, CodecError) as error:
                log.error("malformed frame from clusterd (%s): draining", error)
                self._channel_ended()
                return
            except OSError as error:
                log.error("IPC channel failed (%s): draining", error)
                self._channel_ended()
                return
            if got is None:
                log.warning("clusterd closed the IPC channel: draining")
                self._channel_ended()
                return
            frame, fd = got
            if isinstance(frame, p.Connection):
                assert fd is not None, "the channel checks the fd count"
                if fd == LOST:
                    self._connection_lost(frame)
                else:
                    self._connection(frame, fd)
            elif isinstance(frame, p.SessionAck):
                ack = self._acks.pop(frame.seq, None)
                if ack is not None and not ack.done():
                    ack.set_result(None)
            elif isinstance(frame, p.Hello):
                self._hello(frame)
            elif isinstance(frame, p.Drain):
                self.grace = frame.grace_ms / 1000
                self._asked.set()
                self._start_drain()
            elif isinstance(frame, p.MetricsRequest):
                self._answer_metrics(frame.id)
            elif isinstance(frame, p.Listening):
                answer = self._listens.pop(frame.seq, None)
                if answer is not None and not answer.done():
                    answer.set_result(frame.result)

    def _hello(self, hello: p.Hello) -> None:
        if self.hello is not None:
            return
        self.hello = hello
        if hello.version != p.PROTOCOL_VERSION:
            log.warning("clusterd speaks protocol %d, this package %d", hello.version, p.PROTOCOL_VERSION)
        if hello.heartbeat_ms > 0:
            self._heartbeat = self._loop.create_task(self._beat(hello.heartbeat_ms / 1000))

    async def _beat(self, every: float) -> None:
        # Heartbeats go on while draining: a worker finishing long requests is alive.
        while True:
            await asyncio.sleep(every)
            try:
                self._send(p.Heartbeat())
            except ClusterdError:
                return

    def _channel_ended(self) -> None:
        self._stop_reading()
        self._asked.set()
        for waiter in list(self._acks.values()) + list(self._listens.values()):  # type: ignore[operator]
            if not waiter.done():
                waiter.set_exception(Disconnected("clusterd's end of the IPC channel is closed"))
        self._start_drain()

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            try:
                self._loop.remove_reader(self._channel.fileno())
            except (ValueError, OSError):
                pass

    # -- handed-off connections -----------------------------------------------------------------

    def _connection_lost(self, frame: p.Connection) -> None:
        # The kernel could not install the fd (this process is at RLIMIT_NOFILE) and closed it: the
        # client lost this one connection, nothing else. clusterd must stop sending more.
        log.warning("connection %d lost: no fd free to receive it (at the fd limit)", frame.id)
        self._connection_closed(frame.id)
        if self._capacity.on_lost():
            self._capacity_changed()

    def _capacity_changed(self) -> None:
        full = self._capacity.full
        log.warning("at the fd limit (%d): no new connections" if full else "room again under the fd limit (%d)",
                    self._capacity.limit)
        try:
            self._send(p.Capacity(full))
        except ClusterdError:
            return
        if full and self._recheck is None:
            self._recheck = self._loop.call_later(RECHECK_EVERY, self._recheck_capacity)

    def _recheck_capacity(self) -> None:
        self._recheck = None
        if self._capacity.recheck():
            self._capacity_changed()
        elif self._capacity.full and self._reading:
            self._recheck = self._loop.call_later(RECHECK_EVERY, self._recheck_capacity)

    def _connection(self, frame: p.Connection, fd: int) -> None:
        if self._capacity.on_fd(fd):
            self._capacity_changed()
        # The frame says what the socket is (PROTOCOL.md: TCP for V4/V6, Unix otherwise), which
        # spares the kernel queries of socket(fileno=) on every handoff.
        if isinstance(frame.local, p.V4Address):
            family = socket.AF_INET
        elif isinstance(frame.local, p.V6Address):
            family = socket.AF_INET6
        else:
            family = socket.AF_UNIX
        try:
            sock = _HandedSocket(family, socket.SOCK_STREAM, 0, fileno=fd)
        except OSError as error:
            os.close(fd)
            log.warning("cannot use handed-off connection %d: %s", frame.id, error)
            self._connection_closed(frame.id)
            return
        sock._report = functools.partial(self._connection_closed, frame.id)
        sock._give_back = functools.partial(self._give_back, frame.id)
        sock._on_upgrade = self._upgraded.add
        sock._on_poll = self._polling.add
        sock._track(frame.initial)
        if self._factory is None:
            if len(self._waiting) >= CONNECTION_QUEUE:
                log.warning("no server took %d waiting connections: closing one", CONNECTION_QUEUE)
                sock.close()
                return
            self._waiting.append((frame, sock))
            return
        self._handoff(frame, sock)

    def _handoff(self, frame: p.Connection, sock: socket.socket) -> None:
        task = self._loop.create_task(self._connect(frame, sock))
        self._handoffs.add(task)
        task.add_done_callback(self._handoffs.discard)

    async def _connect(self, frame: p.Connection, sock: socket.socket) -> None:
        factory = self._factory
        assert factory is not None
        try:
            sock.setblocking(False)
            await self._loop.connect_accepted_socket(lambda: _Primer(factory(), frame.initial), sock)
        except Exception as error:  # the server refused the connection: close it, report it
            log.warning("cannot serve handed-off connection %d: %s", frame.id, error)
            sock.close()

    def _give_back(self, conn_id: int, sock: socket.socket, held: bytes) -> bool:
        """Gives a kept-alive connection back to clusterd (``Handback``, with the bytes of a next
        request the server read and left unanswered) instead of closing it, once the server was
        told to drain; ``False`` otherwise, or when the frame cannot go out now (then the
        connection closes as the server wanted)."""
        if not self._drained.is_set():
            return False
        return self._channel.send_with_fd(p.encode(p.Handback(conn_id, held)), sock.fileno())

    def _connection_closed(self, conn_id: int) -> None:
        # Closes in one loop iteration go out as one frame.
        if not self._closed:
            self._loop.call_soon(self._report_closed)
        self._closed.append(conn_id)

    def _report_closed(self) -> None:
        ids, self._closed = self._closed, []
        if self._capacity.recheck():
            self._capacity_changed()
        for start in range(0, len(ids), p.MAX_CLOSED_PER_FRAME):
            try:
                self._send(p.ConnectionsClosed(tuple(ids[start:start + p.MAX_CLOSED_PER_FRAME])))
            except ClusterdError:
                return  # clusterd forgets the counts of a worker that is gone

    # -- drain ------------------------------------------------------------------------------------

    def _on_sigterm(self) -> None:
        log.debug("SIGTERM: draining")
        self._start_drain()

    def _start_drain(self) -> None:
        if self._drain_started:
            return
        self._drain_started = True
        task = self._loop.create_task(self._drain())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        # clusterd sends the drain frame after every connection it handed here, then SIGTERM:
        # read up to the frame, so those connections reach the server before it stops accepting.
        try:
            await asyncio.wait_for(self._asked.wait(), DRAIN_FRAME_WAIT)
        except asyncio.TimeoutError:
            log.warning("no drain frame within %ss of SIGTERM: draining anyway", DRAIN_FRAME_WAIT)
        deadline = self._loop.time() + DRAIN_ACCEPT_WAIT
        if self._waiting and self._factory is None:
            try:
                await asyncio.wait_for(self._served.wait(), DRAIN_ACCEPT_WAIT)
            except asyncio.TimeoutError:
                pass
        for frame, sock in list(self._waiting):
            log.warning("no server took handed-off connection %d before the drain: closing it", frame.id)
            sock.close()
        self._waiting.clear()
        if self._handoffs:
            await asyncio.wait(set(self._handoffs), timeout=max(0.0, deadline - self._loop.time()))
        self._drained.set()

    # -- sending ------------------------------------------------------------------------------------

    def _send(self, frame: p.FromWorker) -> None:
        self._channel.send(p.encode(frame))

    def _want_writable(self, want: bool) -> None:
        if want:
            self._loop.add_writer(self._channel.fileno(), self._flush)
        else:
            self._loop.remove_writer(self._channel.fileno())

    def _flush(self) -> None:
        try:
            self._channel.flush()
        except OSError as error:
            log.error("IPC channel failed (%s): draining", error)
            self._channel_ended()
