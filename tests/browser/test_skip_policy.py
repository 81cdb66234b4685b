"""Without chromium the browser tests skip with the reason; WSNURSERY_REQUIRE_BROWSER=1 fails them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_one_browser_test(**env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "WSNURSERY_REQUIRE_BROWSER"}
    environment |= {"PYTHONPATH": str(REPO), "WSNURSERY_CHROMIUM": "/nonexistent/chromium", **env}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "tests/browser/test_console.py::test_client_js_and_the_page_are_served_with_types_and_revalidation",
        ],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_no_chromium_skips_with_the_reason():
    result = run_one_browser_test()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SKIPPED [1]" in result.stdout and "no chromium found" in result.stdout


def test_no_chromium_fails_when_a_real_browser_is_required():
    result = run_one_browser_test(WSNURSERY_REQUIRE_BROWSER="1")
    assert result.returncode != 0, result.stdout + result.stderr
    assert "WSNURSERY_REQUIRE_BROWSER=1" in result.stdout and "ERROR" in result.stdout
