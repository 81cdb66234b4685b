"""Client SDK behind the frame-aware fault proxy: lost replies, stalled links, random faults."""

from __future__ import annotations

import anyio
import pytest

import wsnursery.client as wc

faults = pytest.importorskip("harness.faults")
proxy_module = pytest.importorskip("harness.proxy")
FaultSchedule, FaultProxy = faults.FaultSchedule, proxy_module.FaultProxy

TIMEOUT = 20
CLIENT = {
    "request_timeout": 0.3,
    "connect_timeout": 1.0,
    "heartbeat_interval": 0.3,
    "heartbeat_timeout": 0.3,
    "backoff_base": 0.01,
    "backoff_max": 0.1,
    "publish_backoff_max": 0.3,
    "max_reconnects": 30,
}
SERVER = {"ack_timeout": 0.2, "ack_max_timeout": 1.0}


async def _proxied(nursery, start_server, schedule) -> tuple[FaultProxy, str]:
    server = await start_server(**SERVER)
    proxy = FaultProxy("127.0.0.1", server.port, schedule)
    port = await nursery.start(proxy.run)
    return proxy, f"ws://127.0.0.1:{port}/"


async def test_lost_subscribe_and_published_replies_are_retried(nursery, start_server):
    # connection 0, upstream data frames: 0 = subscribe (dropped), 1 = its retry, 2 = publish.
    # downstream: 0 = welcome, 1 = subscribed, 2 = published (dropped), 3 = the message.
    schedule = FaultSchedule.forced({(0, "upstream", 0): "drop", (0, "downstream", 2): "drop"})
    proxy, url = await _proxied(nursery, start_server, schedule)
    with anyio.fail_after(TIMEOUT):
        async with wc.connect(url, seed=7, **CLIENT) as client:
            async with client.subscribe("lost.replies") as messages:
                published = await client.publish("lost.replies", "once")
                assert published.seq == 1  # the retry got the original seq (server dedup)
                message = await messages.receive()
                assert (message.seq, message.data) == (1, "once")
                await client.publish("lost.replies", "twice")
                assert (await messages.receive()).seq == 2  # seq 1 was not delivered again
            stats = client.stats
    assert proxy.stats.count("drop") == 2
    assert stats.requests_resent >= 1 and stats.publish_retries >= 1
    assert stats.reconnects == 0


async def test_stalled_link_is_dropped_by_the_heartbeat(nursery, start_server):
    # downstream frame 3 of connection 0 is the message: the link stalls both ways there.
    schedule = FaultSchedule.forced({(0, "downstream", 3): "stall"})
    _proxy, url = await _proxied(nursery, start_server, schedule)
    with anyio.fail_after(TIMEOUT):
        async with wc.connect(url, seed=8, **CLIENT) as client:
            async with client.subscribe("stalled") as messages:
                await client.publish("stalled", "through the stall")
                message = await messages.receive()  # resumed on connection 1
                assert message.data == "through the stall"
            stats = client.stats
    assert stats.heartbeat_timeouts == 1 and stats.reconnects == 1


@pytest.mark.parametrize("seed", [11, 12])
async def test_random_faults_exactly_once_in_order(nursery, start_server, seed):
    schedule = FaultSchedule(
        seed=seed,
        failure_rate=0.03,
        kinds={"drop", "duplicate", "delay", "reset", "slice"},
        delay_spike=0.05,
    )
    proxy, url = await _proxied(nursery, start_server, schedule)
    count = 300
    channel = f"chaos.{seed}"
    with anyio.fail_after(TIMEOUT):
        async with (
            wc.connect(url, seed=seed, **CLIENT) as subscriber,
            wc.connect(url, seed=seed + 100, encoding="json", **CLIENT) as publisher,
        ):
            async with subscriber.subscribe(channel) as messages:
                confirmed = []

                async def publish() -> None:
                    for i in range(count):
                        confirmed.append(await publisher.publish(channel, i))

                received = []
                async with anyio.create_task_group() as group:
                    group.start_soon(publish)
                    async for item in messages:
                        assert isinstance(item, wc.Message), item
                        received.append(item)
                        if len(received) == count:
                            break
    assert [m.data for m in received] == list(range(count))
    assert [m.seq for m in received] == [p.seq for p in confirmed] == list(range(1, count + 1))
    assert proxy.stats.total >= 10
    assert proxy.stats.count("drop") + proxy.stats.count("reset") >= 1
