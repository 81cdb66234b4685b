"""Scenario names, the settings of a run (`Params`) and HdrHistogram helpers."""

from __future__ import annotations

import argparse
import dataclasses
import re
import time

from hdrh.histogram import HdrHistogram

SCENARIOS = ("fanout", "fanout_acks", "echo", "connect", "idle")
FANOUT_SCENARIOS = ("fanout", "fanout_acks")
#: scenarios that need more of protocol v1 than the peers speak
WSNURSERY_ONLY = ("fanout_acks",)
HIST_ARGS = (1, 120_000_000, 3)  # microseconds, 1 us .. 120 s, 3 significant digits
CHANNEL = "bench.fanout"
# A `message` frame whose data is the publisher's "IIIIIIII:TTTTTTTTTTTTTTTTTTTT:xxx..." string.
DATA_RE = re.compile(rb'"data"\s*:\s*"(\d{8}):(\d+):')
# The channel seq of a `message` (and the head in `subscribed`): fanout_acks acks by it.
SEQ_RE = re.compile(rb'"seq"\s*:\s*(\d+)')
mono = time.monotonic_ns  # CLOCK_MONOTONIC: one clock for every process on the machine


@dataclasses.dataclass
class Params:
    workers: int = 2
    payload: int = 64
    # fanout
    fanout_subs: int = 1000
    fanout_messages: int = 5000  # upper bound; publishing also stops after warm-up + duration_s
    fanout_batch: int = 20
    fanout_window: int = 3
    fanout_warmup: int = 40  # messages; a multiple of fanout_batch
    fanout_read_interval: float = 0.1  # s; >0: subscriber processes poll at most this often (CoalescingSelector)
    # echo
    echo_conns: int = 100
    # connect
    connect_concurrency: int = 50
    connect_max: int = 50_000
    connect_path: str = "/echo"
    # idle
    idle_conns: int = 10_000
    idle_settle: float = 3.0
    idle_hold: float = 25.0
    # timed scenarios (echo, connect)
    warmup_s: float = 1.0
    duration_s: float = 10.0
    # bounds
    open_concurrency: int = 100  # handshakes in flight per worker while opening many connections
    timeout_s: float = 120.0  # hard cap on one scenario run
    stall_s: float = 15.0  # fan-out aborts when no batch completes for this long

    @classmethod
    def quick(cls, **kw) -> Params:
        base = {
            "fanout_subs": 500,
            "fanout_messages": 1000,
            "fanout_warmup": 40,
            "connect_concurrency": 20,
            "idle_conns": 1000,
            "idle_settle": 0.5,
            "idle_hold": 1.0,
            "warmup_s": 0.5,
            "duration_s": 2.0,
            "timeout_s": 45.0,
            "stall_s": 10.0,
        }
        base.update(kw)
        return cls(**base)

    def describe(self, scenario: str) -> str:
        if scenario in FANOUT_SCENARIOS:
            acks = (
                "; every subscriber subscribes with `ack: true` and sends one cumulative `ack` (highest "
                "contiguous seq) per read of its socket, and drops repeats by seq"
                if scenario == "fanout_acks"
                else ""
            )
            return (
                f"1 publisher -> {self.fanout_subs} subscribers on one channel, {self.payload} B data, "
                f"published in batches of {self.fanout_batch}, at most {self.fanout_window} batches ahead of the "
                f"slowest subscriber; first {self.fanout_warmup} messages not measured, then publishing for "
                f"{self.duration_s:g} s (at most {self.fanout_messages} messages) and until every subscriber "
                f"got every message; subscriber processes poll every {self.fanout_read_interval * 1000:g} ms "
                f"(adds up to that to the latency){acks}"
            )
        if scenario == "echo":
            return (
                f"{self.echo_conns} connections on /echo, 1 request in flight each, {self.payload} B text, "
                f"{self.warmup_s:g} s warm-up + {self.duration_s:g} s measured"
            )
        if scenario == "connect":
            return (
                f"{self.connect_concurrency} concurrent loops of connect + open handshake on "
                f"{self.connect_path} + closing handshake, {self.warmup_s:g} s warm-up + "
                f"{self.duration_s:g} s measured (cap {self.connect_max})"
            )
        if scenario == "idle":
            return (
                f"{self.idle_conns} idle connections on / (each got `welcome`), RSS sampled for "
                f"{self.idle_hold:g} s after {self.idle_settle:g} s settle; baseline after 20 warm-up connections"
            )
        return scenario


def split(n: int, k: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def hist_summary(h: HdrHistogram) -> dict:
    if h.get_total_count() == 0:
        return {"count": 0}
    return {
        "count": h.get_total_count(),
        "p50_us": h.get_value_at_percentile(50),
        "p90_us": h.get_value_at_percentile(90),
        "p99_us": h.get_value_at_percentile(99),
        "p999_us": h.get_value_at_percentile(99.9),
        "max_us": h.get_max_value(),
        "mean_us": round(h.get_mean_value(), 1),
    }


def merge_hists(encoded: list[bytes]) -> HdrHistogram:
    h = HdrHistogram(*HIST_ARGS)
    for e in encoded:
        if e:
            h.decode_and_add(e)
    return h


def add_param_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke test")
    for f in dataclasses.fields(Params):
        flag = "--" + f.name.replace("_", "-")
        ap.add_argument(
            flag,
            type=type(f.default),
            default=None,
            dest=f.name,
            metavar=type(f.default).__name__.upper(),
            help=f"(default {f.default!r}; see Params.quick() for --quick)",
        )


def params_from_args(args) -> Params:
    overrides = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(Params) if getattr(args, f.name, None) is not None
    }
    return Params.quick(**overrides) if args.quick else Params(**overrides)
