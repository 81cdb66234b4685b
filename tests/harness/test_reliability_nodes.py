"""harness reliability on a cluster: --engine redis://... --nodes N --kill-node."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness import nodes, reliability
from wsnursery.redis_store import connect as connect_store

from ..redis_support import redis_test_url_fixture  # noqa: F401 (fixtures)


async def test_a_run_on_three_nodes_with_node_kills_loses_nothing(monkeypatch, redis_test_url):
    url = redis_test_url
    monkeypatch.setattr(nodes, "KILL_INTERVAL", 0.6)  # several kills within a short run
    monkeypatch.setattr(nodes, "KILL_DOWN", 0.3)
    options = reliability.Options(
        failure_rate=0.05,
        clients=2,
        publishers=2,
        channels=2,
        messages=120,
        duration=120,
        seed=4,
        engine=url,
        nodes=3,
        kill_node=True,
        quiet=True,
    )
    # Keys an earlier run left (one killed mid-run cannot clean up) are not this run's to delete.
    async with connect_store(url) as store:
        before = {key async for key in store.client.scan_iter(match="wsnrel:*")}
    result = await reliability.run(options, "nodes")
    report = result.as_dict()
    assert result.passed, report
    assert (report["lost"], report["duplicated"], report["reordered"]) == (0, 0, 0)
    assert report["node_kills"] >= 1
    async with connect_store(url) as store:  # the run deleted its keys
        assert {key async for key in store.client.scan_iter(match="wsnrel:*")} - before == set()


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--nodes", "2"], "need a shared engine"),
        (["--kill-node", "--engine", "redis://127.0.0.1:6379/15"], "needs --nodes 2 or more"),
        (["--url", "ws://127.0.0.1:1/", "--nodes", "2", "--engine", "redis://127.0.0.1:6379/15"], "--url targets"),
    ],
)
def test_cluster_flags_that_cannot_work_are_one_line_and_status_2(flags, words):
    result = subprocess.run(
        [sys.executable, "-m", "harness", "reliability", *flags],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and words in result.stderr, result.stderr


def test_a_node_that_does_not_start_is_one_line_and_status_1():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "reliability",
            "--engine",
            "redis://127.0.0.1:port/15",
            "--nodes",
            "2",
            "--quiet",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "did not listen" in lines[0] and "port that is not a number" in lines[0], lines
