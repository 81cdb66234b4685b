"""End to end: ``python -m harness load|connect|stress`` at tiny sizes, and their bad flags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def harness(*argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def ordered(lat: dict) -> None:
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["p999"] <= lat["max"]


@pytest.mark.parametrize("extra", [[], ["--mode", "echo", "--encoding", "cbor"]])
def test_load_runs_end_to_end(tmp_path: Path, extra: list[str]) -> None:
    out = tmp_path / "load.json"
    done = harness("load", "--clients", "2", "--messages", "20", "--quiet", "--output", str(out), *extra)
    assert done.returncode == 0, done.stderr
    assert "throughput msg/s" in done.stdout and "machine:" in done.stdout
    report = json.loads(out.read_text())
    result = report["result"]
    assert result["throughput_msg_s"] > 0
    assert result["error_rate"] == 0 and result["messages_received"] == 40
    ordered(result["latency_ms"])
    assert result["connect_time_ms"]["p50"] > 0
    assert result["server_peak_rss_mb"] > 0
    assert 0 <= result["client_cpu_percent"] <= 200
    assert report["machine"]["logical_cpus"] >= 1


def test_load_csv_output(tmp_path: Path) -> None:
    out = tmp_path / "load.csv"
    done = harness("load", "--clients", "1", "--messages", "5", "--quiet", "--output", str(out))
    assert done.returncode == 0, done.stderr
    header, row = out.read_text().splitlines()[:2]
    assert "throughput_msg_s" in header and "latency_ms.p99" in header and row


def test_connect_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "connect.json"
    done = harness("connect", "--hold", "20", "--hold-seconds", "1.5", "--heartbeat-interval", "0.5",
                   "--churn", "5", "--quiet", "--output", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())["result"]
    assert result["connections_opened"] == 20 and result["held_open_at_end"] == 20
    assert result["establishment_rate_conn_s"] > 0
    assert result["heartbeat_pings_received"] > 0
    assert result["churn"]["reconnected"] == 5 and result["churn"]["success_rate"] == 1.0
    c = result["connect_time_ms"]
    assert 0 < c["p50"] <= c["p95"] <= c["p99"]


def test_stress_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "stress.json"
    done = harness("stress", "--max-level", "light", "--max-connections", "20", "--max-ops", "200", "--quiet",
                   "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert "SCALED" in done.stdout and "scale factor" in done.stdout
    report = json.loads(out.read_text())
    levels = report["levels"]
    assert [level["level"] for level in levels] == ["minimal", "light"]
    assert levels[1]["connections"] == 20 and levels[1]["scale_factor"] == pytest.approx(200 / 10_000)
    for level in levels:
        assert level["throughput_msg_s"] > 0 and level["error_rate"] == 0
        ordered(level["latency_ms"])
    assert levels[0]["throughput_vs_first"] == 1.0


@pytest.mark.parametrize("argv", [
    ["load", "--clients", "0"],
    ["load", "--mode", "bogus"],
    ["load", "--no-such-flag"],
    ["load", "--url", "ws://10.0.0.1:80/"],
    ["connect", "--hold", "20000"],
    ["connect", "--hold", "-3"],
    ["stress", "--max-level", "ludicrous"],
    ["stress", "--max-connections", "50000"],
])
def test_bad_flags_exit_2_with_one_line(argv: list[str]) -> None:
    done = harness(*argv, timeout=15)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("command", ["load", "connect", "stress"])
def test_help_lists_every_option(command: str) -> None:
    done = harness(command, "--help", timeout=15)
    assert done.returncode == 0
    for flag in ("--output", "--seed", "--url", "--quiet"):
        assert flag in done.stdout
