"""harness reliability --url given several times: the clients fail over between the nodes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import trio

from harness import cli, reliability
from harness.check import Ledger
from harness.faults import FaultSchedule
from harness.nodes import Nodes
from harness.proxy import FaultProxy
from harness.servers import ServerProcess
from wsnursery import client as sdk
from wsnursery.redis_store import connect as connect_store

from ..redis_support import cleanup, free_port, redis_test_url_fixture, unique_prefix  # noqa: F401 (fixtures)

RUN_LIMIT = 60  # seconds: a run that takes longer fails the test


@pytest.fixture
async def engine(redis_test_url):
    prefix = unique_prefix()
    yield f"{redis_test_url}?prefix={prefix}"
    async with connect_store(redis_test_url, prefix=prefix) as store:
        await cleanup(store.client, prefix)


class _Counted(Ledger):
    """A ledger that sets ``reached`` once ``after`` publishes were confirmed (to stop a node mid-run)."""

    after = 0
    reached: trio.Event | None = None

    def published(self, channel, seq, payload):
        super().published(channel, seq, payload)
        if self.reached is not None and sum(map(len, self.confirmed.values())) >= self.after:
            self.reached.set()


def _options(**overrides):
    settings = dict(
        failure_rate=0.05,
        clients=2,
        publishers=2,
        channels=2,
        messages=150,
        duration=RUN_LIMIT - 10,
        seed=11,
        quiet=True,
    )
    return reliability.Options(**{**settings, **overrides})


def _assert_clean(result):
    report = result.as_dict()
    assert result.passed, report
    assert (report["lost"], report["duplicated"], report["reordered"], report["corrupted"]) == (0, 0, 0, 0)
    assert report["unconfirmed_publishes"] == 0


async def test_a_node_stopped_mid_run_loses_nothing_for_clients_with_two_urls(engine, nursery, monkeypatch):
    nodes = Nodes(engine, 2, {**reliability.SERVER_SETTINGS, "log_level": "info"}, seed=11)
    urls = await nursery.start(nodes.run)
    halfway = trio.Event()
    monkeypatch.setattr(_Counted, "after", 60)
    monkeypatch.setattr(_Counted, "reached", halfway)
    monkeypatch.setattr(reliability, "Ledger", _Counted)
    results = []

    async def run():
        results.append(await reliability.run(_options(urls=urls), "two urls"))

    with trio.fail_after(RUN_LIMIT):
        async with trio.open_nursery() as inner:
            inner.start_soon(run)
            await halfway.wait()  # 60 publishes confirmed: clients on both nodes are mid-stream
            await nodes.kill(nodes.nodes[0])  # half the clients started on it: they fail over to node 1
    assert nodes.kills == 1
    _assert_clean(results[0])
    assert results[0].reconnects >= 2  # at least the two clients that began on node 0


async def test_an_unreachable_url_first_in_the_list_is_skipped(start_server):
    live = await start_server(**reliability.SERVER_SETTINGS)
    dead = f"ws://127.0.0.1:{free_port()}/"  # nothing listens there
    with trio.fail_after(RUN_LIMIT):
        result = await reliability.run(_options(failure_rate=0.0, urls=[dead, live.url], messages=60), "dead first")
    _assert_clean(result)


async def test_a_proxy_with_several_upstreams_counts_connections_on_all_its_ports(server, nursery):
    schedule = FaultSchedule(seed=1, failure_rate=0.0)
    proxy = FaultProxy("127.0.0.1", free_port(), schedule, more_upstreams=(("127.0.0.1", server.port),))
    port = await nursery.start(proxy.run)
    assert port == proxy.ports[0] and len(set(proxy.ports)) == 2
    urls = [f"ws://127.0.0.1:{port}/" for port in proxy.ports]  # the first leads nowhere
    with trio.fail_after(10):
        async with sdk.connect(urls, backoff_base=0.005, backoff_max=0.05) as client:
            await client.publish("several", 1)
            assert client.url == urls[1]
    assert proxy.connections_handled == 2  # one count over both ports: the refused one and the live one


@pytest.mark.parametrize(
    "argv, why",
    [
        (["--url", "ws://127.0.0.1:1/", "--url", "ws://example.com:80/"], "--url must point at"),
        (["--url", "ws://127.evil.example:80/"], "--url must point at"),
        (["--url", "wss://127.0.0.1:80/"], "--url must point at"),
        (["--url", "ws://127.0.0.1:1/", "--url", "ws://127.0.0.1:port/"], "--url must look like"),
        (["--url", "ws://127.0.0.1:1/", "--url", "ws://127.0.0.1:99999/"], "--url must look like"),
        (["--url", "ws://127.0.0.1:1/"] * 17, "at most 16 times"),
        (
            ["--url", "ws://127.0.0.1:1/", "--url", "ws://127.0.0.1:2/", "--nodes", "2", "--engine", "redis://x/1"],
            "--url targets",
        ),
    ],
)
def test_bad_urls_are_one_line_and_status_2(argv, why, capsys):
    try:
        status = cli.main(["reliability", "--quiet", *argv])
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2
    assert why in err and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_the_command_line_takes_url_twice(tmp_path):
    out = tmp_path / "run.json"
    with ServerProcess("wsnursery") as live:
        argv = ["--url", f"ws://127.0.0.1:{free_port()}/", "--url", f"ws://127.0.0.1:{live.port}/"]
        done = subprocess.run(
            [sys.executable, "-m", "harness", "reliability", *argv, "--failure-rate", "0", "--messages", "30"]
            + ["--clients", "2", "--publishers", "1", "--quiet", "--output", str(out)],
            capture_output=True,
            text=True,
            timeout=RUN_LIMIT,
            check=False,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    (run,) = json.loads(out.read_text())["runs"]
    assert run["passed"] and run["delivered"] == 60 and run["lost"] == 0
