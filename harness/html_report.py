"""``--html FILE``: one self-contained HTML page per run, charts drawn as inline SVG.

Why plain inline SVG and not a plotting library: the report must open anywhere with no
network (no CDN, no script), the harness must not grow a heavy dependency for four kinds of
line chart, and SVG text can be checked by a test. The page has no script at all.

The data source is the run's JSON report dict (what ``--output`` writes), so a report can also
be made later from a saved JSON file: ``python -m harness.html_report report.json out.html``.
What each report shows:

- reliability: the verdict per scenario, latency percentile curves (one line per scenario),
  deliveries per second over time, and per scenario the faults by kind over time against
  reconnects and deliveries;
- load and stress: the verdict, latency percentile curves, messages per second over time;
- connect: the verdict, percentile curves of connect, delivery and reconnect times.
"""

from __future__ import annotations

import datetime
import html
import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import attrs

COLORS = ("#2f6fde", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#0b7285", "#c2255c", "#5c940d")
FAULT_COLORS = {
    "reset": "#c92a2a",
    "drop": "#e67700",
    "duplicate": "#862e9c",
    "delay": "#1971c2",
    "stall": "#2b8a3e",
    "slice": "#a0522d",
}
MAX_TAIL_POSITION = 4.3  # x position of the max on a percentile axis (99.99 % is at 4)


@attrs.frozen
class Series:
    label: str
    points: Sequence[tuple[float, float]]
    color: str
    dashed: bool = False
    right: bool = False  # plotted against the right-hand axis


# ----------------------------------------------------------------------------- charts


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / ticks if span > 0 else 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"


def chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    y2_label: str | None = None,
    x_ticks: Sequence[tuple[float, str]] | None = None,
    width: int = 720,
    height: int = 280,
    log_y: bool = False,
) -> str:
    """An SVG line chart with axes, grid and a legend; an empty note when there is no data.

    ``log_y``: the left axis in decades (for latencies that span several orders of magnitude).
    """
    drawn = [s for s in series if len(s.points) >= 1]
    head = f'<figure class="chart"><figcaption>{html.escape(title)}</figcaption>'
    if not drawn:
        return head + '<p class="empty">no data recorded</p></figure>'
    left, right_pad, top, bottom = 64, 64 if y2_label else 20, 12, 44
    plot_w, plot_h = width - left - right_pad, height - top - bottom
    xs = [x for s in drawn for x, _ in s.points] + [x for x, _ in (x_ticks or [])]
    x_min, x_max = min(xs), max(xs)
    if x_max == x_min:
        x_max = x_min + 1

    def y_scale(values: list[float]) -> tuple[float, float]:
        top_value = max(values, default=0.0)
        step = _nice_step(top_value * 1.05 or 1.0)
        return step, step * math.ceil((top_value * 1.05 or 1.0) / step)

    step, y_max = y_scale([y for s in drawn if not s.right for _, y in s.points])
    step2, y2_max = y_scale([y for s in drawn if s.right for _, y in s.points])
    positive = [y for s in drawn if not s.right for _, y in s.points if y > 0]
    decades = (math.floor(math.log10(min(positive))), math.ceil(math.log10(max(positive)))) if positive else (0, 1)
    if decades[1] == decades[0]:
        decades = (decades[0], decades[0] + 1)
    px = lambda x: left + (x - x_min) / (x_max - x_min) * plot_w

    def py(y: float, top_value: float = y_max, log: bool = log_y) -> float:
        if log and top_value is y_max:
            low, high = decades
            return top + plot_h - (math.log10(max(y, 10.0**low)) - low) / (high - low) * plot_h
        return top + plot_h - (y / top_value) * plot_h

    out = [
        (
            f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'role="img" aria-label="{html.escape(title)}">'
        )
    ]
    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" class="frame"/>')
    y_ticks = (
        [10.0**k for k in range(decades[0], decades[1] + 1)]
        if log_y
        else [i * step for i in range(int(y_max / step + 1e-6) + 1)]
    )
    for tick in y_ticks:
        y = py(tick)
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{_fmt(tick)}</text>')
    if y2_label:
        tick = 0.0
        while tick <= y2_max + step2 / 1000:
            y = py(tick, y2_max)
            out.append(f'<text x="{left + plot_w + 6}" y="{y + 4:.1f}" class="tick">{_fmt(tick)}</text>')
            tick += step2
    if x_ticks is None:
        x_step = _nice_step(x_max - x_min, 8)
        first = math.ceil(x_min / x_step) * x_step
        x_ticks = [
            (first + i * x_step, _fmt(first + i * x_step)) for i in range(int((x_max - first) / x_step + 1e-9) + 1)
        ]
    for value, label in x_ticks:
        x = px(value)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_h}" class="grid"/>')
        out.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 16}" class="tick" text-anchor="middle">{html.escape(label)}</text>'
        )
    out.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" class="label" text-anchor="middle">'
        f"{html.escape(x_label)}</text>"
    )
    out.append(
        f'<text transform="translate(14 {top + plot_h / 2:.1f}) rotate(-90)" class="label" '
        f'text-anchor="middle">{html.escape(y_label)}</text>'
    )
    if y2_label:
        out.append(
            f'<text transform="translate({width - 10} {top + plot_h / 2:.1f}) rotate(90)" '
            f'class="label" text-anchor="middle">{html.escape(y2_label)}</text>'
        )
    for s in drawn:
        top_value = y2_max if s.right else y_max
        points = " ".join(f"{px(x):.1f},{py(y, top_value):.1f}" for x, y in s.points)
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        out.append(
            f'<polyline class="series" data-label="{html.escape(s.label)}" points="{points}" stroke="{s.color}"{dash}/>'
        )
        if len(s.points) == 1:
            x, y = s.points[0]
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y, top_value):.1f}" r="3" fill="{s.color}"/>')
    out.append("</svg>")
    legend = "".join(
        f'<span><i style="background:{s.color}"{" class=dashed" if s.dashed else ""}></i>'
        f"{html.escape(s.label)}{' (right axis)' if s.right and y2_label else ''}</span>"
        for s in drawn
    )
    return head + "".join(out) + f'<div class="legend">{legend}</div></figure>'


