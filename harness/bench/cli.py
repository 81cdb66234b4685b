"""`python -m harness.bench run|compare`: the load client against one running server.

Usage:
  python -m harness.bench run --url ws://127.0.0.1:PORT --scenario echo [--server-pid PID] [--quick]
  python -m harness.bench compare [--frames 200000]

(`python benches/client.py ...` is the same command.)
"""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path
from urllib.parse import urlsplit

from harness.bench.coordinator import run_scenario
from harness.bench.params import SCENARIOS, add_param_args, params_from_args


def format_result(r: dict) -> str:
    lat = r.get("latency", {})
    cpu = r.get("cpu", {})
    parts = [f"{r['scenario']}: {r['value']:,.1f} {r['metric']}" if r.get("metric") else f"{r['scenario']}: FAILED"]
    if r.get("server_us_per_op") is not None:
        parts.append(f"server CPU {r['server_us_per_op']} us/op")
    if lat.get("count"):
        parts.append(f"p50 {lat['p50_us']} us, p99 {lat['p99_us']} us, max {lat['max_us']} us")
    if cpu:
        parts.append(
            f"CPU (cores): server {cpu.get('server_cpu')}, client {cpu.get('client_cpu_total')} "
            f"(max proc {cpu.get('client_cpu_max_proc')}), other processes {cpu.get('other_cpu')}"
            f"{' CLIENT-BOUND' if cpu.get('client_bound') else ''}"
        )
    if r.get("error"):
        parts.append(f"ERROR: {r['error']}")
    return " | ".join(parts) + f"\n  details: {json.dumps(r.get('details', {}))}"


def raise_keyboard_interrupt(signum, frame):
    """A SIGINT handler that is not `signal.default_int_handler`, so that asyncio.run() leaves it
    in place: Ctrl-C then raises KeyboardInterrupt at once instead of cancelling the main task
    (which a coordinator waiting on worker pipes could turn into some other error)."""
    raise KeyboardInterrupt


def main(argv=None, prog: str | None = None) -> int:
    signal.signal(signal.SIGINT, raise_keyboard_interrupt)
    ap = argparse.ArgumentParser(
        prog=prog,
        description="wsnursery bench load client",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run scenarios against a running server")
    run.add_argument("--url", required=True, help="ws://127.0.0.1:PORT (loopback only)")
    run.add_argument("--scenario", default="fanout,echo,connect,idle", help="comma list of " + ",".join(SCENARIOS))
    run.add_argument("--server-pid", type=int, default=None, help="server pid: CPU sampling; needed by idle")
    run.add_argument("--json", default=None, help="write results to this file")
    add_param_args(run)
    cmp_ = sub.add_parser("compare", help="compare client implementations receiving many small frames")
    cmp_.add_argument("--frames", type=int, default=200_000)
    cmp_.add_argument("--size", type=int, default=64, help="data size inside each `message` frame")
    cmp_.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    if args.cmd == "compare":
        from harness.bench import altclients

        altclients.main(args.frames, args.size, args.repeat)
        return 0
    u = urlsplit(args.url)
    if u.hostname not in ("127.0.0.1", "localhost", "::1"):
        ap.error("only loopback URLs are allowed")
    params = params_from_args(args)
    results = []
    for sc in args.scenario.split(","):
        r = run_scenario(sc.strip(), u.hostname, u.port, params, args.server_pid)
        print(format_result(r), flush=True)
        results.append(r)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 1 if any(r.get("error") for r in results) else 0
