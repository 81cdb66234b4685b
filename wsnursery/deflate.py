"""permessage-deflate (RFC 7692), sans-I/O: negotiation, one-shot compression, bounded inflation.

Why our own and not wsproto's or websockets' extension object: both keep one compressor per
connection and compress each outgoing frame for that connection. The server's point is the
opposite: a broadcast is encoded once and the *same frame bytes* go to every subscriber. That
works with compression only when each message is compressed on its own, from a fresh deflate
context: ``server_no_context_takeover``. RFC 7692 §7.1.1.1 lets a server add that parameter
to any offer it accepts, so the server always does, and one compressed payload (per window
size, see below) then serves every connection that negotiated the extension.

What a client may still ask of us, and what we do:

- ``server_max_window_bits=N`` (8-15): we compress with an N-bit window, so payloads are
  cached per window size (almost every client asks for none, which is 15). zlib cannot
  deflate with an 8-bit window, so for N = 8 we deflate with ``Z_HUFFMAN_ONLY``: literals only,
  no back-references, which any window size can inflate.
- ``client_no_context_takeover``: echoed; the connection then drops its inflater after every
  message. The server may also add it to any offer (RFC 7692 §7.1.1.2), and does unless
  told to let clients keep their context (``client_context=True``): then no connection holds
  an inflater between messages. Without it the client may reference earlier messages, and the connection keeps one
  zlib inflater between messages: 2**bits bytes of window plus about 7 KiB of state, allocated
  at the first compressed message (not at the handshake). ``client_max_window_bits`` (when the
  client says it may be limited) is answered with the server's configured limit, which bounds
  that window.

Inflating is bounded by the message size limit while it happens: ``Inflater.feed`` never
produces more than the bytes still allowed, so a decompression bomb is refused with 1009 after
``max_message_size + 1`` bytes of output, whatever its ratio.
"""

from __future__ import annotations

import zlib

import attrs

from .wire import CloseCode

EXTENSION = "permessage-deflate"
MIN_WINDOW_BITS = 8
MAX_WINDOW_BITS = 15
# The empty stored block a sync flush ends with; the sender strips it, the receiver adds it back.
_TAIL = b"\x00\x00\xff\xff"
_MAX_OFFERS = 16  # offers looked at in one header; the rest are ignored


class InflateError(Exception):
    """A compressed message that cannot be accepted; ``code`` is the close code to send."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@attrs.frozen
class Agreement:
    """The parameters both sides agreed to, and the response header value that says so."""

    client_no_context_takeover: bool
    client_max_window_bits: int
    server_max_window_bits: int

    @property
    def header(self) -> str:
        params = [EXTENSION, "server_no_context_takeover"]
        if self.client_no_context_takeover:
            params.append("client_no_context_takeover")
        if self.server_max_window_bits != MAX_WINDOW_BITS:
            params.append(f"server_max_window_bits={self.server_max_window_bits}")
        if self.client_max_window_bits != MAX_WINDOW_BITS:
            params.append(f"client_max_window_bits={self.client_max_window_bits}")
        return "; ".join(params)


def _split(value: str, separator: str) -> list[str]:
    """Split on ``separator`` outside double quotes (extension values may be quoted tokens)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts]


def _window_bits(value: str | None) -> int | None:
    if value is None or not value.isdigit() or len(value) > 2:
        return None
    bits = int(value)
    return bits if MIN_WINDOW_BITS <= bits <= MAX_WINDOW_BITS else None


def _accept(params: list[str], client_window_limit: int, client_context: bool) -> Agreement | None:
    """The agreement for one offer's parameters, or None to decline it (RFC 7692 §7.1)."""
    seen: set[str] = set()
    client_no_context_takeover = not client_context
    client_bits = MAX_WINDOW_BITS
    server_bits = MAX_WINDOW_BITS
    for param in params:
        name, has_value, raw = param.partition("=")
        name = name.strip().lower()
        value = raw.strip().strip('"') if has_value else None
        if name in seen:
            return None  # a parameter named twice: decline the offer (§7)
        seen.add(name)
        if name == "server_no_context_takeover" or name == "client_no_context_takeover":
            if value is not None:
                return None
            client_no_context_takeover = client_no_context_takeover or name.startswith("client")
        elif name == "server_max_window_bits":
            bits = _window_bits(value)
            if bits is None:
                return None
            server_bits = bits
        elif name == "client_max_window_bits":
            if value is None:
                client_bits = client_window_limit  # the client may limit its window: we ask it to
            else:
                bits = _window_bits(value)
                if bits is None:
                    return None
                client_bits = min(bits, client_window_limit)
        else:
            return None  # an unknown parameter: decline the offer
    return Agreement(client_no_context_takeover, client_bits, server_bits)


