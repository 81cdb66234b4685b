"""Encodings of the wire protocol: JSON text frames and CBOR binary frames.

Sans-I/O: turns frame maps into payload bytes and back, and checks that an application
value (a message's ``data``) stays inside the data model both encodings share:

    None, bool, int, finite float, str, bytes, list, and maps with string keys

nested at most ``MAX_DEPTH`` deep. Anything else is refused with a ``bad_request`` error,
never dropped or altered in silence.

Bytes have no JSON form, so a JSON reader gets them as ``{"$bytes": "<base64>"}`` (standard
alphabet, with padding). That is the one documented lossless form: a JSON client that wants
bytes back decodes maps of exactly that shape.

What a client sends is decoded so that the decoded frame is bounded by the bytes received
and decoding is linear in them (a hostile client picks every byte):
- CBOR: every tag except 2 and 3 (bignums) is refused, before its decoder runs: shared
  references (28/29) and string references (25/256) alias one value many times (a DAG of
  them expands exponentially when encoded), and the rest (dates, decimals, rationals,
  regular expressions, MIME, UUIDs, sets...) are outside the data model anyway, some costly
  to build (a bigfloat's ``2**exponent``, a regex compile). Map keys must be strings (no
  hash-colliding integer keys); nesting stops at ``MAX_DEPTH`` plus the frame's own levels.
- JSON: a ``\\ud800``-style escape that leaves a lone surrogate anywhere in the frame (type,
  channel, key, data...) is refused: no encoder can write it back.
Both are a ``DecodeError``, answered with ``bad_request``.
"""

from __future__ import annotations

import base64
import enum
import json
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

import cbor2

MAX_DEPTH = 64
_FRAME_DEPTH = MAX_DEPTH + 4  # CBOR nesting cbor2 stops at: data's levels, the frame map, slack
_BIGNUM_TAGS = (2, 3)  # unsigned and negative bignums: the only CBOR tags the data model needs
BYTES_KEY = "$bytes"
_LONG_INT_BITS = 4096  # ints this long may pass Python's int-to-text digit limit


class Encoding(enum.Enum):
    JSON = "wsnursery.v1.json"
    CBOR = "wsnursery.v1.cbor"

    @property
    def subprotocol(self) -> str:
        return self.value

    @property
    def is_binary(self) -> bool:
        return self is Encoding.CBOR

    @classmethod
    def negotiate(cls, offered: list[str] | tuple[str, ...]) -> tuple[Encoding, str | None]:
        """Pick the encoding for a handshake: the first one of ours the client offers.

        Returns the encoding and the subprotocol to answer with (None when the client
        offered none of ours: it gets JSON and no ``Sec-WebSocket-Protocol`` header).
        """
        for name in offered:
            for encoding in cls:
                if name == encoding.value:
                    return encoding, name
        return cls.JSON, None


class DecodeError(Exception):
    """A payload that is not one well-formed frame map of the connection's encoding.

    ``request_id`` is the frame's ``id`` when the payload decoded to a map with a valid one
    (a refusal found after decoding, such as a lone surrogate), so the error can name it.
    """

    def __init__(self, reason: str, request_id: int | None = None) -> None:
        super().__init__(reason)
        self.request_id = request_id


class ValueNotCarried(ValueError):
    """An application value outside the shared data model."""