def _percentile_position(p: float) -> float:
    return MAX_TAIL_POSITION if p >= 100 else min(-math.log10(1 - p / 100), 4.0)


PERCENTILE_TICKS = [
    (0.0, "0%"),
    (math.log10(2), "50%"),
    (1.0, "90%"),
    (2.0, "99%"),
    (3.0, "99.9%"),
    (4.0, "99.99%"),
    (MAX_TAIL_POSITION, "max"),
]


def percentile_chart(curves: Sequence[tuple[str, list[list[float]]]], title: str) -> str:
    """Latency (ms) against percentile, the tail stretched (HDR style), one line per curve."""
    series = [
        Series(label, [(_percentile_position(p), ms) for p, ms in curve], COLORS[i % len(COLORS)])
        for i, (label, curve) in enumerate(curves)
        if curve
    ]
    values = [ms for s in series for _, ms in s.points if ms > 0]
    log_y = bool(values) and max(values) / min(values) > 50  # several decades: show them all
    return chart(
        series,
        title=title,
        x_label="percentile",
        y_label="latency (ms, log scale)" if log_y else "latency (ms)",
        x_ticks=PERCENTILE_TICKS,
        log_y=log_y,
    )


def rate(points: Sequence[dict[str, Any]], key: str, window: float | None = None) -> list[tuple[float, float]]:
    """Per-second rate of the cumulative figure ``key`` over a trailing ``window`` of seconds.

    The default window is a twentieth of the run, between 0.05 s and 1 s: short runs keep
    their shape, long ones are smoothed.
    """
    if window is None:
        duration = points[-1]["t"] - points[0]["t"] if points else 0.0
        window = min(1.0, max(duration / 20, 0.05))
    out: list[tuple[float, float]] = []
    start = 0
    for point in points:
        while start < len(points) - 1 and point["t"] - points[start + 1]["t"] >= window:
            start += 1
        base = points[start]
        span = point["t"] - base["t"]
        if span > 0:
            out.append((point["t"], max(0.0, (point[key] - base[key]) / span)))
    return out


