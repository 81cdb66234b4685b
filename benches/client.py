"""Load client for the side-by-side benches: drives any server that speaks the bench subset of
wsnursery protocol v1 (`/echo`, and `welcome`/`subscribe`/`publish` on `/`).

Load comes from several worker PROCESSES (default 2) so that one Python process is not the
ceiling; the coordinating process (this one) owns the publisher in the fan-out scenario and
samples CPU (psutil) of the server, of every worker and of itself over the measured window, so
a report can say when the client, not the server, was the bottleneck. Latencies go to
HdrHistogram (microseconds). Connections use `lib.rawws`, a lean asyncio client (see
`python benches/client.py compare` for why).

Scenarios (see benches/README.md):
  fanout   1 publisher -> N subscribers on one channel; deliveries/s measured at subscribers
  fanout_acks  the same, but every subscriber subscribes with `"ack": true` and sends one cumulative
           `ack` per read (the reliable path; only wsnursery speaks acks)
  echo     N connections doing request/response on /echo; round trips/s
  connect  open handshake + closing handshake, C at a time; connections/s
  idle     N idle connections on / held with heartbeats on; server RSS delta / N

Usage:
  python benches/client.py run --url ws://127.0.0.1:PORT --scenario echo [--server-pid PID] [--quick]
  python benches/client.py compare [--frames 200000]
"""

from __future__ import annotations

import argparse
import array
import asyncio
import collections
import dataclasses
import json
import multiprocessing as mp
import os
import re
import selectors
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402
from hdrh.histogram import HdrHistogram  # noqa: E402

from lib.rawws import connect  # noqa: E402
from lib.servers import raise_nofile_limit  # noqa: E402

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
    def quick(cls, **kw) -> "Params":
        base = dict(fanout_subs=500, fanout_messages=1000, fanout_warmup=40, connect_concurrency=20,
                    idle_conns=1000, idle_settle=0.5, idle_hold=1.0, warmup_s=0.5, duration_s=2.0,
                    timeout_s=45.0, stall_s=10.0)
        base.update(kw)
        return cls(**base)

    def describe(self, scenario: str) -> str:
        if scenario in FANOUT_SCENARIOS:
            acks = ("; every subscriber subscribes with `ack: true` and sends one cumulative `ack` (highest "
                    "contiguous seq) per read of its socket, and drops repeats by seq"
                    if scenario == "fanout_acks" else "")
            return (f"1 publisher -> {self.fanout_subs} subscribers on one channel, {self.payload} B data, "
                    f"published in batches of {self.fanout_batch}, at most {self.fanout_window} batches ahead of the "
                    f"slowest subscriber; first {self.fanout_warmup} messages not measured, then publishing for "
                    f"{self.duration_s:g} s (at most {self.fanout_messages} messages) and until every subscriber "
                    f"got every message; subscriber processes poll every {self.fanout_read_interval * 1000:g} ms "
                    f"(adds up to that to the latency){acks}")
        if scenario == "echo":
            return (f"{self.echo_conns} connections on /echo, 1 request in flight each, {self.payload} B text, "
                    f"{self.warmup_s:g} s warm-up + {self.duration_s:g} s measured")
        if scenario == "connect":
            return (f"{self.connect_concurrency} concurrent loops of connect + open handshake on "
                    f"{self.connect_path} + closing handshake, {self.warmup_s:g} s warm-up + "
                    f"{self.duration_s:g} s measured (cap {self.connect_max})")
        if scenario == "idle":
            return (f"{self.idle_conns} idle connections on / (each got `welcome`), RSS sampled for "
                    f"{self.idle_hold:g} s after {self.idle_settle:g} s settle; baseline after 20 warm-up connections")
        return scenario


