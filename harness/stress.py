"""``python -m harness stress``: the eight load levels of the stress guide, scaled to this machine.

The guide's levels run from 10 connections x 100 messages (minimal) to 99,000 x 100
(maximum). One 2-core machine holding both the server and the load generator cannot open
99,000 sockets (20,000 fds per process) nor push 9.9 M messages in minutes, so each level is
scaled: connections are capped at ``--max-connections`` (default 2,000) and messages per
connection are cut so a level sends at most ``--max-ops`` messages (default 20,000). The scale
factor (messages sent / messages in the guide) is printed for every level. Each level is one
``load`` run (pub/sub round trip by default) on a fresh server; degradation is the change in
throughput and p99 latency against the first level run.
"""

from __future__ import annotations

from typing import Any

from harness.load import (
    LoadSpec,
    UsageError,
    machine,
    machine_line,
    run_with_server,
    write_outputs,
)
from harness.report import table

#: name -> (connections, messages per connection) exactly as in the stress guide.
LEVELS: dict[str, tuple[int, int]] = {
    "minimal": (10, 100),
    "light": (100, 100),
    "low": (500, 100),
    "medium": (1_000, 100),
    "high": (5_000, 100),
    "very-high": (10_000, 100),
    "extreme": (50_000, 100),
    "maximum": (99_000, 100),
}
DEFAULT_MAX_LEVEL = "medium"


def add_arguments(p: Any, positive_int: Any, positive_float: Any) -> None:
    p.add_argument(
        "--max-level",
        choices=list(LEVELS),
        default=DEFAULT_MAX_LEVEL,
        help=f"last level to run, in order {', '.join(LEVELS)} (default {DEFAULT_MAX_LEVEL}: under 2 minutes here)",
    )
    p.add_argument(
        "--max-connections",
        type=positive_int,
        default=2_000,
        help="connections cap per level on this machine (default 2000, at most 9000)",
    )
    p.add_argument(
        "--max-ops",
        type=positive_int,
        default=20_000,
        help="messages cap per level; messages per connection are reduced to fit (default 20000)",
    )
    p.add_argument("--mode", choices=["fanout", "echo"], default="fanout", help="as for load (default fanout)")
    p.add_argument("--encoding", choices=["json", "cbor"], default="json", help="wire encoding (default json)")
    p.add_argument("--size", type=positive_int, default=64, help="payload bytes (default 64)")
    p.add_argument("--window", type=positive_int, default=8, help="messages in flight per connection (default 8)")
    p.add_argument(
        "--timeout", type=positive_float, default=60.0, help="seconds per level's message phase (default 60)"
    )
    p.add_argument("--seed", type=int, default=1, help="seed (default 1)")
    p.add_argument(
        "--url",
        action="append",
        help="aim at a running server on loopback instead of starting one per level; one URL only: stress "
        "finds where one server stops keeping up, which clients spread over several would blur",
    )
    p.add_argument("--output", metavar="FILE", help="write the report as JSON (as CSV when FILE ends in .csv)")
    p.add_argument("--csv", metavar="FILE", help="also write one CSV row per level")
    p.add_argument("--quiet", action="store_true", help="no progress line")


def scaled(name: str, max_connections: int, max_ops: int) -> dict:
    conns, msgs = LEVELS[name]
    c = min(conns, max_connections)
    m = max(1, min(msgs, max_ops // c))
    return {
        "level": name,
        "guide_connections": conns,
        "guide_messages_per_connection": msgs,
        "guide_ops": conns * msgs,
        "connections": c,
        "messages_per_connection": m,
        "ops": c * m,
        "scale_factor": round(c * m / (conns * msgs), 6),
    }


def command(args: Any) -> int:
    if args.max_connections > 9_000:
        raise UsageError("--max-connections is at most 9,000 on this machine (fd limit)")
    if len(args.url or ()) > 1:
        raise UsageError("stress takes one --url: it finds where one server stops keeping up")
    url = args.url[0] if args.url else None
    names = list(LEVELS)[: list(LEVELS).index(args.max_level) + 1]
    info = machine()
    print(f"wsnursery stress — levels {names[0]} .. {names[-1]}, seed {args.seed}")
    print(machine_line(info))
    print(
        f"SCALED to one machine: connections capped at {args.max_connections:,}, at most {args.max_ops:,} "
        "messages per level (scale factor = messages sent / messages in the guide)"
    )
    records = []
    for name in names:
        plan = scaled(name, args.max_connections, args.max_ops)
        spec = LoadSpec(
            clients=plan["connections"],
            messages=plan["messages_per_connection"],
            size=args.size,
            mode=args.mode,
            encoding=args.encoding,
            window=args.window,
            timeout=args.timeout,
            seed=args.seed,
        )
        result = run_with_server(spec, url, f"stress {name}", args.quiet, ["--max-connections", "10000"])
        records.append({**plan, **result})
    first = records[0]
    for r in records:
        r["throughput_vs_first"] = (
            round(r["throughput_msg_s"] / first["throughput_msg_s"], 3) if first["throughput_msg_s"] else None
        )
        r["p99_vs_first"] = (
            round(r["latency_ms"]["p99"] / first["latency_ms"]["p99"], 3) if first["latency_ms"]["p99"] else None
        )
    rows = [
        (
            "guide: conns x msgs",
            *[f"{r['guide_connections']:,} x {r['guide_messages_per_connection']}" for r in records],
        ),
        ("run: conns x msgs", *[f"{r['connections']:,} x {r['messages_per_connection']}" for r in records]),
        ("scale factor", *[f"{r['scale_factor']:.4g}" for r in records]),
        ("throughput msg/s", *[r["throughput_msg_s"] for r in records]),
        ("latency p95 ms", *[r["latency_ms"]["p95"] for r in records]),
        ("latency p99 ms", *[r["latency_ms"]["p99"] for r in records]),
        ("connect p99 ms", *[r["connect_time_ms"]["p99"] for r in records]),
        ("error rate", *[f"{r['error_rate']:.2%}" for r in records]),
        ("throughput vs first", *[f"{r['throughput_vs_first']:.2f}x" for r in records]),
        ("p99 vs first", *[f"{r['p99_vs_first']:.2f}x" for r in records]),
        (
            "server peak RSS MB",
            *[r["server_peak_rss_mb"] if r["server_peak_rss_mb"] is not None else "n/a" for r in records],
        ),
        ("client CPU %", *[r["client_cpu_percent"] for r in records]),
    ]
    print(table(["", *names], rows))
    bound = [r["level"] for r in records if r["client_bound"]]
    if bound:
        print(f"note: the client used >= 90% of a core at {', '.join(bound)}: there the client set the pace")
    write_outputs(
        args,
        {
            "command": "stress",
            "machine": info,
            "scaled": True,
            "max_connections": args.max_connections,
            "max_ops": args.max_ops,
            "levels": records,
        },
        records,
    )
    return 0 if all(r["error_rate"] == 0 and not r["connections_failed"] for r in records) else 1
