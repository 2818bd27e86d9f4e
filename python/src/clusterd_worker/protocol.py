"""The frames of the IPC channel (``worker-sdk/PROTOCOL.md``, "Frames"), and their bytes.

clusterd sends :data:`ToWorker` frames, a worker sends :data:`FromWorker` frames; each direction
numbers its own tags from 0 in the order below, which never changes (new frames are appended).
:func:`encode` turns any frame into bytes; :func:`decode_to_worker` and :func:`decode_from_worker`
turn one datagram back into one frame, refusing truncated input, trailing bytes, unknown tags and
anything over :data:`MAX_FRAME`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Tuple, Union

from .codec import Malformed, Oversized, Reader, Writer, varint

__all__ = [
    "PROTOCOL_VERSION", "MAX_FRAME", "MAX_CLOSED_PER_FRAME", "MAX_SID", "IPC_FD",
    "ENV_IPC_FD", "ENV_WORKER_ID", "ENV_WORKER_COUNT", "ENV_GENERATION",
    "UnknownAddress", "V4Address", "V6Address", "UnixAddress", "Address",
    "Hello", "Drain", "Connection", "SessionAck", "Bound", "Failed", "ListenResult", "Listening",
    "WorkerHello", "Ready", "Heartbeat", "ConnectionsClosed", "SessionOpen", "SessionClose", "Listen",
    "Capacity", "Handback", "ToWorker", "FromWorker", "encode", "decode_to_worker", "decode_from_worker", "valid_sid",
]

#: The protocol version this package speaks; clusterd replaces a worker that greets with another.
PROTOCOL_VERSION = 1
#: The largest frame either side may send or will accept, in bytes.
MAX_FRAME = 64 * 1024
#: The most connection ids in one :class:`ConnectionsClosed`.
MAX_CLOSED_PER_FRAME = 4096
#: The largest metrics text a worker may send in answer to one :class:`MetricsRequest`, in bytes.
MAX_METRICS = 1024 * 1024
#: The most text bytes in one :class:`Metrics` frame.
MAX_METRICS_CHUNK = 60 * 1024
#: The longest Engine.IO session id clusterd records, in bytes.
MAX_SID = 64
#: The fd number clusterd places the IPC socket on (read ``CLUSTERD_IPC_FD``, do not assume it).
IPC_FD = 3
#: Environment variable naming the inherited fd of the IPC socket.
ENV_IPC_FD = "CLUSTERD_IPC_FD"
#: Environment variable holding the worker's slot, ``0..count``, stable across restarts.
ENV_WORKER_ID = "CLUSTERD_WORKER_ID"
#: Environment variable holding the pool size.
ENV_WORKER_COUNT = "CLUSTERD_WORKER_COUNT"
#: Environment variable holding the reload generation, from 1.
ENV_GENERATION = "CLUSTERD_GENERATION"

_SID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def valid_sid(sid: str) -> bool:
    """Whether ``sid`` is a session id clusterd accepts: 1 to 64 bytes of ``[A-Za-z0-9_-]``."""
    return _SID.fullmatch(sid) is not None


# -- addresses --------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnknownAddress:
    """Tag 0: not known (an unnamed Unix socket)."""


@dataclass(frozen=True)
class V4Address:
    """Tag 1: an IPv4 address (4 bytes, network order) and port."""

    ip: bytes
    port: int


@dataclass(frozen=True)
class V6Address:
    """Tag 2: an IPv6 address (16 bytes, network order) and port."""

    ip: bytes
    port: int


@dataclass(frozen=True)
class UnixAddress:
    """Tag 3: a Unix socket path (bytes, not necessarily UTF-8)."""

    path: bytes


#: A socket address on the wire.
Address = Union[UnknownAddress, V4Address, V6Address, UnixAddress]


def _write_address(w: Writer, a: Address) -> None:
    if isinstance(a, UnknownAddress):
        w.u32(0)
    elif isinstance(a, V4Address):
        if len(a.ip) != 4:
            raise ValueError("an IPv4 address is 4 bytes")
        w.u32(1).raw(a.ip).u16(a.port)
    elif isinstance(a, V6Address):
        if len(a.ip) != 16:
            raise ValueError("an IPv6 address is 16 bytes")
        w.u32(2).raw(a.ip).u16(a.port)
    else:
        w.u32(3).bytes(a.path)


def _read_address(r: Reader) -> Address:
    tag = r.tag(4, "Address")
    if tag == 0:
        return UnknownAddress()
    if tag == 1:
        return V4Address(r.raw(4), r.u16())
    if tag == 2:
        return V6Address(r.raw(16), r.u16())
    return UnixAddress(r.bytes())


# -- clusterd -> worker -----------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """``ToWorker`` tag 0: the first frame on every channel."""

    version: int
    worker_id: int
    worker_count: int
    generation: int
    #: How often clusterd expects a :class:`Heartbeat`, in milliseconds; 0 means never.
    heartbeat_ms: int
    #: The largest frame clusterd accepts.
    max_frame: int


@dataclass(frozen=True)
class Drain:
    """``ToWorker`` tag 1: stop taking work, finish, exit within ``grace_ms``."""

    grace_ms: int


@dataclass(frozen=True)
class Connection:
    """``ToWorker`` tag 2: a client connection; its socket is the datagram's one fd."""

    #: clusterd's id for the connection, echoed by :class:`ConnectionsClosed`.
    id: int
    peer: Address
    local: Address
    #: The bytes clusterd already read from the socket: the first bytes of the stream.
    initial: bytes


