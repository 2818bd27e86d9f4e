"""Where HTTP/1.x requests and their answers begin and end on a handed-off connection: pure, no I/O.

A draining worker gives a kept-alive connection back to clusterd with the bytes of the requests
its server read and did not answer (see :class:`clusterd_worker.worker._HandedSocket`). A client
that pipelines (sends its next requests before the answer to the previous one) may have several
of them in the server's buffer when the server closes after the answer in flight: so the requests
read are split by their framing (RFC 9112: a head, then a ``Content-Length`` body), the answers
written by theirs (RFC 9112, 6.3), and each complete answer retires the oldest request. Only
lengths are followed; the server parses the messages. Anything this does not follow (a chunked
request, more than ``MAX_HANDBACK`` bytes unanswered, a response without a length, a switch of
protocols, bytes that are not HTTP) makes the exchange *opaque*: nothing is given back then.
"""

from typing import List, Optional

#: The most bytes of unanswered requests kept (``MAX_HANDBACK`` of PROTOCOL.md: clusterd refuses
#: more in a handback).
MAX_HANDBACK = 16 * 1024
#: The longest response head followed (the Rust SDK's ``MAX_HEAD``).
MAX_HEAD = 64 * 1024


#: The answer that ends a pending Engine.IO long-poll: one ``close`` packet. socket.io-client
#: reconnects on it ("transport close"), through clusterd, to a live worker; it would not on a
#: Socket.IO disconnect ("io server disconnect"). As the Rust SDK's (``PROTOCOL.md``).
CLOSE_POLL = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: 1\r\n"
              b"Connection: close\r\n\r\n1")
#: The same in Engine.IO protocol 3, whose payload prefixes each packet with its length.
CLOSE_POLL_V3 = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: 3\r\n"
                 b"Connection: close\r\n\r\n1:1")


def close_poll_answer(request: bytes) -> Optional[bytes]:
    """The answer that ends ``request`` when it is an Engine.IO long-poll of a session (``GET``,
    ``transport=polling``, ``EIO`` and ``sid`` in the query); ``None`` otherwise."""
    if not request.startswith(b"GET "):
        return None
    target = request.split(b"\r\n", 1)[0].split(b" ")
    if len(target) < 3 or b"?" not in target[1]:
        return None
    params = dict(pair.partition(b"=")[::2] for pair in target[1].split(b"?", 1)[1].split(b"&"))
    if params.get(b"transport") != b"polling" or not params.get(b"sid") or b"EIO" not in params:
        return None
    return CLOSE_POLL_V3 if params[b"EIO"] == b"3" else CLOSE_POLL


def _header(head: bytes, name: bytes) -> Optional[bytes]:
    """The value of the last ``name`` header of ``head`` (lower-case name), or ``None``."""
    value = None
    for line in head.split(b"\n")[1:]:
        key, sep, rest = line.partition(b":")
        if sep and key.strip().lower() == name:
            value = rest.strip()
    return value


