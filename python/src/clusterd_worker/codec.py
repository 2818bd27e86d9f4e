"""The bytes of the native protocol: bincode 2 ``standard`` encoding, written from PROTOCOL.md.

Every frame, on the IPC channel and on the bus, is encoded with the same few rules
(``worker-sdk/PROTOCOL.md``, "Encoding"):

- unsigned integers (``u16``, ``u32``, ``u64``) are varints: one byte below 251, else a marker
  (``FB`` u16, ``FC`` u32, ``FD`` u64) and the value little-endian, always the shortest form; a
  marker wider than the field is an error;
- ``bool`` is one byte, ``00`` or ``01``; ``Option<T>`` is ``00``, or ``01`` then ``T``;
- a string or a byte vector is its length as a varint ``u64``, then the bytes;
- a sequence is its length as a varint ``u64``, then its elements;
- an enum is its variant index as a varint ``u32``, then the variant's fields in order.

:class:`Writer` and :class:`Reader` implement exactly these; the frame modules
(:mod:`clusterd_worker.protocol`, :mod:`clusterd_worker.bus_protocol`) say which field comes when.
"""

from __future__ import annotations

import struct
from typing import Optional

__all__ = ["CodecError", "Oversized", "Malformed", "Trailing", "Writer", "Reader", "varint"]

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

#: The largest value of each unsigned field width, by its number of bits.
_MAX = {16: 0xFFFF, 32: 0xFFFF_FFFF, 64: 0xFFFF_FFFF_FFFF_FFFF}


def varint(value: int) -> bytes:
    """The varint bytes of an unsigned ``value`` (the caller checks the field's width)."""
    if value < 251:
        return bytes((value,))
    if value <= 0xFFFF:
        return b"\xfb" + _U16.pack(value)
    if value <= 0xFFFF_FFFF:
        return b"\xfc" + _U32.pack(value)
    return b"\xfd" + _U64.pack(value)


class CodecError(ValueError):
    """Bytes that are not a frame, or a frame that cannot be encoded within the limits."""


