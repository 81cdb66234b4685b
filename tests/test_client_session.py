"""The client session, sans-I/O: events in, effects out, no sockets and no clock.

One rule per test: resubscribe with ``since``, request retries, the ack clamp, publishes
(retries, too big, refused), heartbeat verdicts, reconnect and failover decisions, close
codes that end the client, and token renewal. The stateful test over a faulty model hub is
test_client_session_stateful.py.
"""

from __future__ import annotations

import base64
import json
import random

import pytest

from wsnursery.client.effects import (
    DropConnection,
    FetchToken,
    PublishConfirmed,
    PublishFailed,
    Ready,
    SendFrame,
    SendPing,
    SubscriptionConfirmed,
    SubscriptionRefused,
    ToApp,
)
from wsnursery.client.errors import (
    ConnectionClosed,
    Disconnected,
    Forbidden,
    GaveUp,
    HandshakeRejected,
    TokenExpired,
    TransportClosed,
)
from wsnursery.client.link import token_expiry
from wsnursery.client.options import Options
from wsnursery.client.publisher import PublishWindowFull
from wsnursery.client.receiver import Gap, Message
from wsnursery.client.session import ClientSession, LinkState
from wsnursery.codec import Encoding
from wsnursery.protocol import Position

WELCOME = {"type": "welcome", "protocol": 1, "server": "model", "heartbeat": 15, "max_message_size": 1000}
FAST = {"request_timeout": 1.0, "heartbeat_interval": 10.0, "heartbeat_timeout": 5.0}


def session(urls=("ws://a/",), **options) -> ClientSession:
    return ClientSession(list(urls), Options(**(FAST | options)), rng=random.Random(1))


def up(s: ClientSession, now: float = 0.0) -> list:
    attempt = s.next_attempt()
    assert attempt is not None
    return s.connection_made(WELCOME, Encoding.JSON, now)


def frames(effects) -> list[dict]:
    return [e.frame for e in effects if isinstance(e, SendFrame)]


def of_type(effects, kind) -> list:
    return [e for e in effects if isinstance(e, kind)]


def subscribed(s: ClientSession, channel: str = "room", now: float = 0.0, since=None, head=0):
    """Subscribe and answer it; returns the effects of the answer."""
    s.add_subscription(channel, True, since)
    (request,) = frames(s.tick(now))
    assert request["type"] == "subscribe"
    return s.frame_received(
        {"type": "subscribed", "id": request["id"], "channel": channel, "epoch": "e1", "seq": head, "recovered": True},
        now,
    )


def message(seq: int, epoch: str = "e1", channel: str = "room") -> dict:
    return {"type": "message", "channel": channel, "epoch": epoch, "seq": seq, "data": seq, "ts": 0}


# ----------------------------------------------------------------------------- subscriptions


def test_first_connection_is_ready_at_once_without_subscriptions():
    s = session()
    assert up(s) == [Ready()]
    assert s.state is LinkState.UP


def test_subscribe_is_sent_by_the_next_tick_and_confirmed_once():
    s = session()
    up(s)
    effects = subscribed(s)
    assert SubscriptionConfirmed("room") in effects
    assert s.position("room") == Position("e1", 0)


def test_unanswered_subscribe_is_sent_again_after_request_timeout():
    s = session()
    up(s)
    s.add_subscription("room", True, None)
    (first,) = frames(s.tick(0.0))
    assert frames(s.tick(0.9)) == []
    assert s.next_deadline() == 1.0
    (second,) = frames(s.tick(1.0))
    assert second["type"] == "subscribe" and second["id"] != first["id"]
    assert s.stats.requests_resent == 1


def test_reconnect_resubscribes_from_the_position_held():
    s = session()
    up(s)
    subscribed(s)
    for seq in (1, 2, 3):
        s.frame_received(message(seq), 0.0)
    s.connection_lost(TransportClosed(1006, "gone"))
    assert s.state is LinkState.DOWN
    assert s.next_attempt() is not None
    up(s, 5.0)
    (request,) = frames(s.tick(5.0))
    assert request["since"] == {"epoch": "e1", "seq": 3}
    assert request["ack"] is True