class Exchanges:
    """The requests read and the answers written on one connection."""

    __slots__ = ("_pending", "_partial", "_body_left", "_opaque", "_answer", "_mode", "_left")

    def __init__(self) -> None:
        #: Complete requests read and not answered, oldest first.
        self._pending: List[bytes] = []
        #: The request being read (its head so far, or its head and body so far).
        self._partial = bytearray()
        #: Bytes of the current request's body still to come; ``None`` while in its head.
        self._body_left: Optional[int] = None
        self._opaque = False
        #: The answer being written: its head so far, or the chunk line being read.
        self._answer = bytearray()
        #: ``head`` (between answers, or in a head), ``body``, ``chunk-size``, ``chunk-data``,
        #: ``trailer``.
        self._mode = "head"
        self._left = 0

    def read(self, data: bytes) -> None:
        """The server read ``data``."""
        if self._opaque:
            return
        if self._body_left is not None:
            self._take_body(bytes(data))
        else:
            self._partial += data
        while self._body_left is None and self._partial and not self._opaque:
            # Empty lines between requests are not a request.
            stripped = self._partial.lstrip(b"\r\n")
            if len(stripped) != len(self._partial):
                self._partial = bytearray(stripped)
                continue
            end = self._partial.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(self._partial[:end + 4])
            if _header(head, b"transfer-encoding") is not None or b"\nupgrade:" in head.lower():
                self._opaque = True
                break
            length = _header(head, b"content-length") or b"0"
            if not length.isdigit():
                self._opaque = True
                break
            body = bytes(self._partial[end + 4:])
            self._partial = bytearray(head)
            self._body_left = int(length)
            self._take_body(body)
        if sum(map(len, self._pending)) + len(self._partial) > MAX_HANDBACK:
            self._opaque = True

    def _take_body(self, data: bytes) -> None:
        """The current request's body continues with ``data``; what follows it begins the next."""
        assert self._body_left is not None
        take = min(self._body_left, len(data))
        self._partial += data[:take]
        self._body_left -= take
        if self._body_left == 0:
            self._pending.append(bytes(self._partial))
            self._partial = bytearray(data[take:])
            self._body_left = None

    def wrote(self, data: bytes) -> None:
        """The server wrote ``data``."""
        i = 0
        while i < len(data) and not self._opaque:
            if self._mode == "body":
                take = min(self._left, len(data) - i)
                i += take
                self._left -= take
                if self._left == 0:
                    self._answered()
            elif self._mode == "chunk-data":
                take = min(self._left, len(data) - i)
                i += take
                self._left -= take
                if self._left == 0:
                    self._mode = "chunk-size"
            else:
                # A line-oriented part: a head, a chunk size line, trailers.
                end_mark = b"\r\n\r\n" if self._mode in ("head", "trailer") else b"\r\n"
                before = len(self._answer)
                self._answer += data[i:]
                end = self._answer.find(end_mark, max(0, before - len(end_mark) + 1))
                if self._mode == "trailer" and self._answer[:2] == b"\r\n":
                    end, end_mark = 0, b"\r\n"
                if end < 0:
                    if len(self._answer) > MAX_HEAD:
                        self._opaque = True
                    return
                line = bytes(self._answer[:end])
                i += end + len(end_mark) - before
                self._answer = bytearray()
                self._after(line)

    def _after(self, part: bytes) -> None:
        """A head, a chunk size line or the trailers ended."""
        if self._mode == "head":
            status = part.split(b"\r\n", 1)[0].split(b" ")
            if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not status[1].isdigit():
                self._opaque = True
                return
            code = int(status[1])
            if code == 101:
                self._opaque = True
            elif 100 <= code < 200:
                pass  # interim: the final answer follows
            elif code in (204, 304) or (self._pending and self._pending[0].startswith(b"HEAD ")):
                self._answered()
            elif (_header(part, b"transfer-encoding") or b"").lower().endswith(b"chunked"):
                self._mode = "chunk-size"
            else:
                length = _header(part, b"content-length")
                if length is None or not length.isdigit():
                    self._opaque = True  # ends with the close: the connection ends with it
                elif int(length) == 0:
                    self._answered()
                else:
                    self._mode, self._left = "body", int(length)
        elif self._mode == "chunk-size":
            size = part.split(b";", 1)[0].strip()
            try:
                n = int(size, 16)
            except ValueError:
                self._opaque = True
                return
            if n == 0:
                self._mode = "trailer"
            else:
                self._mode, self._left = "chunk-data", n + 2
        else:
            self._answered()

    def _answered(self) -> None:
        self._mode = "head"
        if self._pending:
            self._pending.pop(0)

    def unanswered(self) -> Optional[bytes]:
        """The bytes of the requests read and not answered (the last one possibly incomplete), when
        they are known and no answer is partly written; ``None`` otherwise."""
        if self._opaque or self._mode != "head" or self._answer:
            return None
        return b"".join(self._pending) + bytes(self._partial)

    def requests(self) -> List[bytes]:
        """The requests read and not answered, complete or not (only when :meth:`unanswered` is
        not ``None``)."""
        return self._pending + ([bytes(self._partial)] if self._partial else [])
