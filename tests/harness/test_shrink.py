"""A failing run shrinks to a small replay file, and --replay runs exactly that case."""

from __future__ import annotations

import json

import attrs
import pytest

from harness import cli, shrink
from harness.check import Verdict
from harness.reliability import Options, Result


def test_a_client_without_dedup_shrinks_to_a_handful_of_messages_and_replays(broken_dedup, tmp_path, capsys):
    replay = tmp_path / "case.json"
    status = cli.main(
        [
            "reliability",
            "--failure-rate",
            "0.5",
            "--faults",
            "duplicate,slice",
            "--messages",
            "40",
            "--clients",
            "2",
            "--publishers",
            "2",
            "--channels",
            "2",
            "--seed",
            "3",
            "--quiet",
            "--no-baseline",
            "--replay-file",
            str(replay),
        ]
    )
    assert status == 1
    err = capsys.readouterr().err
    assert f"--replay {replay}" in err
    document = json.loads(replay.read_text())
    case = document["case"]
    assert "duplicated" in document["failure"]
    assert case["messages"] <= 5, document["steps"]
    assert case["clients"] <= 2 and case["channels"] <= 2 and case["publishers"] <= 2
    assert set(case["faults"]) <= {"duplicate", "slice"} and case["seed"] == 3
    assert document["shrunk_from"]["messages"] == 40 and document["shrink_runs"] <= 24

    output = tmp_path / "replayed.json"
    assert cli.main(["reliability", "--replay", str(replay), "--quiet", "--output", str(output)]) == 1
    (replayed,) = json.loads(output.read_text())["runs"]
    assert replayed["duplicated"] > 0 and replayed["case"] == case
    assert "replay" not in capsys.readouterr().err.split("FAILED", 1)[0]  # a replay does not shrink again


async def test_shrinking_bisects_the_count_then_the_shape_within_its_budget():
    """With a stand-in runner: a case fails when it has at least 7 messages and a 'drop' fault
    (and, once, by a fluke, with 5 messages: the second run of it passes, so it is not kept)."""
    tried = []

    async def runner(options: Options) -> Result:
        tried.append(options)
        fluke = options.messages == 5 and sum(o.messages == 5 for o in tried) == 1
        failing = (options.messages >= 7 or fluke) and "drop" in options.faults
        return Result(
            "shrink", options.failure_rate, options.seed, Verdict(lost=int(failing)), 1.0, {}, 1, options=options
        )

    start = Options(messages=1000, clients=4, publishers=2, channels=3, faults=("reset", "drop", "stall"))
    failed = await runner(start)
    shrunk = await shrink.shrink(start, failed, max_runs=40, runner=runner)
    assert (
        shrunk.options.messages,
        shrunk.options.clients,
        shrunk.options.channels,
        shrunk.options.publishers,
        shrunk.options.faults,
    ) == (7, 1, 1, 1, ("drop",))
    assert shrunk.runs == len(tried) - 1 <= 40
    assert any("flaky, not kept" in step for step in shrunk.steps)
    assert any(step.endswith("fails (twice)") for step in shrunk.steps)

    tried.clear()
    few = await shrink.shrink(start, failed, max_runs=3, runner=runner)
    assert few.runs == 3 and len(tried) == 3 and few.options.messages >= 7


def test_a_passing_result_is_not_shrunk():
    ok = Result("x", 0.1, 1, Verdict(), 1.0, {}, 1)
    assert not ok.failure_kinds


@pytest.mark.parametrize(
    "content, why",
    [
        (None, "cannot read replay file"),
        ("not json", "is not JSON"),
        ('{"format": "other"}', "is not a replay file"),
        ('{"format": "wsnursery-reliability-replay/1", "case": {"seed": 1}}', "must have exactly"),
    ],
)
def test_a_bad_replay_file_is_one_line_and_status_2(tmp_path, capsys, content, why):
    path = tmp_path / "case.json"
    if content is not None:
        path.write_text(content)
    assert cli.main(["reliability", "--replay", str(path)]) == 2
    err = capsys.readouterr().err
    assert why in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_replay_file_with_an_impossible_case_is_refused(tmp_path, capsys):
    case = Options(messages=10).case() | {"messages": -3}
    path = tmp_path / "case.json"
    path.write_text(json.dumps({"format": shrink.REPLAY_FORMAT, "case": case}))
    assert cli.main(["reliability", "--replay", str(path)]) == 2
    err = capsys.readouterr().err
    assert "messages must be between" in err and err.count("\n") == 1
    assert attrs.fields(Options)  # Options stays an attrs class: replay files rely on its fields
