"""Stateful property test of the reliability core over a faulty simulated transport.

A model hub (one channel: bounded history, seq counting up, a DedupWindow, an AckTracker per
subscription, a writer paced by the ack window) and a model client (ChannelReceiver with acks,
PublishTracker) exchange protocol-v1 frames through two in-flight queues. Hypothesis loses,
duplicates, delays and reorders data frames (message, ack, publish, published, replay), drops
the connection (the client resubscribes with ``since = position`` and resends unconfirmed
publishes), restarts the hub (new epoch) and advances a fake clock. No sleeps, no real time.
Control frames (subscribe, subscribed, error) are only reordered, never lost or repeated: a
real WebSocket loses nothing without closing, and closing is modelled separately. The model
hub answers ``replay`` with a ``subscribed`` frame carrying the replay's ``id``.

Checked after every step: each delivery is exactly the next expected ``(epoch, seq)`` (nothing
twice, nothing out of order, nothing skipped without a Gap) with the published data; bounds
hold. At teardown the faults stop: the queues drain in order and the clock jumps to each next
timer until nothing is in flight or due; then every publish is confirmed, is in the hub's log
once per epoch, and every logged message was delivered or lies inside a reported Gap (allowed
only after the history evicted something or the hub restarted).

Running: ``CI=true`` selects the ``reliability-ci`` profile (2000 examples x 50 steps,
``derandomize=True``): a CI failure replays by rerunning ``CI=true pytest`` on this file.
Locally the ``reliability-dev`` profile runs 150 random examples; a failure prints the steps
(each a method call you can paste into a plain test) and a ``@reproduce_failure(...)`` line:
put it as a decorator on ``class ReliabilityMachine`` to replay exactly that run. The local
example database (.hypothesis/) also replays the last failure on the next run.
``pytest --hypothesis-show-statistics`` shows which paths the runs exercised.
"""

from __future__ import annotations

import os
import random
import sys
from collections import deque
from typing import Any

import pytest
from hypothesis import Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from wsnursery.client.publisher import PublishTracker, PublishWindowFull
from wsnursery.client.receiver import (
    ChannelReceiver,
    Deliver,
    Gap,
    Message,
    SendAck,
    SendReplay,
)
from wsnursery.protocol import Position
from wsnursery.reliability import AckTracker, DedupWindow

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
settings.register_profile(
    "reliability-ci",
    max_examples=2000,
    stateful_step_count=50,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
)
settings.register_profile("reliability-dev", max_examples=150, stateful_step_count=50, deadline=None, print_blob=True)
PROFILE = settings.get_profile("reliability-ci" if CI else "reliability-dev")

CHANNEL = "room"
LOSSY = frozenset({"message", "ack", "publish", "published", "replay"})
SETTLE_LIMIT = 5_000


def epoch_number(epoch: str) -> int:
    return int(epoch[1:])


