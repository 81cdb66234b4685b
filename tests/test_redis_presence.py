"""Presence, disconnect, history and the channel list across a cluster on Redis.

Nodes run in this process on one Redis key prefix of their own (the ``cluster`` fixture of
``test_redis_cluster``); tests that stop Redis use a private ``redis-server``. Nothing waits
on a sleep: each step waits for the frame or close it needs, under ``trio.fail_after``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from harness.nodes import Nodes, with_prefix
from wsnursery.api_client import ApiCallError, AsyncApiClient
from wsnursery.presence import Member, PresenceEvent
from wsnursery.redis_presence import ClusterPresence, PendingWrites, Write
from wsnursery.redis_store import Entry, PresenceEntry, parse
from wsnursery.redis_store import connect as connect_store

from .auth_keys import SECRET, claims, mint
from .redis_support import (  # noqa: F401 (fixtures)
    private_redis_fixture,
    redis_test_url_fixture,
)
from .test_redis_cluster import WAIT, close_code
from .test_redis_cluster import cluster as cluster  # the fixture
from .wsclient import Client, connect

API_KEY = "k" * 32
pytestmark = pytest.mark.usefixtures("server_errors")


async def next_of(client: Client, *kinds: str) -> dict[str, Any]:
    with trio.fail_after(WAIT):
        while True:
            frame = await client.receive()
            if frame["type"] in kinds:
                return frame


async def watch(url_client: Client, channel: str) -> str:
    """Subscribe with presence and wait for the own join; its conn."""
    await url_client.subscribe(channel, presence=True)
    return (await next_of(url_client, "join"))["conn"]


def api(cluster: Any, node: int) -> AsyncApiClient:
    return AsyncApiClient(f"http://127.0.0.1:{cluster.ports[node]}", API_KEY)


@contextlib.asynccontextmanager
async def as_user(url: str, user: str) -> AsyncIterator[Client]:
    token = mint(claims(user, 300, channels={"subscribe": ["*"], "publish": ["*"]}))
    async with connect(url, headers=[("Authorization", f"Bearer {token}")]) as client:
        yield client


# -- the pending writes (no Redis) ----------------------------------------------------------


def test_a_join_and_its_leave_both_pending_cancel_out_and_the_queue_is_bounded() -> None:
    writes = PendingWrites(max_pending=2)
    writes.add(Write("j", "room", "c-1", None))
    writes.add(Write("l", "room", "c-1", None, last=True))
    assert len(writes) == 0 and writes.take() is None
    for n in range(3):
        writes.add(Write("l", "room", f"c-{n}", "u"))
    assert writes.dropped == 1
    assert [w.conn for w in (writes.take(), writes.take())] == ["c-1", "c-2"]  # type: ignore[union-attr]


def test_cluster_presence_queues_in_order_and_delivers_events_no_later_than_the_window_head() -> None:
    presence = ClusterPresence("n1")
    presence.join("room", Member("alice", "c-n1a"), 0)
    presence.join("room", Member(None, "c-n1b"), 0)
    presence.leave("room", "c-n1a", True, 0)  # its join is still queued: both go
    presence.leave("room", "c-n1b", True, 0)
    presence.leave("room", "c-n1b", True, 0)  # twice: nothing more
    assert len(presence.writes) == 0 and presence.local == {}
    presence.join("room", Member(None, "c-n1c"), 0)
    presence.writes.take()  # written
    presence.leave("room", "c-n1c", True, 0)
    assert presence.writes.take() == Write("l", "room", "c-n1c", None, last=True)

    class Watcher:
        def __init__(self) -> None:
            self.events: list[PresenceEvent] = []

        def presence_event(self, event: PresenceEvent) -> None:
            self.events.append(event)

    watcher = Watcher()
    presence.deliver("room", [PresenceEntry(3, 1, "ep", "j", "c-x", "bob")], head=3)  # nobody watches
    presence.watch("room", watcher)
    entries = [PresenceEntry(3, 1, "ep", "j", "c-x", "bob"), PresenceEntry(9, 1, "ep", "l", "c-x", "bob")]
    presence.deliver("room", entries, head=5)
    assert [(e.kind, e.member, e.after) for e in watcher.events] == [
        ("join", Member("bob", "c-x"), 3),
        ("leave", Member("bob", "c-x"), 5),  # a window that starts later: never past its head
    ]


def test_a_lapsed_liveness_key_queues_every_member_again_but_not_on_the_first_refresh() -> None:
    presence = ClusterPresence("n1")
    presence.join("room", Member("alice", "c-n1a"), 0)
    presence.writes.take()
    assert presence.refreshed(existed=False) is False  # a new node: no key yet
    assert presence.refreshed(existed=True) is False and len(presence.writes) == 0
    assert presence.refreshed(existed=False) is True  # it expired: maybe reaped
    assert presence.writes.take() == Write("j", "room", "c-n1a", "alice") and presence.resyncs == 1


def test_parse_tells_presence_entries_from_messages() -> None:
    message = parse(b"3-0", {b"e": b"ep", b"t": b"1000", b"d": b"\x61x"})
    event = parse(b"3-2", {b"e": b"ep", b"t": b"1000", b"k": b"j", b"c": b"c-ab1", b"u": b"=alice"})
    assert isinstance(message, Entry) and (message.seq, message.data) == (3, "x")
    assert event == PresenceEntry(3, 2, "ep", "j", "c-ab1", "alice")
    assert parse(b"4-1", {b"e": b"ep", b"t": b"1", b"k": b"l", b"c": b"c-1", b"u": b""}).user is None  # type: ignore[union-attr]


# -- presence ---------------------------------------------------------------------------


async def test_joins_and_leaves_reach_watchers_on_every_node_in_the_same_channel_order(cluster: Any) -> None:
    a, b = await cluster.node(), await cluster.node()
    async with connect(b) as on_b, connect(a) as on_a, connect(a) as publisher, connect(a) as member:
        conn_b = await watch(on_b, "room")
        conn_a = await watch(on_a, "room")
        assert (await next_of(on_b, "join"))["conn"] == conn_a
        await publisher.publish("room", "before")  # seq 1, confirmed: the join below comes after it
        await member.subscribe("room")
        await publisher.publish("room", "racing")  # before or after the join: the same on every node
        await member.request({"type": "unsubscribe", "id": 7, "channel": "room"})
        await publisher.publish("room", "end")
        seen: dict[str, list[tuple[str, Any]]] = {}
        for name, watcher in (("a", on_a), ("b", on_b)):
            frames: list[tuple[str, Any]] = []
            while ("message", "end") not in frames or not any(kind == "leave" for kind, _ in frames):
                frame = await next_of(watcher, "message", "join", "leave")
                assert frame.get("conn") not in (conn_a, conn_b)
                frames.append((frame["type"], frame.get("data", frame.get("conn"))))
            seen[name] = frames
        assert seen["a"] == seen["b"]
        kinds = [kind for kind, _ in seen["a"]]
        assert kinds.index("join") > seen["a"].index(("message", "before"))  # after the message before it
        assert kinds.index("leave") > kinds.index("join")
        member_conn = seen["a"][kinds.index("join")][1]
        assert member_conn.startswith("c-" + cluster.hubs[0].node)  # conn names carry the node


async def test_a_presence_query_on_b_lists_a_member_on_a(cluster: Any) -> None:
    a = await cluster.node(api_key=API_KEY)
    b = await cluster.node(api_key=API_KEY)
    async with connect(b) as watcher, connect(a) as member:
        own = await watch(watcher, "lobby")
        await member.subscribe("lobby")
        joined = (await next_of(watcher, "join"))["conn"]
        listed = await watcher.request({"type": "presence", "id": 5, "channel": "lobby"})
        assert sorted(m["conn"] for m in listed["members"]) == sorted([own, joined])
        assert listed["complete"] is True and {m["user"] for m in listed["members"]} == {None}
        assert sorted(m["conn"] for m in await api(cluster, 1).presence("lobby")) == sorted([own, joined])
        channels = {c["channel"]: c for c in await api(cluster, 1).channels()}
        assert channels["lobby"]["subscribers"] == 2


async def test_members_past_max_presence_members_make_the_listing_incomplete_on_every_node(cluster: Any) -> None:
    a = await cluster.node(max_presence_members=1)
    b = await cluster.node(max_presence_members=1)

    async def listing(client: Client, complete: bool) -> list[str]:
        """The listed conns once ``complete`` is as expected (B writes its member in its own time)."""
        with trio.fail_after(WAIT):
            while True:
                reply = await client.request({"type": "presence", "id": 9, "channel": "capped"})
                if reply["complete"] is complete:
                    return [m["conn"] for m in reply["members"]]
                await trio.sleep(0.05)  # a client's retry interval

    async with connect(a) as first, connect(b) as second:
        own = await watch(first, "capped")
        await second.subscribe("capped")
        assert await listing(first, False) == [own]
        assert await listing(second, False) == [own]
        await second.request({"type": "unsubscribe", "id": 3, "channel": "capped"})
        assert await listing(first, True) == [own]
        with trio.move_on_after(0.2):  # the untracked member came and went without a frame
            frame = await next_of(first, "join", "leave")
            raise AssertionError(frame)


async def test_a_sigkilled_node_drops_out_of_presence_within_its_liveness_ttl(cluster: Any, nursery: Any) -> None:
    ttl = 1.0
    b = await cluster.node(node_ttl=ttl)
    killed = Nodes(with_prefix(cluster.url, cluster.prefix), 1, {"node_ttl": ttl})  # a process of its own
    (a,) = await nursery.start(killed.run)
    async with connect(b) as watcher:
        own = await watch(watcher, "alive")
        async with connect(a) as member:
            await member.subscribe("alive")
            gone = (await next_of(watcher, "join"))["conn"]
            killed_at = trio.current_time()
            await killed.kill(killed.nodes[0])  # SIGKILL: it writes nothing more, not even its leaves
            leave = await next_of(watcher, "leave")
            took = trio.current_time() - killed_at
            assert await close_code(member) == 1006
        assert leave["conn"] == gone
        assert took < ttl + ttl / 3 + 2, took  # the ttl, one refresh period of B, round trips on a loaded machine
        listed = await watcher.request({"type": "presence", "id": 5, "channel": "alive"})
        assert [m["conn"] for m in listed["members"]] == [own]
        assert cluster.hubs[0].presence.reaped == 1


async def test_a_stopped_node_s_members_leave_at_once(cluster: Any) -> None:
    a = await cluster.node()  # the default node_ttl (10 s): the leave must not wait for it
    b = await cluster.node()
    async with connect(b) as watcher:
        await watch(watcher, "stop")
        async with connect(a) as member:
            await member.subscribe("stop")
            gone = (await next_of(watcher, "join"))["conn"]
            cluster.servers[0].shutdown()  # node A stops: its members leave before its hub stops
            with trio.fail_after(3):
                leave = await next_of(watcher, "leave")
        assert leave["conn"] == gone


async def test_a_node_alive_again_is_not_reaped(cluster: Any) -> None:
    a, b = await cluster.node(), await cluster.node()
    async with connect(a) as member, connect(b) as asker:
        own = await watch(member, "back")
        hub_a, hub_b = cluster.hubs
        # B decided A was dead (its key looked gone), and A refreshed before B's script ran.
        await hub_b.presence._reap_node(hub_b.store, hub_a.node)
        assert hub_b.presence.reaped == 0
        listed = await asker.request({"type": "presence", "id": 5, "channel": "back"})
        assert [m["conn"] for m in listed["members"]] == [own]


async def test_presence_while_redis_is_down_answers_unavailable_and_the_connection_stays(
    cluster: Any, private_redis: Any
) -> None:
    cluster.url = private_redis.url
    a = await cluster.node(api_key=API_KEY)
    async with connect(a) as member, connect(a) as asker:
        await member.subscribe("outage")
        private_redis.stop()
        reply = await asker.request({"type": "presence", "id": 5, "channel": "outage"})
        assert (reply["type"], reply["code"], reply["id"]) == ("error", "unavailable", 5)
        for call in (
            api(cluster, 0).presence("outage"),
            api(cluster, 0).history("outage"),
            api(cluster, 0).channels(),
            api(cluster, 0).disconnect("nobody"),
        ):
            with pytest.raises(ApiCallError) as refused:
                await call
            assert (refused.value.status, refused.value.code) == (503, "unavailable")
        await member.request({"type": "unsubscribe", "id": 6, "channel": "outage"})  # a leave waits in the queue
        private_redis.start()
        with trio.fail_after(WAIT):
            while True:
                reply = await asker.request({"type": "presence", "id": 7, "channel": "outage"})
                if reply["type"] == "presence":
                    break
                assert reply["code"] == "unavailable"
                await trio.sleep(0.05)  # a client's retry interval
        assert reply["members"] == []
        with trio.fail_after(WAIT):
            while len(cluster.hubs[0].presence.writes):
                await trio.sleep(0.05)  # the queued leave is written (or found nothing to remove)


async def test_a_node_whose_liveness_lapsed_writes_its_members_again(cluster: Any) -> None:
    a = await cluster.node(node_ttl=1.0)
    async with connect(a) as member:
        own = await watch(member, "lapse")
        hub = cluster.hubs[0]
        async with connect_store(cluster.url, prefix=cluster.prefix) as store:
            # What a reap by another node does to a node that was away too long.
            await store.client.delete([f"{cluster.prefix}node:{hub.node}"])
            await store.client.hdel(f"{cluster.prefix}{{lapse}}:p", [own])
        again = await next_of(member, "join")  # written again at the next refresh
        assert again["conn"] == own and hub.presence.resyncs == 1
        listed = await member.request({"type": "presence", "id": 5, "channel": "lapse"})
        assert [m["conn"] for m in listed["members"]] == [own]


# -- disconnect, history, channels ----------------------------------------------------------


async def test_api_disconnect_on_a_closes_the_users_connections_on_b_with_4003(cluster: Any) -> None:
    settings = {"api_key": API_KEY, "jwt_secret": SECRET}
    a, b = await cluster.node(**settings), await cluster.node(**settings)
    async with as_user(b, "bob") as bob_b, as_user(a, "bob") as bob_a, as_user(b, "carol") as carol:
        assert await api(cluster, 0).disconnect("bob") == 2  # one here, one on B (B answered with its count)
        assert await close_code(bob_a) == 4003
        assert await close_code(bob_b) == 4003
        await carol.subscribe("still.here")


async def test_api_disconnect_counts_what_the_nodes_answered_within_its_bound(cluster: Any, nursery: Any) -> None:
    settings = {"api_key": API_KEY, "jwt_secret": SECRET}
    a = await cluster.node(**settings)
    b = await cluster.node(**settings)
    async with connect_store(cluster.url, prefix=cluster.prefix) as store:  # a node alive but not reading
        await store.client.set(f"{cluster.prefix}node:ghost", "1", px=30_000)
        await store.client.sadd(f"{cluster.prefix}nodes", ["ghost"])
    async with as_user(b, "dave") as dave_b, as_user(a, "dave") as dave_a:
        answered: list[int] = []
        done = trio.Event()

        async def call() -> None:
            answered.append(await api(cluster, 0).disconnect("dave"))
            done.set()

        started = trio.current_time()
        nursery.start_soon(call)
        with trio.fail_after(1.5):  # A's own connection closes without waiting for the ghost
            assert await close_code(dave_a) == 4003
        assert await close_code(dave_b) == 4003
        with trio.fail_after(WAIT):
            await done.wait()
        assert answered == [2]  # A's and B's; the ghost never answers
        assert trio.current_time() - started >= 2.0  # redis_api.DISCONNECT_WAIT


async def test_api_history_and_channels_on_b_answer_for_messages_published_on_a(cluster: Any) -> None:
    a = await cluster.node(api_key=API_KEY)
    await cluster.node(api_key=API_KEY)
    async with connect(a) as publisher, connect(a) as watcher:
        await watch(watcher, "news")
        for n in range(3):
            await publisher.publish("news", n)
            async with connect(a) as passer:  # a join and a leave between the messages
                await passer.subscribe("news")
                await next_of(watcher, "join")
            await next_of(watcher, "leave")
        history = await api(cluster, 1).history("news")
        assert [(m["seq"], m["data"]) for m in history["messages"]] == [(1, 0), (2, 1), (3, 2)]
        assert history["seq"] == 3
        assert [m["seq"] for m in (await api(cluster, 1).history("news", since=1))["messages"]] == [2, 3]
        assert [m["seq"] for m in (await api(cluster, 1).history("news", limit=2))["messages"]] == [1, 2]
        assert (await api(cluster, 1).history("nothing.here"))["messages"] == []
        channels = {c["channel"]: c for c in await api(cluster, 1).channels()}
        assert (channels["news"]["epoch"], channels["news"]["seq"]) == (history["epoch"], 3)


async def test_resume_and_replay_skip_presence_entries_on_a_node_new_to_the_channel(cluster: Any) -> None:
    a, b = await cluster.node(), await cluster.node()
    async with connect(a) as publisher, connect(a) as watcher:
        await watch(watcher, "resume")
        epoch = None
        for n in range(4):
            epoch = (await publisher.publish("resume", n))["epoch"]
            async with connect(a) as passer:
                await passer.subscribe("resume")
                await next_of(watcher, "join")
            await next_of(watcher, "leave")
    async with connect(b) as again:  # B loads the channel from Redis
        reply = await again.subscribe("resume", since={"epoch": epoch, "seq": 1})
        assert (reply["recovered"], reply["seq"]) == (True, 4)
        assert [m["data"] for m in await again.messages(3)] == [1, 2, 3]
        replaying = await again.request(
            {"type": "replay", "id": 4, "channel": "resume", "since": {"epoch": epoch, "seq": 2}}
        )
        assert replaying["recovered"] is True
        assert [m["data"] for m in await again.messages(2)] == [2, 3]


async def test_trimming_keeps_history_size_messages_whatever_the_presence_entries(cluster: Any) -> None:
    size = 8
    a = await cluster.node(history_size=size, outbound_queue_size=size, max_unacked=size, api_key=API_KEY)
    async with connect(a) as publisher, connect(a) as watcher:
        await watch(watcher, "trim")
        for n in range(20):
            await publisher.publish("trim", n)
            async with connect(a) as passer:
                await passer.subscribe("trim")
                await next_of(watcher, "join")
            await next_of(watcher, "leave")
        await publisher.publish("trim", 20)  # trims after the last presence entries too
        async with connect_store(cluster.url, prefix=cluster.prefix) as store:
            raw = await store.client.xrange(store.stream_key("trim"))
        entries = [parse(e.identifier, e.field_values) for e in raw]
        messages = [e.seq for e in entries if isinstance(e, Entry)]
        assert messages == list(range(21 - size + 1, 22))
        assert len(entries) > len(messages)  # the presence entries between them stay, uncounted
        history = await api(cluster, 0).history("trim")
        assert [m["seq"] for m in history["messages"]] == messages