def negotiate(header: str, client_window_limit: int = MAX_WINDOW_BITS, client_context: bool = True) -> Agreement | None:
    """Accept the first acceptable permessage-deflate offer in a Sec-WebSocket-Extensions value.

    ``header`` is every ``Sec-WebSocket-Extensions`` line of the request joined with ", ".
    ``client_window_limit`` is the largest window we let a client compress with; it only binds
    a client whose offer says it can be limited (``client_max_window_bits``), as §7.1.2.2 says.
    ``client_context=False`` answers every accepted offer with ``client_no_context_takeover``.
    None when nothing was offered that we accept: the connection then runs uncompressed.
    """
    for offer in _split(header, ",")[:_MAX_OFFERS]:
        params = _split(offer, ";")
        if params[0].lower() != EXTENSION:
            continue
        agreement = _accept([param for param in params[1:] if param], client_window_limit, client_context)
        if agreement is not None:
            return agreement
    return None


def compress(payload: bytes, window_bits: int = MAX_WINDOW_BITS, level: int = 6) -> bytes:
    """One message's payload deflated from a fresh context, without the sync-flush tail.

    The result is what goes in the frame with RSV1 set, the same for every connection that
    agreed to ``window_bits``. For 8 bits, zlib has no such window: literals only (no
    back-reference at all) is valid for any receiving window.
    """
    if window_bits == MIN_WINDOW_BITS:
        compressor = zlib.compressobj(level, zlib.DEFLATED, -9, 8, zlib.Z_HUFFMAN_ONLY)
    else:
        compressor = zlib.compressobj(level, zlib.DEFLATED, -window_bits)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4] if data.endswith(_TAIL) else data


def wire_bound(max_size: int) -> int:
    """The most compressed bytes a message of ``max_size`` inflated bytes can take (zlib's
    deflateBound for stored blocks, plus room for empty blocks): more is refused with 1009."""
    return max_size + (max_size >> 12) + (max_size >> 14) + 64


class Inflater:
    """Inflates the compressed messages of one connection, bounded by the message size limit.

    ``feed`` takes each frame's payload of a compressed message in turn and ``finish`` ends the
    message, returning the rest of its bytes. Output beyond ``max_size`` in total raises
    ``InflateError(1009)`` while inflating; data zlib refuses raises ``InflateError(1007)``.
    """

    def __init__(self, window_bits: int, no_context_takeover: bool, max_size: int) -> None:
        # zlib inflates 8-bit-window streams with a 9-bit window; a 9-bit one accepts both.
        self._bits = max(window_bits, 9)
        self._no_context_takeover = no_context_takeover
        self._max_size = max_size
        self._inflater: zlib._Decompress | None = None
        self._produced = 0

    @property
    def holds_context(self) -> bool:
        """Whether a zlib inflater (its window and state) is kept between messages."""
        return self._inflater is not None

    def feed(self, data: bytes) -> bytes:
        if self._inflater is None:
            self._inflater = zlib.decompressobj(-self._bits)
        return self._inflate(data)

    def finish(self) -> bytes:
        """End the message: feed the stripped tail and reset for the next message.

        A client may end a message with a final block (BFINAL=1) instead of a sync flush
        (RFC 7692 §7.2.3.5): its stream is then over, and the next message starts a new one.
        """
        tail = self.feed(_TAIL)
        self._produced = 0
        if self._no_context_takeover or (self._inflater is not None and self._inflater.eof):
            self._inflater = None
        return tail

    def _inflate(self, data: bytes) -> bytes:
        assert self._inflater is not None
        room = self._max_size - self._produced
        try:
            out = self._inflater.decompress(data, room + 1)
        except zlib.error as exc:
            self._inflater = None
            raise InflateError(CloseCode.INVALID_PAYLOAD, f"bad compressed data: {exc}") from None
        self._produced += len(out)
        if self._produced > self._max_size or self._inflater.unconsumed_tail:
            self._inflater = None
            raise InflateError(CloseCode.TOO_BIG, f"message over {self._max_size} bytes once inflated")
        return out
