"""Shrink a failing reliability run to the smallest case that still fails, and replay files.

When a run loses, duplicates, reorders or corrupts (or leaves publishes unconfirmed), the
harness re-runs smaller versions of it: the same seed, failure rate and fault kinds (the
same schedule family: each client's proxy draws from ``seed:client``, so the first frames
of a smaller run meet the same faults), with

1. fewer messages: the first ``n`` of the same stream (message ``i`` depends only on the
   seed and ``i``), the smallest ``n`` found by doubling up from one message per
   publisher, then bisecting;
2. then one subscriber, one channel, one publisher, each kept only if the run still fails;
3. then fewer fault kinds, one dropped at a time;
4. then the message count again, for the smaller shape.

A candidate counts as failing when it fails the same way (one of the original's failure
kinds) twice in a row: faults are seeded but timing is not, and a case that failed once by
a fluke would make a replay file that passes. Runs are bounded by ``max_runs`` (24).

Why not hypothesis's shrinker: each case is a whole networked run (seconds, and timing
makes it flaky); hypothesis would spend hundreds of runs and its health checks assume a
deterministic test. The dimensions above are the ones a person needs small, in a handful
of runs.

The smallest failing case is written as a replay file (JSON): ``python -m harness
reliability --replay FILE`` runs exactly that case.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from harness import reliability
from harness.reliability import Options, Result

REPLAY_FORMAT = "wsnursery-reliability-replay/1"
MAX_REPLAY_BYTES = 1024 * 1024
_CASE_TYPES: dict[str, Any] = {
    "failure_rate": (int, float),
    "clients": int,
    "publishers": int,
    "channels": int,
    "messages": int,
    "duration": (int, float, type(None)),
    "soak": bool,
    "max_payload": int,
    "encoding": str,
    "seed": int,
    "faults": list,
    "publish_window": (int, type(None)),
}

Runner = Callable[[Options], Awaitable[Result]]


class ReplayError(ValueError):
    """A replay file that cannot be read or does not describe a run (one line says why)."""


@attrs.define
class Shrunk:
    options: Options  # the smallest failing case found
    result: Result  # its failing run
    runs: int  # re-runs spent
    steps: list[str]  # what each re-run tried, and whether it still failed
    max_runs: int = 24


async def shrink(options: Options, failed: Result, *, max_runs: int = 24, runner: Runner | None = None) -> Shrunk:
    """The smallest case found within ``max_runs`` re-runs that fails like ``failed``."""
    target = failed.failure_kinds
    run = runner or _quiet_run
    messages = options.messages
    if options.soak:  # a soak becomes a run of the messages it attempted
        messages = max(failed.verdict.published + failed.verdict.unconfirmed, options.publishers)
    start = attrs.evolve(options, quiet=True, soak=False, duration=None, messages=messages)
    state = Shrunk(start, failed, 0, [], max_runs)

    async def fails(candidate: Options) -> bool:
        """Whether ``candidate`` fails like the original twice in a row (a fluke is not kept)."""
        if state.runs >= state.max_runs or candidate == state.options:
            return False
        result = None
        for attempt in (1, 2):
            if state.runs >= state.max_runs:
                state.steps.append(f"{describe(candidate)}: failed once, no runs left to confirm it")
                return False
            state.runs += 1
            result = await run(candidate)
            if not result.failure_kinds & target:
                verdict = "passes" if attempt == 1 else "failed once, then passed: flaky, not kept"
                state.steps.append(f"{describe(candidate)}: {verdict}")
                return False
        state.steps.append(f"{describe(candidate)}: fails (twice)")
        assert result is not None
        state.options, state.result = candidate, result
        return True

    if target:
        await _fewer_messages(state, fails)
        for field in ("clients", "channels", "publishers"):
            if getattr(state.options, field) > 1:
                changes: dict[str, Any] = {field: 1}
                await fails(attrs.evolve(state.options, **changes))
        for kind in list(state.options.faults):
            if len(state.options.faults) > 1:
                await fails(attrs.evolve(state.options, faults=tuple(k for k in state.options.faults if k != kind)))
        await _fewer_messages(state, fails)
    return state


async def _fewer_messages(state: Shrunk, fails: Callable[[Options], Awaitable[bool]]) -> None:
    """The smallest failing message count: double up from the floor, then bisect.

    Failures of a broken client show within a few messages, so searching up from the
    smallest run is cheaper than halving down from a long one (and small runs are quick).
    """
    high = state.options.messages
    low = state.options.publishers - 1  # known to pass (a floor below any real run)
    probe = state.options.publishers
    while probe < high and state.runs < state.max_runs:
        if await fails(attrs.evolve(state.options, messages=probe)):
            high = probe
            break
        low, probe = probe, probe * 2
    while high - low > 1 and state.runs < state.max_runs:
        middle = (low + high) // 2
        if await fails(attrs.evolve(state.options, messages=middle)):
            high = middle
        else:
            low = middle


async def _quiet_run(options: Options) -> Result:
    return await reliability.run(attrs.evolve(options, quiet=True), "shrink")


def describe(options: Options) -> str:
    def count(n: int, noun: str) -> str:
        return f"{n} {noun}" if n == 1 else f"{n} {noun}s"

    return (
        f"{count(options.messages, 'message')}, {count(options.clients, 'subscriber')}, "
        f"{count(options.publishers, 'publisher')}, {count(options.channels, 'channel')}, "
        f"faults {','.join(options.faults)}"
    )


def write_replay(path: str, shrunk: Shrunk, original: Options) -> None:
    """Write the replay file of ``shrunk`` (the smallest failing case)."""
    verdict = shrunk.result.verdict
    payload = {
        "format": REPLAY_FORMAT,
        "case": shrunk.options.case(),
        "failure": sorted(shrunk.result.failure_kinds),
        "examples": verdict.examples,
        "shrunk_from": original.case(),
        "shrink_runs": shrunk.runs,
        "steps": shrunk.steps,
    }
    with open(path, "w", encoding="utf-8") as file:
        json.dump(payload, file, indent=2)
        file.write("\n")


def read_replay(path: str) -> Options:
    """The run a replay file describes; `ReplayError` (one line) when it cannot."""
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_REPLAY_BYTES + 1)
    except OSError as exc:
        raise ReplayError(f"cannot read replay file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_REPLAY_BYTES:
        raise ReplayError(f"replay file {path} is larger than {MAX_REPLAY_BYTES} bytes")
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ReplayError(f"replay file {path} is not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != REPLAY_FORMAT:
        raise ReplayError(f'{path} is not a replay file (no "format": "{REPLAY_FORMAT}")')
    case = document.get("case")
    if not isinstance(case, dict) or set(case) != set(_CASE_TYPES):
        raise ReplayError(f'replay file {path}: "case" must have exactly {", ".join(sorted(_CASE_TYPES))}')
    for key, kind in _CASE_TYPES.items():
        if not isinstance(case[key], kind) or (kind is int and isinstance(case[key], bool)):
            raise ReplayError(f"replay file {path}: {key} has the wrong type ({case[key]!r})")
    options = Options(**{**case, "faults": tuple(str(kind) for kind in case["faults"])})
    try:
        options.check()
    except ValueError as exc:
        raise ReplayError(f"replay file {path}: {exc}") from None
    return options