@dataclass(frozen=True)
class SessionAck:
    """``ToWorker`` tag 3: clusterd recorded the :class:`SessionOpen` with this ``seq``."""

    seq: int


@dataclass(frozen=True)
class Bound:
    """``ListenResult`` tag 0: clusterd listens on ``addr`` (a port 0 resolved)."""

    addr: str


@dataclass(frozen=True)
class Failed:
    """``ListenResult`` tag 1: clusterd could not listen."""

    reason: str


#: The outcome of a :class:`Listen`.
ListenResult = Union[Bound, Failed]


@dataclass(frozen=True)
class Listening:
    """``ToWorker`` tag 4: the answer to the :class:`Listen` with this ``seq``."""

    seq: int
    result: ListenResult


#: A frame clusterd sends.
@dataclass(frozen=True)
class MetricsRequest:
    """``ToWorker`` tag 5: a scrape asks for the worker's metrics; answered by :class:`Metrics`
    frames with this ``id``. Sent only to a worker that sent :class:`MetricsAvailable`."""

    id: int


ToWorker = Union[Hello, Drain, Connection, SessionAck, Listening, MetricsRequest]

# -- worker -> clusterd -----------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerHello:
    """``FromWorker`` tag 0 (``Hello``): the worker's first frame."""

    version: int
    pid: int


@dataclass(frozen=True)
class Ready:
    """``FromWorker`` tag 1: the worker can take work."""


@dataclass(frozen=True)
class Heartbeat:
    """``FromWorker`` tag 2: the worker is alive."""


@dataclass(frozen=True)
class ConnectionsClosed:
    """``FromWorker`` tag 3: the worker closed these handed-over connections."""

    #: At most :data:`MAX_CLOSED_PER_FRAME` ids.
    ids: Tuple[int, ...]


@dataclass(frozen=True)
class SessionOpen:
    """``FromWorker`` tag 4: the worker created session ``sid``; answered by :class:`SessionAck`."""

    seq: int
    sid: str


@dataclass(frozen=True)
class SessionClose:
    """``FromWorker`` tag 5: the session ended."""

    sid: str


@dataclass(frozen=True)
class Listen:
    """``FromWorker`` tag 6: listen on ``addr`` for this worker; answered by :class:`Listening`."""

    seq: int
    addr: str


