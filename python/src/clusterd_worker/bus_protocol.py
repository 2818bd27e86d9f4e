"""The frames of the bus (``worker-sdk/PROTOCOL.md``, "The bus"), and their bytes.

The bus is a ``SOCK_STREAM`` socket (fd ``CLUSTERD_BUS_FD``, 4). Each frame is a 4-byte
little-endian body length, then the body, encoded like every frame (:mod:`clusterd_worker.codec`);
a body is at most :data:`MAX_BUS_FRAME` bytes, and a declared length over that is an error before
anything is read. :func:`encode_frame` writes a whole frame (prefix and body);
:class:`FrameBuffer` takes whole frames off the bytes read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

from .codec import Malformed, Oversized, Reader, Writer

__all__ = [
    "ENV_BUS_FD", "BUS_FD", "MAX_BUS_FRAME", "MAX_CHANNEL_NAME",
    "Subscribe", "Unsubscribe", "Publish", "Send", "CountSubscribers", "Request", "Reply", "BusFromWorker",
    "Message", "Direct", "SubscriberCount", "Joined", "Left", "Undeliverable", "PeerRequest", "Answers",
    "BusToWorker", "encode_frame", "decode_from_worker", "decode_to_worker", "FrameBuffer",
]

#: Environment variable naming the inherited fd of the bus socket.
ENV_BUS_FD = "CLUSTERD_BUS_FD"
#: The fd number clusterd places the bus socket on.
BUS_FD = 4
#: The largest bus frame body, in bytes.
MAX_BUS_FRAME = 32 * 1024 * 1024
#: The longest channel name, in bytes (UTF-8), clusterd takes: a longer one breaks the protocol
#: and gets the worker replaced, so the SDK refuses it first (``ValueError``).
MAX_CHANNEL_NAME = 4096

_LEN = struct.Struct("<I")

# -- worker -> clusterd (BusFromWorker) -------------------------------------------------------


@dataclass(frozen=True)
class Subscribe:
    """Tag 0: deliver the channel's messages to this worker from now on."""

    channel: str


@dataclass(frozen=True)
class Unsubscribe:
    """Tag 1: stop delivering the channel's messages."""

    channel: str


@dataclass(frozen=True)
class Publish:
    """Tag 2: deliver ``payload`` to every subscriber of ``channel`` (the sender only with ``echo``)."""

    channel: str
    payload: bytes
    echo: bool


@dataclass(frozen=True)
class Send:
    """Tag 3: deliver ``payload`` to the worker of slot ``to``."""

    to: int
    payload: bytes


@dataclass(frozen=True)
class CountSubscribers:
    """Tag 4 (``Subscribers``): how many live workers subscribe to ``channel``?"""

    seq: int
    channel: str


@dataclass(frozen=True)
class Request:
    """Tag 5: ask every other live worker (or every other subscriber of ``channel``)."""

    id: int
    channel: Optional[str]
    payload: bytes
    #: The deadline in milliseconds; 0 means clusterd's ``--requests-timeout``.
    timeout_ms: int


@dataclass(frozen=True)
class Reply:
    """Tag 6: the answer to a :class:`PeerRequest` with clusterd's ``id``."""

    id: int
    payload: bytes


#: A bus frame a worker sends.
BusFromWorker = Union[Subscribe, Unsubscribe, Publish, Send, CountSubscribers, Request, Reply]

# -- clusterd -> worker (BusToWorker) ---------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """Tag 0: a message published on a channel this worker subscribes to."""

    channel: str
    #: The publisher's worker id.
    sender: int
    payload: bytes


@dataclass(frozen=True)
class Direct:
    """Tag 1: a message sent to this worker."""

    sender: int
    payload: bytes


@dataclass(frozen=True)
class SubscriberCount:
    """Tag 2 (``Subscribers``): the answer to :class:`CountSubscribers` with this ``seq``."""

    seq: int
    count: int


@dataclass(frozen=True)
class Joined:
    """Tag 3: a worker joined the bus."""

    worker: int


@dataclass(frozen=True)
class Left:
    """Tag 4: a worker left the bus (it exited)."""

    worker: int


@dataclass(frozen=True)
class Undeliverable:
    """Tag 5: a :class:`Send` to an id no live worker has."""

    to: int


@dataclass(frozen=True)
class PeerRequest:
    """Tag 6 (``Request``): another worker asks; answer with :class:`Reply` and this ``id``."""

    id: int
    sender: int
    payload: bytes


@dataclass(frozen=True)
class Answers:
    """Tag 7: the gathered answers to this worker's :class:`Request` with this ``id``."""

    id: int
    answers: List[Tuple[int, bytes]]
    missing: List[int]


#: A bus frame clusterd sends.
BusToWorker = Union[Message, Direct, SubscriberCount, Joined, Left, Undeliverable, PeerRequest, Answers]