def check_value(value: Any, depth: int = 0) -> int:
    """Raise ValueNotCarried unless ``value`` is inside the shared data model; else return
    an estimate of the memory ``value`` holds, in bytes (``footprint``).

    Also refuses what the model admits on paper but an encoder cannot write (a lone
    surrogate, an int too long for JSON text): the hub must never hold a message that would
    fail in every subscriber's writer.

    The estimate follows CPython's object sizes (``sys.getsizeof``, 64-bit), counting a
    value each time it is reached: small containers cost far more than the bytes they were
    sent in (``[{},{}]``: 3 bytes an item on the wire, about 72 in memory), so the hub
    bounds history by this, not by the payload's length.
    """
    if depth > MAX_DEPTH:
        raise ValueNotCarried(f"data nests deeper than {MAX_DEPTH} levels")
    kind = type(value)
    if value is None or kind is bool:
        return 0  # shared singletons
    if kind is bytes:
        return 33 + len(value)
    if kind is str:
        return _check_text(value)
    if kind is int:
        bits: int = value.bit_length()
        if bits > _LONG_INT_BITS:
            try:
                repr(value)
            except ValueError:
                raise ValueNotCarried("data holds an integer too long to write as JSON") from None
        return 28 + 4 * (bits // 30)
    if kind is float:
        if not math.isfinite(value):
            raise ValueNotCarried("data holds a non-finite float (NaN or infinity)")
        return 24
    if kind is list:
        size = 56 + 8 * len(value)
        for item in value:
            size += check_value(item, depth + 1)
        return size
    if kind is dict:
        size = 120 + 40 * len(value) if value else 64
        for key, item in value.items():
            if type(key) is not str:
                raise ValueNotCarried("data holds a map key that is not a string")
            size += _check_text(key) + check_value(item, depth + 1)
        return size
    raise ValueNotCarried(f"data holds a value of unsupported type {kind.__name__}")


def _check_text(text: str) -> int:
    """A JSON ``\\ud800`` escape decodes to a lone surrogate, which no encoder can write.
    Returns the string's size estimate (4 bytes a character when it is not ASCII)."""
    if text.isascii():
        return 49 + len(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueNotCarried("data holds a lone surrogate, which is not text") from None
    return 76 + 4 * len(text)


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {BYTES_KEY: base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"{type(value).__name__} has no JSON form")


_json_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_default)


def encode(frame: dict[str, Any], encoding: Encoding) -> bytes:
    """Encode one frame map into payload bytes (UTF-8 text for JSON)."""
    if encoding is Encoding.JSON:
        return _json_encoder.encode(frame).encode("utf-8")
    return cbor2.dumps(frame)


def _refuse_constant(name: str) -> Any:
    raise DecodeError(f"JSON constant {name} is not allowed")


class _RefusedTag(Exception):
    pass


def _refuse_tag(tag: int) -> NoReturn:
    if tag in (28, 29):
        why = "shared references are not allowed"
    elif tag in (25, 256):
        why = "string references are not allowed"
    else:
        why = "only tags 2 and 3 (bignums) are allowed"
    raise _RefusedTag(f"CBOR tag {tag}: {why}")


class _OnlyBignums(Mapping[int, Any]):
    """cbor2's ``semantic_decoders``: consulted for every tag before its built-in decoder, so
    every tag but the bignums is refused before anything is built from it (an allowlist,
    whatever tags a cbor2 version knows)."""

    def __getitem__(self, tag: int) -> Any:
        if tag in _BIGNUM_TAGS:
            raise KeyError(tag)  # cbor2's own bignum decoder
        _refuse_tag(tag)

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Iterator[int]:
        return iter(())


_ONLY_BIGNUMS = _OnlyBignums()


def _tag_hook(tag: cbor2.CBORTag, immutable: bool) -> NoReturn:
    """Tags with no decoder at all (also refused by ``_OnlyBignums``; this is the backstop)."""
    _refuse_tag(tag.tag)


def _decode_cbor(payload: bytes) -> Any:
    try:
        return cbor2.loads(
            payload,
            semantic_decoders=_ONLY_BIGNUMS,
            tag_hook=_tag_hook,
            max_depth=_FRAME_DEPTH,
            strict_hashable_types=True,  # map keys: strings only (bytes keys fail check_value)
        )
    except cbor2.CBORDecodeError as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, _RefusedTag):
            cause = cause.__cause__
        reason = str(cause) if cause is not None else f"malformed CBOR: {_first_line(exc)}"
        raise DecodeError(reason, _cbor_frame_id(payload)) from None


def _cbor_head(payload: bytes, pos: int) -> tuple[int, int | None, int]:
    """(major type, argument or None for indefinite, position after the head) of one item."""
    first = payload[pos]
    major, info = first >> 5, first & 0x1F
    if info < 24:
        return major, info, pos + 1
    if info < 28:
        size = 1 << (info - 24)
        end = pos + 1 + size
        if end > len(payload):
            raise IndexError("truncated")
        return major, int.from_bytes(payload[pos + 1 : end], "big"), end
    if info == 31 and major in (2, 3, 4, 5, 7):
        return major, None, pos + 1
    raise ValueError("reserved additional information")


