"""RFC 6455 and RFC 7692 conformance: the whole Autobahn TestSuite case set against ``/echo``.

The cases are run by kosoku (a native runner of the Autobahn case files; the original suite is
Python 2 only) as a separate process against a server in this test's nursery. Every case must end
OK, NON-STRICT or INFORMATIONAL; a FAILED or UNIMPLEMENTED case fails the test and is named. The
report (JSON and HTML per case) is kept in a temporary folder, printed at the end, so CI keeps it
as an artifact; ``WSNURSERY_AUTOBAHN_REPORTS=DIR`` puts it in DIR instead.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import sys
import tempfile

import pytest
import trio

pytest.importorskip("kosoku")

ACCEPTED = {"OK", "NON-STRICT", "INFORMATIONAL"}
# The 9.x cases send messages up to 16 MiB, and the 12/13 ones compress them.
MAX_MESSAGE_SIZE = 64 * 2**20
# 9.3.x and 9.4.x send 4 MiB messages in 64-byte fragments: 65,536 frames.
MAX_FRAGMENTS = 65536
RUN_TIMEOUT = 600  # seconds for the whole case set; it takes well under a minute here


def _report_dir() -> pathlib.Path:
    chosen = os.environ.get("WSNURSERY_AUTOBAHN_REPORTS")
    if chosen:
        path = pathlib.Path(chosen)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return pathlib.Path(tempfile.mkdtemp(prefix="wsnursery-autobahn-"))


@pytest.mark.autobahn
@pytest.mark.slow
# Threshold 0 compresses every echo (a compressed empty message too); 256 (the default) sends
# the small ones plain, so one connection mixes compressed and plain messages.
@pytest.mark.parametrize("threshold", [0, 256])
async def test_every_autobahn_case_passes(start_server, threshold: int) -> None:
    running = await start_server(
        max_message_size=MAX_MESSAGE_SIZE, max_fragments=MAX_FRAGMENTS, heartbeat_interval=60.0,
        compression_threshold=threshold,
    )
    reports = _report_dir()
    command = [
        sys.executable, "-c", "from kosoku._cli import main; main()",
        f"ws://127.0.0.1:{running.port}/echo", "-p", "2", "-o", str(reports),
    ]
    with trio.fail_after(RUN_TIMEOUT):
        result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    index = reports / "index.json"
    assert index.exists(), f"kosoku wrote no report (exit {result.returncode}): {result.stderr.decode()[-2000:]}"
    cases = {case: outcome["behavior"] for agent in json.loads(index.read_text()).values() for case, outcome in agent.items()}
    counts = collections.Counter(cases.values())
    print(f"Autobahn: {len(cases)} cases {dict(counts)}; report in {reports}")
    bad = sorted((case, behavior) for case, behavior in cases.items() if behavior not in ACCEPTED)
    assert not bad, f"{len(bad)} Autobahn cases not passed (report in {reports}): {bad[:40]}"
    assert len(cases) == 517, f"expected the whole case set, ran {len(cases)}"
