"""Encodings of the wire protocol: JSON text frames and CBOR binary frames.

Sans-I/O: turns frame maps into payload bytes and back, and checks that an application
value (a message's ``data``) stays inside the data model both encodings share:

    None, bool, int, finite float, str, bytes, list, and maps with string keys

nested at most ``MAX_DEPTH`` deep. Anything else is refused with a ``bad_request`` error,
never dropped or altered in silence.

Bytes have no JSON form, so a JSON reader gets them as ``{"$bytes": "<base64>"}`` (standard
alphabet, with padding). That is the one documented lossless form: a JSON client that wants
bytes back decodes maps of exactly that shape.
"""

from __future__ import annotations

import base64
import enum
import json
import math
from typing import Any

import cbor2

MAX_DEPTH = 64
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
    """A payload that is not one well-formed frame map of the connection's encoding."""


class ValueNotCarried(ValueError):
    """An application value outside the shared data model."""


def check_value(value: Any, depth: int = 0) -> None:
    """Raise ValueNotCarried unless ``value`` is inside the shared data model.

    Also refuses what the model admits on paper but an encoder cannot write (a lone
    surrogate, an int too long for JSON text): the hub must never hold a message that would
    fail in every subscriber's writer.
    """
    if depth > MAX_DEPTH:
        raise ValueNotCarried(f"data nests deeper than {MAX_DEPTH} levels")
    kind = type(value)
    if value is None or kind is bool or kind is bytes:
        return
    if kind is str:
        _check_text(value)
        return
    if kind is int:
        if value.bit_length() > _LONG_INT_BITS:
            try:
                repr(value)
            except ValueError:
                raise ValueNotCarried("data holds an integer too long to write as JSON") from None
        return
    if kind is float:
        if not math.isfinite(value):
            raise ValueNotCarried("data holds a non-finite float (NaN or infinity)")
        return
    if kind is list:
        for item in value:
            check_value(item, depth + 1)
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise ValueNotCarried("data holds a map key that is not a string")
            _check_text(key)
            check_value(item, depth + 1)
        return
    raise ValueNotCarried(f"data holds a value of unsupported type {kind.__name__}")


def _check_text(text: str) -> None:
    """A JSON ``\\ud800`` escape decodes to a lone surrogate, which no encoder can write."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueNotCarried("data holds a lone surrogate, which is not text") from None


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {BYTES_KEY: base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"{type(value).__name__} has no JSON form")


_json_encoder = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_default
)


def encode(frame: dict[str, Any], encoding: Encoding) -> bytes:
    """Encode one frame map into payload bytes (UTF-8 text for JSON)."""
    if encoding is Encoding.JSON:
        return _json_encoder.encode(frame).encode("utf-8")
    return cbor2.dumps(frame)


def _refuse_constant(name: str) -> Any:
    raise DecodeError(f"JSON constant {name} is not allowed")


_JSON_DECODER: json.JSONDecoder  # built once below (json.loads with options builds one per call)


def decode(payload: str | bytes, encoding: Encoding) -> dict[str, Any]:
    """Decode one payload into a frame map, or raise DecodeError with a readable reason."""
    try:
        if encoding is Encoding.JSON:
            if not isinstance(payload, str):
                payload = payload.decode("utf-8")
            value = _JSON_DECODER.decode(payload)
        else:
            value = cbor2.loads(payload)
    except DecodeError:
        raise
    except RecursionError:
        raise DecodeError("frame nests too deeply") from None
    except (ValueError, UnicodeDecodeError, cbor2.CBORDecodeError) as exc:
        kind = "JSON" if encoding is Encoding.JSON else "CBOR"
        raise DecodeError(f"malformed {kind}: {_first_line(exc)}") from None
    except Exception as exc:  # cbor2 can raise odd types on hostile input
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
