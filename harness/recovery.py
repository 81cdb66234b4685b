"""Recovery figures of a reliability run, sans-I/O: where the latency tail comes from.

Inputs, all on one monotonic clock (seconds), kept per client (each client of a run has
its own fault proxy, so "the connection" of a fault is that client's link):

- the proxy's fault events (time, connection index, direction, kind) and connection
  accept times;
- the client's progress times: deliveries to the application for a subscriber (with each
  message's publish time and publisher), confirmations for a publisher.

Figures:

- **recovery** per fault kind: time from the fault to the client's next delivery (or
  confirmation), p50/p99/max; faults with no later progress are counted, not timed;
- **reconnects** by cause: what ended the connection before each new one (``reset``,
  ``stall``, or ``other``: a close the proxy did not cause, e.g. a request or heartbeat
  timeout on a link that was only slow);
- **replay sizes**: per subscriber reconnect, the messages delivered on the new connection
  that were published before it opened (what the server had to send again);
- **tail**: the deliveries at or above the run's p99 latency, each split at its publish's
  confirmation into a publisher part (publish to confirmed) and a subscriber part
  (confirmed to delivered); the larger part names the side, and the first fault on that
  side's link within that part names the kind (``publisher stall``, ``subscriber reset``,
  ...; ``publisher no fault`` when that link saw none, e.g. a subscriber waiting in order
  behind a replay), and ``reconnects_on_the_way`` counts the new connections that side's
  client opened within that part (median over the tail): a tail of several reconnects is
  a replay cut short by the next fault, again and again. A publisher's trace maps each
  message index to its confirmation time (``confirmed``).
"""

from __future__ import annotations

import bisect
import collections
import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs


@attrs.frozen
class Event:
    at: float
    connection: int
    kind: str


@attrs.define
class ClientTrace:
    """What one client went through: faults and connections from its proxy, its progress."""

    name: str
    subscriber: bool
    events: list[Event] = attrs.field(factory=list)
    opened: list[float] = attrs.field(factory=list)
    progress: list[float] = attrs.field(factory=list)  # delivery or confirmation times, ascending
    published_at: list[float] = attrs.field(factory=list)  # subscribers: per delivery
    publisher: list[int] = attrs.field(factory=list)  # subscribers: per delivery
    number: list[int] = attrs.field(factory=list)  # subscribers: per delivery, the message's index
    confirmed: dict[int, float] = attrs.field(factory=dict)  # publishers: message index -> confirmed at


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of ``values`` (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(pct / 100 * len(ordered)) - 1))
    return ordered[rank]


def _summary_ms(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50) * 1000, 1),
        "p99": round(percentile(values, 99) * 1000, 1),
        "max": round(max(values, default=0.0) * 1000, 1),
    }


def recovery_by_kind(traces: Sequence[ClientTrace]) -> dict[str, dict[str, Any]]:
    """Per fault kind: count, time to the client's next progress (ms), and the unhealed."""
    waits: dict[str, list[float]] = collections.defaultdict(list)
    unhealed: collections.Counter[str] = collections.Counter()
    for trace in traces:
        for event in trace.events:
            after = bisect.bisect_right(trace.progress, event.at)
            if after < len(trace.progress):
                waits[event.kind].append(trace.progress[after] - event.at)
            else:
                unhealed[event.kind] += 1
    kinds = sorted(set(waits) | set(unhealed))
    return {
        kind: {
            "faults": len(waits[kind]) + unhealed[kind],
            **_summary_ms(waits[kind]),
            "no_later_progress": unhealed[kind],
        }
        for kind in kinds
    }


def reconnect_causes(traces: Sequence[ClientTrace]) -> dict[str, int]:
    """What ended the connection before each reconnect: reset, stall or other."""
    causes: collections.Counter[str] = collections.Counter()
    for trace in traces:
        ending = {e.connection: e.kind for e in trace.events if e.kind in ("reset", "stall")}
        for connection in range(1, len(trace.opened)):
            causes[ending.get(connection - 1, "other")] += 1
    return dict(sorted(causes.items()))