def _cbor_skip(payload: bytes, pos: int) -> int:
    """Position after the well-formed item at ``pos`` (raises IndexError or ValueError if it
    is not). Iterative and linear: each head is read once, strings are jumped over."""
    pending = 1  # items still to skip at this level (-1: indefinite, until a break)
    stack: list[int] = []
    while True:
        while pending == 0:
            if not stack:
                return pos
            pending = stack.pop()
        major, argument, pos = _cbor_head(payload, pos)
        if major == 7 and argument is None:  # a break
            if pending != -1:
                raise ValueError("unexpected break")
            pending = stack.pop()  # the indefinite item is done: back to its parent
            continue
        if pending > 0:
            pending -= 1
        if major in (2, 3):
            if argument is None:
                stack.append(pending)
                pending = -1  # chunks until the break
            else:
                pos += argument
                if pos > len(payload):
                    raise IndexError("truncated")
        elif major in (4, 5):
            count = -1 if argument is None else argument * (2 if major == 5 else 1)
            stack.append(pending)
            pending = count
        elif major == 6:
            stack.append(pending)
            pending = 1  # the tagged item


def _cbor_frame_id(payload: bytes) -> int | None:
    """The ``id`` of a top-level CBOR map whose decoding was refused, when the map is well
    formed up to it, so the ``bad_request`` can name the request; else None. Error path only."""
    try:
        major, count, pos = _cbor_head(payload, 0)
        if major != 5:
            return None
        index = 0
        while count is None or index < count:
            if count is None and payload[pos] == 0xFF:
                return None
            if payload[pos : pos + 3] == b"\x62id":  # the text string "id"
                major, value, _ = _cbor_head(payload, pos + 3)
                return value if major == 0 and value is not None and value < 2**63 else None
            pos = _cbor_skip(payload, _cbor_skip(payload, pos))
            index += 1
    except (IndexError, ValueError):
        pass
    return None


# A JSON escape of a surrogate code point: the one way a lone surrogate gets into decoded text.
# (An escaped backslash followed by "ud800" also matches: that only costs a walk that finds nothing.)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def _check_json_text(value: Any) -> None:
    """Raise DecodeError if any string in the decoded frame (key or value) is a lone surrogate.

    Iterative, so nesting as deep as the JSON decoder allows costs no recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is str:
            _check_text(item)
        elif type(item) is list:
            stack.extend(item)
        elif type(item) is dict:
            stack.extend(item)
            stack.extend(item.values())


def _frame_id(value: Any) -> int | None:
    request_id = value.get("id") if isinstance(value, dict) else None
    return request_id if type(request_id) is int and 0 <= request_id < 2**63 else None


_JSON_DECODER: json.JSONDecoder  # built once below (json.loads with options builds one per call)


def decode(payload: str | bytes, encoding: Encoding) -> dict[str, Any]:
    """Decode one payload into a frame map, or raise DecodeError with a readable reason."""
    try:
        if encoding is Encoding.JSON:
            if not isinstance(payload, str):
                payload = payload.decode("utf-8")
            value = _JSON_DECODER.decode(payload)
            if "\\u" in payload and _SURROGATE_ESCAPE.search(payload):
                try:
                    _check_json_text(value)
                except ValueNotCarried:
                    raise DecodeError(
                        "text holds a lone surrogate (a \\ud800-\\udfff escape alone), which is not text",
                        _frame_id(value),
                    ) from None
        else:
            value = _decode_cbor(payload.encode("utf-8") if isinstance(payload, str) else payload)
    except DecodeError:
        raise
    except RecursionError:
        raise DecodeError("frame nests too deeply") from None
    except (ValueError, UnicodeDecodeError, cbor2.CBORDecodeError) as exc:
        kind = "JSON" if encoding is Encoding.JSON else "CBOR"
        raise DecodeError(f"malformed {kind}: {_first_line(exc)}") from None
    except Exception as exc:
        raise DecodeError(f"malformed frame: {_first_line(exc)}") from None
    if not isinstance(value, dict):
        raise DecodeError("a frame must be a map with a 'type'")
    return value


def bytes_from_json(value: Any) -> Any:
    """Undo the JSON bytes form everywhere inside ``value`` (for JSON clients)."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get(BYTES_KEY), str):
            try:
                return base64.b64decode(value[BYTES_KEY], validate=True)
            except ValueError:
                return value
        return {key: bytes_from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [bytes_from_json(item) for item in value]
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


_JSON_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
