"""Property tests against one live server: garbage never crashes it, and data survives it.

One Server runs for the whole module in a background thread (its own ``trio.run``); the
examples drive it with the ``websockets`` sync client, reusing a connection per encoding
until the server closes it. Every garbage frame must be answered with an ``error`` frame or
a close with a protocol close code; after a close a fresh connection must get ``welcome``;
and the server must never log an error (an exception escaping a connection's tasks).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from typing import Any

import cbor2
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from wsnursery import codec
from wsnursery.codec import Encoding
from wsnursery.config import Config
from wsnursery.server import Server

from .conftest import TEST_DEFAULTS
from .test_server_codec_props import VALUES, keys, same

TIMEOUT = 10
PROTOCOL_CLOSE_CODES = {1002, 1003, 1007, 1008, 1009}
MAX_MESSAGE_SIZE = 4096
REQUEST_TYPES = ["subscribe", "unsubscribe", "publish", "ack", "replay"]


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Background:
    """The module's server, and one reusable client connection per encoding."""

    def __init__(self) -> None:
        self.port = 0
        self.server: Server | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.errors = _Errors()
        self._clients: dict[Encoding, ClientConnection] = {}
        self._stack = contextlib.ExitStack()  # every client connection, closed at the end

    def run(self, ready: threading.Event) -> None:
        async def main() -> None:
            config = Config(**(TEST_DEFAULTS | dict(max_errors=2**31 - 1, max_message_size=MAX_MESSAGE_SIZE)))
            self.server = Server(config)
            self.token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                self.port = (await nursery.start(self.server.run))[0]
                ready.set()

        trio.run(main)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def fresh(self, encoding: Encoding) -> ClientConnection:
        """A new connection; its first frame must be the welcome."""
        ws = self._stack.enter_context(
            connect(self.url, subprotocols=[encoding.subprotocol], open_timeout=TIMEOUT, close_timeout=TIMEOUT)
        )
        assert ws.subprotocol == encoding.subprotocol
        welcome = decode(ws.recv(timeout=TIMEOUT), encoding)
        assert welcome["type"] == "welcome", welcome
        return ws

    def client(self, encoding: Encoding) -> ClientConnection:
        if encoding not in self._clients:
            self._clients[encoding] = self.fresh(encoding)
        return self._clients[encoding]

    def closed(self, encoding: Encoding) -> None:
        self._clients.pop(encoding).close()
        self.client(encoding)  # a fresh connection still gets its welcome

    def close_all(self) -> None:
        self._clients.clear()
        self._stack.close()

    def assert_no_errors_logged(self) -> None:
        assert not self.errors.records, [r.getMessage() + str(r.exc_info) for r in self.errors.records]


def decode(payload: str | bytes, encoding: Encoding) -> dict[str, Any]:
    assert isinstance(payload, bytes) == encoding.is_binary, payload  # the right frame kind
    return codec.decode(payload, encoding)


def encode(frame: Any, encoding: Encoding) -> str | bytes:
    if encoding is Encoding.CBOR:
        return cbor2.dumps(frame)
    return json.dumps(frame)


@pytest.fixture(scope="module")
def live():
    background = Background()
    logger = logging.getLogger("wsnursery")
    logger.addHandler(background.errors)
    ready = threading.Event()
    thread = threading.Thread(target=background.run, args=(ready,), name="wsnursery-server", daemon=True)
    thread.start()
    assert ready.wait(TIMEOUT), "the background server did not start"
    try:
        yield background
    finally:
        background.close_all()
        trio.from_thread.run_sync(background.server.shutdown, trio_token=background.token)
        thread.join(TIMEOUT)
        logger.removeHandler(background.errors)
    assert not thread.is_alive(), "the background server did not stop"
    background.assert_no_errors_logged()


def exchange(live: Background, encoding: Encoding, payload: str | bytes, *, text: bool) -> dict[str, Any] | int:
    """Send one frame; the reply frame, or the close code when the server closed instead."""
    ws = live.client(encoding)
    try:
        ws.send(payload, text=text)
        return decode(ws.recv(timeout=TIMEOUT), encoding)
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else None
        live.closed(encoding)
        return code


def expect_error(reply: dict[str, Any] | int, code: str | None = None, request_id: Any = ...) -> None:
    assert isinstance(reply, dict), f"closed with {reply} where an error frame was due"
    assert reply["type"] == "error", reply
    assert isinstance(reply["reason"], str)
    if code is not None:
        assert reply["code"] == code, reply
    if request_id is not ...:
        assert reply.get("id") == request_id, reply


# -- raw garbage ----------------------------------------------------------------------------


@given(st.binary(max_size=300))
def test_random_bytes_on_cbor_get_an_error_frame(live, payload):
    expect_error(exchange(live, Encoding.CBOR, payload, text=False))
    live.assert_no_errors_logged()


