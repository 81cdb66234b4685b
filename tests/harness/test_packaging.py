"""The harness works as an installed package: from any folder, without the repository on the path.

``python -m harness`` once failed outside the repository root because ``harness`` imported
``benches.lib`` (not part of the installed package), and the failure only showed after a real
``pip install``. These tests lay out the packages exactly as the wheel has them (the
``[tool.setuptools.packages.find]`` patterns of pyproject.toml) in a temporary folder, put only
that folder on ``PYTHONPATH`` and run the harness from another, empty folder. The slow variant
builds and installs the real wheel.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: what ``python -m harness --help`` must not import: each command's module and its heavy dependencies
HEAVY = (
    "harness.load",
    "harness.connect",
    "harness.stress",
    "harness.reliability",
    "harness.bench",
    "harness.proxy",
    "trio",
    "hypothesis",
    "psutil",
    "hdrh",
    "wsnursery",
)


def installed_packages() -> list[str]:
    """The import packages the wheel ships, found the way setuptools' ``packages.find`` does."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    found = []
    for top in sorted(path for path in REPO.iterdir() if (path / "__init__.py").is_file()):
        for init in sorted(top.rglob("__init__.py")):
            package = ".".join(init.parent.relative_to(REPO).parts)
            if any(fnmatch.fnmatchcase(package, pattern) for pattern in include):
                found.append(package)
    return found


def can_build_a_wheel_offline() -> bool:
    """pyproject.toml asks for setuptools >= 68; bdist_wheel is part of setuptools from 70.1 on, and
    needs the wheel package before that (a fresh Python 3.11 venv has setuptools 65 and no wheel)."""
    try:
        major, minor = (int(part) for part in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (70, 1) or ((major, minor) >= (68, 0) and importlib.util.find_spec("wheel") is not None)


def run(argv: list[str], cwd: Path, site: Path, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """``python argv`` with only ``site`` (and the interpreter's own site-packages) to import from."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    return subprocess.run(
        [sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def check_installed(site: Path, empty: Path, tmp_path: Path) -> None:
    where = run(
        [
            "-c",
            (
                "import harness, wsnursery, importlib.util as u; "
                "print(harness.__file__); print(wsnursery.__file__); print(u.find_spec('benches'))"
            ),
        ],
        empty,
        site,
    )
    assert where.returncode == 0, where.stderr
    harness_file, wsnursery_file, benches = where.stdout.split()
    # the test means something only if the repository is not what is imported
    site = site.resolve()
    assert Path(harness_file).resolve().is_relative_to(site), where.stdout
    assert Path(wsnursery_file).resolve().is_relative_to(site), where.stdout
    assert benches == "None", "benches/ must not be importable here"

    helped = run(["-m", "harness", "--help"], empty, site)
    assert helped.returncode == 0, helped.stderr
    for command in ("reliability", "load", "connect", "stress"):
        assert command in helped.stdout
    for command in ("reliability", "load", "connect", "stress"):
        sub = run(["-m", "harness", command, "--help"], empty, site)
        assert sub.returncode == 0 and "--seed" in sub.stdout, (command, sub.stderr)

    out = tmp_path / "load.json"
    loaded = run(
        ["-m", "harness", "load", "--clients", "2", "--messages", "10", "--quiet", "--output", str(out)], empty, site
    )
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    result = json.loads(out.read_text())["result"]
    assert result["messages_received"] == 20 and result["error_rate"] == 0
    assert list(empty.iterdir()) == []  # nothing written where it was run from


def test_the_wheel_layout_holds_every_harness_module() -> None:
    packages = installed_packages()
    assert "harness" in packages and "harness.bench" in packages and "wsnursery" in packages
    assert not any(p.startswith(("benches", "tests")) for p in packages)


def test_harness_runs_from_an_empty_folder_with_only_the_installed_packages(tmp_path: Path) -> None:
    site, empty = tmp_path / "site", tmp_path / "empty"
    empty.mkdir()
    for package in installed_packages():
        if "." not in package:
            shutil.copytree(REPO / package, site / package, ignore=shutil.ignore_patterns("__pycache__"))
    check_installed(site, empty, tmp_path)


def test_harness_runs_from_the_built_wheel(tmp_path: Path) -> None:
    """Builds the real wheel (no network: setuptools from this environment) and installs it, without
    dependencies, into a folder of its own."""
    if not can_build_a_wheel_offline():
        pytest.skip("building the wheel offline needs setuptools >= 70.1 (or >= 68 with wheel) here")
    src, dist, site, empty = (tmp_path / name for name in ("src", "dist", "site", "empty"))
    empty.mkdir()
    # a copy, so that the build leaves nothing (build/, *.egg-info) in the repository
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "build", "*.egg-info", "results", ".ruff_cache", ".mypy_cache"
        ),
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(src)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    wheels = list(dist.glob("wsnursery-*.whl"))
    assert len(wheels) == 1, built.stdout
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheels[0])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    check_installed(site, empty, tmp_path)


def test_help_imports_no_command_module() -> None:
    probe = (
        "import sys\nfrom harness import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        f"print(sorted(m for m in sys.modules if m.startswith({HEAVY!r})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


def test_a_command_imports_only_its_own_module() -> None:
    probe = (
        "import sys\nfrom harness import cli\n"
        "try:\n    cli.main(['stress', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "print(sorted(m for m in sys.modules if m.startswith('harness.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.strip().splitlines()[-1]
    assert "harness.stress" in loaded and "harness.reliability" not in loaded and "harness.connect" not in loaded


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_harness_never_imports_benches_and_benches_edit_no_sys_path() -> None:
    for path in sorted((REPO / "harness").rglob("*.py")):
        bad = {name for name in _imports(path) if name.split(".")[0] in ("benches", "lib", "tests")}
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"
    for path in sorted((REPO / "benches").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                pytest.fail(f"{path.relative_to(REPO)}:{node.lineno} uses sys.path")
        # a bench script imports the harness and the standard library, never another bench file
        # (the peers, run by path as separate processes, share peer_protocol.py beside them)
        local = {p.stem for p in (REPO / "benches").rglob("*.py")} - {"peer_protocol"}
        bad = {name for name in _imports(path) if name.split(".")[0] in local | {"benches", "lib"}}
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


# reliability: HdrHistogram holds its latencies (its stream no longer comes from hypothesis)
@pytest.mark.parametrize(("command", "missing"), [("load", "psutil"), ("reliability", "hdrh.histogram")])
def test_a_server_only_install_says_how_to_install_the_harness(command: str, missing: str) -> None:
    """``pip install wsnursery`` has no harness extra: a command says what to install, in one line, exit 2."""
    probe = (
        f"import sys\nsys.modules[{missing!r}] = None  # as if not installed\n"
        f"from harness import cli\nsys.exit(cli.main([{command!r}, '--quiet']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"harness: no module named {missing!r}: install the harness with pip install 'wsnursery[harness]'"
    )