def test_refused_subscribe_ends_the_subscription():
    s = session()
    up(s)
    s.add_subscription("bad", True, None)
    (request,) = frames(s.tick(0.0))
    effects = s.frame_received({"type": "error", "id": request["id"], "code": "forbidden"}, 0.0)
    (refused,) = of_type(effects, SubscriptionRefused)
    assert isinstance(refused.error, Forbidden)
    assert s.position("bad") is None


def test_messages_are_handed_to_the_app_in_order():
    s = session()
    up(s)
    subscribed(s)
    got = []
    for seq in (1, 3, 2):
        got += [e.item for e in s.frame_received(message(seq), 0.0) if isinstance(e, ToApp)]
    assert [m.seq for m in got if isinstance(m, Message)] == [1, 2, 3]


def test_a_gap_the_server_cannot_repair_is_handed_over():
    s = session()
    up(s)
    s.add_subscription("room", True, Position("e1", 3))
    (request,) = frames(s.tick(0.0))
    s.frame_received(
        {"type": "subscribed", "id": request["id"], "channel": "room", "epoch": "e1", "seq": 20, "recovered": False},
        0.0,
    )
    items = [e.item for e in s.frame_received(message(13), 0.0) if isinstance(e, ToApp)]
    assert items[0] == Gap("room", 4, 13, "history_exceeded")


# ----------------------------------------------------------------------------- the ack clamp


def test_acks_never_pass_the_since_of_an_unanswered_replay():
    s = session()
    up(s)
    subscribed(s, head=0)
    s.frame_received(message(1), 0.0)
    s.frame_received(message(2), 0.0)
    held = s.frame_received(message(4), 0.0)  # 3 is missing: a replay from 2 is asked
    (replay,) = [f for f in frames(held) if f["type"] == "replay"]
    assert replay["since"] == {"epoch": "e1", "seq": 2}
    # 3 and 4 arrive: the receiver owes an ack for 4, but the server restarts at 2 for the
    # replay, so nothing past 2 may be acked until the replay is answered.
    effects = s.frame_received(message(3), 0.0) + s.tick(1.0)
    assert all(f["seq"] <= 2 for f in frames(effects) if f["type"] == "ack")
    s.frame_received(
        {"type": "replaying", "id": replay["id"], "channel": "room", "epoch": "e1", "seq": 4, "recovered": True}, 1.0
    )
    effects = []
    for seq in (3, 4):  # the replay's resends: repeats, and proof of what the server sent
        effects += s.frame_received(message(seq), 1.0)
    acks = [f["seq"] for f in frames(effects + s.tick(2.0)) if f["type"] == "ack"]
    # 3 and 4 as the resends prove the server sent them; then 4 once more, because repeats
    # mean an ack may have been lost (a stale ack is harmless to the server).
    assert acks == [3, 4, 4]


def test_acks_batch_and_stay_cumulative():
    s = session()
    up(s)
    subscribed(s)
    effects = []
    for seq in range(1, 33):  # ack_every is 32
        effects += s.frame_received(message(seq), 0.0)
    assert [f["seq"] for f in frames(effects) if f["type"] == "ack"] == [32]


# ----------------------------------------------------------------------------- publishes


def test_publish_is_sent_confirmed_and_resent_with_the_same_key_after_reconnect():
    s = session()
    up(s)
    pending = s.publish("room", {"x": 1}, 0.0)
    (frame,) = frames(s.tick(0.0))
    assert frame == {
        "type": "publish",
        "id": pending.request_id,
        "channel": "room",
        "data": {"x": 1},
        "key": pending.key,
    }
    s.connection_lost(TransportClosed(1006))
    s.next_attempt()
    up(s, 3.0)
    (again,) = frames(s.tick(3.0))
    assert (again["key"], again["id"]) == (pending.key, pending.request_id)
    effects = s.frame_received(
        {"type": "published", "id": pending.request_id, "channel": "room", "epoch": "e1", "seq": 7}, 3.0
    )
    (done,) = of_type(effects, PublishConfirmed)
    assert (done.key, done.published.seq, done.published.epoch) == (pending.key, 7, "e1")
    assert s.pending_publishes == 0 and s.stats.published == 1


def test_publish_too_big_for_the_server_fails_without_being_sent():
    s = session()
    up(s)  # max_message_size 1000
    pending = s.publish("room", "x" * 2000, 0.0)
    effects = s.tick(0.0)
    assert frames(effects) == []
    (failed,) = of_type(effects, PublishFailed)
    assert failed.key == pending.key and "max_message_size" in str(failed.error)