@given(st.text(max_size=300))
def test_random_text_on_json_gets_an_error_frame(live, payload):
    expect_error(exchange(live, Encoding.JSON, payload, text=True))
    live.assert_no_errors_logged()


def _utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# Two thirds of these examples end in a close and a reconnect: half the profile's examples.
@settings(max_examples=max(1, settings().max_examples // 2))
@given(
    st.sampled_from(list(Encoding)),
    st.one_of(
        st.tuples(st.just("text"), st.binary(max_size=200)),  # sent unchecked: maybe not UTF-8
        st.tuples(st.just("text"), st.text(max_size=100).map(str.encode)),
        st.tuples(st.just("binary"), st.binary(max_size=200)),
        st.tuples(st.just("binary"), st.binary(min_size=MAX_MESSAGE_SIZE + 1, max_size=MAX_MESSAGE_SIZE + 64)),
    ),
)
def test_any_frame_on_any_subprotocol_gets_an_error_or_a_protocol_close(live, encoding, frame):
    kind, payload = frame
    reply = exchange(live, encoding, payload, text=kind == "text")
    if len(payload) > MAX_MESSAGE_SIZE:
        expected = 1009
    elif kind == "text" and not _utf8(payload):
        expected = 1007  # on either subprotocol: the stream wrapper sends that close itself
    elif (kind == "text") == encoding.is_binary:
        expected = 1003  # the wrong frame kind for the subprotocol
    else:
        expected = "error"
    if expected == "error":
        expect_error(reply)
    else:
        assert reply == expected, (reply, expected)
        assert reply in PROTOCOL_CLOSE_CODES
    live.assert_no_errors_logged()


# -- well-formed frames that are not valid requests -------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)
not_maps = json_values.filter(lambda value: not isinstance(value, dict))


@given(st.sampled_from(list(Encoding)), not_maps | st.binary().filter(bool))
def test_frames_that_are_not_maps_are_bad_requests(live, encoding, value):
    if isinstance(value, bytes) and encoding is Encoding.JSON:
        value = value.hex()
    expect_error(exchange(live, encoding, encode(value, encoding), text=not encoding.is_binary), "bad_request", None)
    live.assert_no_errors_logged()


def wrong(*excluded: type) -> st.SearchStrategy:
    """JSON values of none of the ``excluded`` types (bool is not int here, as on the wire)."""

    def ok(value: Any) -> bool:
        return not any(type(value) is kind for kind in excluded)

    return json_values.filter(ok)


valid_ids = st.integers(min_value=0, max_value=2**63 - 1)
channels = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:/-]{0,20}\Z")
FIELDS = {
    # field: (types a valid value may have, the request types that read it)
    "channel": ((str,), REQUEST_TYPES),
    "ack": ((bool,), ["subscribe"]),
    "since": ((dict,), ["subscribe", "replay"]),
    "key": ((str,), ["publish"]),
    "seq": ((int,), ["ack"]),
}


@st.composite
def wrongly_typed_requests(draw: st.DrawFn) -> tuple[dict[str, Any], str, int | None]:
    """A request with exactly one field of a wrong type: (frame, expected code, expected id)."""
    kind = draw(st.sampled_from(REQUEST_TYPES))
    frame: dict[str, Any] = {"type": kind, "channel": draw(channels)}
    request_id = draw(st.none() | valid_ids)
    if request_id is not None:
        frame["id"] = request_id
    # Unknown extra fields are ignored by the server; they must not change the answer.
    for name, value in draw(
        st.dictionaries(
            st.text(min_size=1).filter(
                lambda k: k not in {"type", "id", "channel", "ack", "since", "key", "seq", "data"}
            ),
            json_values,
            max_size=3,
        )
    ).items():
        frame[name] = value
    choices = ["id", "type"] + [f for f, (_, kinds) in FIELDS.items() if kind in kinds]
    if kind == "publish":
        choices.append("data")
    field = draw(st.sampled_from(choices))
    if kind == "publish" and field != "data":
        frame["data"] = draw(json_values)
    if kind == "ack" and field != "seq":
        frame["seq"] = draw(st.integers(min_value=0, max_value=2**63 - 1))
    if kind == "replay" and field != "since":
        frame["since"] = {"epoch": "e", "seq": 0}
    if field == "id":
        # (null is no id at all)
        frame["id"] = draw(wrong(int, type(None)) | st.integers(max_value=-1) | st.integers(min_value=2**63))
        return frame, "bad_request", None
    if field == "type":
        frame["type"] = draw(wrong(str) | st.text().filter(lambda t: t not in REQUEST_TYPES))
        code = "unknown_type" if isinstance(frame["type"], str) else "bad_request"
        return frame, code, request_id
    if field == "data":
        return frame, "bad_request", request_id  # publish without data
    if field == "since":
        frame["since"] = draw(
            wrong(dict)
            | st.fixed_dictionaries({"epoch": wrong(str), "seq": st.integers(min_value=0)})
            | st.fixed_dictionaries({"epoch": st.text(min_size=1, max_size=8), "seq": wrong(int)})
            | st.fixed_dictionaries({"epoch": st.text(min_size=1, max_size=8), "seq": st.integers(max_value=-1)})
        )
        if kind == "subscribe" and frame["since"] is None:
            frame["since"] = 0  # None means "no since" for subscribe: still make it wrong
        return frame, "bad_request", request_id
    if field == "key":
        frame["key"] = draw(wrong(str, type(None)) | st.just(""))
        return frame, "bad_request", request_id
    valid_types, _ = FIELDS[field]
    frame[field] = draw(wrong(*valid_types))
    return frame, "bad_request", request_id


@given(st.sampled_from(list(Encoding)), wrongly_typed_requests())
def test_wrongly_typed_fields_are_bad_requests_with_the_id_echoed(live, encoding, case):
    frame, code, request_id = case
    reply = exchange(live, encoding, encode(frame, encoding), text=not encoding.is_binary)
    expect_error(reply, code, request_id)
    live.assert_no_errors_logged()


# -- data through the server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_clients(live):
    """A CBOR publisher, and a JSON and a CBOR subscriber of channel ``props``."""
    pub = live.fresh(Encoding.CBOR)
    subs = {encoding: live.fresh(encoding) for encoding in Encoding}
    for encoding, ws in subs.items():
        ws.send(encode({"type": "subscribe", "id": 1, "channel": "props"}, encoding))
        assert decode(ws.recv(timeout=TIMEOUT), encoding)["type"] == "subscribed"
    return pub, subs


def _message(ws: ClientConnection, encoding: Encoding, seq: int) -> dict[str, Any]:
    while True:
        frame = decode(ws.recv(timeout=TIMEOUT), encoding)
        if frame["type"] == "message" and frame["seq"] >= seq:
            assert frame["seq"] == seq, frame  # no gap
            return frame


@given(VALUES)
def test_published_values_reach_json_and_cbor_subscribers_intact(live, data_clients, value):
    pub, subs = data_clients
    payload = cbor2.dumps({"type": "publish", "id": 5, "channel": "props", "data": value})
    if len(payload) > MAX_MESSAGE_SIZE:
        return
    pub.send(payload)
    reply = decode(pub.recv(timeout=TIMEOUT), Encoding.CBOR)
    assert reply["type"] == "published", reply
    for encoding, ws in subs.items():
        data = _message(ws, encoding, reply["seq"])["data"]
        if encoding is Encoding.JSON:
            data = codec.bytes_from_json(data)
        assert same(data, value), (encoding, data, value)
    live.assert_no_errors_logged()


@given(st.dictionaries(keys, st.text(st.characters(codec="utf-8")), max_size=3))
def test_json_text_with_escapes_reaches_subscribers_intact(live, data_clients, value):
    """JSON publishers may escape anything (ensure_ascii): the text arrives unchanged."""
    _pub, subs = data_clients
    ws = live.client(Encoding.JSON)
    ws.send(json.dumps({"type": "publish", "id": 6, "channel": "props", "data": value}, ensure_ascii=True))
    while (reply := decode(ws.recv(timeout=TIMEOUT), Encoding.JSON))["type"] == "message":
        pass
    assert reply["type"] == "published", reply
    for encoding, sub in subs.items():
        assert same(_message(sub, encoding, reply["seq"])["data"], value)


@given(st.text(st.characters(categories=["Cs"]) | st.characters(codec="utf-8"), max_size=8))
def test_json_surrogate_escapes_are_joined_or_refused(live, data_clients, text):
    """``\\ud83d\\ude00`` is one astral character; a lone ``\\ud800`` is no text and is refused."""
    _pub, subs = data_clients
    meant = json.loads(json.dumps(text))  # what the escapes mean: pairs joined, lone ones kept
    lone = any(0xD800 <= ord(c) <= 0xDFFF for c in meant)
    ws = live.client(Encoding.JSON)
    ws.send(json.dumps({"type": "publish", "id": 7, "channel": "props", "data": [meant]}))
    reply = decode(ws.recv(timeout=TIMEOUT), Encoding.JSON)
    if lone:
        expect_error(reply, "bad_request", 7)
    else:
        assert reply["type"] == "published", reply
        for encoding, sub in subs.items():
            assert _message(sub, encoding, reply["seq"])["data"] == [meant]
    live.assert_no_errors_logged()
