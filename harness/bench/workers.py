"""The worker processes of the load client: one async function per scenario.

A worker is started by `harness.bench.coordinator.run_scenario` with the `spawn` context, talks
to the coordinator over a `Chan` (small pickled tuples), opens its share of the connections,
reports ``ready``, does its part of the scenario and reports its ``result``.
"""

from __future__ import annotations

import array
import asyncio
import collections
import json
import os
import selectors
import time

from hdrh.histogram import HdrHistogram

from harness.bench.params import (
    CHANNEL,
    DATA_RE,
    FANOUT_SCENARIOS,
    HIST_ARGS,
    SEQ_RE,
    Params,
    mono,
)
from harness.rawws import connect
from harness.servers import raise_nofile_limit


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
    __slots__ = ("acked", "count", "expect", "seq", "subscribed", "ws")

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
            fail(
                f"a subscriber's connection ended during the run "
                f"({'close code ' + str(code) if code is not None else 'no close frame'})"
            )

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
    st = {"open_at_end": sum(1 for ws in conns if not ws.lost.done()), "pings_answered": sum(ws.pings for ws in conns)}
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
