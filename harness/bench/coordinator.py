"""The coordinating process of the load client: `run_scenario` starts the worker processes,
paces the fan-out publisher, samples CPU over the measured window and builds the result."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import multiprocessing as mp
import os
import time

import psutil

from harness.bench.params import (
    CHANNEL,
    FANOUT_SCENARIOS,
    Params,
    hist_summary,
    merge_hists,
    mono,
    split,
)
from harness.bench.workers import WORKERS, Chan, _worker_entry, close_all, open_many
from harness.rawws import connect
from harness.servers import raise_nofile_limit


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
        res = {
            "window_s": round(wall, 3),
            "server_cpu": None if server is None else round(server, 3),
            "client_cpu_total": round(sum(clients), 3),
            "client_cpu_max_proc": round(max(clients), 3),
            "client_procs": len(clients),
            "machine_cpu": round(machine, 3),
            "server_cpu_kernel": round(sys_["server"], 3),
            "client_cpu_kernel": round(sys_["client"], 3),
            # CPU used by processes that are neither the server nor the bench client
            "other_cpu": round(max(0.0, machine - (server or 0.0) - sum(clients)), 3),
        }
        res["client_bound"] = bool(res["client_cpu_max_proc"] >= 0.9 and (server is None or server < 0.9))
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
                raise RuntimeError(
                    f"fan-out stalled: no batch delivered to every subscriber for {p.stall_s:g}s "
                    f"(publisher at batch {b}/{nb}, slowest worker at {min(progress)})"
                ) from None

    t_start = None
    b = 0
    sent = 0  # batches published
    incomplete = None
    try:
        for b in range(nb):
            await wait_until(lambda: b - min(progress) < p.fanout_window)  # noqa: B023 - awaited before b moves
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
    details = {
        "deliveries_measured": measured,
        "deliveries_expected": expected,
        "deliveries_total": sum(r["deliveries"] for r in results),
        "seq_gaps": gaps,
        "messages_published": sent * B,
        "published_acks": published,  # `published` replies to the publisher
        "lost_connections": lost,
        "close_codes": sorted({c for r in results for c in r.get("close_codes", [])}),
        "elapsed_s": round(elapsed, 3),
    }
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
        "metric": "deliveries/s",
        "value": 0.0 if math.isnan(elapsed) else measured / elapsed,
        "higher_is_better": True,
        "latency": hist_summary(hist),
        "cpu": cpu_res,
        "details": details,
        "error": error,
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
    return {
        "metric": metric,
        "value": count / p.duration_s,
        "higher_is_better": True,
        "latency": hist_summary(hist),
        "cpu": cpu_res,
        "details": details,
        "error": None if count else f"no successful operation (open errors: {errs[:3]}, {samples[:3]})",
    }


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
        "metric": "bytes/idle conn",
        "value": per_conn,
        "higher_is_better": False,
        "latency": {"count": 0},
        "cpu": cpu_res,
        "details": {
            "connections": opened,
            "open_at_end": open_end,
            "open_errors": errs[:3],
            "rss_base_mib": round(rss0 / 2**20, 1),
            "rss_held_mib": round(rss1 / 2**20, 1),
            "rss_peak_mib": round(max(samples) / 2**20, 1),
            "open_s": round(open_s, 2),
            "pings_answered": sum(r["pings_answered"] for r in results),
        },
        "error": None
        if opened == p.idle_conns and open_end == opened
        else f"{opened}/{p.idle_conns} opened, {open_end} still open at the end; {errs[:2]}",
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
            raise ValueError(
                f"{max(shares)} connections per worker exceed the fd limit {nofile}; "
                f"lower --idle-conns or raise --workers"
            )
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for wid, n in enumerate(shares):
        a, b = ctx.Pipe()
        pr = ctx.Process(
            target=_worker_entry,
            args=(b, wid, scenario, host, port, dataclasses.asdict(params), n),
            daemon=True,
            name=f"bench-{scenario}-{wid}",
        )
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
        res = {
            "metric": None,
            "value": float("nan"),
            "latency": {"count": 0},
            "cpu": {},
            "details": {},
            "error": f"{type(e).__name__}: {e}",
        }
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
    res.update(scenario=scenario, settings=params.describe(scenario), wall_s=round(time.monotonic() - t0, 2), workers=W)
    return res
