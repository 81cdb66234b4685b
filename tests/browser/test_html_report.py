"""The harness's --html reports, rendered in real chromium: every chart is there, with points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = os.environ.get("WSNURSERY_REPORT_SCREENSHOTS")  # a directory to keep them in


def harness(*argv: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "harness", *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


def open_report(page, path: Path) -> list[str]:
    """Load the file; return every URL the page asked for (only itself, when self-contained)."""
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(path.as_uri())
    return requests


def charts(page) -> list[dict]:
    return page.eval_on_selector_all(
        "figure.chart",
        """figures => figures.map(f => ({
      title: f.querySelector('figcaption').textContent,
      series: [...f.querySelectorAll('polyline.series')].map(p => ({
        label: p.dataset.label, points: p.points.numberOfItems })),
    }))""",
    )


def test_reliability_report_shows_all_four_scenarios(page, tmp_path):
    report = tmp_path / "report.html"
    result = harness(
        "reliability",
        "--scenario",
        "all",
        "--messages",
        "20",
        "--clients",
        "1",
        "--publishers",
        "1",
        "--channels",
        "1",
        "--seed",
        "4",
        "--quiet",
        "--html",
        str(report),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert open_report(page, report) == [report.as_uri()]
    assert page.title() == "wsnursery reliability"
    assert page.text_content("h1 .verdict") == "PASS"
    headers = page.eval_on_selector_all("table.figures th", "ths => ths.map(t => t.textContent)")
    assert headers == ["", "normal (p=0.0)", "low (p=0.05)", "high (p=0.15)", "extreme (p=0.25)"]
    scenarios = headers[1:]
    found = charts(page)
    by_title = {chart["title"]: chart for chart in found}
    latency = by_title["Latency distribution, publish to delivery, per scenario"]
    assert [s["label"] for s in latency["series"]] == scenarios
    assert all(s["points"] >= 10 for s in latency["series"]), latency
    throughput = by_title["Throughput over time: deliveries per second"]
    assert [s["label"] for s in throughput["series"]] == scenarios
    assert all(s["points"] >= 2 for s in throughput["series"]), throughput
    for name in scenarios:
        timeline = by_title[f"{name}: faults by kind against reconnects and deliveries (cumulative)"]
        labels = [s["label"] for s in timeline["series"]]
        assert labels[-2:] == ["reconnects", "deliveries"] and all(s["points"] >= 2 for s in timeline["series"])
        if name != "normal (p=0.0)":
            assert any(label.endswith(" faults") for label in labels), labels
    assert page.errors == []
    page.set_viewport_size({"width": 1100, "height": 900})
    page.screenshot(path=str(Path(SCREENSHOTS or tmp_path) / "reliability-report.png"), full_page=True)


def test_load_connect_and_stress_reports_render_with_their_charts(page, tmp_path):
    runs = {
        "load": ["--clients", "10", "--messages", "500"],  # long enough for a few samples
        "connect": [
            "--hold",
            "20",
            "--hold-seconds",
            "0.5",
            "--heartbeat-interval",
            "0.2",
            "--broadcast",
            "3",
            "--churn",
            "5",
        ],
        "stress": ["--max-level", "light", "--max-connections", "20", "--max-ops", "3000"],
    }
    for command, argv in runs.items():
        report = tmp_path / f"{command}.html"
        result = harness(command, *argv, "--quiet", "--html", str(report), timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert open_report(page, report) == [report.as_uri()]
        assert page.title() == f"wsnursery {command}"
        assert page.text_content("h1 .verdict") == "PASS"
        found = charts(page)
        assert found and all(chart["series"] for chart in found), (command, found)
        assert all(s["points"] >= 2 for chart in found for s in chart["series"]), (command, found)
        if command != "connect":
            assert {chart["title"] for chart in found} == {
                "Latency distribution, round trip, per run",
                "Throughput over time: messages per second",
            }
        page.screenshot(path=str(Path(SCREENSHOTS or tmp_path) / f"{command}-report.png"), full_page=True)
    assert page.errors == []
