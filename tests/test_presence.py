"""The presence registry: members, watchers, the member bound, and frames encoded once."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from wsnursery.codec import Encoding
from wsnursery.presence import (
    Member,
    PresenceEvent,
    PresenceRegistry,
    connection_ids,
    presence_reply,
)


class Recorder:
    def __init__(self) -> None:
        self.events: list[PresenceEvent] = []

    def presence_event(self, event: PresenceEvent) -> None:
        self.events.append(event)


def test_join_and_leave_reach_watchers_in_order() -> None:
    registry = PresenceRegistry()
    watcher = Recorder()
    registry.watch("chat", watcher)
    alice, bob = Member("alice", "c-1"), Member("bob", "c-2")
    assert registry.join("chat", alice, after=0)
    assert registry.join("chat", bob, after=3)
    registry.leave("chat", "c-1", tracked=True, after=5)
    assert [(e.kind, e.member.user, e.after) for e in watcher.events] == [
        ("join", "alice", 0),
        ("join", "bob", 3),
        ("leave", "alice", 5),
    ]
    assert registry.members("chat") == [bob]
    assert registry.complete("chat")


def test_channels_are_separate_and_forgotten_when_empty() -> None:
    registry = PresenceRegistry()
    watcher = Recorder()
    registry.watch("a", watcher)
    registry.join("b", Member("x", "c-1"), 0)
    assert watcher.events == []
    registry.leave("b", "c-1", tracked=True, after=0)
    registry.unwatch("a", watcher)
    assert registry.channel_count == 0


def test_past_the_member_limit_nobody_is_told_and_the_list_says_incomplete() -> None:
    registry = PresenceRegistry(max_members=2)
    watcher = Recorder()
    registry.watch("c", watcher)
    assert registry.join("c", Member("a", "c-1"), 0)
    assert registry.join("c", Member("b", "c-2"), 0)
    assert not registry.join("c", Member("z", "c-3"), 0)
    assert len(watcher.events) == 2 and len(registry.members("c")) == 2
    assert not registry.complete("c")
    registry.leave("c", "c-3", tracked=False, after=0)
    assert registry.complete("c") and len(watcher.events) == 2


def test_frames_are_encoded_once_per_encoding() -> None:
    event = PresenceEvent("join", "chat.room1", Member("alice", "c-8f2"), after=4)
    frame = event.frame(Encoding.JSON)
    assert event.frame(Encoding.JSON) is frame
    assert event.frame(Encoding.CBOR) is event.frame(Encoding.CBOR)
    payload = json.loads(frame[2:])
    assert payload == {"type": "join", "channel": "chat.room1", "user": "alice", "conn": "c-8f2"}
    anonymous = PresenceEvent("leave", "c", Member(None, "c-1"), 0).as_frame()
    assert anonymous == {"type": "leave", "channel": "c", "user": None, "conn": "c-1"}


def test_presence_reply_and_connection_ids() -> None:
    reply = presence_reply(5, "chat.room1", [Member("alice", "c-8f2")], True)
    assert reply == {
        "type": "presence",
        "id": 5,
        "channel": "chat.room1",
        "members": [{"user": "alice", "conn": "c-8f2"}],
        "complete": True,
    }
    ids = connection_ids("ab")
    assert [next(ids) for _ in range(3)] == ["c-ab1", "c-ab2", "c-ab3"]
    assert next(connection_ids()).startswith("c-")


@settings(max_examples=300)
@given(st.integers(1, 4), st.lists(st.tuples(st.booleans(), st.integers(0, 6)), max_size=60))
def test_registry_matches_a_model(limit: int, operations: list[tuple[bool, int]]) -> None:
    """Members listed = the first ``limit`` joiners still present (joined since a slot was free);
    watchers see exactly the listed members' joins and leaves."""
    registry = PresenceRegistry(max_members=limit)
    watcher = Recorder()
    registry.watch("ch", watcher)
    tracked: dict[int, bool] = {}
    listed: list[int] = []
    for join, number in operations:
        conn = f"c-{number}"
        if join and number not in tracked:
            tracked[number] = registry.join("ch", Member(f"u{number}", conn), 0)
            assert tracked[number] is (len(listed) < limit)
            if tracked[number]:
                listed.append(number)
        elif not join and number in tracked:
            registry.leave("ch", conn, tracked.pop(number), 0)
            if number in listed:
                listed.remove(number)
        assert [m.conn for m in registry.members("ch")] == [f"c-{n}" for n in listed]
        assert registry.complete("ch") is all(tracked.values())
    shown: list[str] = []
    for event in watcher.events:
        if event.kind == "join":
            shown.append(event.member.conn)
        else:
            shown.remove(event.member.conn)
    assert shown == [f"c-{n}" for n in listed]