def split(n: int, k: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def hist_summary(h: HdrHistogram) -> dict:
    if h.get_total_count() == 0:
        return {"count": 0}
    return {"count": h.get_total_count(), "p50_us": h.get_value_at_percentile(50),
            "p90_us": h.get_value_at_percentile(90), "p99_us": h.get_value_at_percentile(99),
            "p999_us": h.get_value_at_percentile(99.9), "max_us": h.get_max_value(),
            "mean_us": round(h.get_mean_value(), 1)}


def merge_hists(encoded: list[bytes]) -> HdrHistogram:
    h = HdrHistogram(*HIST_ARGS)
    for e in encoded:
        if e:
            h.decode_and_add(e)
    return h


# ------------------------------------------------------------------------------------------
# Pipe between coordinator and workers
# ------------------------------------------------------------------------------------------
class Chan:
    """An asyncio view of a multiprocessing Pipe end (small pickled tuples both ways)."""

    def __init__(self, conn):
        self.conn = conn
        self.q: asyncio.Queue = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(conn.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            while self.conn.poll():
                self.q.put_nowait(self.conn.recv())
        except (EOFError, OSError):
            self.loop.remove_reader(self.conn.fileno())
            self.q.put_nowait(("eof",))

    async def get(self, timeout: float | None = None):
        async with asyncio.timeout(timeout):
            return await self.q.get()

    def put(self, msg) -> None:
        self.conn.send(msg)

    def close(self) -> None:
        try:
            self.loop.remove_reader(self.conn.fileno())
        except Exception:
            pass


async def open_many(n: int, concurrency: int, opener) -> tuple[list, list[str]]:
    """Run `opener()` n times, `concurrency` at a time; return (results, errors)."""
    sem = asyncio.Semaphore(concurrency)

    async def one():
        async with sem:
            return await opener()

    out = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    ok = [r for r in out if not isinstance(r, BaseException)]
    errs = [repr(r) for r in out if isinstance(r, BaseException)]
    return ok, errs


async def close_all(conns, timeout: float = 3.0) -> None:
    if not conns:
        return
    tasks = [asyncio.ensure_future(ws.close(timeout=timeout)) for ws in conns]
    await asyncio.wait(tasks, timeout=timeout + 1)
    for ws in conns:
        ws.abort()


# ------------------------------------------------------------------------------------------
# Workers (one process each)
# ------------------------------------------------------------------------------------------
class _Sub:
    __slots__ = ("ws", "count", "expect", "subscribed", "seq", "acked")

    def __init__(self):
        self.ws = None
        self.count = 0
        self.expect = 0
        self.subscribed = None
        self.seq = None  # fanout_acks: highest contiguous channel seq received (None until `subscribed`)
        self.acked = 0  # fanout_acks: highest seq acked so far


async def _w_fanout(ch: Chan, wid: int, host: str, port: int, p: Params, n: int, acks: bool = False) -> None:
    """Subscribers of the fan-out scenarios. With `acks` (fanout_acks) each one subscribes with
    `"ack": true`, tracks the channel seq (a repeat, i.e. a server retransmit, is dropped and
    counted; a seq past the next one is a gap) and, once per read of its socket, sends one
    cumulative `ack` with the highest contiguous seq it holds, as a real client would."""
    loop = asyncio.get_running_loop()
    B, warm = p.fanout_batch, p.fanout_warmup
    # latencies (us) go to a C array during the run and into HdrHistogram afterwards: the
    # histogram's pure-Python record_value would cost more than receiving the frame
    lat = array.array("q")
    record = lat.append
    reached: collections.Counter = collections.Counter()
    st = {"deliveries": 0, "measured": 0, "last_ns": 0, "gaps": 0, "repeats": 0, "acks_sent": 0}
    req = {"type": "subscribe", "id": 1, "channel": CHANNEL}
    if acks:
        req["ack"] = True
    subscribe = json.dumps(req).encode()
    search = DATA_RE.search
    seq_search = SEQ_RE.search
    stopping = False
    failed: list[str] = []
    # fanout_acks: subscribers that received something since the last flush. The flush runs once
    # per event-loop iteration (call_soon from the first message), after every socket that was
    # readable in that iteration has been read once: one ack per subscriber per read.
    to_ack: list[_Sub] = []
    ack_prefix = b'{"type":"ack","channel":"%s","seq":' % CHANNEL.encode()

    def flush_acks() -> None:
        for sub in to_ack:
            if sub.seq > sub.acked and not sub.ws.close_sent:
                sub.acked = sub.seq
                sub.ws.send(ack_prefix + b"%d}" % sub.seq)
                st["acks_sent"] += 1
        to_ack.clear()

    def fail(why: str) -> None:
        # a worker that saw a close or a gap tells the coordinator at once: the run fails loudly
        if not stopping and not failed:
            failed.append(why)
            ch.put(("error", wid, why))

    def make_cb(sub: _Sub):
        def cb(payload: bytes, op: int) -> None:
            m = search(payload)
            if m is None:
                if not sub.subscribed.done():
                    if b'"subscribed"' in payload:
                        if acks:
                            h = seq_search(payload)
                            sub.seq = sub.acked = int(h.group(1)) if h else 0
                        sub.subscribed.set_result(None)
                    elif b'"error"' in payload:
                        sub.subscribed.set_exception(RuntimeError(f"subscribe refused: {payload[:200]!r}"))
                elif b'"error"' in payload:
                    fail(f"subscriber got an error frame: {payload[:200]!r}")
                return
            if acks:
                seq = int(seq_search(payload).group(1))
                if seq <= sub.seq:  # a retransmit of what we already hold
                    st["repeats"] += 1
                    return
                if seq != sub.seq + 1:
                    st["gaps"] += 1
                    fail(f"seq gap: a subscriber got seq {seq} after {sub.seq}")
                if not to_ack:
                    loop.call_soon(flush_acks)
                if sub.seq == sub.acked:
                    to_ack.append(sub)
                sub.seq = seq
            now = mono()
            idx = int(m.group(1))
            if idx != sub.expect:
                st["gaps"] += 1
                fail(f"gap: a subscriber got message {idx} when {sub.expect} was next")
            sub.expect = idx + 1
            sub.count += 1
            if idx >= warm:
                record((now - int(m.group(2))) // 1000)
                st["last_ns"] = now
            if sub.count % B == 0:
                k = sub.count // B
                reached[k] += 1
                if reached[k] == n:
                    ch.put(("progress", wid, k))
        return cb

    def on_lost(sub: _Sub):
        def cb(_fut) -> None:
            code = sub.ws.close_code
            fail(f"a subscriber's connection ended during the run "
                 f"({'close code ' + str(code) if code is not None else 'no close frame'})")
        return cb

    async def opener():
        sub = _Sub()
        sub.subscribed = loop.create_future()
        sub.ws = await connect(host, port, "/", make_cb(sub))
        try:
            sub.ws.send(subscribe)
            await asyncio.wait_for(sub.subscribed, 15)
        except BaseException:
            sub.ws.abort()
            raise
        sub.ws.lost.add_done_callback(on_lost(sub))
        return sub

    subs, errs = await open_many(n, p.open_concurrency, opener)
    ch.put(("ready", wid, len(subs), errs[:3]))
    await ch.get()  # ("stop",)
    stopping = True
    st["deliveries"] = sum(s.count for s in subs)
    st["lost_connections"] = sum(1 for s in subs if s.ws.lost.done())
    st["close_codes"] = sorted({s.ws.close_code for s in subs if s.ws.close_code is not None})
    st["measured"] = len(lat)
    hist = HdrHistogram(*HIST_ARGS)
    for v in lat:
        hist.record_value(v if v > 0 else 1)
    st["hist"] = hist.encode()
    ch.put(("result", wid, st))
    await close_all([s.ws for s in subs])


async def _w_fanout_acks(ch: Chan, wid: int, host: str, port: int, p: Params, n: int) -> None:
    await _w_fanout(ch, wid, host, port, p, n, acks=True)


async def _w_echo(ch: Chan, wid: int, host: str, port: int, p: Params, n: int) -> None:
    loop = asyncio.get_running_loop()
    conns, errs = await open_many(n, p.open_concurrency, lambda: connect(host, port, "/echo"))
    ch.put(("ready", wid, len(conns), errs[:3]))
    _, t_meas, t_end = await ch.get()  # ("go", t_meas, t_end)
    hist = HdrHistogram(*HIST_ARGS)
    record = hist.record_value
    st = {"count": 0, "errors": 0, "mismatch": 0}
    payload = b"e" * p.payload

    async def run(ws):
        try:
            while True:
                t0 = mono()
                if t0 >= t_end:
                    return
                fut = ws.waiter = loop.create_future()
                ws.send(payload)
                got = await fut
                t1 = mono()
                if got != payload:
                    st["mismatch"] += 1
                if t_meas <= t0 and t1 <= t_end:
                    st["count"] += 1
                    record(max(1, (t1 - t0) // 1000))
        except Exception:
            st["errors"] += 1

    async with asyncio.timeout((t_end - mono()) / 1e9 + 10):
        await asyncio.gather(*(run(ws) for ws in conns))
    st["hist"] = hist.encode()
    ch.put(("result", wid, st))
    await ch.get()
    await close_all(conns)


async def _w_connect(ch: Chan, wid: int, host: str, port: int, p: Params, n: int) -> None:
    ch.put(("ready", wid, n, []))
    _, t_meas, t_end = await ch.get()
    hist = HdrHistogram(*HIST_ARGS)
    st = {"count": 0, "attempts": 0, "errors": 0, "error_samples": []}
    cap = max(1, p.connect_max // p.workers)

    async def run():
        while mono() < t_end and st["attempts"] < cap:
            st["attempts"] += 1
            t0 = mono()
            try:
                ws = await connect(host, port, p.connect_path, timeout=10)
                await ws.close(timeout=5)
            except Exception as e:
                st["errors"] += 1
                if len(st["error_samples"]) < 3:
                    st["error_samples"].append(repr(e))
                await asyncio.sleep(0.01)
                continue
            t1 = mono()
            if t_meas <= t0 and t1 <= t_end:
                st["count"] += 1
                hist.record_value(max(1, (t1 - t0) // 1000))

    async with asyncio.timeout((t_end - mono()) / 1e9 + 20):
        await asyncio.gather(*(run() for _ in range(n)))
    st["hist"] = hist.encode()
    ch.put(("result", wid, st))
    await ch.get()


async def _w_idle(ch: Chan, wid: int, host: str, port: int, p: Params, n: int) -> None:
    loop = asyncio.get_running_loop()
    await ch.get()  # ("go",)

    async def opener():
        welcome = loop.create_future()

        def cb(payload, op):
            if not welcome.done():
                welcome.set_result(None)

        ws = await connect(host, port, "/", cb)
        try:
            await asyncio.wait_for(welcome, 15)
        except BaseException:
            ws.abort()
            raise
        return ws

    conns, errs = await open_many(n, p.open_concurrency, opener)
    ch.put(("ready", wid, len(conns), errs[:3]))
    await ch.get()  # ("stop",)
    st = {"open_at_end": sum(1 for ws in conns if not ws.lost.done()),
          "pings_answered": sum(ws.pings for ws in conns)}
    ch.put(("result", wid, st))
    await close_all(conns, timeout=5.0)


class CoalescingSelector(selectors.EpollSelector if hasattr(selectors, "EpollSelector") else selectors.DefaultSelector):
    """When the event loop is about to block anyway, wait until at least `interval` seconds have
    passed since the previous poll. Frames then pile up in the kernel and one recv() returns
    several of them: fewer wake-ups and syscalls per delivery for a fan-out subscriber process,
    at the cost of up to `interval` added to the measured delivery latency. Never delays a loop
    that has callbacks ready (timeout == 0)."""

    def __init__(self, interval: float):
        super().__init__()
        self.interval = interval
        self._last = 0.0

    def select(self, timeout=None):
        if timeout is None or timeout > 0:
            wait = self._last + self.interval - time.monotonic()
            if wait > 0:
                time.sleep(wait if timeout is None else min(wait, timeout))
                timeout = 0 if timeout is None or timeout <= wait else timeout - wait
        try:
            return super().select(timeout)
        finally:
            self._last = time.monotonic()


WORKERS = {"fanout": _w_fanout, "fanout_acks": _w_fanout_acks, "echo": _w_echo, "connect": _w_connect, "idle": _w_idle}


def _worker_entry(conn, wid: int, scenario: str, host: str, port: int, params: dict, n: int) -> None:
    raise_nofile_limit()
    p = Params(**params)

    async def main():
        ch = Chan(conn)
        try:
            async with asyncio.timeout(p.timeout_s + 60):  # never outlive the coordinator for long
                await WORKERS[scenario](ch, wid, host, port, p, n)
        except Exception as e:
            try:
                ch.put(("error", wid, repr(e)))
            except Exception:
                pass

    prof_dir = os.environ.get("BENCH_PROFILE_DIR")  # debugging aid: cProfile each worker
    if prof_dir:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    if scenario in FANOUT_SCENARIOS and p.fanout_read_interval > 0:
        loop = asyncio.SelectorEventLoop(CoalescingSelector(p.fanout_read_interval))
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
    else:
        asyncio.run(main())
    if prof_dir:
        prof.disable()
        prof.dump_stats(os.path.join(prof_dir, f"worker-{scenario}-{wid}.prof"))


# ------------------------------------------------------------------------------------------
# Coordinator
# ------------------------------------------------------------------------------------------
class CpuWatch:
    """CPU seconds of a set of processes over a window; utilisation as a fraction of one core."""

    def __init__(self, server_pid: int | None, client_pids: list[int]):
        self.procs = {}
        for role, pid in [("server", server_pid)] + [("client", q) for q in client_pids]:
            if pid:
                try:
                    self.procs[pid] = (role, psutil.Process(pid))
                except psutil.Error:
                    pass
        self.t0 = self.c0 = None

    def _sample(self) -> dict[int, tuple[float, float]]:
        out = {}
        for pid, (_, pr) in self.procs.items():
            try:
                ct = pr.cpu_times()
                out[pid] = (ct.user, ct.system)
            except psutil.Error:
                out[pid] = (float("nan"), float("nan"))
        return out

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()  # whole machine, all CPUs
        return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

    def start(self) -> None:
        self.t0, self.c0, self.b0 = time.monotonic(), self._sample(), self._busy()

    def stop(self) -> dict:
        if self.t0 is None:
            return {}
        wall = max(time.monotonic() - self.t0, 1e-9)
        c1 = self._sample()
        server, clients = None, []
        sys_ = {"server": 0.0, "client": 0.0}
        for pid, (role, _) in self.procs.items():
            u = (sum(c1[pid]) - sum(self.c0[pid])) / wall
            sys_[role] += (c1[pid][1] - self.c0[pid][1]) / wall
            if role == "server":
                server = u
            else:
                clients.append(u)
        machine = (self._busy() - self.b0) / wall
        res = {"window_s": round(wall, 3), "server_cpu": None if server is None else round(server, 3),
               "client_cpu_total": round(sum(clients), 3), "client_cpu_max_proc": round(max(clients), 3),
               "client_procs": len(clients), "machine_cpu": round(machine, 3),
               "server_cpu_kernel": round(sys_["server"], 3), "client_cpu_kernel": round(sys_["client"], 3),
               # CPU used by processes that are neither the server nor the bench client
               "other_cpu": round(max(0.0, machine - (server or 0.0) - sum(clients)), 3)}
        res["client_bound"] = bool(res["client_cpu_max_proc"] >= 0.9
                                   and (server is None or server < 0.9))
        return res


async def _gather(chans: list[Chan], kind: str, timeout: float) -> list:
    out = []
    for ch in chans:
        msg = await ch.get(timeout)
        while msg[0] == "progress":  # late fan-out progress reports: not needed any more
            msg = await ch.get(timeout)
        if msg[0] != kind:
            raise RuntimeError(f"worker sent {msg!r} while {kind!r} was expected")
        out.append(msg)
    return out


def _publish_frame(i: int, payload: int) -> bytes:
    data = f"{i:08d}:{mono():020d}:"
    data += "x" * max(0, payload - len(data))
    return b'{"type":"publish","id":%d,"channel":"%s","data":"%s"}' % (i + 1, CHANNEL.encode(), data.encode())


async def _c_fanout(chans, host, port, p: Params, cpu: CpuWatch, server_pid) -> dict:
    ready = await _gather(chans, "ready", p.timeout_s)
    errs = [e for r in ready for e in r[3]]
    if sum(r[2] for r in ready) < p.fanout_subs:
        raise RuntimeError(f"only {sum(r[2] for r in ready)}/{p.fanout_subs} subscribers ready: {errs[:3]}")
    B = p.fanout_batch
    nb = p.fanout_messages // B
    warm_b = p.fanout_warmup // B
    published = 0
    welcome_seen = asyncio.get_running_loop().create_future()

    def pub_cb(payload, op):
        nonlocal published
        if b'"published"' in payload:
            published += 1
        elif not welcome_seen.done():
            welcome_seen.set_result(None)

    pub = await connect(host, port, "/", pub_cb)
    progress = [0] * len(chans)
    changed = asyncio.Event()
    failure: list[str] = []

    async def follow(i, ch):
        while True:
            msg = await ch.get()
            if msg[0] == "progress":
                progress[i] = max(progress[i], msg[2])
                changed.set()
            else:
                failure.append(repr(msg))
                changed.set()
                return

    followers = [asyncio.ensure_future(follow(i, ch)) for i, ch in enumerate(chans)]

    async def wait_until(pred):
        while not pred():
            if failure:
                raise RuntimeError(f"worker failed: {failure[0]}")
            changed.clear()
            try:
                async with asyncio.timeout(p.stall_s):
                    await changed.wait()
            except TimeoutError:
                raise RuntimeError(f"fan-out stalled: no batch delivered to every subscriber for {p.stall_s:g}s "
                                   f"(publisher at batch {b}/{nb}, slowest worker at {min(progress)})") from None

    t_start = None
    b = 0
    sent = 0  # batches published
    incomplete = None
    try:
        for b in range(nb):
            await wait_until(lambda: b - min(progress) < p.fanout_window)
            if b == warm_b:
                # start the clock on an empty pipeline: every warm-up message delivered, so the
                # window's deliveries and the window's server CPU are the same work
                await wait_until(lambda: min(progress) >= warm_b)
                t_start = mono()
                cpu.start()
            elif t_start is not None and mono() - t_start > p.duration_s * 1e9:
                break  # time bound reached: stop publishing, let the subscribers drain
            pub.send_many([_publish_frame(i, p.payload) for i in range(b * B, (b + 1) * B)])
            sent = b + 1
        b = sent
        await wait_until(lambda: min(progress) >= sent)
    except RuntimeError as e:
        incomplete = str(e)
    cpu_res = cpu.stop()
    for f in followers:
        f.cancel()
    await asyncio.gather(*followers, return_exceptions=True)
    if failure:  # a worker gave up (and exited): no result will come from it
        raise RuntimeError(f"worker failed: {failure[0]}")
    for ch in chans:
        ch.put(("stop",))
    results = [m[2] for m in await _gather(chans, "result", 30)]
    await pub.close(timeout=2)
    measured = sum(r["measured"] for r in results)
    last = max(r["last_ns"] for r in results)
    elapsed = (last - t_start) / 1e9 if t_start and last > t_start else float("nan")
    hist = merge_hists([r["hist"] for r in results])
    expected = max(0, sent - warm_b) * B * p.fanout_subs
    gaps = sum(r["gaps"] for r in results)
    lost = sum(r["lost_connections"] for r in results)
    details = {"deliveries_measured": measured, "deliveries_expected": expected,
               "deliveries_total": sum(r["deliveries"] for r in results),
               "seq_gaps": gaps, "messages_published": sent * B,
               "published_acks": published,  # `published` replies to the publisher
               "lost_connections": lost,
               "close_codes": sorted({c for r in results for c in r.get("close_codes", [])}),
               "elapsed_s": round(elapsed, 3)}
    acks_sent = sum(r.get("acks_sent", 0) for r in results)
    if acks_sent:
        # fanout_acks: subscriber acks over the whole run (warm-up included) and repeats received
        # (server retransmits of messages whose ack came too late), dropped by seq
        details["acks_sent"] = acks_sent
        details["deliveries_per_ack"] = round(details["deliveries_total"] / acks_sent, 2)
        details["repeats_dropped"] = sum(r.get("repeats", 0) for r in results)
    error = incomplete
    if error is None and gaps:
        error = f"{gaps} seq gaps at the subscribers"
    if error is None and lost:
        error = f"{lost} subscriber connections ended during the run (close codes {details['close_codes']})"
    if error is None and measured != expected:
        error = f"{measured} deliveries measured, {expected} expected"
    return {
        "metric": "deliveries/s", "value": measured / elapsed if elapsed == elapsed else 0.0,
        "higher_is_better": True, "latency": hist_summary(hist), "cpu": cpu_res,
        "details": details, "error": error,
    }


async def _c_timed(chans, p: Params, cpu: CpuWatch, metric: str) -> dict:
    ready = await _gather(chans, "ready", p.timeout_s)
    errs = [e for r in ready for e in r[3]]
    opened = sum(r[2] for r in ready)
    t_meas = mono() + int(p.warmup_s * 1e9)
    t_end = t_meas + int(p.duration_s * 1e9)
    for ch in chans:
        ch.put(("go", t_meas, t_end))
    await asyncio.sleep(max(0, (t_meas - mono()) / 1e9))
    cpu.start()
    await asyncio.sleep(max(0, (t_end - mono()) / 1e9))
    cpu_res = cpu.stop()
    results = [m[2] for m in await _gather(chans, "result", p.timeout_s)]
    for ch in chans:
        ch.put(("stop",))
    hist = merge_hists([r.pop("hist") for r in results])
    count = sum(r["count"] for r in results)
    details = {"connections": opened, "open_errors": errs[:3], "count": count}
    for key in ("errors", "mismatch", "attempts"):
        if any(key in r for r in results):
            details[key] = sum(r.get(key, 0) for r in results)
    samples = [e for r in results for e in r.get("error_samples", [])]
    if samples:
        details["error_samples"] = samples[:3]
    return {"metric": metric, "value": count / p.duration_s, "higher_is_better": True,
            "latency": hist_summary(hist), "cpu": cpu_res, "details": details,
            "error": None if count else f"no successful operation (open errors: {errs[:3]}, {samples[:3]})"}


async def _c_idle(chans, host, port, p: Params, cpu: CpuWatch, server_pid) -> dict:
    if not server_pid:
        raise RuntimeError("the idle scenario needs --server-pid to read the server's RSS")
    srv = psutil.Process(server_pid)
    warm, _ = await open_many(20, 20, lambda: connect(host, port, "/"))
    await close_all(warm)
    await asyncio.sleep(1.0)
    rss0 = srv.memory_info().rss
    cpu.start()
    t_open = time.monotonic()
    for ch in chans:
        ch.put(("go",))
    ready = await _gather(chans, "ready", p.timeout_s)
    open_s = time.monotonic() - t_open
    opened = sum(r[2] for r in ready)
    errs = [e for r in ready for e in r[3]]
    await asyncio.sleep(p.idle_settle)
    samples = []
    t_hold = time.monotonic()
    while True:
        samples.append(srv.memory_info().rss)
        if time.monotonic() - t_hold >= p.idle_hold:
            break
        await asyncio.sleep(min(0.5, p.idle_hold))
    cpu_res = cpu.stop()
    for ch in chans:
        ch.put(("stop",))
    results = [m[2] for m in await _gather(chans, "result", 30)]
    open_end = sum(r["open_at_end"] for r in results)
    rss1 = samples[-1]
    per_conn = (rss1 - rss0) / opened if opened else float("nan")
    return {
        "metric": "bytes/idle conn", "value": per_conn, "higher_is_better": False, "latency": {"count": 0},
        "cpu": cpu_res,
        "details": {"connections": opened, "open_at_end": open_end, "open_errors": errs[:3],
                    "rss_base_mib": round(rss0 / 2**20, 1), "rss_held_mib": round(rss1 / 2**20, 1),
                    "rss_peak_mib": round(max(samples) / 2**20, 1), "open_s": round(open_s, 2),
                    "pings_answered": sum(r["pings_answered"] for r in results)},
        "error": None if opened == p.idle_conns and open_end == opened else
        f"{opened}/{p.idle_conns} opened, {open_end} still open at the end; {errs[:2]}",
    }


def run_scenario(scenario: str, host: str, port: int, params: Params, server_pid: int | None = None) -> dict:
    """Run one scenario against one server; returns a result dict (never raises for server failures:
    the error goes into result["error"])."""
    if scenario not in WORKERS:
        raise ValueError(f"unknown scenario {scenario!r}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("the benches only talk to the loopback interface")
    nofile = raise_nofile_limit()
    W = max(1, params.workers)
    if scenario in FANOUT_SCENARIOS:
        shares = split(params.fanout_subs, W)
    elif scenario == "echo":
        shares = split(params.echo_conns, W)
    elif scenario == "connect":
        shares = split(params.connect_concurrency, W)
    else:
        shares = split(params.idle_conns, W)
        if max(shares) + 64 > nofile:
            raise ValueError(f"{max(shares)} connections per worker exceed the fd limit {nofile}; "
                             f"lower --idle-conns or raise --workers")
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for wid, n in enumerate(shares):
        a, b = ctx.Pipe()
        pr = ctx.Process(target=_worker_entry, args=(b, wid, scenario, host, port, dataclasses.asdict(params), n),
                         daemon=True, name=f"bench-{scenario}-{wid}")
        pr.start()
        b.close()
        pipes.append(a)
        procs.append(pr)

    async def coordinate() -> dict:
        chans = [Chan(c) for c in pipes]
        cpu = CpuWatch(server_pid, [pr.pid for pr in procs] + [os.getpid()])
        async with asyncio.timeout(params.timeout_s):
            if scenario in FANOUT_SCENARIOS:
                return await _c_fanout(chans, host, port, params, cpu, server_pid)
            if scenario == "idle":
                return await _c_idle(chans, host, port, params, cpu, server_pid)
            return await _c_timed(chans, params, cpu, "msgs/s" if scenario == "echo" else "conns/s")

    t0 = time.monotonic()
    finished = False
    try:
        res = asyncio.run(coordinate())
        finished = True
        ops = res.get("details", {}).get("count", res.get("details", {}).get("deliveries_measured"))
        cpu = res.get("cpu", {})
        if ops and cpu.get("server_cpu") is not None and scenario != "idle":
            # server CPU time per operation: much less sensitive to other load on the machine than
            # throughput (which needs the server to get a core)
            res["server_us_per_op"] = round(cpu["server_cpu"] * cpu["window_s"] / ops * 1e6, 2)
    except Exception as e:
        res = {"metric": None, "value": float("nan"), "latency": {"count": 0}, "cpu": {}, "details": {},
               "error": f"{type(e).__name__}: {e}"}
    finally:
        # after a normal end the workers close their connections and exit by themselves; after
        # an error or Ctrl-C they may be waiting for a message that will not come
        for pr in procs:
            pr.join(15 if finished else 1)
        for pr in procs:
            if pr.is_alive():
                pr.terminate()
                pr.join(5)
        for c in pipes:
            c.close()
    res.update(scenario=scenario, settings=params.describe(scenario), wall_s=round(time.monotonic() - t0, 2),
               workers=W)
    return res


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------
def add_param_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke test")
    for f in dataclasses.fields(Params):
        flag = "--" + f.name.replace("_", "-")
        ap.add_argument(flag, type=type(f.default), default=None, dest=f.name, metavar=type(f.default).__name__.upper(),
                        help=f"(default {f.default!r}; see Params.quick() for --quick)")


def params_from_args(args) -> Params:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Params)
                 if getattr(args, f.name, None) is not None}
    return Params.quick(**overrides) if args.quick else Params(**overrides)


def format_result(r: dict) -> str:
    lat = r.get("latency", {})
    cpu = r.get("cpu", {})
    parts = [f"{r['scenario']}: {r['value']:,.1f} {r['metric']}" if r.get("metric") else f"{r['scenario']}: FAILED"]
    if r.get("server_us_per_op") is not None:
        parts.append(f"server CPU {r['server_us_per_op']} us/op")
    if lat.get("count"):
        parts.append(f"p50 {lat['p50_us']} us, p99 {lat['p99_us']} us, max {lat['max_us']} us")
    if cpu:
        parts.append(f"CPU (cores): server {cpu.get('server_cpu')}, client {cpu.get('client_cpu_total')} "
                     f"(max proc {cpu.get('client_cpu_max_proc')}), other processes {cpu.get('other_cpu')}"
                     f"{' CLIENT-BOUND' if cpu.get('client_bound') else ''}")
    if r.get("error"):
        parts.append(f"ERROR: {r['error']}")
    return " | ".join(parts) + f"\n  details: {json.dumps(r.get('details', {}))}"


def raise_keyboard_interrupt(signum, frame):
    """A SIGINT handler that is not `signal.default_int_handler`, so that asyncio.run() leaves it
    in place: Ctrl-C then raises KeyboardInterrupt at once instead of cancelling the main task
    (which a coordinator waiting on worker pipes could turn into some other error)."""
    raise KeyboardInterrupt


def main(argv=None) -> int:
    signal.signal(signal.SIGINT, raise_keyboard_interrupt)
    ap = argparse.ArgumentParser(description="wsnursery bench load client", formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__)
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
        from lib import altclients

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


if __name__ == "__main__":
    sys.exit(main())
