"""Client SDK under killed connections: exactly once, in order; giving up when the server is gone."""

from __future__ import annotations

import random
import socket

import anyio
import pytest

import wsnursery.client as wc

TIMEOUT = 20
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "request_timeout": 0.5}


async def _exactly_once_under_kills(url, *, seed, count, publishers, kill, ack=True, encoding="cbor"):
    """``publishers`` tasks publish ``count`` messages in all while ``kill(client, rng)`` runs
    after seeded-random numbers of publishes and deliveries. Checks every message arrives
    exactly once, in seq order, in each publisher's order, with no gap."""
    rng = random.Random(seed)
    channel = f"kills.{seed}"
    per_publisher = count // publishers
    with anyio.fail_after(TIMEOUT):
        async with (
            wc.connect(url, seed=seed, encoding=encoding, **FAST) as subscriber,
            wc.connect(url, seed=seed + 1, encoding=encoding, **FAST) as publisher,
        ):
            async with subscriber.subscribe(channel, ack=ack) as messages:
                confirmed: list[wc.Published] = []
                next_publisher_kill = rng.randint(5, 40)

                async def publish(p: int) -> None:
                    nonlocal next_publisher_kill
                    for i in range(per_publisher):
                        confirmed.append(await publisher.publish(channel, [p, i]))
                        if len(confirmed) >= next_publisher_kill:
                            next_publisher_kill += rng.randint(5, 40)
                            await kill(publisher, rng)

                received: list[wc.Message] = []
                async with anyio.create_task_group() as group:
                    for p in range(publishers):
                        group.start_soon(publish, p)
                    next_subscriber_kill = rng.randint(5, 40)
                    async for item in messages:
                        assert isinstance(item, wc.Message), item  # no Gap: nothing was lost
                        received.append(item)
                        if len(received) == per_publisher * publishers:
                            break  # before any kill: a kill after the last message has nothing to resume
                        if len(received) >= next_subscriber_kill:
                            next_subscriber_kill += rng.randint(5, 40)
                            await kill(subscriber, rng)
            seqs = [m.seq for m in received]
            first = seqs[0]
            assert seqs == list(range(first, first + len(seqs))), "out of order, repeated or missing"
            assert sorted(p.seq for p in confirmed) == seqs, "each publish stored exactly once"
            for p in range(publishers):
                assert [m.data[1] for m in received if m.data[0] == p] == list(range(per_publisher))
            assert len({m.epoch for m in received}) == 1
            return subscriber.stats, publisher.stats


async def _abort(client: wc.Client, rng: random.Random) -> None:
    client.abort()


@pytest.mark.parametrize("seed", [1, 2])
async def test_aborts_under_subscriber_and_publisher_lose_nothing(start_server, seed):
    server = await start_server()
    sub_stats, pub_stats = await _exactly_once_under_kills(server.url, seed=seed, count=500, publishers=4, kill=_abort)
    assert sub_stats.aborts >= 10 and pub_stats.aborts >= 10
    # Every abort reconnected (nothing gave up), but the last one may still be reconnecting when
    # the last message, already buffered by the client before that abort, completes the stream.
    assert sub_stats.aborts - 1 <= sub_stats.reconnects <= sub_stats.aborts
    assert sub_stats.gaps == 0


async def test_aborts_without_acks_json(start_server):
    """ack=False: resume with since alone; JSON encoding."""
    server = await start_server()
    sub_stats, _ = await _exactly_once_under_kills(
        server.url, seed=3, count=300, publishers=2, kill=_abort, ack=False, encoding="json"
    )
    assert sub_stats.aborts >= 5


async def test_server_side_closes_lose_nothing(start_server):
    """The server ends the connection (1011, 4008 slow consumer, 1001): the client resumes."""
    server = await start_server()
    codes = [1011, 4008, 1001, 1000]

    async def close_from_server(client: wc.Client, rng: random.Random) -> None:
        # The server-side Connection of this client is the one whose remote port is ours.
        conn = client._conn
        if conn is None:
            return
        local = conn.transport.stream.extra(anyio.abc.SocketAttribute.local_address)
        for connection in list(server.server.connections):
            if connection.remote.endswith(f":{local[1]}"):
                connection.request_close(rng.choice(codes), "closed by the test")

    sub_stats, pub_stats = await _exactly_once_under_kills(
        server.url, seed=4, count=300, publishers=3, kill=close_from_server
    )
    assert sub_stats.reconnects >= 3 and pub_stats.reconnects >= 3


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_gives_up_when_the_server_is_gone(start_server):
    server = await start_server(shutdown_timeout=0.5)
    with anyio.fail_after(TIMEOUT):
        async with wc.connect(server.url, max_reconnects=3, **FAST) as client:
            async with client.subscribe("gone") as messages:
                await client.publish("gone", "before")
                assert (await messages.receive()).data == "before"
                server.server.shutdown()  # close 1001, then the port refuses connections
                with pytest.raises(wc.GaveUp) as info:
                    await messages.receive()
                assert info.value.attempts == 3
                assert isinstance(info.value.last_error, OSError)
                with pytest.raises(wc.GaveUp):
                    await client.publish("gone", "after")
            assert client.stats.connect_failures == 3
            assert isinstance(client.error, wc.GaveUp)


async def test_gives_up_on_first_connect():
    url = f"ws://127.0.0.1:{_unused_port()}/"
    with anyio.fail_after(TIMEOUT):
        with pytest.raises(wc.GaveUp) as info:
            async with wc.connect(url, max_reconnects=2, **FAST):
                pass  # pragma: no cover
    assert info.value.attempts == 2


async def test_pending_publish_gets_gave_up(start_server):
    """A publish waiting for its confirmation when the server goes away raises GaveUp."""
    server = await start_server(shutdown_timeout=0.5)
    with anyio.fail_after(TIMEOUT):
        async with wc.connect(server.url, max_reconnects=2, **FAST) as client:
            await client.publish("p", 0)
            server.server.shutdown()
            with pytest.raises(wc.GaveUp):
                while True:  # publishes succeed until the connection is gone, then GaveUp
                    await client.publish("p", 1)


def test_aborts_lose_nothing_under_asyncio():
    from .test_client_roundtrip import server_in_thread

    with server_in_thread() as url:
        sub_stats, pub_stats = anyio.run(
            lambda: _exactly_once_under_kills(url, seed=5, count=300, publishers=3, kill=_abort),
            backend="asyncio",
        )
    assert sub_stats.aborts >= 5 and pub_stats.aborts >= 5
    # As under trio: the last abort may still be reconnecting when the stream completes.
    assert sub_stats.aborts - 1 <= sub_stats.reconnects <= sub_stats.aborts
