"""``--workers N``: processes on one port, restarted when they die, drained on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
import trio

from wsnursery.config import ConfigError, load

from .helpers import http_get, wait_until
from .redis_support import redis_test_url_fixture  # noqa: F401 (fixtures)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LISTENING = re.compile(rb"listening on ws://127\.0\.0\.1:(\d+)/")
STARTED = re.compile(rb"worker (\d+) started \(pid (\d+)\)")


def test_memory_engine_with_workers_exits_2_in_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "wsnursery", "serve", "--workers", "2"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "shared engine" in result.stderr and "--engine redis://" in result.stderr


@pytest.mark.parametrize(
    "engine, words",
    [
        ("mysql://x/0", ["engine", "memory or a redis://"]),
        ("redis://127.0.0.1:port/0", ["engine", "port"]),
        ("redis://127.0.0.1:6379/zero", ["engine", "database"]),
        ("redis:///0", ["engine", "host"]),
    ],
)
def test_bad_engine_names_the_setting(engine, words):
    with pytest.raises(ConfigError) as caught:
        load(flags={"engine": engine}, environ={})
    assert "\n" not in str(caught.value)
    for word in words:
        assert word in str(caught.value)


def test_engine_and_workers_settings():
    config = load(flags={"engine": "redis://127.0.0.1:6379/3", "workers": "3"}, environ={})
    assert (config.engine, config.workers) == ("redis://127.0.0.1:6379/3", 3)
    assert load(flags={}, environ={}).engine == "memory"


async def test_workers_share_the_port_restart_and_drain(nursery, redis_test_url):
    engine = redis_test_url
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "wsnursery",
            "serve",
            "--port",
            "0",
            "--workers",
            "2",
            "--engine",
            engine,
            "--shutdown-timeout",
            "2",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    stderr = bytearray()

    async def pump() -> None:
        while chunk := await process.stderr.receive_some(65536):
            stderr.extend(chunk)

    nursery.start_soon(pump)
    try:
        await wait_until(
            lambda: len(LISTENING.findall(stderr)) >= 2 or process.poll() is not None,
            timeout=30,
            what="two workers to listen",
        )
        ports = set(LISTENING.findall(stderr))
        assert len(ports) == 1, stderr.decode(errors="replace")  # one port for both
        port = int(ports.pop())
        pids = {int(pid) for _, pid in STARTED.findall(stderr)}
        assert len(pids) == 2

        assert (await http_get(port, "/healthz")).status == 200

        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: len(LISTENING.findall(stderr)) >= 3, timeout=30, what="the restarted worker")
        assert re.search(rb"worker \d+ \(pid %d\) died with status -9; restarting" % victim, stderr)
        assert (await http_get(port, "/healthz")).status == 200

        process.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            code = await process.wait()
        assert code == 0, stderr.decode(errors="replace")
        assert b"every worker stopped" in stderr
        assert b"Traceback" not in stderr
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


def test_a_taken_port_is_one_line_and_status_1():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "wsnursery",
                "serve",
                "--port",
                str(port),
                "--workers",
                "2",
                "--engine",
                "redis://127.0.0.1:6379/15",
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"wsnursery: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in result.stderr


def _die_at_once(config, index, parent):
    os._exit(3)


def test_a_worker_that_keeps_dying_makes_the_supervisor_give_up(monkeypatch, capsys):
    from wsnursery import workers
    from wsnursery.config import Config

    monkeypatch.setattr(workers, "_worker", _die_at_once)
    config = Config(host="127.0.0.1", port=0, workers=2, engine="redis://127.0.0.1:6379/15")
    supervisor = workers.Supervisor(config)
    assert supervisor.run() == 1
    err = capsys.readouterr().err
    assert f"died {workers.MAX_QUICK_DEATHS} times within" in err and "(last status 3); giving up" in err
    assert all(slot.process is None for slot in supervisor.slots)


def test_redis_engine_without_coredis_is_one_line_and_status_2():
    code = (
        "import sys; sys.modules['coredis'] = None; from wsnursery.cli import main; "
        "sys.exit(main(['serve', '--engine', 'redis://127.0.0.1:6379/15']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "wsnursery: --engine redis:// needs coredis: pip install 'wsnursery[redis]'"
    ]
