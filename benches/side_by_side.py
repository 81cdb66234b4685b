"""Side-by-side benches: wsnursery against three peer servers, same client, same machine.

Each (round, scenario, server) run starts a FRESH server subprocess on a 127.0.0.1 ephemeral
port, runs one scenario with the load client `harness.bench` (worker processes + CPU sampling), and stops
the server. Servers are rotated in every round so that no server always goes first (noise,
thermal, page cache). Results: a markdown table and the raw JSON in benches/results/.
`fanout_acks` (fan-out with acks, the reliable path) runs against wsnursery only, and the report
says what share of plain fan-out it keeps (same round, wsnursery's fanout_acks / fanout).

    python benches/side_by_side.py --quick                 # smoke test, < 2 min
    python benches/side_by_side.py                         # full sizes, 3 rounds
    python benches/side_by_side.py --servers wsnursery,websockets_asyncio --scenarios fanout,echo --rounds 5
    python benches/side_by_side.py --idle-conns 2000       # any harness.bench Params field can be overridden

Everything talks to 127.0.0.1 only, every run is bounded in count and time. Needs the harness
importable (`pip install -e '.[bench]'`, or `PYTHONPATH=$PWD` from the repository root).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import signal
import statistics
import sys
import time
from pathlib import Path

from harness import machine
from harness.bench import cli as client_cli
from harness.bench import params as client  # the load client's scenarios and Params
from harness.bench.coordinator import run_scenario
from harness.servers import (
    HOST,
    ServerError,
    ServerProcess,
    raise_nofile_limit,
    wsnursery_argv,
)

BENCHES = Path(__file__).resolve().parent
RESULTS = BENCHES / "results"
PEERS = BENCHES / "peers"
OURS = "wsnursery"
#: name -> argv. "wsnursery" is ours; the others are the peers in benches/peers/, run by path.
COMMANDS: dict[str, list[str]] = {
    OURS: wsnursery_argv(),
    **{
        name: [sys.executable, str(PEERS / f"{name}.py"), "--host", HOST, "--port", "0"]
        for name in ("websockets_asyncio", "websockets_trio", "trio_websocket_plain")
    },
}
ALL_SERVERS = tuple(COMMANDS)
REFERENCE = "websockets_asyncio"
UNITS = {
    "fanout": "deliveries/s",
    "fanout_acks": "deliveries/s",
    "echo": "msgs/s",
    "connect": "conns/s",
    "idle": "bytes/conn",
}
TITLES = {
    "fanout": "Fan-out: 1 publisher -> N subscribers, deliveries per second (higher is better)",
    "fanout_acks": "Fan-out with acks (the reliable path, wsnursery only): deliveries per second (higher is better)",
    "echo": "Echo: request/response on /echo, messages per second (higher is better)",
    "connect": "Connection establishment: open + close handshakes per second (higher is better)",
    "idle": "Memory per idle connection, heartbeats on: server RSS delta / N (lower is better)",
}


def check_servers(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """Start each server once; drop (with the reason) the ones that do not come up."""
    ok, skipped = [], {}
    for name in names:
        srv = ServerProcess(name, COMMANDS[name])
        try:
            srv.start()
        except ServerError as e:
            skipped[name] = str(e)
            print(f"SKIP {name}: {e}", file=sys.stderr, flush=True)
            continue
        srv.stop()
        ok.append(name)
    return ok, skipped


def applies(scenario: str, server: str) -> bool:
    """Peers speak only the bench subset of the protocol: no acks."""
    return scenario not in client.WSNURSERY_ONLY or server == OURS


def acks_vs_plain(runs: list[dict]) -> dict | None:
    """wsnursery's fanout_acks / fanout, per round (both runs of a round OK), and their median.

    Pairing runs of the same round keeps the two figures as close in time (and in machine load)
    as the rotation allows. Returns None when no round has both."""
    per_round = []
    for rnd in sorted({r["round"] for r in runs}):
        pair = {}
        for r in runs:
            if (
                r["round"] == rnd
                and r["server"] == OURS
                and r["scenario"] in ("fanout", "fanout_acks")
                and not r.get("error")
                and r.get("value") == r.get("value")
                and r.get("value")
            ):
                pair[r["scenario"]] = r
        if len(pair) == 2:
            plain, acked = pair["fanout"], pair["fanout_acks"]
            us_p, us_a = plain.get("server_us_per_op"), acked.get("server_us_per_op")
            per_round.append(
                {
                    "round": rnd,
                    "fanout": plain["value"],
                    "fanout_acks": acked["value"],
                    "ratio": acked["value"] / plain["value"],
                    "fanout_us_per_op": us_p,
                    "fanout_acks_us_per_op": us_a,
                    "cpu_ratio": (us_a / us_p) if (us_p and us_a) else None,
                }
            )
    if not per_round:
        return None
    cpu = [x["cpu_ratio"] for x in per_round if x["cpu_ratio"] is not None]
    return {
        "rounds": per_round,
        "median_ratio": statistics.median(x["ratio"] for x in per_round),
        "median_cpu_ratio": statistics.median(cpu) if cpu else None,
    }


def run_one(name: str, scenario: str, params: client.Params) -> dict:
    srv = ServerProcess(name, COMMANDS[name])
    try:
        srv.start()
    except ServerError as e:
        return {
            "scenario": scenario,
            "server": name,
            "value": math.nan,
            "error": f"server did not start: {e}",
            "cpu": {},
            "latency": {"count": 0},
            "details": {},
        }
    try:
        res = run_scenario(scenario, HOST, srv.port, params, srv.pid)
    finally:
        rc = srv.stop()
    res["server"] = name
    res["server_exit"] = rc
    if res.get("error"):
        res["server_tail"] = list(srv.tail)[-8:]
    return res


def _fmt(v: float, scenario: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if scenario == "idle":
        return f"{v / 1024:,.1f} KiB"
    return f"{v:,.0f}"


def summarize(runs: list[dict], servers: list[str], scenarios: list[str]) -> dict:
    out = {}
    for sc in scenarios:
        out[sc] = {}
        for name in servers:
            if not applies(sc, name):
                continue
            rs = [r for r in runs if r["scenario"] == sc and r["server"] == name]
            good = [r["value"] for r in rs if not r.get("error") and r.get("value") == r.get("value")]
            cpu = [r.get("cpu", {}) for r in rs if r.get("cpu")]
            lat = [r["latency"] for r in rs if r.get("latency", {}).get("count")]

            def med(xs):
                xs = [x for x in xs if x is not None]
                return statistics.median(xs) if xs else None

            out[sc][name] = {
                "runs": len(rs),
                "ok_runs": len(good),
                "median": med(good),
                "min": min(good) if good else None,
                "max": max(good) if good else None,
                "p50_us": med([x["p50_us"] for x in lat]),
                "p99_us": med([x["p99_us"] for x in lat]),
                "server_cpu": med([c.get("server_cpu") for c in cpu]),
                "server_us_per_op": med([r.get("server_us_per_op") for r in rs if not r.get("error")]),
                "client_cpu": med([c.get("client_cpu_total") for c in cpu]),
                "client_cpu_max_proc": max([c.get("client_cpu_max_proc", 0) for c in cpu], default=None),
                "other_cpu": max([c.get("other_cpu", 0) for c in cpu], default=None),
                "machine_cpu": max([c.get("machine_cpu", 0) for c in cpu], default=None),
                "client_bound_runs": sum(1 for c in cpu if c.get("client_bound")),
                "errors": [r["error"] for r in rs if r.get("error")],
            }
        ref = out[sc].get(REFERENCE, {}).get("median")
        ref_us = out[sc].get(REFERENCE, {}).get("server_us_per_op")
        for s in out[sc].values():
            s["ratio_vs_ref"] = (s["median"] / ref) if (ref and s["median"] is not None) else None
            s["cpu_ratio_vs_ref"] = (s["server_us_per_op"] / ref_us) if (ref_us and s["server_us_per_op"]) else None
    return out


def markdown(
    info: dict,
    settings: dict,
    summary: dict,
    runs: list[dict],
    skipped: dict,
    servers: list[str],
    scenarios: list[str],
    params: client.Params,
) -> str:
    ncpu = info["logical_cpus"] or 1
    L = [f"# wsnursery side-by-side benches — {settings['started']}", ""]
    L += [f"- {line}" for line in machine.header_lines(info)]
    L += [
        (
            f"- Mode: {'--quick' if settings['quick'] else 'full'}; rounds: {settings['rounds']}; client worker "
            f"processes: {params.workers}; servers rotated every round; fresh server process per run, "
            f"its output written to a file at its default log level"
        ),
        f"- Reference for ratios: `{REFERENCE}` (ratio = server median / reference median)",
        f"- Command: `{settings['command']}`",
        f"- Wall time: {settings['wall_s']:.0f} s",
    ]
    if settings.get("interrupted"):
        L.append("- **Interrupted**: only the runs finished before Ctrl-C are in this report")
    if skipped:
        for name, why in skipped.items():
            L.append(f"- **Skipped `{name}`**: {why.splitlines()[0]}")
    L.append("")
    for sc in scenarios:
        L += [f"## {TITLES[sc]}", "", f"Settings: {params.describe(sc)}.", ""]
        names = [n for n in servers if n in summary[sc]]
        if not names:
            L += [f"Not run: only `{OURS}` speaks acks, and it is not among the servers.", ""]
            continue
        lat = sc in ("fanout", "fanout_acks", "echo", "connect")
        hdr = ["server", f"median {UNITS[sc]}", "min – max", f"vs {REFERENCE}"]
        if lat:
            hdr += ["server CPU µs/op", f"CPU/op vs {REFERENCE}", "p50 latency", "p99 latency"]
        hdr += ["server CPU", "client CPU (max proc)", "other CPU", "notes"]
        L += ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
        for name in names:
            s = summary[sc][name]
            ratio = "n/a" if s["ratio_vs_ref"] is None else f"{s['ratio_vs_ref']:.2f}×"
            row = [
                f"`{name}`",
                _fmt(s["median"], sc),
                f"{_fmt(s['min'], sc)} – {_fmt(s['max'], sc)}" if s["min"] is not None else "n/a",
                ratio,
            ]
            if lat:
                row += [
                    "n/a" if s["server_us_per_op"] is None else f"{s['server_us_per_op']:,.1f}",
                    "n/a" if s["cpu_ratio_vs_ref"] is None else f"{s['cpu_ratio_vs_ref']:.2f}×",
                ]
                row += [
                    f"{s['p50_us'] / 1000:,.1f} ms" if s["p50_us"] else "n/a",
                    f"{s['p99_us'] / 1000:,.1f} ms" if s["p99_us"] else "n/a",
                ]
            notes = []
            if s["ok_runs"] < s["runs"]:
                notes.append(f"{s['runs'] - s['ok_runs']}/{s['runs']} runs failed")
            if s["client_bound_runs"]:
                notes.append(f"client-bound in {s['client_bound_runs']} run(s)")
            if s["machine_cpu"] is not None and s["machine_cpu"] >= 0.9 * ncpu:
                notes.append("machine CPU saturated")
            if s["other_cpu"] and s["other_cpu"] >= 0.25:
                notes.append(f"other processes used up to {s['other_cpu']:.2f} cores")
            cpu = "n/a" if s["server_cpu"] is None else f"{s['server_cpu']:.2f}"
            ccpu = "n/a" if s["client_cpu"] is None else f"{s['client_cpu']:.2f} ({s['client_cpu_max_proc']:.2f})"
            ocpu = "n/a" if s["other_cpu"] is None else f"{s['other_cpu']:.2f}"
            row += [cpu, ccpu, ocpu, "; ".join(notes)]
            L.append("| " + " | ".join(row) + " |")
        errs = [(n, e) for n in names for e in summary[sc][n]["errors"]]
        if errs:
            L += ["", "Errors:"] + [f"- `{n}`: {e.splitlines()[0][:300]}" for n, e in errs]
        if sc == "idle":
            extra = []
            for name in servers:
                rs = [r for r in runs if r["scenario"] == sc and r["server"] == name and r.get("details")]
                for r in rs:
                    d = r["details"]
                    if "rss_base_mib" in d:
                        extra.append(
                            f"- `{name}` round {r['round']}: {d['connections']} connections held "
                            f"({d['open_at_end']} open at the end), RSS {d['rss_base_mib']} -> "
                            f"{d['rss_held_mib']} MiB (peak {d['rss_peak_mib']}), opened in {d['open_s']} s, "
                            f"{d['pings_answered']} server pings answered"
                        )
            L += [""] + extra
        if sc == "fanout_acks":
            L += [""] + acks_lines(acks_vs_plain(runs))
        L.append("")
    L += [
        (
            "'server CPU µs/op' = server CPU seconds in the measured window / operations in it (lower is better; "
            "its ratio is server / reference, so < 1 means cheaper than the reference). It is much less sensitive "
            "than throughput to other load on the machine, which only delays the server."
        ),
        "",
        (
            "CPU columns are in cores (1.00 = one core busy) over the measured window, medians over rounds; "
            "'client' sums the worker processes and the coordinator; 'other' is every other process on the "
            "machine (max over rounds). 'client-bound' = a client process used >= 90% of a core while the server "
            "used < 90%: the figure is a lower bound for that server."
        ),
        "",
    ]
    return "\n".join(L)


def acks_lines(cmp: dict | None) -> list[str]:
    if cmp is None:
        return [
            (
                f"Reliable path vs plain fan-out: n/a (needs an OK `fanout` and `fanout_acks` run of `{OURS}` "
                f"in the same round)."
            )
        ]
    cpu = cmp["median_cpu_ratio"]
    L = [
        f"**Reliable path keeps {cmp['median_ratio']:.0%} of plain fan-out** (`{OURS}` fanout_acks / fanout "
        f"deliveries/s, median of per-round ratios; issue 5 asks for >= 70%)"
        + (f"; server CPU per delivery is {cpu:.2f}× that of plain fan-out." if cpu else "."),
        "",
        (
            "| round | fanout deliveries/s | fanout_acks deliveries/s | ratio | server CPU µs/op fanout | "
            "server CPU µs/op fanout_acks | CPU/op ratio |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for x in cmp["rounds"]:
        f = lambda v: "n/a" if v is None else f"{v:,.1f}"
        L.append(
            f"| {x['round']} | {x['fanout']:,.0f} | {x['fanout_acks']:,.0f} | {x['ratio']:.0%} | "
            f"{f(x['fanout_us_per_op'])} | {f(x['fanout_acks_us_per_op'])} | "
            f"{'n/a' if x['cpu_ratio'] is None else format(x['cpu_ratio'], '.2f') + '×'} |"
        )
    return L


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    ap.add_argument("--servers", default=",".join(ALL_SERVERS), help=f"comma list of {', '.join(ALL_SERVERS)}")
    ap.add_argument(
        "--scenarios", default=",".join(client.SCENARIOS), help=f"comma list of {', '.join(client.SCENARIOS)}"
    )
    ap.add_argument(
        "--rounds", type=int, default=None, help="repetitions of every (scenario, server); default 3, 1 with --quick"
    )
    ap.add_argument("--out", default=str(RESULTS), help="directory for the .md and .json results")
    ap.add_argument("--tag", default="", help="suffix for the result file names")
    client.add_param_args(ap)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGINT, client_cli.raise_keyboard_interrupt)
    params = client.params_from_args(args)
    rounds = args.rounds or (1 if args.quick else 3)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in servers:
        if s not in ALL_SERVERS:
            ap.error(f"unknown server {s!r}")
    for s in scenarios:
        if s not in client.SCENARIOS:
            ap.error(f"unknown scenario {s!r}")
    nofile = raise_nofile_limit()
    if "idle" in scenarios and params.idle_conns + 200 > nofile:
        ap.error(f"--idle-conns {params.idle_conns} needs more than the fd limit {nofile} in the server process")

    started = dt.datetime.now()
    t0 = time.monotonic()
    info = machine.describe()
    print("\n".join(machine.header_lines(info)), flush=True)
    servers, skipped = check_servers(servers)
    if not servers:
        print("no server could be started", file=sys.stderr)
        return 2
    runs = []
    interrupted = False
    try:
        for rnd in range(rounds):
            order = servers[rnd % len(servers) :] + servers[: rnd % len(servers)]
            for sc in scenarios:
                for name in order:
                    if not applies(sc, name):
                        continue
                    print(f"[round {rnd + 1}/{rounds}] {sc:<11} {name:<22}", end=" ", flush=True)
                    r = run_one(name, sc, params)
                    r["round"] = rnd + 1
                    runs.append(r)
                    print(client_cli.format_result(r).split("\n")[0].split(": ", 1)[-1], flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: writing the runs finished so far", file=sys.stderr, flush=True)
        if not runs:
            return 130
    settings = {
        "started": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "rounds": rounds,
        "servers": servers,
        "scenarios": scenarios,
        "params": dataclasses.asdict(params),
        "command": " ".join(["python"] + [Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "wall_s": time.monotonic() - t0,
        "reference": REFERENCE,
        "interrupted": interrupted,
    }
    summary = summarize(runs, servers, scenarios)
    acks_cmp = acks_vs_plain(runs) if "fanout_acks" in scenarios else None
    md = markdown(info, settings, summary, runs, skipped, servers, scenarios, params)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = (
        f"side_by_side-{started:%Y%m%d-%H%M%S}{'-quick' if args.quick else ''}{'-' + args.tag if args.tag else ''}"
        f"{'-interrupted' if interrupted else ''}"
    )
    (out / f"{stem}.md").write_text(md)
    (out / f"{stem}.json").write_text(
        json.dumps(
            {
                "machine": info,
                "settings": settings,
                "skipped": skipped,
                "summary": summary,
                "acks_vs_plain": acks_cmp,
                "runs": runs,
            },
            indent=2,
            default=str,
        )
    )
    print("\n" + md)
    print(f"wrote {out / stem}.md and .json")
    if interrupted:
        return 130
    return 0 if all(not r.get("error") for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