class Hub:
    """Model server for one channel and the one client connection."""

    def __init__(self, machine: ReliabilityMachine, history_size: int, max_unacked: int):
        self.machine = machine
        self.max_unacked = max_unacked
        self.epoch_count = 1
        self.epoch = "e1"
        self.head = 0
        self.history: deque[tuple[int, Any]] = deque(maxlen=history_size)
        self.dedup = DedupWindow()
        self.tracker: AckTracker | None = None
        self.log: dict[tuple[str, int], tuple[str, Any]] = {}  # (epoch, seq) -> (key, data)
        self.evicted = False
        self.restarted = False
        self.slow_consumer_closes = 0
        self.retransmits = 0

    @property
    def now(self) -> float:
        return self.machine.now

    @property
    def oldest(self) -> int:
        return self.history[0][0] if self.history else self.head + 1

    def restart(self) -> None:
        """The in-memory hub lost its state: a new epoch, empty history, empty dedup window."""
        self.epoch_count += 1
        self.epoch = f"e{self.epoch_count}"
        self.head = 0
        self.history.clear()
        self.dedup = DedupWindow()
        self.tracker = None
        self.restarted = True

    def receive(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "subscribe":
            self.tracker = AckTracker(max_unacked=self.max_unacked)
            self._reposition(frame)
        elif kind == "replay":
            if self.tracker is None:
                self._error(frame, "not_subscribed", "replay without subscription")
            else:
                self._reposition(frame)
        elif kind == "ack":
            if self.tracker is not None:
                result = self.tracker.on_ack(frame["seq"])
                if result.error_code:
                    self._error(frame, result.error_code, result.error_reason)
                self.pump()
        elif kind == "publish":
            self._publish(frame)
        else:  # pragma: no cover - the model client sends nothing else
            raise AssertionError(f"unexpected frame {frame}")

    def _reposition(self, frame: dict[str, Any]) -> None:
        since = frame.get("since")
        if since is None:
            start, recovered = self.head, True
        elif since["epoch"] == self.epoch and since["seq"] >= self.oldest - 1:
            start, recovered = min(since["seq"], self.head), True
        else:
            start, recovered = self.oldest - 1, False
        assert self.tracker is not None
        self.tracker.reset_to(start)
        self.machine.server_send(
            {
                "type": "subscribed",
                "id": frame["id"],
                "channel": CHANNEL,
                "epoch": self.epoch,
                "seq": self.head,
                "recovered": recovered,
            }
        )
        self.pump()

    def _publish(self, frame: dict[str, Any]) -> None:
        found = self.dedup.lookup(frame["key"], self.now) if self.machine.hub_dedups else None
        if found is None:
            self.head += 1
            if len(self.history) == self.history.maxlen:
                self.evicted = True
            self.history.append((self.head, frame["data"]))
            self.log[(self.epoch, self.head)] = (frame["key"], frame["data"])
            self.dedup.remember(frame["key"], self.epoch, self.head, self.now)
            found = (self.epoch, self.head)
        self.machine.server_send(
            {"type": "published", "id": frame["id"], "channel": CHANNEL, "epoch": found[0], "seq": found[1]}
        )
        self.pump()

    def pump(self) -> None:
        """The writer: send from ``sent + 1`` while the ack window has room."""
        tracker = self.tracker
        while tracker is not None and tracker.sent < self.head and not tracker.window_full:
            seq = tracker.sent + 1
            if seq < self.oldest:  # the subscriber fell out of history: slow consumer
                self.slow_consumer_closes += 1
                self.machine.drop_connection()
                return
            self._send_message(seq)
            tracker.on_sent(seq, self.now)

    def fire_timers(self) -> None:
        tracker = self.tracker
        if tracker is None or (start := tracker.due(self.now)) is None:
            return
        if start < self.oldest:
            self.slow_consumer_closes += 1
            self.machine.drop_connection()
            return
        self.retransmits += 1
        for seq in range(start, tracker.sent + 1):
            self._send_message(seq)
        tracker.on_resent(self.now)

    def next_deadline(self) -> float | None:
        return None if self.tracker is None else self.tracker.next_deadline()

    def _send_message(self, seq: int) -> None:
        data = self.history[seq - self.oldest][1]
        self.machine.server_send(
            {"type": "message", "channel": CHANNEL, "epoch": self.epoch, "seq": seq, "data": data, "ts": 0}
        )

    def _error(self, frame: dict[str, Any], code: str, reason: str | None) -> None:
        self.machine.server_send({"type": "error", "id": frame.get("id"), "code": code, "reason": reason})


class ReliabilityMachine(RuleBasedStateMachine):
    receiver_class: type[ChannelReceiver] = ChannelReceiver
    hub_dedups = True

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.to_server: list[dict[str, Any]] = []
        self.to_client: list[dict[str, Any]] = []
        self.connected = False
        self.request_ids = iter(range(10**6, 2 * 10**6))
        self.requested_since: dict[int, Position | None] = {}
        self.published_count = 0
        self.expect: tuple[str, int] = ("e1", 1)
        self.delivered: list[tuple[str, int]] = []
        self.gaps: list[tuple[str, int, str, int, str]] = []
        self.confirmed: dict[str, tuple[str, int, Any]] = {}
        self.error_codes: list[str] = []

    # -- setup and transport

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
        self.receiver = self.receiver_class(CHANNEL, ack=True, max_pending=max_pending, ack_every=4)
        self.publisher = PublishTracker(rng=random.Random(seed), max_pending=8)
        self.connect()
        self.deliver_frame(False, 0)  # the first subscribe is answered before anything else
        self.deliver_frame(True, 0)
        for _ in range(first_publishes):
            self.publish()

    def connect(self) -> None:
        self.connected = True
        since = self.receiver.position
        request_id = next(self.request_ids)
        self.requested_since[request_id] = since
        self.client_send(
            {
                "type": "subscribe",
                "id": request_id,
                "channel": CHANNEL,
                "ack": True,
                **({"since": {"epoch": since.epoch, "seq": since.seq}} if since else {}),
            }
        )
        self.publisher.on_reconnect(self.now)
        self.send_due_publishes()

    def drop_connection(self) -> None:
        self.drop_connection_transport()
        self.receiver.on_reconnect()

    def drop_connection_transport(self) -> None:
        self.connected = False
        self.to_server.clear()
        self.to_client.clear()
        self.hub.tracker = None

    # Hooks the session machine (test_client_session_stateful.py) answers its own way.

    def unconfirmed(self) -> int:
        return len(self.publisher)

    def publish_retries(self) -> int:
        return self.publisher.retries

    def client_deadline(self) -> float | None:
        deadlines = [self.receiver.next_deadline(), self.publisher.next_deadline()]
        return min((d for d in deadlines if d is not None), default=None)

    def client_send(self, frame: dict[str, Any]) -> None:
        if self.connected:
            self.to_server.append(frame)

    def server_send(self, frame: dict[str, Any]) -> None:
        if self.connected:
            self.to_client.append(frame)

    def deliver_frame(self, to_client: bool, index: int) -> None:
        queue = self.to_client if to_client else self.to_server
        if queue:
            frame = queue.pop(min(index, len(queue) - 1))
            (self.client_receive if to_client else self.hub.receive)(frame)

    # -- the model client

    def client_receive(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "subscribed":
            since = self.requested_since[frame["id"]]
            self.apply(lambda: self.receiver.on_subscribed(frame["epoch"], frame["seq"], frame["recovered"], since))
        elif kind == "message":
            self.apply(
                lambda: self.receiver.on_message(frame["epoch"], frame["seq"], frame["data"], frame["ts"], self.now)
            )
        elif kind == "published":
            done = self.publisher.on_published(frame["id"], frame["epoch"], frame["seq"])
            if done is not None:
                self.confirmed[done.key] = (frame["epoch"], frame["seq"], done.data)
        elif kind == "error":
            self.error_codes.append(frame["code"])

    def apply(self, call) -> None:
        """Run one receiver call and carry out its effects, checking each delivery."""
        effects = call()
        epoch_now = self.receiver.position.epoch
        for effect in effects:
            if isinstance(effect, Deliver):
                self.check_delivery(effect.message)
            elif isinstance(effect, Gap):
                assert effect.expected_seq == self.expect[1], (effect, self.expect)
                assert effect.reason in ("epoch_changed", "history_exceeded"), effect
                self.gaps.append((self.expect[0], effect.expected_seq, epoch_now, effect.resumed_at_seq, effect.reason))
                self.expect = (epoch_now, effect.resumed_at_seq)
            elif isinstance(effect, SendAck):
                self.client_send({"type": "ack", "channel": CHANNEL, "seq": effect.seq})
            elif isinstance(effect, SendReplay):
                request_id = next(self.request_ids)
                self.requested_since[request_id] = effect.since
                epoch, seq = effect.since.epoch, effect.since.seq
                self.client_send(
                    {"type": "replay", "id": request_id, "channel": CHANNEL, "since": {"epoch": epoch, "seq": seq}}
                )
            else:  # pragma: no cover
                raise AssertionError(f"unknown effect {effect!r}")

    def check_delivery(self, message: Message) -> None:
        got = (message.epoch, message.seq)
        assert got not in set(self.delivered), f"delivered twice: {got}"
        assert got == self.expect, f"delivered out of order: got {got}, expected {self.expect}"
        assert self.hub.log[got][1] == message.data, f"wrong data for {got}"
        self.delivered.append(got)
        self.expect = (message.epoch, message.seq + 1)

    def send_due_publishes(self) -> None:
        if not self.connected:
            return
        for publish in self.publisher.due(self.now):
            self.client_send(
                {
                    "type": "publish",
                    "id": publish.request_id,
                    "channel": CHANNEL,
                    "data": publish.data,
                    "key": publish.key,
                }
            )

    def fire_timers(self) -> None:
        self.hub.fire_timers()
        if self.connected:
            self.apply(lambda: self.receiver.tick(self.now))
            self.send_due_publishes()

    # -- rules

    @rule()
    def publish(self) -> None:
        self.published_count += 1
        data = f"m{self.published_count}"
        if len(self.publisher) == self.publisher.max_pending:
            with pytest.raises(PublishWindowFull):
                self.publisher.new_publish(CHANNEL, data, self.now)
            return
        self.publisher.new_publish(CHANNEL, data, self.now)
        self.send_due_publishes()

    @rule(to_client=st.booleans(), index=st.one_of(st.just(0), st.integers(0, 6)))
    def deliver(self, to_client: bool, index: int) -> None:
        """Deliver one frame; index 0 is in order, anything else overtakes older frames."""
        self.deliver_frame(to_client, index)

    @rule(to_client=st.booleans())
    def deliver_newest(self, to_client: bool) -> None:
        """The newest frame overtakes every older one."""
        queue = self.to_client if to_client else self.to_server
        self.deliver_frame(to_client, len(queue) - 1)

    @rule()
    def deliver_everything_in_order(self) -> None:
        for _ in range(200):
            if not (self.to_server or self.to_client):
                break
            self.deliver_frame(False, 0)
            self.deliver_frame(True, 0)

    @rule(to_client=st.booleans(), index=st.integers(0, 6))
    def lose(self, to_client: bool, index: int) -> None:
        queue = self.to_client if to_client else self.to_server
        if queue and queue[min(index, len(queue) - 1)]["type"] in LOSSY:
            del queue[min(index, len(queue) - 1)]

    @rule(to_client=st.booleans(), index=st.integers(0, 6))
    def duplicate(self, to_client: bool, index: int) -> None:
        queue = self.to_client if to_client else self.to_server
        if queue and (frame := queue[min(index, len(queue) - 1)])["type"] in LOSSY:
            queue.append(dict(frame))

    @rule(dt=st.sampled_from([0.01, 0.06, 0.3, 1.0, 2.5, 10.0]))
    def advance_clock(self, dt: float) -> None:
        self.now += dt
        self.fire_timers()

    @rule()
    def break_or_restore_connection(self) -> None:
        if self.connected:
            self.drop_connection()
        else:
            self.connect()

    @rule()
    def restart_hub(self) -> None:
        """The hub loses its history (new epoch) and every connection; only in some runs."""
        if self.restarts_allowed:
            self.hub.restart()
            if self.connected:
                self.drop_connection()

    # -- invariants

    @invariant()
    def bounds_hold(self) -> None:
        if not hasattr(self, "hub"):
            return
        assert self.receiver.pending <= self.receiver.max_pending
        assert len(self.publisher) <= self.publisher.max_pending
        if self.hub.tracker is not None:
            assert self.hub.tracker.unacked <= self.hub.tracker.max_unacked

    @invariant()
    def delivered_once_in_order(self) -> None:
        keys = [(epoch_number(e), s) for e, s in self.delivered]
        assert keys == sorted(set(keys)), "deliveries repeated or out of order"

    # -- the faults stop

    def teardown(self) -> None:
        # teardown also runs after a failing step: keep that failure, do not settle on top of it.
        if not hasattr(self, "hub") or sys.exc_info()[0] is not None:
            return
        self.settle()
        self.check_everything_accounted_for()
        self.record_coverage()

    def settle(self) -> None:
        """No more faults: deliver everything in order, jump the clock to each next timer."""
        for _ in range(SETTLE_LIMIT):
            if not self.connected:
                self.connect()
            if self.to_server or self.to_client:
                self.deliver_frame(False, 0)
                self.deliver_frame(True, 0)
                continue
            deadlines = [d for d in (self.hub.next_deadline(), self.client_deadline()) if d is not None]
            if not deadlines:
                return
            self.now = max(self.now, min(deadlines))
            self.fire_timers()
        raise AssertionError("the system did not settle once the faults stopped")

    def check_everything_accounted_for(self) -> None:
        hub = self.hub
        assert self.unconfirmed() == 0, "publishes still unconfirmed after settling"
        assert "bad_request" not in self.error_codes, "the client acked what it never got"
        keys_per_epoch = [(epoch, key) for (epoch, _), (key, _) in hub.log.items()]
        assert len(keys_per_epoch) == len(set(keys_per_epoch)), "a retry was logged twice"
        for key, (epoch, seq, data) in self.confirmed.items():
            assert hub.log[(epoch, seq)] == (key, data), f"{key} confirmed as {epoch}/{seq}"
        reasons = {reason for *_, reason in self.gaps}
        assert hub.evicted or "history_exceeded" not in reasons, f"needless gap: {self.gaps}"
        assert hub.restarted or "epoch_changed" not in reasons, f"needless gap: {self.gaps}"
        delivered = set(self.delivered)
        for position in hub.log:
            assert position in delivered or self.covered_by_gap(position), (
                f"{position} neither delivered nor reported in a gap; gaps={self.gaps}"
            )

    def record_coverage(self) -> None:
        """What this run exercised (``pytest --hypothesis-show-statistics``)."""
        receiver = self.receiver
        for name, happened in [
            ("gap: history_exceeded", any(g[-1] == "history_exceeded" for g in self.gaps)),
            ("gap: epoch_changed", any(g[-1] == "epoch_changed" for g in self.gaps)),
            ("server retransmitted", self.hub.retransmits),
            ("slow consumer closed", self.hub.slow_consumer_closes),
            ("replay requested", receiver.replays_requested),
            ("held frame dropped at max_pending", receiver.overflow_dropped),
            ("duplicate dropped", receiver.duplicates_dropped),
            ("publish retried", self.publish_retries()),
            ("history evicted", self.hub.evicted),
            ("hub restarted", self.hub.restarted),
            ("nothing delivered", not self.delivered),
        ]:
            if happened:
                event(name)

    def covered_by_gap(self, position: tuple[str, int]) -> bool:
        epoch, seq = epoch_number(position[0]), position[1]
        for old, expected, new, resumed_at, _ in self.gaps:
            old, new = epoch_number(old), epoch_number(new)
            if old == new == epoch and expected <= seq < resumed_at:
                return True
            if old != new and (
                (epoch == old and seq >= expected) or old < epoch < new or (epoch == new and seq < resumed_at)
            ):
                return True
        return False


TestReliability = ReliabilityMachine.TestCase
TestReliability.settings = PROFILE


# -- the property can fail: broken variants must be caught


class RedeliversRepeats(ChannelReceiver):
    """Dedup disabled: a repeat of a delivered seq is delivered again."""

    def on_message(self, epoch, seq, data, ts, now):
        if self.position is not None and epoch == self.position.epoch and seq <= self.position.seq:
            return [Deliver(Message(self.channel, epoch, seq, data, ts))]
        return super().on_message(epoch, seq, data, ts, now)


class SkipsGaps(ChannelReceiver):
    """Gap detection disabled: a frame ahead of the next seq is delivered at once."""

    def on_message(self, epoch, seq, data, ts, now):
        position = self.position
        if position is not None and epoch == position.epoch and seq > position.seq + 1:
            self._delivered = seq - 1
        return super().on_message(epoch, seq, data, ts, now)


class BrokenDedupMachine(ReliabilityMachine):
    hub_dedups = False


class RedeliveringMachine(ReliabilityMachine):
    receiver_class = RedeliversRepeats


class GapSkippingMachine(ReliabilityMachine):
    receiver_class = SkipsGaps


FIND_BUG = settings(
    max_examples=1000,
    stateful_step_count=50,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.generate],  # no shrinking: we only need to know a violation is found
    report_multiple_bugs=False,
)


@pytest.mark.parametrize(
    ("machine", "complaint"),
    [
        (RedeliveringMachine, "delivered twice"),
        (GapSkippingMachine, "out of order"),
        (BrokenDedupMachine, "logged twice"),
    ],
)
def test_property_catches_a_broken_implementation(machine, complaint):
    with pytest.raises(AssertionError, match=complaint):
        run_state_machine_as_test(machine, settings=FIND_BUG)
