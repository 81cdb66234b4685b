"""The sans-I/O request parser (``wsnursery.protocol``) on its own: frame maps in, typed requests
or ``ProtocolError`` (code, reason, request id) out, and the server's reply frames."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsnursery import protocol
from wsnursery.protocol import (
    Ack,
    Position,
    ProtocolError,
    Publish,
    Replay,
    RequestParser,
    Subscribe,
    Unsubscribe,
)

parser = RequestParser()


def refused(frame: dict[str, Any], parser: RequestParser = parser) -> tuple[str, int | None]:
    with pytest.raises(ProtocolError) as caught:
        parser.parse(frame)
    return caught.value.code, caught.value.request_id


def test_every_request_type_parses_to_its_typed_request():
    assert parser.parse({"type": "subscribe", "id": 1, "channel": "a"}) == Subscribe(1, "a", None, False)
    assert parser.parse(
        {"type": "subscribe", "channel": "a", "ack": True, "since": {"epoch": "e", "seq": 3}}
    ) == Subscribe(None, "a", Position("e", 3), True)
    assert parser.parse({"type": "unsubscribe", "id": 2, "channel": "a"}) == Unsubscribe(2, "a")
    assert parser.parse({"type": "publish", "channel": "a", "data": [1], "key": "k"}) == Publish(None, "a", [1], "k")
    assert parser.parse({"type": "publish", "channel": "a", "data": None}) == Publish(None, "a", None, None)
    assert parser.parse({"type": "ack", "channel": "a", "seq": 0}) == Ack(None, "a", 0)
    assert parser.parse({"type": "replay", "id": 5, "channel": "a", "since": {"epoch": "e", "seq": 0}}) == Replay(
        5, "a", Position("e", 0)
    )


@pytest.mark.parametrize(
    ("frame", "code", "request_id"),
    [
        ({"channel": "a"}, "bad_request", None),
        ({"type": 7, "id": 3, "channel": "a"}, "bad_request", 3),
        ({"type": "nope", "id": 4, "channel": "a"}, "unknown_type", 4),
        ({"type": "subscribe", "id": -1, "channel": "a"}, "bad_request", None),
        ({"type": "subscribe", "id": True, "channel": "a"}, "bad_request", None),
        ({"type": "subscribe", "id": 2**63, "channel": "a"}, "bad_request", None),
        ({"type": "subscribe", "id": 1}, "bad_request", 1),
        ({"type": "subscribe", "id": 1, "channel": ""}, "invalid_channel", 1),
        ({"type": "subscribe", "id": 1, "channel": "a\n"}, "invalid_channel", 1),
        ({"type": "subscribe", "id": 1, "channel": "-a"}, "invalid_channel", 1),
        ({"type": "subscribe", "id": 1, "channel": "a" * 129}, "invalid_channel", 1),
        ({"type": "subscribe", "id": 1, "channel": "a", "ack": 1}, "bad_request", 1),
        ({"type": "subscribe", "id": 1, "channel": "a", "since": 5}, "bad_request", 1),
        ({"type": "subscribe", "id": 1, "channel": "a", "since": {"epoch": "", "seq": 1}}, "bad_request", 1),
        ({"type": "subscribe", "id": 1, "channel": "a", "since": {"epoch": "e" * 65, "seq": 1}}, "bad_request", 1),
        ({"type": "subscribe", "id": 1, "channel": "a", "since": {"epoch": "e", "seq": -1}}, "bad_request", 1),
        ({"type": "subscribe", "id": 1, "channel": "a", "since": {"epoch": "e", "seq": 1.0}}, "bad_request", 1),
        ({"type": "publish", "id": 1, "channel": "a"}, "bad_request", 1),
        ({"type": "publish", "id": 1, "channel": "a", "data": 1, "key": ""}, "bad_request", 1),
        ({"type": "publish", "id": 1, "channel": "a", "data": 1, "key": "k" * 257}, "bad_request", 1),
        ({"type": "publish", "id": 1, "channel": "a", "data": 1, "key": 5}, "bad_request", 1),
        ({"type": "ack", "id": 1, "channel": "a"}, "bad_request", 1),
        ({"type": "ack", "id": 1, "channel": "a", "seq": "3"}, "bad_request", 1),
        ({"type": "replay", "id": 1, "channel": "a"}, "bad_request", 1),
    ],
)
def test_bad_requests_are_refused_with_their_code_and_id(frame, code, request_id):
    assert refused(frame) == (code, request_id)


def test_the_channel_pattern_is_the_configured_one():
    strict = RequestParser(r"^room-[0-9]+$")
    assert strict.parse({"type": "unsubscribe", "channel": "room-7"}) == Unsubscribe(None, "room-7")
    assert refused({"type": "unsubscribe", "channel": "a"}, strict) == ("invalid_channel", None)


@given(
    st.dictionaries(
        st.sampled_from(["type", "id", "channel", "data", "seq", "since", "ack", "key"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.text(max_size=5),
            st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
        ),
    )
)
def test_any_frame_map_is_a_request_or_a_protocol_error(frame):
    """Never another exception: whatever a client sends gets an answer."""
    try:
        request = parser.parse(frame)
    except ProtocolError as exc:
        assert exc.code in {"bad_request", "unknown_type", "invalid_channel"}
        return
    assert request.channel == frame["channel"]


def test_reply_frames_carry_the_contract_field_names():
    position = Position("ep", 9)
    assert protocol.subscribed_frame(1, "a", position, True) == {
        "type": "subscribed",
        "id": 1,
        "channel": "a",
        "epoch": "ep",
        "seq": 9,
        "recovered": True,
    }
    assert protocol.replaying_frame(None, "a", position, False) == {
        "type": "replaying",
        "channel": "a",
        "epoch": "ep",
        "seq": 9,
        "recovered": False,
    }
    assert protocol.published_frame(2, "a", position) == {
        "type": "published",
        "id": 2,
        "channel": "a",
        "epoch": "ep",
        "seq": 9,
    }
    assert protocol.unsubscribed_frame(3, "a") == {"type": "unsubscribed", "id": 3, "channel": "a"}
    assert protocol.error_frame("bad_request", "why") == {"type": "error", "code": "bad_request", "reason": "why"}
    assert protocol.message_frame("a", "ep", 9, [1], 5) == {
        "type": "message",
        "channel": "a",
        "epoch": "ep",
        "seq": 9,
        "data": [1],
        "ts": 5,
    }
    assert protocol.welcome_frame("s/1", 20.0, 100) == {
        "type": "welcome",
        "protocol": 1,
        "server": "s/1",
        "heartbeat": 20.0,
        "max_message_size": 100,
    }
