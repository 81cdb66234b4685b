"""Every bad or impossible reliability option: one line on stderr, exit status 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness import cli

BAD = [
    (["--messages", "-5"], "must be greater than 0"),
    (["--messages", "0"], "must be greater than 0"),
    (["--clients", "-1"], "must be greater than 0"),
    (["--failure-rate", "1.5"], "must be between 0 and 1"),
    (["--failure-rate", "-0.1"], "must be between 0 and 1"),
    (["--failure-rate", "nan"], "must be between 0 and 1"),
    (["--duration", "inf"], "must be greater than 0"),
    (["--faults", "reset,bogus"], "faults must be"),
    (["--max-payload", "10"], "max payload must be between"),
    (["--max-payload", "99999999"], "max payload must be between"),
    (["--publishers", "5", "--messages", "3"], "cannot share"),
    (["--messages", "20000000"], "messages must be between"),
    (["--clients", "300"], "at most"),
    (["--publish-window", "0"], "must be greater than 0"),
    (["--publish-window", "1000"], "publish window must be between"),
    (["--scenario", "high", "--failure-rate", "0.1"], "not both"),
    (["--url", "ws://example.com:80/"], "--url must point at"),
    (["--replay", "/nonexistent/case.json"], "cannot read replay file"),
    (["--replay", "x.json", "--messages", "10"], "drop --messages"),
]


@pytest.mark.parametrize("argv, why", BAD)
def test_bad_option_is_one_line_and_status_2(argv, why, capsys):
    try:
        status = cli.main(["reliability", *argv])
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2
    assert why in err and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_a_stream_that_cannot_be_planned_exits_2_from_the_command_line():
    result = subprocess.run(
        [sys.executable, "-m", "harness", "reliability", "--max-payload", "8", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert (
        result.stderr.startswith("harness reliability: max payload must be between") and result.stderr.count("\n") == 1
    )
    assert result.stdout == ""