class Oversized(CodecError):
    """A frame over the protocol's size limit; nothing was sent or decoded."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes")
        #: The size of the frame (or the size seen before giving up).
        self.size = size
        #: The limit it exceeds.
        self.limit = limit


class Malformed(CodecError):
    """The bytes do not decode: a truncated field, a bad varint marker, an unknown tag."""


class Trailing(CodecError):
    """A frame decoded, but bytes were left over after it."""

    def __init__(self, used: int, trailing: int) -> None:
        super().__init__(f"malformed frame: {trailing} trailing bytes after a {used}-byte frame")
        #: Bytes the frame used.
        self.used = used
        #: Bytes left over.
        self.trailing = trailing


class Writer:
    """Appends encoded fields to a ``bytearray``."""

    __slots__ = ("buf",)

    def __init__(self, buf: Optional[bytearray] = None) -> None:
        #: The bytes written so far.
        self.buf = bytearray() if buf is None else buf

    def uint(self, value: int, bits: int) -> "Writer":
        """Writes an unsigned integer of a field ``bits`` wide (16, 32 or 64) as a varint."""
        if not 0 <= value <= _MAX[bits]:
            raise CodecError(f"{value} does not fit an unsigned {bits}-bit field")
        buf = self.buf
        if value < 251:
            buf.append(value)
        elif value <= 0xFFFF:
            buf.append(0xFB)
            buf += _U16.pack(value)
        elif value <= 0xFFFF_FFFF:
            buf.append(0xFC)
            buf += _U32.pack(value)
        else:
            buf.append(0xFD)
            buf += _U64.pack(value)
        return self

    def u16(self, value: int) -> "Writer":
        """Writes a ``u16`` field."""
        return self.uint(value, 16)

    def u32(self, value: int) -> "Writer":
        """Writes a ``u32`` field (also an enum tag)."""
        return self.uint(value, 32)

    def u64(self, value: int) -> "Writer":
        """Writes a ``u64`` field (also a length)."""
        return self.uint(value, 64)

    def boolean(self, value: bool) -> "Writer":
        """Writes a ``bool``: one byte, 0 or 1."""
        self.buf.append(1 if value else 0)
        return self

    def raw(self, value: bytes) -> "Writer":
        """Writes bytes with no length (a fixed-size array such as an IPv4 address)."""
        self.buf += value
        return self

    def bytes(self, value: bytes) -> "Writer":
        """Writes a byte vector: its length, then the bytes."""
        self.u64(len(value))
        self.buf += value
        return self

    def string(self, value: str) -> "Writer":
        """Writes a string: its UTF-8 length, then its UTF-8 bytes."""
        return self.bytes(value.encode("utf-8"))


class Reader:
    """Reads encoded fields from a buffer, refusing anything PROTOCOL.md does not allow."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        #: The buffer.
        self.data = data
        #: The next byte to read.
        self.pos = pos

    def _take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise Malformed(f"malformed frame: truncated ({n} bytes needed at offset {self.pos})")
        chunk = self.data[self.pos:end]
        self.pos = end
        return bytes(chunk)

    def uint(self, bits: int) -> int:
        """Reads a varint of a field ``bits`` wide; a marker wider than the field is an error."""
        if self.pos >= len(self.data):
            raise Malformed(f"malformed frame: truncated (integer expected at offset {self.pos})")
        first = self.data[self.pos]
        self.pos += 1
        if first < 251:
            return first
        if first == 0xFB:
            kind = _U16
        elif first == 0xFC and bits >= 32:
            kind = _U32
        elif first == 0xFD and bits >= 64:
            kind = _U64
        else:
            raise Malformed(f"malformed frame: varint marker {first:#04x} in a {bits}-bit field")
        if self.pos + kind.size > len(self.data):
            raise Malformed(f"malformed frame: truncated ({kind.size} bytes needed at offset {self.pos})")
        (value,) = kind.unpack_from(self.data, self.pos)
        self.pos += kind.size
        return int(value)

    def u16(self) -> int:
        """Reads a ``u16`` field."""
        return self.uint(16)

    def u32(self) -> int:
        """Reads a ``u32`` field (also an enum tag)."""
        return self.uint(32)

    def u64(self) -> int:
        """Reads a ``u64`` field (also a length)."""
        return self.uint(64)

    def boolean(self) -> bool:
        """Reads a ``bool``; any byte but 0 or 1 is an error."""
        value = self._take(1)[0]
        if value > 1:
            raise Malformed(f"malformed frame: {value} is not a bool")
        return value == 1

    def raw(self, n: int) -> bytes:
        """Reads ``n`` bytes with no length (a fixed-size array)."""
        return self._take(n)

    def length(self) -> int:
        """Reads a length, checked against the bytes left so a lie allocates nothing."""
        n = self.u64()
        if n > len(self.data) - self.pos:
            raise Malformed(f"malformed frame: truncated (length {n} with {len(self.data) - self.pos} bytes left)")
        return n

    def bytes(self) -> bytes:
        """Reads a byte vector."""
        return self._take(self.length())

    def string(self) -> str:
        """Reads a UTF-8 string."""
        raw = self.bytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise Malformed(f"malformed frame: a string is not UTF-8 ({error})") from None

    def tag(self, kinds: int, what: str) -> int:
        """Reads an enum tag, refusing one at or over ``kinds``."""
        if self.pos >= len(self.data):
            raise Malformed(f"malformed frame: no tag for {what}")
        tag = self.u32()
        if tag >= kinds:
            raise Malformed(f"malformed frame: unknown tag {tag} for {what}")
        return tag

    def finish(self) -> None:
        """Checks that the frame used every byte."""
        if self.pos != len(self.data):
            raise Trailing(self.pos, len(self.data) - self.pos)
