"""Stateful property test of the whole client session over the faulty model hub.

The model hub, the faults (lost, repeated, delayed and reordered data frames, dropped
connections, hub restarts) and the checks are those of test_reliability_stateful.py; there
the model client is a bare ChannelReceiver and PublishTracker, here it is the
:class:`~wsnursery.client.session.ClientSession` the SDK runs: its own subscribe and replay
requests, request retries, the ack clamp (the hub answers an ack past what it sent with
``bad_request``, which the teardown forbids), publish retries and reconnect decisions. The
frames are the session's (built by protocol.py). No sockets, no sleeps, a fake clock.

Profiles as in test_reliability_stateful.py (``CI=true``: derandomized, more examples).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, rule

from wsnursery.client.channel import ChannelRecord
from wsnursery.client.effects import (
    PublishConfirmed,
    PublishFailed,
    SendFrame,
    SendPing,
    SubscriptionRefused,
    ToApp,
)
from wsnursery.client.errors import TransportClosed
from wsnursery.client.options import Options
from wsnursery.client.publisher import PublishWindowFull
from wsnursery.client.receiver import ChannelReceiver, Gap, Message
from wsnursery.client.session import ClientSession, LinkState
from wsnursery.codec import Encoding

from .test_reliability_stateful import (
    CHANNEL,
    PROFILE,
    Hub,
    ReliabilityMachine,
)

WELCOME = {"type": "welcome", "protocol": 1, "server": "model", "heartbeat": 1e6, "max_message_size": 2**20}


class SessionMachine(ReliabilityMachine):
    """ReliabilityMachine with the ClientSession as the client."""

    @initialize(
        history_size=st.sampled_from([2, 5, 1000]),
        max_unacked=st.sampled_from([3, 64]),
        max_pending=st.sampled_from([1, 2, 1024]),
        restarts=st.booleans(),
        first_publishes=st.integers(0, 6),
        seed=st.integers(0, 2**32 - 1),
    )
    def setup(self, history_size, max_unacked, max_pending, restarts, first_publishes, seed) -> None:
        self.restarts_allowed = restarts
        self.hub = Hub(self, history_size, max_unacked)

        def new_receiver(channel: str, ack: bool) -> ChannelReceiver:
            self.receiver = ChannelReceiver(channel, ack=ack, max_pending=max_pending, ack_every=4, replay_timeout=1.0)
            return self.receiver

        options = Options(
            request_timeout=1.0,
            heartbeat_interval=1e6,
            heartbeat_timeout=1e6,
            max_pending_publishes=8,
            max_reconnects=10**6,
            seed=seed,
        )
        self.session = ClientSession(["ws://model/"], options, rng=random.Random(seed), new_receiver=new_receiver)
        self.published_data: dict[str, Any] = {}
        self.session.add_subscription(CHANNEL, True, None)
        self.connect()
        self.deliver_frame(False, 0)  # the first subscribe is answered before anything else
        self.deliver_frame(True, 0)
        for _ in range(first_publishes):
            self.publish()

    def connect(self) -> None:
        assert self.session.next_attempt() is not None
        self.connected = True
        self.apply_session(self.session.connection_made(WELCOME, Encoding.JSON, self.now))
        self.apply_session(self.session.tick(self.now))

    def drop_connection(self) -> None:
        super().drop_connection_transport()
        self.session.connection_lost(TransportClosed(1006, "dropped by the model"))
        assert self.session.state is LinkState.DOWN

    def client_receive(self, frame: dict[str, Any]) -> None:
        if frame["type"] == "error":
            self.error_codes.append(frame["code"])
        self.apply_session(self.session.frame_received(frame, self.now))

    def apply_session(self, effects: list) -> None:
        for effect in effects:
            if isinstance(effect, SendFrame):
                self.client_send(effect.frame)
            elif isinstance(effect, ToApp):
                item = effect.item
                if isinstance(item, Message):
                    self.check_delivery(item)
                else:
                    assert isinstance(item, Gap)
                    epoch_now = self.session.position(CHANNEL).epoch
                    assert item.expected_seq == self.expect[1], (item, self.expect)
                    self.gaps.append((self.expect[0], item.expected_seq, epoch_now, item.resumed_at_seq, item.reason))
                    self.expect = (epoch_now, item.resumed_at_seq)
            elif isinstance(effect, PublishConfirmed):
                p = effect.published
                self.confirmed[effect.key] = (p.epoch, p.seq, self.published_data[effect.key])
            elif isinstance(effect, (PublishFailed, SubscriptionRefused)):
                pytest.fail(f"the model hub refuses nothing: {effect}")
            elif isinstance(effect, SendPing):  # pragma: no cover - heartbeats are off
                pass

    def fire_timers(self) -> None:
        self.hub.fire_timers()
        if self.connected:
            self.apply_session(self.session.tick(self.now))

    @rule()
    def publish(self) -> None:
        self.published_count += 1
        data = f"m{self.published_count}"
        if self.session.pending_publishes == 8:
            with pytest.raises(PublishWindowFull):
                self.session.publish(CHANNEL, data, self.now)
            return
        pending = self.session.publish(CHANNEL, data, self.now)
        self.published_data[pending.key] = data
        if self.connected:
            self.apply_session(self.session.tick(self.now))

    @invariant()
    def bounds_hold(self) -> None:
        if not hasattr(self, "hub"):
            return
        assert self.receiver.pending <= self.receiver.max_pending
        assert self.session.pending_publishes <= 8
        if self.hub.tracker is not None:
            assert self.hub.tracker.unacked <= self.hub.tracker.max_unacked

    def unconfirmed(self) -> int:
        return self.session.pending_publishes

    def publish_retries(self) -> int:
        return self.session.stats.publish_retries

    def client_deadline(self) -> float | None:
        return self.session.next_deadline() if self.connected else None


TestSessionReliability = SessionMachine.TestCase
TestSessionReliability.settings = PROFILE


def _never_acks_again(self: ChannelRecord, seq: int) -> None:
    """A broken session: a repeat does not make it send its (lost) ack again."""
    self.ack_owed = max(self.ack_owed, seq)


def _lost_ack_steps() -> SessionMachine:
    """The steps the property found (replayed as written): one message, its ack lost."""
    state = SessionMachine()
    state.setup(history_size=2, max_unacked=3, max_pending=1, restarts=False, first_publishes=1, seed=0)
    state.deliver_everything_in_order()
    state.advance_clock(dt=0.06)  # the batched ack goes out...
    assert [f["type"] for f in state.to_server] == ["ack"]
    state.lose(index=0, to_client=False)  # ...and is lost
    return state


def test_a_lost_ack_is_sent_again_when_the_server_retransmits():
    state = _lost_ack_steps()
    state.settle()
    state.check_everything_accounted_for()
    assert state.hub.retransmits >= 1 and state.hub.tracker.unacked == 0


def test_the_property_catches_a_session_that_never_resends_a_lost_ack(monkeypatch):
    """How the property found that bug: with the ack lost, the server retransmits forever
    (on a real server: until its window fills and it closes the subscriber with 4008)."""
    monkeypatch.setattr(ChannelRecord, "owe_ack", _never_acks_again)
    state = _lost_ack_steps()
    with pytest.raises(AssertionError, match="did not settle"):
        state.settle()
