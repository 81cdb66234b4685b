"""Version 1.1 requests: refresh (no channel), presence, and subscribe's presence flag."""

from __future__ import annotations

import pytest

from wsnursery.protocol import (
    MAX_TOKEN_FIELD,
    PresenceQuery,
    ProtocolError,
    Refresh,
    RequestParser,
    Subscribe,
    refreshed_frame,
)

parser = RequestParser()


def test_refresh_and_presence_parse() -> None:
    assert parser.parse({"type": "refresh", "id": 9, "token": "a.b.c"}) == Refresh(9, "a.b.c")
    assert parser.parse({"type": "presence", "id": 5, "channel": "chat.room1"}) == PresenceQuery(5, "chat.room1")
    subscribe = parser.parse({"type": "subscribe", "channel": "c", "presence": True})
    assert isinstance(subscribe, Subscribe) and subscribe.presence
    plain = parser.parse({"type": "subscribe", "channel": "c"})
    assert isinstance(plain, Subscribe) and not plain.presence


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"type": "refresh", "id": 1}, "bad_request"),
        ({"type": "refresh", "id": 1, "token": 5}, "bad_request"),
        ({"type": "refresh", "id": 1, "token": ""}, "bad_request"),
        ({"type": "refresh", "id": 1, "token": "x" * (MAX_TOKEN_FIELD + 1)}, "bad_request"),
        ({"type": "presence", "id": 1}, "bad_request"),
        ({"type": "presence", "id": 1, "channel": "bad name"}, "invalid_channel"),
        ({"type": "subscribe", "id": 1, "channel": "c", "presence": "yes"}, "bad_request"),
    ],
)
def test_bad_v11_requests(frame: dict[str, object], code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parser.parse(frame)
    assert info.value.code == code and info.value.request_id == 1


def test_refreshed_frame() -> None:
    assert refreshed_frame(9, 1700000000.0) == {"type": "refreshed", "id": 9, "exp": 1700000000}
    assert refreshed_frame(None, 1.5) == {"type": "refreshed", "exp": 1.5}
