"""Micro benchmarks: encode/decode of `message` frames, JSON vs CBOR, at 100 B, 1 KB, 10 KB, 100 KB.

Frames are shaped like protocol v1's `message` frame:
    {"type": "message", "channel": "room1", "epoch": "e1", "seq": 1234,
     "data": {"user": "u-1234", "n": 42, "text": "..."}, "ts": <unix ms>}   (100 B: data = {"text": "..."})
with `text` sized so that the JSON encoding is the nominal size; the CBOR encoding of the same
frame is a little smaller and both actual sizes are printed. MB/s = ops/s x that codec's encoded
size (1 MB = 10^6 bytes).

Codecs (see CODECS below): stdlib `json` (compact separators; encode includes .encode() to UTF-8
bytes, as a text frame needs) and `cbor2` (C extension when importable). To measure the server's
own codec instead, point CODECS at `wsnursery.codec`.

    python benches/micro.py [--quick] [--sizes 100,1000,10000,100000] [--repeat 5] [--min-time 0.5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cbor2

from harness import machine

_json_enc = json.JSONEncoder(separators=(",", ":")).encode
_json_dec = json.loads

#: name -> (encode(frame) -> bytes, decode(bytes) -> frame)
CODECS = {
    "json": (lambda f: _json_enc(f).encode(), _json_dec),
    "cbor": (cbor2.dumps, cbor2.loads),
}


def cbor_impl() -> str:
    if type(cbor2.dumps).__name__ == "builtin_function_or_method":
        return f"C extension ({cbor2.dumps.__module__})"
    return "pure Python"


def make_frame(target: int) -> dict:
    def frame(n: int) -> dict:
        words = ("lorem ipsum dolor sit amet consectetur adipiscing elit " * (n // 55 + 1))[:n]
        data = {"user": "u-1234", "n": 42, "text": words} if target >= 200 else {"text": words}
        return {"type": "message", "channel": "room1", "epoch": "e1", "seq": 1234, "data": data, "ts": 1763900000000}

    base = len(CODECS["json"][0](frame(0)))
    if target <= base:
        return frame(0)
    return frame(target - base)


def bench(fn, arg, min_time: float, repeat: int) -> list[float]:
    """ops/s for each of `repeat` timed runs, each at least `min_time` seconds long."""
    n = 1
    while True:  # calibrate
        t = time.perf_counter()
        for _ in range(n):
            fn(arg)
        el = time.perf_counter() - t
        if el >= min_time / 5:
            break
        n *= 4 if el < min_time / 50 else 2
    n = max(1, int(n * min_time / max(el, 1e-9)))
    rates = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(n):
            fn(arg)
        rates.append(n / (time.perf_counter() - t))
    return rates


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    ap.add_argument("--quick", action="store_true", help="short timings (min-time 0.1 s, repeat 3)")
    ap.add_argument("--sizes", default="100,1000,10000,100000", help="nominal JSON frame sizes in bytes")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per case (default 5; 3 with --quick)")
    ap.add_argument("--min-time", type=float, default=None, help="seconds per timed run (default 0.5; 0.1 --quick)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 5)
    min_time = args.min_time or (0.1 if args.quick else 0.5)
    sizes = [int(s) for s in args.sizes.split(",")]

    info = machine.describe()
    print("\n".join(machine.header_lines(info)))
    print(
        f"Settings: sizes {sizes} B (nominal, JSON), {repeat} timed runs of >= {min_time:g} s per case, "
        f"median and best ops/s; json = stdlib json compact + UTF-8 encode; cbor = cbor2 {cbor_impl()}"
    )
    print()
    hdr = f"{'size':>7} {'codec':<5} {'bytes':>7} {'op':<7} {'ops/s (median)':>15} {'ops/s (best)':>13} {'MB/s (median)':>14}"
    print(hdr)
    print("-" * len(hdr))
    results = []
    for size in sizes:
        frame = make_frame(size)
        for name, (enc, dec) in CODECS.items():
            payload = enc(frame)
            assert dec(payload) == frame, f"{name} round trip failed"
            for op, fn, arg in (("encode", enc, frame), ("decode", dec, payload)):
                rates = bench(fn, arg, min_time, repeat)
                med = statistics.median(rates)
                mbs = med * len(payload) / 1e6
                print(
                    f"{size:>7} {name:<5} {len(payload):>7} {op:<7} {med:>15,.0f} {max(rates):>13,.0f} {mbs:>14,.1f}",
                    flush=True,
                )
                results.append(
                    {
                        "nominal_size": size,
                        "codec": name,
                        "encoded_bytes": len(payload),
                        "op": op,
                        "ops_per_s_median": med,
                        "ops_per_s_best": max(rates),
                        "mb_per_s_median": mbs,
                        "runs": rates,
                    }
                )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": info, "repeat": repeat, "min_time": min_time, "results": results}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
