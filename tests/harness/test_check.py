"""The reliability verdict catches every kind of failure it claims to, and passes a clean run."""

from harness.check import Ledger
from harness.streams import plan


def stamp(p, n, value="v"):
    return {"p": p, "n": n, "v": value}


def ledger_with(seen, gaps=(), start=0, confirmed=5):
    ledger = Ledger()
    ledger.attempted = confirmed
    for seq in range(1, confirmed + 1):
        ledger.published("c", seq, stamp(0, seq))
    log = ledger.subscriber("s0")
    log.subscribed("c", start)
    for seq, payload in seen:
        log.message("c", seq, payload)
    for first, resumed in gaps:
        log.gap("c", first, resumed)
    return ledger.verdict()


def test_clean_run_is_clean():
    verdict = ledger_with([(seq, stamp(0, seq)) for seq in range(1, 6)])
    assert verdict.clean
    assert (verdict.published, verdict.delivered, verdict.expected) == (5, 5, 5)


def test_lost_duplicated_reordered_corrupted_are_counted():
    seen = [(1, stamp(0, 1)), (3, stamp(0, 3)), (2, stamp(0, 2)), (3, stamp(0, 3)), (4, stamp(0, 4, "x"))]
    verdict = ledger_with(seen)
    assert verdict.lost == 1  # seq 5
    assert verdict.duplicated == 1  # seq 3 twice
    assert verdict.reordered == 1  # seq 2 after 3
    assert verdict.corrupted == 1  # seq 4 payload differs
    assert not verdict.clean
    assert verdict.examples


def test_reported_gaps_are_not_silent_loss_and_start_is_respected():
    verdict = ledger_with([(1, stamp(0, 1)), (4, stamp(0, 4)), (5, stamp(0, 5))], gaps=[(2, 4)])
    assert verdict.lost == 0 and verdict.gaps == 1 and verdict.gap_messages == 2
    late = ledger_with([(4, stamp(0, 4)), (5, stamp(0, 5))], start=3)
    assert late.clean and late.expected == 2


def test_unconfirmed_publishes_fail_the_run():
    ledger = Ledger()
    ledger.attempted = 2
    ledger.published("c", 1, stamp(0, 1))
    assert ledger.verdict().unconfirmed == 1
    assert not ledger.verdict().clean


def test_plans_replay_from_their_seed_and_differ_across_seeds():
    first = plan(7, messages=40, publishers=2, channels=3)
    assert first == plan(7, messages=40, publishers=2, channels=3)
    assert first != plan(8, messages=40, publishers=2, channels=3)
    assert len(first.messages) == 40
    assert {m.channel for m in first.messages} <= set(first.channels)
    kinds = {type(m.value).__name__ for m in first.messages}
    assert len(kinds) >= 3, kinds  # a real mix of shapes, not the simplest example