def test_publish_window_bound():
    s = session(max_pending_publishes=2)
    up(s)
    s.publish("room", 1, 0.0)
    s.publish("room", 2, 0.0)
    with pytest.raises(PublishWindowFull):
        s.publish("room", 3, 0.0)


# ----------------------------------------------------------------------------- heartbeat


def test_heartbeat_pings_then_declares_a_silent_link_dead():
    s = session()
    up(s, 0.0)
    assert s.next_deadline() == 10.0
    assert of_type(s.tick(10.0, bytes_in=100), SendPing)
    assert of_type(s.tick(14.9, bytes_in=100), DropConnection) == []
    (drop,) = of_type(s.tick(15.0, bytes_in=100), DropConnection)
    assert drop.error.code == 4000 and s.stats.heartbeat_timeouts == 1


def test_heartbeat_traffic_or_a_pong_or_a_paused_reader_keeps_the_link():
    s = session()
    up(s, 0.0)
    s.tick(10.0, bytes_in=100)
    assert of_type(s.tick(15.0, bytes_in=150), DropConnection) == []  # bytes arrived
    s.tick(25.0, bytes_in=150)
    s.pong_received(26.0)
    assert of_type(s.tick(30.0, bytes_in=150), DropConnection) == []
    s.tick(36.0, bytes_in=150)  # ping
    s.set_paused(True)
    assert of_type(s.tick(41.0, bytes_in=150), DropConnection) == []


# ----------------------------------------------------------------------------- reconnects


def test_backoff_grows_with_jitter_and_gives_up_after_max_reconnects():
    s = session(backoff_base=0.1, backoff_max=0.4, max_reconnects=4)
    assert s.next_attempt().delay == 0.0
    delays = []
    for _ in range(4):
        s.connect_failed(OSError("refused"))
        delays.append(s.next_attempt().delay)
    for delay, ceiling in zip(delays, [0.1, 0.2, 0.4, 0.4], strict=True):
        assert ceiling / 2 <= delay <= ceiling
    s.connect_failed(OSError("refused"))
    assert s.next_attempt() is None
    assert isinstance(s.error, GaveUp) and s.error.attempts == 4
    assert isinstance(s.error.last_error, OSError)
    assert s.stats.connect_failures == 5


def test_failover_tries_each_other_node_at_once_then_backs_off():
    s = session(urls=["ws://a/", "ws://b/", "ws://c/"], backoff_base=1.0)
    assert s.next_attempt().url == "ws://a/"
    s.connect_failed(OSError("a is down"))
    assert (s.next_attempt().url, s.stats.connect_failures) == ("ws://b/", 1)
    s.connect_failed(OSError("b is down"))
    b_to_c = s.next_attempt()
    assert (b_to_c.url, b_to_c.delay) == ("ws://c/", 0.0)
    s.connect_failed(OSError("c is down"))
    back_to_a = s.next_attempt()
    assert back_to_a.url == "ws://a/" and back_to_a.delay > 0  # every node failed: back off


def test_a_lost_connection_is_retried_on_the_same_node_first():
    s = session(urls=["ws://a/", "ws://b/"])
    s.next_attempt()
    s.connect_failed(OSError("a is down"))
    assert s.next_attempt().url == "ws://b/"
    s.connection_made(WELCOME, Encoding.JSON, 0.0)
    s.connection_lost(TransportClosed(1006))
    assert s.next_attempt().url == "ws://b/"


def test_a_good_connection_resets_the_failure_count():
    s = session(max_reconnects=1)
    up(s)
    for _ in range(3):  # each connection is good (no subscriptions to confirm), then lost
        s.connection_lost(TransportClosed(1011, "oops", remote=True))
        assert s.next_attempt() is not None
        s.connection_made(WELCOME, Encoding.JSON, 0.0)
    assert s.error is None


@pytest.mark.parametrize(
    ("code", "error_type"),
    [(1008, Forbidden), (4003, Disconnected), (4001, TokenExpired), (1002, ConnectionClosed), (1009, ConnectionClosed)],
)
def test_close_codes_that_end_the_client(code, error_type):
    s = session(token="a.b.c")
    up(s)
    s.connection_lost(TransportClosed(code, "by the server", remote=True))
    assert isinstance(s.error, error_type) and s.state is LinkState.ENDED
    assert s.next_attempt() is None