def replay_sizes(traces: Sequence[ClientTrace]) -> list[int]:
    """Per subscriber reconnect: deliveries on the new link published before it opened."""
    sizes = []
    for trace in traces:
        if not trace.subscriber:
            continue
        for k in range(1, len(trace.opened)):
            start = trace.opened[k]
            end = trace.opened[k + 1] if k + 1 < len(trace.opened) else float("inf")
            first = bisect.bisect_left(trace.progress, start)
            last = bisect.bisect_left(trace.progress, end)
            sizes.append(sum(1 for i in range(first, last) if trace.published_at[i] < start))
    return sizes


def tail_causes(traces: Sequence[ClientTrace], publishers: Mapping[int, ClientTrace]) -> dict[str, Any]:
    """The deliveries at or above p99 latency: which side held them, and the first fault there."""
    subscribers = [trace for trace in traces if trace.subscriber]
    latencies = [done - sent for trace in subscribers for done, sent in zip(trace.progress, trace.published_at)]
    if not latencies:
        return {
            "threshold_ms": 0.0,
            "deliveries": 0,
            "publisher_part_ms": 0.0,
            "subscriber_part_ms": 0.0,
            "reconnects_on_the_way": 0,
            "causes": {},
        }
    threshold = percentile(latencies, 99)
    times = {id(t): [e.at for e in t.events] for t in [*traces, *publishers.values()]}
    causes: collections.Counter[str] = collections.Counter()
    parts: tuple[list[float], list[float]] = ([], [])
    redials: list[int] = []
    for trace in subscribers:
        for i, (done, sent) in enumerate(zip(trace.progress, trace.published_at)):
            if done - sent < threshold:
                continue
            publisher = publishers.get(trace.publisher[i]) if i < len(trace.publisher) else None
            number = trace.number[i] if i < len(trace.number) else -1
            confirmed = publisher.confirmed.get(number, sent) if publisher else sent
            confirmed = min(max(confirmed, sent), done)
            parts[0].append(confirmed - sent)
            parts[1].append(done - confirmed)
            if publisher is not None and confirmed - sent > done - confirmed:
                side, link, start, end = "publisher", publisher, sent, confirmed
            else:
                side, link, start, end = "subscriber", trace, confirmed, done
            first = _between(link, times, start, end)
            causes[f"{side} {first[0].kind if first else 'no fault'}"] += 1
            redials.append(bisect.bisect_right(link.opened, end) - bisect.bisect_left(link.opened, start))
    return {
        "threshold_ms": round(threshold * 1000, 1),
        "deliveries": len(parts[0]),
        "publisher_part_ms": round(percentile(parts[0], 50) * 1000, 1),  # medians over the tail
        "subscriber_part_ms": round(percentile(parts[1], 50) * 1000, 1),
        "reconnects_on_the_way": percentile(redials, 50),
        "causes": dict(causes.most_common()),
    }


def _between(trace: ClientTrace, times: Mapping[int, list[float]], start: float, end: float) -> Sequence[Event]:
    """The trace's events in [start, end] (the proxy appends them in time order)."""
    at = times[id(trace)]
    return trace.events[bisect.bisect_left(at, start) : bisect.bisect_right(at, end)]


def summarise(traces: Sequence[ClientTrace], publishers: Mapping[int, ClientTrace]) -> dict[str, Any]:
    """Every recovery figure of a run, ready for the report."""
    sizes = replay_sizes(traces)
    return {
        "recovery_ms": recovery_by_kind(traces),
        "reconnects_by_cause": reconnect_causes(traces),
        "replay_sizes": {
            "reconnects": len(sizes),
            "p50": percentile(sizes, 50),
            "p99": percentile(sizes, 99),
            "max": max(sizes, default=0),
            "total": sum(sizes),
        },
        "tail": tail_causes(traces, publishers),
    }
