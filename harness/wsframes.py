"""Sans-I/O splitter for one direction of a WebSocket TCP stream.

`FrameSplitter.feed(data)` passes the HTTP/1.1 handshake head through as one
`Handshake` chunk, then cuts the rest into complete raw `Frame` chunks. It
never rewrites a byte: joining every chunk's ``raw`` in order gives back the
input exactly. Memory is bounded by the largest frame accepted (plus what
one ``feed`` call hands in).
"""

from __future__ import annotations

import enum

import attrs

MAX_HANDSHAKE_BYTES = 16 * 1024
MAX_FRAME_HEADER_BYTES = 14  # 2 fixed + 8 extended length + 4 mask key
MAX_FRAME_BYTES = 16 * 1024 * 1024 + MAX_FRAME_HEADER_BYTES
HANDSHAKE_END = b"\r\n\r\n"


class Opcode(enum.IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class FrameSplitError(Exception):
    """The stream cannot be split: oversized head or frame, or a bad length."""


@attrs.frozen
class Handshake:
    """The HTTP/1.1 upgrade head, up to and including the blank line."""

    raw: bytes


@attrs.frozen
class Frame:
    """One complete WebSocket frame, exactly as it was on the wire."""

    raw: bytes
    opcode: int
    fin: bool
    masked: bool
    payload_length: int

    @property
    def is_data(self) -> bool:
        """Text, binary or continuation (any non-control opcode)."""
        return self.opcode < 0x8

    @property
    def is_control(self) -> bool:
        """Close, ping or pong (opcodes 0x8 and up)."""
        return not self.is_data

    @property
    def is_whole_message(self) -> bool:
        """An unfragmented message: FIN set and not a continuation."""
        return self.is_data and self.fin and self.opcode != Opcode.CONTINUATION


Chunk = Handshake | Frame


@attrs.define
class _Header:
    length: int  # header bytes, including the mask key
    payload_length: int
    opcode: int
    fin: bool
    masked: bool


def _parse_header(buffer: bytearray) -> _Header | None:
    """The frame header at the start of ``buffer``, or None if incomplete."""
    if len(buffer) < 2:
        return None
    first, second = buffer[0], buffer[1]
    masked = bool(second & 0x80)
    length_code = second & 0x7F
    extended = {126: 2, 127: 8}.get(length_code, 0)
    header_length = 2 + extended + (4 if masked else 0)
    if len(buffer) < header_length:
        return None
    if extended:
        payload_length = int.from_bytes(buffer[2 : 2 + extended], "big")
        if payload_length >> 63:
            raise FrameSplitError("64-bit frame length has its top bit set")
    else:
        payload_length = length_code
    return _Header(
        length=header_length,
        payload_length=payload_length,
        opcode=first & 0x0F,
        fin=bool(first & 0x80),
        masked=masked,
    )


@attrs.define
class FrameSplitter:
    """Incremental splitter for one direction of one WebSocket connection.

    Set ``expect_handshake=False`` to split a stream that starts with frames.
    After a `FrameSplitError` the splitter is broken and refuses more input.
    """

    expect_handshake: bool = True
    max_handshake_bytes: int = MAX_HANDSHAKE_BYTES
    max_frame_bytes: int = MAX_FRAME_BYTES
    _buffer: bytearray = attrs.field(factory=bytearray, init=False)
    _in_handshake: bool = attrs.field(init=False)
    _searched: int = attrs.field(default=0, init=False)
    _header: _Header | None = attrs.field(default=None, init=False)
    _broken: bool = attrs.field(default=False, init=False)

    @_in_handshake.default
    def _start_in_handshake(self) -> bool:
        return self.expect_handshake

    @property
    def buffered(self) -> int:
        """Bytes held back while waiting for the rest of a head or frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Chunk]:
        """Take more bytes; return every chunk they complete, in order."""
        if self._broken:
            raise FrameSplitError("splitter already failed")
        self._buffer += data
        try:
            return self._split()
        except FrameSplitError:
            self._broken = True
            raise

    def _split(self) -> list[Chunk]:
        chunks: list[Chunk] = []
        if self._in_handshake:
            head = self._take_handshake()
            if head is None:
                return chunks
            chunks.append(head)
        while (frame := self._take_frame()) is not None:
            chunks.append(frame)
        return chunks

    def _take_handshake(self) -> Handshake | None:
        end = self._buffer.find(HANDSHAKE_END, max(0, self._searched - 3))
        if end < 0:
            self._searched = len(self._buffer)
            if self._searched > self.max_handshake_bytes:
                raise FrameSplitError(f"handshake head exceeds {self.max_handshake_bytes} bytes")
            return None
        head_length = end + len(HANDSHAKE_END)
        if head_length > self.max_handshake_bytes:
            raise FrameSplitError(f"handshake head of {head_length} bytes exceeds {self.max_handshake_bytes}")
        self._in_handshake = False
        return Handshake(self._take(head_length))

    def _take_frame(self) -> Frame | None:
        if self._header is None:
            self._header = _parse_header(self._buffer)
            if self._header is None:
                return None
            size = self._header.length + self._header.payload_length
            if size > self.max_frame_bytes:
                raise FrameSplitError(f"frame of {size} bytes exceeds the {self.max_frame_bytes} byte limit")
        header = self._header
        size = header.length + header.payload_length
        if len(self._buffer) < size:
            return None
        self._header = None
        return Frame(
            raw=self._take(size),
            opcode=header.opcode,
            fin=header.fin,
            masked=header.masked,
            payload_length=header.payload_length,
        )

    def _take(self, size: int) -> bytes:
        taken = bytes(self._buffer[:size])
        del self._buffer[:size]
        return taken