@pytest.mark.parametrize("code", [1000, 1001, 1006, 1011, 1013, 4000, 4008])
def test_close_codes_that_reconnect(code):
    s = session()
    up(s)
    s.connection_lost(TransportClosed(code, "", remote=code != 1006))
    assert s.error is None and s.next_attempt() is not None


def test_4001_reconnects_when_a_token_callable_can_give_a_fresh_token():
    s = session(token=lambda: "a.b.c")
    up(s)
    s.connection_lost(TransportClosed(4001, "token expired", remote=True))
    assert s.error is None and s.next_attempt() is not None


@pytest.mark.parametrize("status", [401, 403])
def test_http_refusal_on_the_handshake_ends_the_client(status):
    s = session()
    s.next_attempt()
    s.connect_failed(HandshakeRejected(status, b"no"))
    assert isinstance(s.error, Forbidden) and s.error.close_code == status


def test_closing_stops_timers_and_reconnects():
    s = session()
    up(s)
    s.publish("room", 1, 0.0)
    s.close()
    assert s.tick(100.0) == [] and s.next_deadline() is None
    s.connection_lost(TransportClosed(1000, "", remote=True))
    assert s.next_attempt() is None and s.error is None


# ----------------------------------------------------------------------------- tokens


def jwt(claims: dict) -> str:
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


QUIET = {"heartbeat_interval": 1e6, "heartbeat_timeout": 1e6}  # no pings in the way


def test_token_expiry_reads_exp_without_verifying():
    assert token_expiry(jwt({"sub": "alice", "exp": 1_700_000_000})) == 1_700_000_000.0
    for bad in (
        "",
        "abc",
        "a.b",
        "a.!!!.c",
        jwt({"sub": "alice"}),
        jwt({"exp": "soon"}),
        jwt({"exp": True}),
        "x." + base64.urlsafe_b64encode(b"[1]").decode() + ".y",
    ):
        assert token_expiry(bad) is None, bad


def test_refresh_is_asked_before_exp_and_sent_in_band():
    s = session(token=lambda: "unused", token_refresh_margin=30.0, **QUIET)
    s.next_attempt()
    wall = 1_000_000.0
    s.token_obtained(jwt({"sub": "alice", "exp": wall + 100}), 0.0, wall)
    s.connection_made(WELCOME, Encoding.JSON, 0.0)
    assert of_type(s.tick(69.9), FetchToken) == []
    assert s.next_deadline() == pytest.approx(70.0)
    assert of_type(s.tick(70.0), FetchToken) == [FetchToken()]
    assert of_type(s.tick(71.0), FetchToken) == []  # asked once
    fresh = jwt({"sub": "alice", "exp": wall + 400})
    (refresh,) = frames(s.token_fetched(fresh, 72.0, wall + 72))
    assert refresh == {"type": "refresh", "id": refresh["id"], "token": fresh}
    (again,) = frames(s.tick(73.0))  # unanswered for request_timeout: sent again
    assert again == refresh
    s.frame_received({"type": "refreshed", "id": refresh["id"], "exp": wall + 400}, 73.5)
    assert s.stats.token_refreshes == 1
    assert s.next_deadline() == pytest.approx(73.5 + (400 - 73.5) - 30.0)


def test_a_refused_refresh_is_not_asked_again_on_this_connection():
    s = session(token=lambda: "unused")
    s.next_attempt()
    s.token_obtained(jwt({"sub": "a", "exp": 100}), 0.0, 0.0)
    s.connection_made(WELCOME, Encoding.JSON, 0.0)
    s.tick(70.0)
    (refresh,) = frames(s.token_fetched("new.token.x", 70.0, 70.0))
    s.frame_received({"type": "error", "id": refresh["id"], "code": "unknown_type"}, 70.5)
    later = s.tick(500.0) + s.tick(1000.0)
    assert of_type(later, FetchToken) == [] and frames(later) == []


def test_a_fixed_token_is_never_refreshed():
    s = session(token=jwt({"sub": "a", "exp": 100}))
    s.next_attempt()
    s.token_obtained(s.options.token, 0.0, 0.0)
    s.connection_made(WELCOME, Encoding.JSON, 0.0)
    assert of_type(s.tick(99.0), FetchToken) == []