@dataclass(frozen=True)
class Capacity:
    """``FromWorker`` tag 7 (optional): ``full`` when the worker is near its fd limit, or lost a
    connection's fd; not full when it has room again. Sent on a change only."""

    full: bool


@dataclass(frozen=True)
class Handback:
    """``FromWorker`` tag 8 (optional, + the connection's fd): give connection ``id`` back to
    clusterd with the bytes read and not served. This package sends it, with no bytes, for a
    kept-alive connection its server closes between two requests while the worker drains; it
    closes kept-alive connections that carry another worker's session instead (see the README)."""

    id: int
    initial: bytes


@dataclass(frozen=True)
class MetricsAvailable:
    """``FromWorker`` tag 9 (optional): the worker has metrics to be asked for; sent once."""


@dataclass(frozen=True)
class Metrics:
    """``FromWorker`` tag 10 (optional): a piece of the answer to :class:`MetricsRequest` ``id``:
    ``total`` bytes of text in all, of which ``chunk`` is the next (at most
    :data:`MAX_METRICS_CHUNK`)."""

    id: int
    total: int
    chunk: bytes


#: A frame a worker sends.
FromWorker = Union[WorkerHello, Ready, Heartbeat, ConnectionsClosed, SessionOpen, SessionClose, Listen,
                   Capacity, Handback, MetricsAvailable, Metrics]

_READY = bytes([1])
_HEARTBEAT = bytes([2])


def _session_open(frame: "SessionOpen") -> bytes:
    if not 0 <= frame.seq <= 0xFFFF_FFFF:
        return _encode(frame)  # the general path raises the right error
    sid = frame.sid.encode("utf-8")
    return b"\x04" + varint(frame.seq) + varint(len(sid)) + sid


def _session_close(frame: "SessionClose") -> bytes:
    sid = frame.sid.encode("utf-8")
    return b"\x05" + varint(len(sid)) + sid


# The frames a worker sends for every session or connection, encoded without a Writer.
_FAST = {
    "Ready": lambda frame: _READY,
    "Heartbeat": lambda frame: _HEARTBEAT,
    "SessionOpen": _session_open,
    "SessionClose": _session_close,
}


def encode(frame: Union[ToWorker, FromWorker]) -> bytes:
    """The bytes of one frame; :class:`~clusterd_worker.codec.Oversized` over :data:`MAX_FRAME`."""
    fast = _FAST.get(type(frame).__name__)
    if fast is None:
        return _encode(frame)
    data: bytes = fast(frame)
    if len(data) > MAX_FRAME:
        raise Oversized(len(data), MAX_FRAME)
    return data


