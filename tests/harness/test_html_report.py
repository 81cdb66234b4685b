"""harness.html_report and harness.timeline without a browser: data in, SVG and figures out."""

from __future__ import annotations

import json
import re

from hdrh.histogram import HdrHistogram

from harness import html_report
from harness.timeline import CURVE_PERCENTILES, Timeline, curve


def _run(name: str, passed: bool = True, **extra) -> dict:
    return {
        "scenario": name,
        "failure_rate": 0.15,
        "seed": 3,
        "passed": passed,
        "elapsed_s": 2.0,
        "published": 10,
        "delivered": 20,
        "expected_deliveries": 20,
        "lost": 0,
        "duplicated": 0,
        "reordered": 0,
        "corrupted": 0,
        "unconfirmed_publishes": 0,
        "gaps_reported": 0,
        "session_success_rate": 1.0,
        "reconnects": 2,
        "replays": 1,
        "retransmits_dropped_by_clients": 0,
        "server_retransmits": 0,
        "publish_retries": 1,
        "faults_injected": {"upstream": {"reset": 1, "drop": 0}, "downstream": {"reset": 0, "drop": 2}},
        "faults_total": 3,
        "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0},
        "timed_out": False,
        "examples": [],
        "latency_curve": [[0.0, 0.5], [50.0, 1.0], [99.0, 3.0], [100.0, 4.0]],
        "timeline": [
            {"t": 0.0, "delivered": 0, "published": 0, "reconnects": 0, "faults": {"reset": 0, "drop": 0}},
            {"t": 1.0, "delivered": 10, "published": 5, "reconnects": 1, "faults": {"reset": 1, "drop": 1}},
            {"t": 2.0, "delivered": 20, "published": 10, "reconnects": 2, "faults": {"reset": 1, "drop": 2}},
        ],
        **extra,
    }


def _polylines(page: str) -> list[tuple[str, int]]:
    return [
        (label, len(points.split()))
        for label, points in re.findall(r'<polyline class="series" data-label="([^"]*)" points="([^"]*)"', page)
    ]


def test_a_reliability_report_has_the_verdict_curves_throughput_and_fault_timeline():
    page = html_report.render({"command": "reliability", "runs": [_run("high"), _run("low", passed=False)]})
    assert page.startswith("<!doctype html>") and "<script" not in page and "http" not in page
    assert '<span class="verdict fail">FAIL</span></h1>' in page  # one run failed: the page says so
    lines = _polylines(page)
    assert ("high (p=0.15)", 4) in lines and ("low (p=0.15)", 4) in lines  # percentile curves
    assert [label for label, _ in lines].count("reconnects") == 2
    assert ("reset faults", 3) in lines and ("drop faults", 3) in lines and ("deliveries", 3) in lines
    assert "faults by kind against reconnects and deliveries" in page
    assert "reset=1 drop=2" in page  # faults by kind, both directions summed


def test_text_from_the_run_is_escaped():
    hostile = '<img src=x onerror="alert(1)">'
    page = html_report.render({"runs": [_run(hostile, examples=[hostile])]})
    assert hostile not in page and "&lt;img src=x" in page


def test_missing_series_say_no_data_instead_of_drawing_nothing():
    page = html_report.render({"runs": [_run("empty", latency_curve=[], timeline=[])]})
    assert page.count("no data recorded") == 3  # latency curve, throughput, fault timeline


def test_rate_is_per_second_over_a_trailing_window():
    points = [{"t": t / 10, "n": 100 * t} for t in range(21)]  # 1000 per second throughout
    assert all(abs(value - 1000) < 1e-6 for _, value in html_report.rate(points, "n", window=0.5))
    assert html_report.rate(points[:1], "n") == []


def test_the_timeline_stays_bounded_and_covers_the_whole_run():
    timeline = Timeline(max_points=100)
    for n in range(5000):
        timeline.add(n=n)
    assert 50 <= len(timeline.points) <= 100
    assert timeline.points[0]["n"] == 0 and timeline.points[-1]["n"] > 4800
    gaps = {b["n"] - a["n"] for a, b in zip(timeline.points, timeline.points[1:])}
    assert len(gaps) == 1  # evenly spread


def test_curve_reads_the_histogram_at_fixed_percentiles():
    hist = HdrHistogram(1, 120_000_000, 3)
    for us in range(1000, 101_000, 1000):  # 1 .. 100 ms
        hist.record_value(us)
    points = curve(hist)
    assert [p for p, _ in points] == list(CURVE_PERCENTILES)
    assert points[0][1] == 1.0 and abs(points[-1][1] - 100.0) < 0.1
    assert [ms for _, ms in points] == sorted(ms for _, ms in points)
    assert curve(HdrHistogram(1, 1000, 3)) == []


def test_a_report_from_a_saved_json_file(tmp_path, capsys):
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps({"runs": [_run("normal")]}))
    out = tmp_path / "out.html"
    assert html_report.main([str(saved), str(out)]) == 0
    assert "wsnursery reliability" in out.read_text()
    assert html_report.main([str(tmp_path / "missing.json"), str(out)]) == 2
    assert html_report.main([]) == 2
    assert "usage" in capsys.readouterr().err
