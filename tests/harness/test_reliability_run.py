"""The reliability harness end to end: all four scenarios pass, and it can fail."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness import cli, reliability, reliability_cli

SMALL = {"clients": 2, "publishers": 1, "channels": 2, "messages": 40, "duration": 40.0, "quiet": True}


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


def test_a_client_without_dedup_makes_the_harness_fail(broken_dedup, capsys, tmp_path):
    output = tmp_path / "report.json"
    status = cli.main(
        [
            "reliability",
            "--failure-rate",
            "0.3",
            "--faults",
            "duplicate",
            "--messages",
            "30",
            "--clients",
            "2",
            "--publishers",
            "1",
            "--channels",
            "1",
            "--seed",
            "3",
            "--quiet",
            "--output",
            str(output),
            "--no-shrink",
        ]
    )
    assert status == 1
    report = json.loads(output.read_text())["runs"][0]
    assert report["duplicated"] > 0 and not report["passed"]
    assert "replay with --seed 3" in capsys.readouterr().err


def test_cli_reports_and_exits_zero_on_a_clean_run(tmp_path):
    output = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "reliability",
            "--failure-rate",
            "0.15",
            "--messages",
            "30",
            "--clients",
            "2",
            "--publishers",
            "1",
            "--seed",
            "9",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for row in ("lost", "duplicated", "reordered", "faults injected", "latency p99 ms", "seed 9"):
        assert row in result.stdout
    report = json.loads(output.read_text())["runs"][0]
    assert report["passed"] and report["faults_total"] > 0 and report["lost"] == 0


def test_a_soak_publishes_until_the_time_is_up_next_to_a_run_without_faults(tmp_path, capsys):
    output = tmp_path / "report.json"
    status = cli.main(
        [
            "reliability",
            "--duration",
            "2",
            "--failure-rate",
            "0.1",
            "--clients",
            "2",
            "--publishers",
            "1",
            "--channels",
            "2",
            "--seed",
            "4",
            "--quiet",
            "--output",
            str(output),
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    faulted, clean = json.loads(output.read_text())["runs"]
    assert (faulted["scenario"], clean["scenario"]) == ("custom", "no faults")
    assert faulted["case"]["soak"] and clean["case"]["soak"] and clean["failure_rate"] == 0
    for run in (faulted, clean):
        assert run["passed"] and run["published"] > 20 and run["delivered"] == 2 * run["published"]
        assert run["throughput_deliveries_per_s"] > 0
    assert faulted["faults_total"] > 0 and clean["faults_total"] == 0
    assert "throughput deliveries/s" in out and "recovery (custom, p=0.1)" in out
    assert set(faulted["recovery"]) == {"recovery_ms", "reconnects_by_cause", "replay_sizes", "tail"}


@pytest.mark.slow
async def test_twenty_thousand_messages_at_two_percent_pass():
    options = reliability.Options(failure_rate=0.02, messages=20_000, seed=20, quiet=True)
    result = await reliability.run(options, "long")
    verdict = result.verdict
    assert result.passed, verdict.examples
    assert verdict.published == 20_000 and verdict.delivered == verdict.expected == 4 * 20_000
    assert result.faults_total > 0
    # publishers wait for the slowest subscriber: what a reconnect replays stays bounded
    bound = options.channels * (reliability.MAX_LAG + options.publishers * options.window + 1)
    assert 0 < result.recovery["replay_sizes"]["max"] <= bound, result.recovery["replay_sizes"]


def test_the_no_fault_run_is_the_same_run_shortened_and_the_window_follows_the_rate():
    long = reliability.Options(failure_rate=0.01, messages=100_000)
    assert long.window == reliability.PUBLISH_WINDOW
    name, clean = reliability_cli._baseline(long)
    assert name == "no faults (first 20,000)" and clean.messages == 20_000 and clean.failure_rate == 0
    assert clean.window == long.window and clean.seed == long.seed
    high = reliability.Options(failure_rate=0.15)
    assert high.window == 1
    name, clean = reliability_cli._baseline(high)
    assert name == "no faults" and clean.window == 1 and clean.messages == high.messages
    soak = reliability.Options(failure_rate=0.05, soak=True, duration=3600.0)
    name, clean = reliability_cli._baseline(soak)
    assert clean.soak and clean.duration == reliability_cli.BASELINE_MAX_SECONDS and "60 s" in name
    assert reliability.Options(failure_rate=0.15, publish_window=8).window == 8


def test_lag_is_how_far_the_slowest_subscriber_is_behind_on_any_channel():
    options = reliability.Options(clients=2, channels=2)
    recipe = reliability.streams.stream(1, publishers=2, channels=2)
    state = reliability._Run(options, recipe, "x", {})
    assert state.lag() == 0
    first, second = state.channels
    state.heads = {first: 900, second: 40}
    state.reached = {("sub0", first): 900, ("sub1", first): 300, ("sub0", second): 10, ("sub1", second): 40}
    assert state.lag() == 600  # sub1 on the first channel
    state.reached[("sub1", first)] = 899
    assert state.lag() == 30  # now sub0 on the second
