"""The reliability harness end to end: all four scenarios pass, and it can fail."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness import cli, reliability
from wsnursery.client import sdk
from wsnursery.client.receiver import ChannelReceiver, Deliver, Message

SMALL = dict(clients=2, publishers=1, channels=2, messages=40, duration=40.0, quiet=True)


@pytest.mark.parametrize("scenario, rate", list(reliability.SCENARIOS.items()))
async def test_each_scenario_loses_nothing_and_faults_fire(scenario, rate):
    seed = 11 + int(rate * 100)
    result = await reliability.run(reliability.Options(failure_rate=rate, seed=seed, **SMALL), scenario)
    verdict = result.verdict
    assert (verdict.lost, verdict.duplicated, verdict.reordered, verdict.corrupted) == (0, 0, 0, 0), verdict.examples
    assert verdict.unconfirmed == 0 and not result.timed_out
    assert verdict.delivered == verdict.expected == SMALL["clients"] * SMALL["messages"]
    if rate:
        assert result.faults_total > 0
    else:
        assert result.faults_total == 0
    assert result.passed


async def test_json_encoding_run_is_clean_too():
    options = reliability.Options(failure_rate=0.1, seed=5, encoding="json", **SMALL)
    result = await reliability.run(options, "json")
    assert result.passed, result.verdict.examples


class DeliversRepeats(ChannelReceiver):
    """A broken receiver: dedup switched off, so repeats reach the application."""

    def on_message(self, epoch, seq, data, ts, now):
        if epoch == self._epoch and self._resync is None and seq <= self._delivered:
            return [Deliver(Message(self.channel, epoch, seq, data, ts))]
        return super().on_message(epoch, seq, data, ts, now)


def test_a_client_without_dedup_makes_the_harness_fail(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sdk, "ChannelReceiver", DeliversRepeats)
    output = tmp_path / "report.json"
    status = cli.main([
        "reliability", "--failure-rate", "0.3", "--faults", "duplicate", "--messages", "30",
        "--clients", "2", "--publishers", "1", "--channels", "1", "--seed", "3", "--quiet",
        "--output", str(output), "--no-shrink",
    ])
    assert status == 1
    report = json.loads(output.read_text())["runs"][0]
    assert report["duplicated"] > 0 and not report["passed"]
    assert "replay with --seed 3" in capsys.readouterr().err


def test_cli_reports_and_exits_zero_on_a_clean_run(tmp_path):
    output = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "harness", "reliability", "--failure-rate", "0.15", "--messages", "30",
         "--clients", "2", "--publishers", "1", "--seed", "9", "--output", str(output)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for row in ("lost", "duplicated", "reordered", "faults injected", "latency p99 ms", "seed 9"):
        assert row in result.stdout
    report = json.loads(output.read_text())["runs"][0]
    assert report["passed"] and report["faults_total"] > 0 and report["lost"] == 0
