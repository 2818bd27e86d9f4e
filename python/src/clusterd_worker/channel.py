"""The IPC channel: one ``SOCK_SEQPACKET`` datagram per frame, fds passed with ``SCM_RIGHTS``.

Only ``ToWorker.Connection`` carries an fd (exactly one). Anything else with control data, a
``Connection`` without its fd, truncated control data (``MSG_CTRUNC``) or a truncated datagram
(``MSG_TRUNC``) is a protocol error, and every fd that came with it is closed. One exception: a
``Connection`` with ``MSG_CTRUNC`` and no fd at all is what the kernel delivers when this process
is at its fd limit; it is returned with the fd :data:`LOST` (the connection is gone, the channel
is fine). fds are received
close-on-exec (``MSG_CMSG_CLOEXEC``). Sends use ``MSG_NOSIGNAL``: a gone clusterd is an error,
not a ``SIGPIPE``.
"""

from __future__ import annotations

import array
import collections
import errno
import os
import socket
from typing import Callable, Deque, List, Optional, Tuple

from .codec import CodecError, Oversized
from .errors import BadEnvironment, Disconnected, ProtocolError
from .protocol import MAX_FRAME, Connection, ToWorker, decode_to_worker

__all__ = ["Channel", "take_socket_fd", "MAX_PENDING_FRAMES", "LOST"]

#: Frames queued while clusterd's socket buffer is full; more is an error (clusterd is not reading).
MAX_PENDING_FRAMES = 8192
#: Room for the control data of a few fds: one is expected; more shows as extra fds, not as a
#: truncation that would hide them.
_ANCILLARY_SPACE = socket.CMSG_SPACE(4 * 4)
_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
#: The fd of a ``Connection`` whose fd the kernel could not install (``MSG_CTRUNC``, none received).
LOST = -1


def take_socket_fd(fd: int, kind: int, var: str) -> socket.socket:
    """Claims the inherited fd ``fd`` as a socket of type ``kind``, close-on-exec.

    Checks that it is an open socket of that type first, so that a wrong number never turns into
    a socket object that would close somebody else's fd later.
    """
    try:
        os.set_inheritable(fd, False)  # programs the worker starts must not inherit the channel
    except OSError as error:
        raise BadEnvironment(f"{var}={fd}: not an open fd ({error})") from None
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError as error:
        raise BadEnvironment(f"{var}={fd}: not a socket ({error})") from None
    if sock.type != kind:
        sock.close()
        raise BadEnvironment(f"{var}={fd}: socket type {sock.type!r}, not {socket.SocketKind(kind)!r}")
    sock.close()
    return socket.socket(fileno=fd)


class Channel:
    """The worker's end of the IPC socket: receives ``ToWorker`` frames, sends encoded ``FromWorker``.

    Non-blocking. :meth:`recv` takes one datagram; :meth:`send` sends one, queueing it (in order)
    while the socket buffer is full; ``on_writable_wanted`` is called with ``True`` when the caller
    must call :meth:`flush` once the socket is writable, ``False`` when that is no longer needed.
    """

    def __init__(self, sock: socket.socket, on_writable_wanted: Callable[[bool], None]) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._buffer = bytearray(MAX_FRAME + 1)
        self._view = memoryview(self._buffer)
        self._pending: Deque[bytes] = collections.deque()
        self._want_writable = on_writable_wanted
        self.broken = False

    def fileno(self) -> int:
        """The socket's fd."""
        return self.sock.fileno()

    def recv(self) -> Optional[Tuple[ToWorker, Optional[int]]]:
        """The next frame and its fd (for ``Connection``; :data:`LOST` when this process had no room
        for it); ``None`` when clusterd closed its end.

        Raises ``BlockingIOError`` when no datagram is waiting, :class:`ProtocolError` or a
        :class:`~clusterd_worker.codec.CodecError` for bytes that are not a frame.
        """
        # Into a buffer kept between calls: a fresh 64 KiB per datagram costs more than the read.
        n, ancillary, flags, _ = self.sock.recvmsg_into([self._buffer], _ANCILLARY_SPACE, _CLOEXEC)
        data = bytes(self._view[:n])
        fds: List[int] = []
        other = False
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                ints = array.array("i")
                ints.frombytes(payload[: len(payload) - len(payload) % ints.itemsize])
                fds.extend(ints)
            else:
                other = True
        if not data and not fds and not other and not flags & socket.MSG_TRUNC:
            # The protocol has no empty frames: a 0-byte read is clusterd's orderly close.
            return None
        try:
            if flags & socket.MSG_TRUNC or len(data) > MAX_FRAME:
                raise Oversized(len(data), MAX_FRAME)
            if other:
                raise ProtocolError("unexpected control data on a frame")
            frame = decode_to_worker(data)
            if flags & socket.MSG_CTRUNC:
                if not fds and isinstance(frame, Connection):
                    return frame, LOST  # at the fd limit: the kernel closed the fd, not the channel
                raise ProtocolError("control data truncated (too many fds)")
            expected = 1 if isinstance(frame, Connection) else 0
            if len(fds) != expected:
                raise ProtocolError(f"{len(fds)} fds on a {type(frame).__name__} frame (expected {expected})")
        except (ProtocolError, CodecError):
            for fd in fds:
                os.close(fd)
            raise
        return frame, (fds[0] if fds else None)

    def send(self, data: bytes) -> None:
        """Sends one encoded frame as one datagram, or queues it behind those already waiting.

        Raises :class:`Disconnected` once clusterd's end is gone or it stopped reading.
        """
        if self.broken:
            raise Disconnected("clusterd's end of the IPC channel is closed")
        if self._pending:
            if len(self._pending) >= MAX_PENDING_FRAMES:
                raise Disconnected(f"clusterd is not reading the IPC channel ({MAX_PENDING_FRAMES} frames queued)")
            self._pending.append(data)
            return
        try:
            self.sock.send(data, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            self._pending.append(data)
            self._want_writable(True)
        except OSError as error:
            self._broke(error)

    def send_with_fd(self, data: bytes, fd: int) -> bool:
        """Sends one encoded frame with ``fd`` (``SCM_RIGHTS``) now, or not at all: ``False`` when
        frames are queued before it, the socket buffer is full, or the channel is broken."""
        if self.broken or self._pending:
            return False
        try:
            rights = array.array("i", [fd]).tobytes()
            self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)], socket.MSG_NOSIGNAL)
        except OSError:
            return False
        return True

    def flush(self) -> None:
        """Sends the queued frames the socket takes now (call when it is writable)."""
        while self._pending:
            try:
                self.sock.send(self._pending[0], socket.MSG_NOSIGNAL)
            except BlockingIOError:
                return
            except OSError as error:
                self._pending.clear()
                self._want_writable(False)
                self.broken = True
                if error.errno not in (errno.EPIPE, errno.ECONNRESET):
                    raise
                return
            self._pending.popleft()
        self._want_writable(False)

    def _broke(self, error: OSError) -> None:
        self.broken = True
        if error.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
            raise Disconnected("clusterd's end of the IPC channel is closed") from None
        raise error

    def close(self) -> None:
        """Closes the socket."""
        self.broken = True
        self._pending.clear()
        self.sock.close()
