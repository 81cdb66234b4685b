"""Smoke test of the bench load client: fanout and fanout_acks against our server, tiny sizes.

Runs `python -m wsnursery serve` and `benches/client.py run` as subprocesses (127.0.0.1 only, every
wait bounded) and checks that every subscriber got every message, in order, with nothing lost, no
gap and no close, and that fanout_acks really acknowledged. Takes a few seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.servers import ServerError, ServerProcess

REPO = Path(__file__).resolve().parent.parent
SUBS, BATCH, WARMUP, MESSAGES = 20, 20, 40, 100


@pytest.fixture
def our_server():
    srv = ServerProcess("wsnursery", start_timeout=15.0)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop(timeout=5.0)


def test_fanout_and_fanout_acks_deliver_everything_in_order(our_server, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(REPO / "benches" / "client.py"),
        "run",
        "--url",
        f"ws://127.0.0.1:{our_server.port}",
        "--server-pid",
        str(our_server.pid),
        "--scenario",
        "fanout,fanout_acks",
        "--json",
        str(out),
        "--workers",
        "1",
        "--fanout-subs",
        str(SUBS),
        "--fanout-batch",
        str(BATCH),
        "--fanout-warmup",
        str(WARMUP),
        "--fanout-messages",
        str(MESSAGES),
        "--duration-s",
        "30",
        "--fanout-read-interval",
        "0.02",
        "--timeout-s",
        "20",
        "--stall-s",
        "5",
    ]
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"bench client did not finish in 60 s; output so far:\n{e.stdout}\n{e.stderr}")
    report = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}\nserver:\n" + "\n".join(
        list(our_server.tail)[-10:]
    )
    assert proc.returncode == 0, report
    results = {r["scenario"]: r for r in json.loads(out.read_text())}
    assert set(results) == {"fanout", "fanout_acks"}, report
    expected = (MESSAGES - WARMUP) * SUBS
    for name, r in results.items():
        d = r["details"]
        assert r["error"] is None, (name, r["error"], report)
        assert d["deliveries_expected"] == expected, (name, d)
        assert d["deliveries_measured"] == expected, (name, d)
        assert d["deliveries_total"] == MESSAGES * SUBS, (name, d)
        assert d["seq_gaps"] == 0, (name, d)
        assert d["lost_connections"] == 0, (name, d)
        assert d["messages_published"] == MESSAGES and d["published_acks"] == MESSAGES, (name, d)
        assert r["value"] > 0, (name, r)
    acked = results["fanout_acks"]["details"]
    # at least one ack per subscriber, at most one per delivery
    assert SUBS <= acked["acks_sent"] <= MESSAGES * SUBS, acked
    assert "acks_sent" not in results["fanout"]["details"]


def test_server_process_reports_the_output_of_a_server_that_did_not_start():
    """The bench's server runner reads the server's output from a file: a server that exits
    before it listens is reported with its last lines, and the file is gone afterwards."""
    argv = [sys.executable, "-c", "import sys; print('about to fail'); sys.exit('no such setting: x')"]
    srv = ServerProcess("broken", argv, start_timeout=15.0)
    with pytest.raises(ServerError) as caught:
        srv.start()
    message = str(caught.value)
    assert "broken exited with 1" in message, message
    assert "about to fail" in message and "no such setting: x" in message, message
    assert srv.tail[-1] == "no such setting: x"
    assert srv._output is None


def test_server_process_finds_the_port_and_keeps_the_last_lines(our_server):
    assert our_server.port and any("listening on ws://127.0.0.1:" in line for line in our_server.tail)


@pytest.mark.parametrize("script", ["side_by_side.py", "micro.py", "client.py", "cluster.py"])
def test_bench_scripts_import_the_harness_as_a_package(script, tmp_path):
    """Each script runs by path from any folder: it imports `harness.*`, never another bench file."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "benches" / script), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:"), proc.stdout


def test_cluster_workers_only_runs_the_three_servers_at_tiny_sizes(tmp_path):
    """``benches/cluster.py --workers-only``: memory, Redis one process, Redis --workers 2, each measured."""
    from .redis_support import redis_url

    out = tmp_path / "workers.json"
    tiny = ["--connections", "10", "--channels", "5", "--warmup", "0.3", "--seconds", "0.5"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "benches" / "cluster.py"), "--workers-only", "--redis", redis_url(), *tiny]
        + ["--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())["results"]
    assert list(results) == ["memory, 1 process", "redis, 1 process", "redis, --workers 2"]
    for (run,) in results.values():
        assert run["publishes_per_s"] > 0 and run["deliveries_per_s"] > 0 and run["publish_errors"] == 0
    workers = results["redis, --workers 2"][0]["cpu_cores"]
    assert sum(name.startswith("worker ") for name in workers) == 2 and {"supervisor", "client"} <= set(workers)
    assert "round 1, publishes/s" in proc.stdout
