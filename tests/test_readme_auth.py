"""The README's embedding example runs as written (on a free port), and its token recipe verifies."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _block_after(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(marker)
    match = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
    assert match, f"no python block after {marker!r}"
    return match.group(1)


def test_the_embedding_example_runs() -> None:
    code = _block_after("**Embedding.**").replace("port=8765", "port=0")
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"published at \w+ 1\n", result.stdout), result.stdout


def test_the_minting_recipe_gives_a_token_the_server_accepts() -> None:
    from wsnursery.tokens import KeySet, secret_key

    namespace: dict[str, object] = {}
    exec(_block_after("Minting a token in your backend"), namespace)
    identity = KeySet([secret_key("the-same-secret-of-at-least-32-bytes!!")]).verify(str(namespace["token"]))
    assert identity.sub == "alice" and identity.grants.may_publish("chat.room1")
