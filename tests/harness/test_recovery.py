"""Recovery figures from hand-made traces: each figure is what the docstring says."""

from __future__ import annotations

from harness.recovery import ClientTrace, Event, percentile, summarise


def subscriber(events, opened, deliveries):
    """deliveries: (delivered at, published at, publisher, message index)."""
    trace = ClientTrace("sub0", True, events=events, opened=opened)
    for done, sent, pub, number in deliveries:
        trace.progress.append(done)
        trace.published_at.append(sent)
        trace.publisher.append(pub)
        trace.number.append(number)
    return trace


def test_percentile_is_nearest_rank():
    assert percentile([], 99) == 0.0
    assert percentile([3, 1, 2], 50) == 2
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile(list(range(1, 101)), 100) == 100


def test_recovery_reconnects_replays_and_tail():
    # Connection 0 opens at 0 and is reset at 10; connection 1 opens at 11, stalls at 20;
    # connection 2 opens at 22. A delay at 30 on connection 2 heals at 30.5; a drop at 40 never does.
    events = [Event(10.0, 0, "reset"), Event(20.0, 1, "stall"), Event(30.0, 2, "delay"), Event(40.0, 2, "drop")]
    deliveries = [
        (5.0, 4.9, 0, 0),
        (12.0, 9.0, 0, 0),
        (12.5, 10.5, 0, 0),
        (13.0, 12.9, 0, 0),
        (23.0, 19.0, 0, 1),
        (30.5, 30.4, 0, 0),
    ]
    sub = subscriber(events, [0.0, 11.0, 22.0], deliveries)
    # The publisher's message 1, published at 19, is confirmed at 22 after a stall at 19.5.
    publisher = ClientTrace(
        "pub0",
        False,
        events=[Event(18.5, 0, "drop"), Event(19.5, 0, "stall")],
        opened=[0.0],
        progress=[4.9, 22.0],
        confirmed={0: 4.9, 1: 22.0},
    )
    figures = summarise([sub, publisher], {0: publisher})

    recovery = figures["recovery_ms"]
    assert recovery["reset"] == {"faults": 1, "p50": 2000.0, "p99": 2000.0, "max": 2000.0, "no_later_progress": 0}
    assert (recovery["stall"]["faults"], recovery["stall"]["p50"], recovery["stall"]["p99"]) == (2, 2500.0, 3000.0)
    assert recovery["delay"]["p50"] == 500.0
    assert recovery["drop"]["faults"] == 2  # the subscriber's (unhealed) and the publisher's (healed at 22)
    assert recovery["drop"]["no_later_progress"] == 1 and recovery["drop"]["p50"] == 3500.0

    assert figures["reconnects_by_cause"] == {"reset": 1, "stall": 1}
    # On connection 1 (opened 11): published at 9 and 10.5 came again; 12.9 was new. On 2: 19.0 was.
    assert figures["replay_sizes"] == {"reconnects": 2, "p50": 1, "p99": 2, "max": 2, "total": 3}

    tail = figures["tail"]
    assert tail["threshold_ms"] == 4000.0  # the slowest delivery: published at 19, delivered at 23
    assert tail["deliveries"] == 1
    assert (tail["publisher_part_ms"], tail["subscriber_part_ms"]) == (3000.0, 1000.0)
    assert tail["reconnects_on_the_way"] == 0  # the publisher's link was never redialled
    assert tail["causes"] == {"publisher stall": 1}  # the larger part; the drop at 18.5 came before the publish


def test_a_connection_that_ended_without_a_proxy_fault_is_other():
    sub = subscriber([], [0.0, 5.0], [(1.0, 0.5, 0, 0)])
    figures = summarise([sub], {})
    assert figures["reconnects_by_cause"] == {"other": 1}
    assert figures["tail"]["causes"] == {"subscriber no fault": 1}


def test_a_tail_delivery_counts_the_reconnects_it_waited_through():
    # Published at 1, confirmed at once, delivered at 9 after three redials of the subscriber.
    sub = subscriber(
        [Event(2.0, 0, "reset"), Event(4.0, 1, "reset"), Event(6.0, 2, "stall")],
        [0.0, 3.0, 5.0, 8.0],
        [(0.6, 0.5, 0, 0), (9.0, 1.0, 0, 1)],
    )
    publisher = ClientTrace("pub0", False, opened=[0.0], progress=[0.5, 1.0], confirmed={0: 0.5, 1: 1.0})
    tail = summarise([sub, publisher], {0: publisher})["tail"]
    assert tail["deliveries"] == 1 and tail["reconnects_on_the_way"] == 3
    assert tail["causes"] == {"subscriber reset": 1}