def _encode(frame: Union[ToWorker, FromWorker]) -> bytes:
    if isinstance(frame, Ready):
        return _READY
    if isinstance(frame, Heartbeat):
        return _HEARTBEAT
    w = Writer()
    if isinstance(frame, Hello):
        w.u32(0).u16(frame.version).u32(frame.worker_id).u32(frame.worker_count).u64(frame.generation)
        w.u32(frame.heartbeat_ms).u32(frame.max_frame)
    elif isinstance(frame, Drain):
        w.u32(1).u64(frame.grace_ms)
    elif isinstance(frame, Connection):
        w.u32(2).u64(frame.id)
        _write_address(w, frame.peer)
        _write_address(w, frame.local)
        w.bytes(frame.initial)
    elif isinstance(frame, SessionAck):
        w.u32(3).u32(frame.seq)
    elif isinstance(frame, Listening):
        w.u32(4).u32(frame.seq)
        if isinstance(frame.result, Bound):
            w.u32(0).string(frame.result.addr)
        else:
            w.u32(1).string(frame.result.reason)
    elif isinstance(frame, MetricsRequest):
        w.u32(5).u32(frame.id)
    elif isinstance(frame, WorkerHello):
        w.u32(0).u16(frame.version).u32(frame.pid)
    elif isinstance(frame, ConnectionsClosed):
        if len(frame.ids) > MAX_CLOSED_PER_FRAME:
            raise ValueError(f"at most {MAX_CLOSED_PER_FRAME} ids in one ConnectionsClosed")
        w.u32(3).u64(len(frame.ids))
        for i in frame.ids:
            w.u64(i)
    elif isinstance(frame, SessionOpen):
        w.u32(4).u32(frame.seq).string(frame.sid)
    elif isinstance(frame, SessionClose):
        w.u32(5).string(frame.sid)
    elif isinstance(frame, Listen):
        w.u32(6).u32(frame.seq).string(frame.addr)
    elif isinstance(frame, Capacity):
        w.u32(7).boolean(frame.full)
    elif isinstance(frame, Handback):
        w.u32(8).u64(frame.id).bytes(frame.initial)
    elif isinstance(frame, MetricsAvailable):
        w.u32(9)
    elif isinstance(frame, Metrics):
        w.u32(10).u32(frame.id).u32(frame.total).bytes(frame.chunk)
    else:
        raise TypeError(f"not a frame: {frame!r}")
    if len(w.buf) > MAX_FRAME:
        raise Oversized(len(w.buf), MAX_FRAME)
    return bytes(w.buf)


def _reader(data: bytes) -> Reader:
    if len(data) > MAX_FRAME:
        raise Oversized(len(data), MAX_FRAME)
    if not data:
        raise Malformed("malformed frame: empty (no tag)")
    return Reader(data)


def decode_to_worker(data: bytes) -> ToWorker:
    """Decodes one datagram from clusterd into exactly one frame."""
    if len(data) == 2 and data[0] == 3 and data[1] < 251:
        return SessionAck(data[1])  # the most frequent frame, whole in two bytes
    r = _reader(data)
    tag = r.tag(6, "ToWorker")
    frame: ToWorker
    if tag == 0:
        frame = Hello(r.u16(), r.u32(), r.u32(), r.u64(), r.u32(), r.u32())
    elif tag == 1:
        frame = Drain(r.u64())
    elif tag == 2:
        frame = Connection(r.u64(), _read_address(r), _read_address(r), r.bytes())
    elif tag == 3:
        frame = SessionAck(r.u32())
    elif tag == 5:
        frame = MetricsRequest(r.u32())
    else:
        seq = r.u32()
        result: ListenResult = Bound(r.string()) if r.tag(2, "ListenResult") == 0 else Failed(r.string())
        frame = Listening(seq, result)
    r.finish()
    return frame


def decode_from_worker(data: bytes) -> FromWorker:
    """Decodes one datagram from a worker into exactly one frame (clusterd's side; for tests)."""
    r = _reader(data)
    tag = r.tag(11, "FromWorker")
    frame: FromWorker
    if tag == 0:
        frame = WorkerHello(r.u16(), r.u32())
    elif tag == 1:
        frame = Ready()
    elif tag == 2:
        frame = Heartbeat()
    elif tag == 3:
        n = r.u64()
        if n > MAX_CLOSED_PER_FRAME:
            raise Malformed(f"malformed frame: {n} ids in one ConnectionsClosed")
        frame = ConnectionsClosed(tuple(r.u64() for _ in range(n)))
    elif tag == 4:
        frame = SessionOpen(r.u32(), r.string())
    elif tag == 5:
        frame = SessionClose(r.string())
    elif tag == 6:
        frame = Listen(r.u32(), r.string())
    elif tag == 7:
        frame = Capacity(r.boolean())
    elif tag == 8:
        frame = Handback(r.u64(), r.bytes())
    elif tag == 9:
        frame = MetricsAvailable()
    else:
        frame = Metrics(r.u32(), r.u32(), r.bytes())
    r.finish()
    return frame
