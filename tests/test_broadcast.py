"""The broadcast channel (``wsnursery.broadcast``) on its own: bounds, cursors, the two policies."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from wsnursery.broadcast import Broadcast, Cursor, Policy, StoredMessage


def make(capacity: int = 4, max_bytes: int = 1000, max_age: float = 100.0, policy: Policy = Policy.CLOSE) -> Broadcast:
    return Broadcast("ch", "ep", capacity=capacity, max_bytes=max_bytes, max_age=max_age, policy=policy)


def send(broadcast: Broadcast, data: object = None, *, size: int = 1, born: float = 0.0) -> StoredMessage:
    message = StoredMessage(broadcast.name, broadcast.epoch, broadcast.head + 1, data, 0, born, size)
    broadcast.send(message)
    return message


class Counting(Cursor):
    __slots__ = ("notified",)

    def __init__(self, broadcast: Broadcast, limit: int = 1) -> None:
        super().__init__(broadcast, limit=limit)
        self.notified = 0

    def notify(self) -> None:
        self.notified += 1


def test_a_send_notifies_every_receiver_and_each_cursor_reads_the_same_messages():
    broadcast = make()
    a, b = Counting(broadcast), Counting(broadcast)
    broadcast.receivers |= {a, b}
    sent = [send(broadcast, i) for i in range(3)]
    assert (a.notified, b.notified) == (3, 3)
    assert a.take(10) == sent and b.take(2) == sent[:2]
    assert a.take(10)[0] is b.take(10)[0]  # one copy, however many receivers
    a.cursor = 3
    assert a.take(10) == [] and a.lag == 0 and b.lag == 3


def test_the_count_bound_drops_the_oldest_and_a_cursor_behind_it_has_lost_data():
    broadcast = make(capacity=3)
    cursor = Cursor(broadcast, limit=10)
    for i in range(5):
        send(broadcast, i)
    assert (broadcast.oldest, broadcast.head, len(broadcast)) == (3, 5, 3)
    assert cursor.lost and cursor.take(10) is None
    assert broadcast.holds_after(2) and not broadcast.holds_after(1)
    assert [m.seq for m in broadcast.after(2, 10)] == [3, 4, 5]


def test_the_byte_bound_drops_the_oldest_but_always_keeps_the_newest():
    broadcast = make(capacity=100, max_bytes=10)
    for _ in range(3):
        send(broadcast, size=4)
    assert (broadcast.oldest, broadcast.bytes) == (2, 8)  # 12 bytes > 10: the first went
    send(broadcast, size=50)  # alone over the bound: kept, everything older dropped
    assert (broadcast.oldest, broadcast.head, broadcast.bytes) == (4, 4, 50)
    send(broadcast, size=1)
    assert (broadcast.oldest, broadcast.bytes) == (5, 1)


def test_messages_past_their_age_expire_from_the_front():
    broadcast = make(max_age=10.0)
    send(broadcast, born=0.0)
    send(broadcast, born=5.0)
    send(broadcast, born=9.0)
    broadcast.expire(14.0)
    assert (broadcast.oldest, broadcast.head, broadcast.bytes) == (2, 3, 2)
    broadcast.expire(100.0)
    assert len(broadcast) == 0 and broadcast.bytes == 0 and broadcast.after(3, 5) == []


def test_a_hub_can_backfill_older_messages_in_front_as_far_as_the_bounds_allow():
    """A remote hub that reads its store for a resume from before the window puts the older
    messages back in front of the oldest held one."""
    broadcast = make(capacity=4, max_bytes=10, max_age=5.0)
    for born in (0.0, 0.0, 0.0, 10.0, 10.0):
        send(broadcast, size=1, born=born)
    broadcast.expire(12.0)  # the age drops seqs 1 to 3: 4 and 5 are held
    assert (broadcast.oldest, broadcast.head, broadcast.bytes) == (4, 5, 2)
    older = [StoredMessage("ch", "ep", seq, seq, 0, 0.0, 3) for seq in (1, 2, 3)]
    assert broadcast.backfill(older) == 2  # 3 then 2 fit the capacity; 1 does not
    assert (broadcast.oldest, broadcast.bytes) == (2, 8)
    assert [m.seq for m in broadcast.after(1, 10)] == [2, 3, 4, 5]
    assert broadcast.holds_after(1) and not broadcast.holds_after(0)
    with pytest.raises(ValueError):
        broadcast.backfill([older[1]])  # must end right before the oldest held (1)
    with pytest.raises(ValueError):
        broadcast.backfill([older[0], older[0]])  # and be contiguous
    assert broadcast.backfill([]) == 0
    tight = make(capacity=10, max_bytes=5, max_age=5.0)
    send(tight, size=1, born=0.0)
    send(tight, size=2, born=10.0)
    tight.expire(12.0)
    assert tight.backfill([StoredMessage("ch", "ep", 1, None, 0, 0.0, 4)]) == 0  # 2 + 4 > 5 bytes


def test_seqs_must_follow_the_head_and_bounds_must_be_positive():
    broadcast = make()
    with pytest.raises(ValueError):
        broadcast.send(StoredMessage("ch", "ep", 2, None, 0))
    with pytest.raises(ValueError):
        make(capacity=0)
    with pytest.raises(ValueError):
        make(max_bytes=0)


async def test_policy_wait_holds_the_sender_until_the_lagging_receiver_moves():
    broadcast = make(policy=Policy.WAIT)
    slow = Cursor(broadcast, limit=2)
    broadcast.receivers.add(slow)
    send(broadcast)
    await broadcast.wait_room()  # under the limit: no wait at all
    send(broadcast)
    assert slow.full
    released = trio.Event()

    async def sender() -> None:
        await broadcast.wait_room()
        send(broadcast)
        released.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        assert not released.is_set() and broadcast.head == 2  # waiting
        slow.cursor = 1
        broadcast.progressed()
        with trio.fail_after(5):
            await released.wait()
    assert broadcast.head == 3


async def test_policy_wait_releases_the_sender_when_the_lagging_receiver_leaves():
    broadcast = make(policy=Policy.WAIT)
    slow = Cursor(broadcast, limit=1)
    broadcast.receivers.add(slow)
    send(broadcast)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(broadcast.wait_room)
        await trio.testing.wait_all_tasks_blocked()
        broadcast.receivers.discard(slow)
        broadcast.progressed()
    assert not broadcast.any_full()


def test_policy_close_leaves_the_decision_to_the_receiver_and_never_waits():
    """Under CLOSE the broadcast only notifies; a receiver that lags by its limit closes itself."""

    class Closing(Cursor):
        __slots__ = ("closed",)

        def __init__(self, broadcast: Broadcast) -> None:
            super().__init__(broadcast, limit=2)
            self.closed = False

        def notify(self) -> None:
            if self.lag > self.limit:
                self.closed = True
                assert self.broadcast is not None
                self.broadcast.receivers.discard(self)

    broadcast = make(capacity=10)
    lagging, keeping_up = Closing(broadcast), Counting(broadcast, limit=2)
    broadcast.receivers |= {lagging, keeping_up}
    for _ in range(3):
        send(broadcast)
        keeping_up.cursor = broadcast.head
    assert lagging.closed and broadcast.receivers == {keeping_up}
    assert keeping_up.notified == 3


@given(
    capacity=st.integers(1, 8),
    max_bytes=st.integers(1, 40),
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("send"), st.integers(0, 20)),
            st.tuples(st.just("read"), st.integers(0, 5)),
            st.tuples(st.just("expire"), st.floats(0, 3)),
            st.tuples(st.just("backfill"), st.integers(0, 6)),
        ),
        max_size=80,
    ),
)
def test_against_a_list_model(capacity, max_bytes, steps):
    """Whatever is sent, read, expired and backfilled, the broadcast holds exactly what a list
    model holds (the newest messages that fit both bounds and the age, and what was backfilled
    in front while it fit), a cursor reads exactly the model's messages after it, and a cursor
    behind what is held is reported lost rather than handed a gap."""
    broadcast = make(capacity=capacity, max_bytes=max_bytes, max_age=5.0)
    cursor = Cursor(broadcast, limit=capacity)
    sent: list[StoredMessage] = []
    held: list[StoredMessage] = []
    now = 0.0
    for kind, value in steps:
        if kind == "send":
            now += 0.5
            sent.append(send(broadcast, size=value, born=now))
            held.append(sent[-1])
            while len(held) > capacity or (len(held) > 1 and sum(m.size for m in held) > max_bytes):
                held.pop(0)
        elif kind == "expire":
            now += value
            broadcast.expire(now)
            held = [m for m in held if m.born >= now - 5.0]
        elif kind == "backfill":  # what a remote hub reads back from its store
            older = sent[: broadcast.oldest - 1][-value:] if value else []
            went = broadcast.backfill(older)
            expected = 0
            for message in reversed(older):
                if len(held) >= capacity or sum(m.size for m in held) + message.size > max_bytes:
                    break
                held.insert(0, message)
                expected += 1
            assert went == expected
        else:
            taken = cursor.take(value)
            missing = any(m.seq > cursor.cursor for m in sent if m not in held)
            if missing:
                assert taken is None and cursor.lost
                cursor.cursor = broadcast.oldest - 1  # resume at the oldest held
            else:
                assert taken == [m for m in held if m.seq > cursor.cursor][:value]
                if taken:
                    cursor.cursor = taken[-1].seq
        assert [m.seq for m in broadcast.after(broadcast.oldest - 1, 100) or []] == [m.seq for m in held]
        assert broadcast.bytes == sum(m.size for m in held)
        assert broadcast.head == len(sent)
        assert len(broadcast) <= capacity