def _body(frame: Union[BusFromWorker, BusToWorker], w: Writer) -> None:
    if isinstance(frame, Publish):
        w.u32(2).string(frame.channel).bytes(frame.payload).boolean(frame.echo)
    elif isinstance(frame, Message):
        w.u32(0).string(frame.channel).u32(frame.sender).bytes(frame.payload)
    elif isinstance(frame, Subscribe):
        w.u32(0).string(frame.channel)
    elif isinstance(frame, Unsubscribe):
        w.u32(1).string(frame.channel)
    elif isinstance(frame, Send):
        w.u32(3).u32(frame.to).bytes(frame.payload)
    elif isinstance(frame, CountSubscribers):
        w.u32(4).u32(frame.seq).string(frame.channel)
    elif isinstance(frame, Request):
        w.u32(5).u64(frame.id)
        if frame.channel is None:
            w.raw(b"\x00")
        else:
            w.raw(b"\x01").string(frame.channel)
        w.bytes(frame.payload).u32(frame.timeout_ms)
    elif isinstance(frame, Reply):
        w.u32(6).u64(frame.id).bytes(frame.payload)
    elif isinstance(frame, Direct):
        w.u32(1).u32(frame.sender).bytes(frame.payload)
    elif isinstance(frame, SubscriberCount):
        w.u32(2).u32(frame.seq).u32(frame.count)
    elif isinstance(frame, Joined):
        w.u32(3).u32(frame.worker)
    elif isinstance(frame, Left):
        w.u32(4).u32(frame.worker)
    elif isinstance(frame, Undeliverable):
        w.u32(5).u32(frame.to)
    elif isinstance(frame, PeerRequest):
        w.u32(6).u64(frame.id).u32(frame.sender).bytes(frame.payload)
    elif isinstance(frame, Answers):
        w.u32(7).u64(frame.id).u64(len(frame.answers))
        for worker, payload in frame.answers:
            w.u32(worker).bytes(payload)
        w.u64(len(frame.missing))
        for worker in frame.missing:
            w.u32(worker)
    else:
        raise TypeError(f"not a bus frame: {frame!r}")


def encode_frame(frame: Union[BusFromWorker, BusToWorker]) -> bytes:
    """A whole frame: the 4-byte length, then the body; :class:`Oversized` over the limit."""
    w = Writer(bytearray(4))
    _body(frame, w)
    size = len(w.buf) - 4
    if size > MAX_BUS_FRAME:
        raise Oversized(size, MAX_BUS_FRAME)
    _LEN.pack_into(w.buf, 0, size)
    return bytes(w.buf)


def _option_string(r: Reader) -> Optional[str]:
    flag = r.raw(1)[0]
    if flag == 0:
        return None
    if flag != 1:
        raise Malformed(f"malformed frame: {flag} is not an Option tag")
    return r.string()


def decode_from_worker(body: bytes) -> BusFromWorker:
    """Decodes one frame body a worker sent (clusterd's side; for tests)."""
    r = Reader(body)
    tag = r.tag(7, "BusFromWorker")
    frame: BusFromWorker
    if tag == 0:
        frame = Subscribe(r.string())
    elif tag == 1:
        frame = Unsubscribe(r.string())
    elif tag == 2:
        frame = Publish(r.string(), r.bytes(), r.boolean())
    elif tag == 3:
        frame = Send(r.u32(), r.bytes())
    elif tag == 4:
        frame = CountSubscribers(r.u32(), r.string())
    elif tag == 5:
        frame = Request(r.u64(), _option_string(r), r.bytes(), r.u32())
    else:
        frame = Reply(r.u64(), r.bytes())
    r.finish()
    return frame


def decode_to_worker(body: bytes) -> BusToWorker:
    """Decodes one frame body clusterd sent."""
    r = Reader(body)
    tag = r.tag(8, "BusToWorker")
    frame: BusToWorker
    if tag == 0:
        frame = Message(r.string(), r.u32(), r.bytes())
    elif tag == 1:
        frame = Direct(r.u32(), r.bytes())
    elif tag == 2:
        frame = SubscriberCount(r.u32(), r.u32())
    elif tag == 3:
        frame = Joined(r.u32())
    elif tag == 4:
        frame = Left(r.u32())
    elif tag == 5:
        frame = Undeliverable(r.u32())
    elif tag == 6:
        frame = PeerRequest(r.u64(), r.u32(), r.bytes())
    else:
        rid = r.u64()
        # Each element takes at least 2 bytes: a count over what is left is a lie.
        n = r.u64()
        if n > len(body):
            raise Malformed("malformed frame: answer count over the frame's size")
        answers = [(r.u32(), r.bytes()) for _ in range(n)]
        m = r.u64()
        if m > len(body):
            raise Malformed("malformed frame: missing count over the frame's size")
        frame = Answers(rid, answers, [r.u32() for _ in range(m)])
    r.finish()
    return frame


class FrameBuffer:
    """The bytes read from a bus socket, from which whole frame bodies are taken."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def extend(self, data: bytes) -> None:
        """Appends bytes read from the socket."""
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    def pending(self) -> int:
        """Bytes read and not yet taken as frames."""
        return len(self._buf) - self._pos

    def next_body(self) -> Optional[bytes]:
        """The next whole frame's body, or ``None`` until more bytes arrive.

        A declared length over :data:`MAX_BUS_FRAME` raises :class:`Oversized` before anything is
        allocated for it.
        """
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 4:
            self._compact()
            return None
        (length,) = _LEN.unpack_from(buf, pos)
        if length > MAX_BUS_FRAME:
            raise Oversized(length, MAX_BUS_FRAME)
        end = pos + 4 + length
        if len(buf) < end:
            self._compact()
            return None
        body = bytes(buf[pos + 4:end])
        self._pos = end
        return body

    def _compact(self) -> None:
        # Drop the bytes already taken, once, when waiting for more: not on every frame.
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