# ----------------------------------------------------------------------------- pages


def _badge(passed: bool) -> str:
    return f'<span class="verdict {"pass" if passed else "fail"}">{"PASS" if passed else "FAIL"}</span>'


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, str) and value.startswith('<span class="verdict'):
            return value
        if isinstance(value, float):
            return html.escape(_fmt(value) if abs(value) >= 1 or value == 0 else f"{value:.4g}")
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return html.escape("n/a" if value is None else str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="figures"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _reliability(payload: dict[str, Any]) -> tuple[str, bool, list[str]]:
    runs = payload["runs"]
    names = [f"{r['scenario']} (p={r['failure_rate']})" for r in runs]
    faults = lambda r: (
        " ".join(
            f"{kind}={sum(d.get(kind, 0) for d in r['faults_injected'].values())}"
            for kind in FAULT_COLORS
            if sum(d.get(kind, 0) for d in r["faults_injected"].values())
        )
        or "-"
    )
    rows = [
        ("verdict", *[_badge(r["passed"]) for r in runs]),
        ("failure rate", *[r["failure_rate"] for r in runs]),
        ("published", *[r["published"] for r in runs]),
        ("delivered / expected", *[f"{r['delivered']:,} / {r['expected_deliveries']:,}" for r in runs]),
        ("lost", *[r["lost"] for r in runs]),
        ("duplicated", *[r["duplicated"] for r in runs]),
        ("reordered", *[r["reordered"] for r in runs]),
        ("corrupted", *[r["corrupted"] for r in runs]),
        ("unconfirmed publishes", *[r["unconfirmed_publishes"] for r in runs]),
        ("gaps reported", *[r["gaps_reported"] for r in runs]),
        ("reconnects", *[r["reconnects"] for r in runs]),
        ("publish retries", *[r["publish_retries"] for r in runs]),
        ("faults injected", *[r["faults_total"] for r in runs]),
        ("faults by kind", *[faults(r) for r in runs]),
        (
            "latency p50 / p99 / max ms",
            *[
                f"{_fmt(r['latency_ms']['p50'])} / {_fmt(r['latency_ms']['p99'])} / {_fmt(r['latency_ms']['max'])}"
                for r in runs
            ],
        ),
        ("elapsed s", *[r["elapsed_s"] for r in runs]),
        ("timed out", *["yes" if r["timed_out"] else "no" for r in runs]),
    ]
    parts = [_table(["", *names], rows)]
    parts += _latency_and_rate(
        runs,
        names,
        latency_title="Latency distribution, publish to delivery, per scenario",
        counter="delivered",
        rate_title="Throughput over time: deliveries per second",
        x_label="seconds since the start",
        y_label="deliveries/s",
    )
    for name, run in zip(names, runs):
        points = run.get("timeline", [])
        series = [
            Series(f"{kind} faults", [(p["t"], p["faults"].get(kind, 0)) for p in points], color)
            for kind, color in FAULT_COLORS.items()
            if points and points[-1]["faults"].get(kind)
        ]
        series.append(Series("reconnects", [(p["t"], p["reconnects"]) for p in points], "#212529", dashed=True))
        series.append(Series("deliveries", [(p["t"], p["delivered"]) for p in points], "#adb5bd", right=True))
        parts.append(
            chart(
                series,
                title=f"{name}: faults by kind against reconnects and deliveries (cumulative)",
                x_label="seconds since the start",
                y_label="faults, reconnects",
                y2_label="deliveries",
            )
        )
    examples = [e for r in runs for e in r.get("examples", [])]
    if examples:
        parts.append(
            "<h2>First failures</h2><ul>" + "".join(f"<li>{html.escape(str(e))}</li>" for e in examples[:20]) + "</ul>"
        )
    seeds = sorted({str(r["seed"]) for r in runs})
    return "".join(parts), all(r["passed"] for r in runs), [f"seed {', '.join(seeds)}"]


def _load_like(records: list[dict[str, Any]], names: list[str]) -> list[str]:
    return _latency_and_rate(
        records,
        names,
        latency_title="Latency distribution, round trip, per run",
        counter="received",
        rate_title="Throughput over time: messages per second",
        x_label="seconds since the message phase began",
        y_label="messages/s",
    )


def _latency_and_rate(
    records: list[dict[str, Any]],
    names: list[str],
    *,
    latency_title: str,
    counter: str,
    rate_title: str,
    x_label: str,
    y_label: str,
) -> list[str]:
    """Each run's latency percentile curve, then the rate of its ``counter`` over time."""
    return [
        percentile_chart([(n, r.get("latency_curve", [])) for n, r in zip(names, records)], latency_title),
        chart(
            [
                Series(n, rate(r.get("timeline", []), counter), COLORS[i % len(COLORS)])
                for i, (n, r) in enumerate(zip(names, records))
            ],
            title=rate_title,
            x_label=x_label,
            y_label=y_label,
        ),
    ]


def _load_passed(r: dict[str, Any]) -> bool:
    return bool(r["error_rate"] == 0 and not r["connections_failed"])


def _load_rows(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        ("verdict", *[_badge(_load_passed(r)) for r in records]),
        ("mode / encoding", *[f"{r['mode']} / {r['encoding']}" for r in records]),
        ("clients x messages", *[f"{r['clients']:,} x {r['messages_per_client']:,}" for r in records]),
        ("throughput msg/s", *[r["throughput_msg_s"] for r in records]),
        (
            "latency p50 / p99 / max ms",
            *[
                f"{_fmt(r['latency_ms']['p50'])} / {_fmt(r['latency_ms']['p99'])} / {_fmt(r['latency_ms']['max'])}"
                for r in records
            ],
        ),
        ("connect p99 ms", *[r["connect_time_ms"]["p99"] for r in records]),
        ("error rate", *[f"{r['error_rate']:.2%}" for r in records]),
        ("connections ok / failed", *[f"{r['connections_ok']:,} / {r['connections_failed']:,}" for r in records]),
        ("client CPU % of a core", *[r["client_cpu_percent"] for r in records]),
        ("elapsed s", *[r["elapsed_s"] for r in records]),
    ]


def _load(payload: dict[str, Any]) -> tuple[str, bool, list[str]]:
    result = payload["result"]
    name = payload.get("scenario", "load")
    parts = [_table(["", name], _load_rows([result])), *_load_like([result], [name])]
    return "".join(parts), _load_passed(result), [f"seed {result['seed']}"]


def _stress(payload: dict[str, Any]) -> tuple[str, bool, list[str]]:
    records = payload["levels"]
    names = [r["level"] for r in records]
    rows = _load_rows(records) + [("scale factor", *[f"{r['scale_factor']:.4g}" for r in records])]
    parts = [_table(["", *names], rows), *_load_like(records, names)]
    notes = ["scaled to one machine: scale factor = messages sent / messages in the stress guide"]
    return "".join(parts), all(_load_passed(r) for r in records), notes


def _connect(payload: dict[str, Any]) -> tuple[str, bool, list[str]]:
    from harness.connect import _failures

    result = payload["result"]
    failures = _failures(result, result["connections_requested"])
    rows = [
        ("verdict", _badge(not failures)),
        ("connections opened", f"{result['connections_opened']:,} of {result['connections_requested']:,}"),
        ("establishment rate conn/s", result["establishment_rate_conn_s"]),
        ("still open at the end", f"{result['held_open_at_end']:,}"),
        ("heartbeat pings received", result["heartbeat_pings_received"]),
    ]
    if "broadcast" in result:
        b = result["broadcast"]
        got = f"{b.get('connections_got_all_in_order', 0):,} of {b.get('held_connections', 0):,}"
        rows.append(("broadcast: got all in order", got))
    if "churn" in result:
        c = result["churn"]
        rows.append(("storm: reconnected", f"{c['reconnected']:,} of {c['dropped']:,}"))
    curves = [
        ("connect time", result.get("connect_time_curve", [])),
        ("broadcast delivery", result.get("broadcast", {}).get("delivery_latency_curve", [])),
        ("storm reconnect time", result.get("churn", {}).get("reconnect_time_curve", [])),
    ]
    parts = [_table(["", "connect"], rows), percentile_chart(curves, "Time distribution per phase")]
    if failures:
        parts.append("<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in failures) + "</ul>")
    return "".join(parts), not failures, []


RENDERERS: dict[str, Callable[[dict[str, Any]], tuple[str, bool, list[str]]]] = {
    "reliability": _reliability,
    "load": _load,
    "stress": _stress,
    "connect": _connect,
}

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; color: #1d2330; margin: 24px auto; max-width: 1040px; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 8px; }
.meta { color: #6b7385; margin: 0 0 16px; }
.verdict { display: inline-block; padding: 1px 10px; border-radius: 10px; color: #fff; font-weight: 700; font-size: 12px; }
.verdict.pass { background: #2b8a3e; } .verdict.fail { background: #c92a2a; }
h1 .verdict { font-size: 14px; vertical-align: middle; margin-left: 8px; }
table.figures { border-collapse: collapse; margin: 8px 0 24px; font-variant-numeric: tabular-nums; }
table.figures th, table.figures td { padding: 4px 12px; border-bottom: 1px solid #e9ecef; text-align: right; }
table.figures th:first-child, table.figures td:first-child { text-align: left; color: #495057; }
figure.chart { margin: 0 0 28px; } figcaption { font-weight: 600; margin-bottom: 4px; }
svg.plot { max-width: 100%; height: auto; font-size: 11px; }
svg .frame { fill: #fff; stroke: #ced4da; } svg .grid { stroke: #eef0f3; }
svg .tick { fill: #6b7385; } svg .label { fill: #495057; font-size: 12px; }
svg .series { fill: none; stroke-width: 2; stroke-linejoin: round; }
.legend { display: flex; flex-wrap: wrap; gap: 14px; font-size: 12px; color: #495057; }
.legend i { display: inline-block; width: 18px; height: 3px; margin-right: 5px; vertical-align: middle; }
.legend i.dashed { height: 0; border-top: 3px dashed #212529; background: none !important; }
.empty { color: #868e96; font-style: italic; }
"""


def render(payload: dict[str, Any]) -> str:
    """The whole page for one run's JSON report dict."""
    command = payload.get("command") or ("reliability" if "runs" in payload else "load")
    body, passed, notes = RENDERERS[command](payload)
    machine = payload.get("machine")
    if machine:
        notes.append(
            f"{machine.get('cpu_model', '?')}, {machine.get('logical_cpus', '?')} logical CPUs, "
            f"{machine.get('ram_gib', '?')} GiB, {machine.get('os', '')}"
        )
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    meta = " · ".join(html.escape(n) for n in [f"written {when}", *notes])
    title = f"wsnursery {command}"
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
        f'<body><h1>{html.escape(title)} {_badge(passed)}</h1><p class="meta">{meta}</p>{body}</body></html>\n'
    )


def write_html(path: str, payload: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.write(render(payload))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m harness.html_report REPORT.json OUT.html``: a report from a saved JSON report."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m harness.html_report REPORT.json OUT.html", file=sys.stderr)
        return 2
    try:
        with open(args[0], encoding="utf-8") as file:
            payload = json.load(file)
        write_html(args[1], payload)
    except (OSError, ValueError, KeyError) as exc:
        print(f"harness.html_report: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
