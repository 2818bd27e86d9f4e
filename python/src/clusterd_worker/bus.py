"""The bus: publish/subscribe with exact counts, sends to one worker, requests with gathered answers.

clusterd relays every message; workers never talk to each other directly::

    bus = worker.bus
    async with await bus.subscribe("news") as news:
        await bus.publish("news", b"hello, other workers")
        async for message in news:
            print(message.sender, message.payload)

Guarantees (clusterd's relay, README "Messaging between workers"): messages from one worker to
another arrive in the order sent; a publisher does not get its own messages unless it asks
(``echo=True``). Incoming messages wait in bounded queues (:data:`IN_QUEUE` per subscription);
while one is full, this worker stops reading the bus (backpressure, nothing lost), and clusterd's
overflow policy applies to what it cannot queue for this worker.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import socket
from dataclasses import dataclass
from typing import (
    Any, AsyncIterator, Callable, Deque, Dict, Generic, List, Optional, Set, Tuple, TypeVar, Union,
)

from . import bus_protocol as b
from .codec import CodecError
from .errors import AlreadyTaken, Disconnected

__all__ = [
    "Bus", "BusMessage", "Answers", "IncomingRequest", "Subscription", "BusEvent", "IN_QUEUE",
]

log = logging.getLogger("clusterd_worker.bus")

#: Messages queued for one subscription (or the direct messages, requests or events) before this
#: worker stops reading the bus until the application takes some.
IN_QUEUE = 1024
#: Bytes written and not yet taken by the socket before publishers wait (asyncio's high-water
#: mark of the bus transport).
OUT_BYTES = 512 * 1024

T = TypeVar("T")


@dataclass(frozen=True)
class BusMessage:
    """A message from another worker."""

    #: The channel it was published on; ``None`` for a message sent to this worker.
    channel: Optional[str]
    #: The sender's worker id.
    sender: int
    #: The message.
    payload: bytes


@dataclass(frozen=True)
class Answers:
    """The gathered answers to a request."""

    #: Each answer, with the id of the worker that gave it.
    answers: List[Tuple[int, bytes]]
    #: The workers asked that did not answer: they left, or the deadline passed.
    missing: List[int]


@dataclass(frozen=True)
class BusEvent:
    """A worker joined or left the bus, or a send could not be delivered."""

    #: ``"joined"``, ``"left"`` or ``"undeliverable"``.
    kind: str
    #: The worker id concerned.
    worker: int


class IncomingRequest:
    """A question from another worker; answer it with :meth:`reply`."""

    __slots__ = ("_id", "sender", "payload", "_bus")

    def __init__(self, rid: int, sender: int, payload: bytes, bus: "Bus") -> None:
        self._id = rid
        #: The asking worker's id.
        self.sender = sender
        #: The question.
        self.payload = payload
        self._bus = bus

    def reply(self, payload: bytes) -> None:
        """Sends the answer (a request never answered counts as missing at its deadline)."""
        self._bus._write(b.encode_frame(b.Reply(self._id, bytes(payload))))


class _Inbox(Generic[T]):
    """A queue that tells the bus to stop reading while it holds :data:`IN_QUEUE` items."""

    def __init__(self, bus: "Bus") -> None:
        self._items: Deque[Union[T, BaseException]] = collections.deque()
        self._waiter: Optional["asyncio.Future[None]"] = None
        self._bus = bus

    def put(self, item: Union[T, BaseException]) -> None:
        self._items.append(item)
        if len(self._items) >= IN_QUEUE:
            self._bus._pause(self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> T:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        if len(self._items) == IN_QUEUE // 2:
            self._bus._resume(self)
        if isinstance(item, BaseException):
            self._items.appendleft(item)  # every later get ends the same way
            raise item
        return item  # type: ignore[return-value]


class _Stream(Generic[T]):
    """An async iterator over an inbox; it ends when the bus closes."""

    def __init__(self, inbox: _Inbox[T]) -> None:
        self._inbox = inbox

    def __aiter__(self) -> "_Stream[T]":
        return self

    async def __anext__(self) -> T:
        try:
            return await self._inbox.get()
        except Disconnected:
            raise StopAsyncIteration from None


class Subscription:
    """This worker's subscription to one channel: an async iterator of :class:`BusMessage`.

    It ends with :meth:`unsubscribe` (or ``async with``); iteration stops when the bus closes.
    """

    def __init__(self, bus: "Bus", channel: str) -> None:
        #: The channel.
        self.channel = channel
        self._bus = bus
        self._inbox: _Inbox[BusMessage] = _Inbox(bus)

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> BusMessage:
        try:
            return await self._inbox.get()
        except Disconnected:
            raise StopAsyncIteration from None

    async def get(self) -> BusMessage:
        """The next message; raises :class:`Disconnected` once the bus is closed."""
        return await self._inbox.get()

    async def unsubscribe(self) -> None:
        """Ends this subscription (the last one of a channel tells clusterd)."""
        self._bus._unsubscribe(self)

    async def __aenter__(self) -> "Subscription":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.unsubscribe()


class _BusProtocol(asyncio.Protocol):
    def __init__(self, bus: "Bus") -> None:
        self._bus = bus

    def data_received(self, data: bytes) -> None:
        self._bus._received(data)

    def pause_writing(self) -> None:
        self._bus._writable.clear()

    def resume_writing(self) -> None:
        self._bus._writable.set()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._bus._lost(exc)


#: A taker, inside the package, of the requests whose payload starts with a reserved prefix.
RequestHook = Callable[[IncomingRequest], None]


class Bus:
    """This worker's handle on the bus; from :attr:`Worker.bus <clusterd_worker.Worker.bus>`."""

    def __init__(self) -> None:
        """Internal: the worker creates the bus."""
        self._transport: Optional[asyncio.Transport] = None
        self._buffer = b.FrameBuffer()
        self._writable = asyncio.Event()
        self._writable.set()
        self._subscriptions: Dict[str, List[Subscription]] = {}
        self._seq = itertools.count(1)
        self._counts: Dict[int, "asyncio.Future[int]"] = {}
        self._asks: Dict[int, "asyncio.Future[Answers]"] = {}
        self._direct: _Inbox[BusMessage] = _Inbox(self)
        self._requests: _Inbox[IncomingRequest] = _Inbox(self)
        self._events: _Inbox[BusEvent] = _Inbox(self)
        self._taken: Set[str] = set()
        self._hooks: List[Tuple[bytes, RequestHook]] = []
        self._direct_hooks: List[Tuple[bytes, Callable[[BusMessage], None]]] = []
        self._full: Set[int] = set()
        self.closed = False

    @classmethod
    async def _start(cls, sock: socket.socket) -> "Bus":
        bus = cls()
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        transport, _ = await loop.connect_accepted_socket(lambda: _BusProtocol(bus), sock)
        transport.set_write_buffer_limits(high=OUT_BYTES)  # type: ignore[attr-defined]
        bus._transport = transport  # type: ignore[assignment]
        return bus

    # -- sending ----------------------------------------------------------------------------------

    async def publish(self, channel: str, payload: bytes, *, echo: bool = False) -> None:
        """Publishes ``payload`` to every other worker subscribed to ``channel`` (this one too
        with ``echo``). Raises :class:`~clusterd_worker.codec.Oversized` for a frame over
        :data:`~clusterd_worker.bus_protocol.MAX_BUS_FRAME`, before anything is sent."""
        _check_channel(channel)
        await self._queue(b.encode_frame(b.Publish(channel, bytes(payload), echo)))

    async def send(self, to: int, payload: bytes) -> None:
        """Sends ``payload`` to the worker with id ``to``; if none has it, :meth:`events` says
        ``undeliverable``."""
        await self._queue(b.encode_frame(b.Send(to, bytes(payload))))

    async def subscribe(self, channel: str) -> Subscription:
        """Subscribes to ``channel``: messages published on it from now on reach the result."""
        if not self._writable.is_set():
            await self._writable.wait()
        return self.subscribe_nowait(channel)

    def subscribe_nowait(self, channel: str) -> Subscription:
        """As :meth:`subscribe`, from synchronous code (the frame is queued at once)."""
        self._check_open()
        _check_channel(channel)
        subscription = Subscription(self, channel)
        group = self._subscriptions.setdefault(channel, [])
        group.append(subscription)
        if len(group) == 1:
            self._write(b.encode_frame(b.Subscribe(channel)))
        return subscription

    async def subscribers(self, channel: str) -> int:
        """How many live workers subscribe to ``channel`` (this one included if it does)."""
        self._check_open()
        _check_channel(channel)
        seq = next(self._seq) & 0xFFFF_FFFF
        answer: "asyncio.Future[int]" = asyncio.get_running_loop().create_future()
        self._counts[seq] = answer
        try:
            await self._queue(b.encode_frame(b.CountSubscribers(seq, channel)))
            return await answer
        finally:
            self._counts.pop(seq, None)

    async def request(self, payload: bytes, *, channel: Optional[str] = None,
                      timeout: Optional[float] = None) -> Answers:
        """Asks every other live worker (or the other subscribers of ``channel``) and returns
        their answers, gathered by clusterd: once all answered or left, or at the deadline
        (``timeout`` seconds, else clusterd's ``--requests-timeout``) with what arrived."""
        self._check_open()
        if channel is not None:
            _check_channel(channel)
        rid = next(self._seq)
        answer: "asyncio.Future[Answers]" = asyncio.get_running_loop().create_future()
        self._asks[rid] = answer
        timeout_ms = 0 if timeout is None else min(0xFFFF_FFFF, max(1, int(timeout * 1000)))
        try:
            await self._queue(b.encode_frame(b.Request(rid, channel, bytes(payload), timeout_ms)))
            return await answer
        finally:
            self._asks.pop(rid, None)

    # -- receiving ----------------------------------------------------------------------------------

    def requests(self) -> AsyncIterator[IncomingRequest]:
        """The questions other workers ask this one. Can be taken once; while nobody takes them,
        this worker counts as missing in their answers at the deadline."""
        return _Stream(self._take("requests", self._requests))

    def direct_messages(self) -> AsyncIterator[BusMessage]:
        """The messages sent to this worker with :meth:`send`. Can be taken once."""
        return _Stream(self._take("direct_messages", self._direct))

    def events(self) -> AsyncIterator[BusEvent]:
        """Workers joining and leaving, and undeliverable sends. Can be taken once."""
        return _Stream(self._take("events", self._events))

    def _take(self, what: str, inbox: _Inbox[T]) -> _Inbox[T]:
        if what in self._taken:
            raise AlreadyTaken(f"Bus.{what}() was taken already")
        self._taken.add(what)
        return inbox

    def _hook_requests(self, prefix: bytes, hook: RequestHook) -> None:
        """Requests whose payload starts with ``prefix`` go to ``hook`` (called on the loop, must
        not block) instead of :meth:`requests`."""
        self._hooks.append((prefix, hook))

    def _hook_direct(self, prefix: bytes, hook: Callable[[BusMessage], None]) -> None:
        """Direct messages whose payload starts with ``prefix`` go to ``hook``."""
        self._direct_hooks.append((prefix, hook))

    # -- internals ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise Disconnected("clusterd's end of the bus is closed")

    async def _queue(self, frame: bytes) -> None:
        self._check_open()
        if not self._writable.is_set():
            await self._writable.wait()
            self._check_open()
        self._write(frame)

    def _write(self, frame: bytes) -> None:
        self._check_open()
        assert self._transport is not None
        self._transport.write(frame)

    def _unsubscribe(self, subscription: Subscription) -> None:
        group = self._subscriptions.get(subscription.channel)
        if not group or subscription not in group:
            return
        group.remove(subscription)
        self._resume(subscription._inbox)
        if not group:
            del self._subscriptions[subscription.channel]
            if not self.closed:
                self._write(b.encode_frame(b.Unsubscribe(subscription.channel)))

    def _pause(self, inbox: "_Inbox[Any]") -> None:
        if not self._full and self._transport is not None:
            self._transport.pause_reading()
        self._full.add(id(inbox))

    def _resume(self, inbox: "_Inbox[Any]") -> None:
        if id(inbox) in self._full:
            self._full.discard(id(inbox))
            if not self._full and self._transport is not None and not self.closed:
                self._transport.resume_reading()

    def _received(self, data: bytes) -> None:
        self._buffer.extend(data)
        try:
            while True:
                body = self._buffer.next_body()
                if body is None:
                    return
                self._deliver(b.decode_to_worker(body))
        except CodecError as error:
            log.error("malformed frame on the bus (%s): closing it", error)
            if self._transport is not None:
                self._transport.close()

    def _deliver(self, frame: b.BusToWorker) -> None:
        if isinstance(frame, b.Message):
            message = BusMessage(frame.channel, frame.sender, frame.payload)
            for subscription in self._subscriptions.get(frame.channel, ()):
                subscription._inbox.put(message)
        elif isinstance(frame, b.Direct):
            message = BusMessage(None, frame.sender, frame.payload)
            for prefix, hook in self._direct_hooks:
                if frame.payload.startswith(prefix):
                    hook(message)
                    return
            self._direct.put(message)
        elif isinstance(frame, b.PeerRequest):
            request = IncomingRequest(frame.id, frame.sender, frame.payload, self)
            for prefix, request_hook in self._hooks:
                if frame.payload.startswith(prefix):
                    request_hook(request)
                    return
            if "requests" in self._taken:
                self._requests.put(request)
        elif isinstance(frame, b.Answers):
            ask = self._asks.pop(frame.id, None)
            if ask is not None and not ask.done():
                ask.set_result(Answers(frame.answers, frame.missing))
        elif isinstance(frame, b.SubscriberCount):
            count = self._counts.pop(frame.seq, None)
            if count is not None and not count.done():
                count.set_result(frame.count)
        elif "events" in self._taken:
            # Events nobody reads are dropped: they are news, not data.
            kind = {b.Joined: "joined", b.Left: "left", b.Undeliverable: "undeliverable"}[type(frame)]
            worker = frame.to if isinstance(frame, b.Undeliverable) else frame.worker  # type: ignore[union-attr]
            self._events.put(BusEvent(kind, worker))

    def _lost(self, exc: Optional[Exception]) -> None:
        if self.closed:
            return
        self.closed = True
        self._writable.set()
        gone = Disconnected("clusterd's end of the bus is closed")
        for waiter in list(self._counts.values()) + list(self._asks.values()):  # type: ignore[operator]
            if not waiter.done():
                waiter.set_exception(gone)
        for group in self._subscriptions.values():
            for subscription in group:
                subscription._inbox.put(gone)
        for inbox in (self._direct, self._requests, self._events):
            inbox.put(gone)

    def close(self) -> None:
        """Closes the bus socket; pending questions fail with :class:`Disconnected`."""
        if self._transport is not None:
            self._transport.close()


def _check_channel(channel: str) -> None:
    """Refuses a channel name clusterd would take for a broken protocol (and replace the worker)."""
    length = len(channel.encode())
    if length > b.MAX_CHANNEL_NAME:
        raise ValueError(f"a bus channel name is at most {b.MAX_CHANNEL_NAME} bytes, not {length}")
