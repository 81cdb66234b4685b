"""End to end: ``python -m harness load|connect|stress`` at tiny sizes, and their bad flags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def harness(*argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness", *argv], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


def ordered(lat: dict) -> None:
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["p999"] <= lat["max"]


@pytest.mark.parametrize("extra", [[], ["--mode", "echo", "--encoding", "cbor"]])
def test_load_runs_end_to_end(tmp_path: Path, extra: list[str]) -> None:
    out = tmp_path / "load.json"
    done = harness("load", "--clients", "2", "--messages", "20", "--quiet", "--output", str(out), *extra)
    assert done.returncode == 0, done.stderr
    assert "throughput msg/s" in done.stdout and "machine:" in done.stdout
    report = json.loads(out.read_text())
    result = report["result"]
    assert result["throughput_msg_s"] > 0
    assert result["error_rate"] == 0 and result["messages_received"] == 40
    ordered(result["latency_ms"])
    assert result["connect_time_ms"]["p50"] > 0
    assert result["server_peak_rss_mb"] > 0
    assert 0 <= result["client_cpu_percent"] <= 200
    assert report["machine"]["logical_cpus"] >= 1


def test_load_csv_output(tmp_path: Path) -> None:
    out = tmp_path / "load.csv"
    done = harness("load", "--clients", "1", "--messages", "5", "--quiet", "--output", str(out))
    assert done.returncode == 0, done.stderr
    header, row = out.read_text().splitlines()[:2]
    assert "throughput_msg_s" in header and "latency_ms.p99" in header and row


def test_connect_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "connect.json"
    done = harness(
        "connect",
        "--hold",
        "20",
        "--hold-seconds",
        "1.5",
        "--heartbeat-interval",
        "0.5",
        "--churn",
        "5",
        "--quiet",
        "--output",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())["result"]
    assert result["connections_opened"] == 20 and result["held_open_at_end"] == 20
    assert result["establishment_rate_conn_s"] > 0
    assert result["heartbeat_pings_received"] > 0
    assert result["churn"]["reconnected"] == 5 and result["churn"]["success_rate"] == 1.0
    assert result["churn"]["failed"] == 0 and result["churn"]["server_rejections"] == {}
    c = result["connect_time_ms"]
    assert 0 < c["p50"] <= c["p95"] <= c["p99"]
    assert result["broadcast"]["passed"]  # on by default: 10 messages to every held connection


def test_connect_broadcast_reaches_every_held_connection(tmp_path: Path) -> None:
    out = tmp_path / "broadcast.json"
    done = harness(
        "connect",
        "--hold",
        "20",
        "--hold-seconds",
        "0.2",
        "--broadcast",
        "10",
        "--broadcast-timeout",
        "8",
        "--quiet",
        "--output",
        str(out),
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "broadcast: got all 10 in order" in done.stdout
    b = json.loads(out.read_text())["result"]["broadcast"]
    assert b["passed"] and b["subscribed"] == 20 and b["published"] == 10 and b["publish_acks"] == 10
    assert b["connections_got_all_in_order"] == 20 and b["deliveries"] == 200
    assert b["missing_deliveries"] == 0 and b["duplicate_deliveries"] == 0 and b["out_of_order_connections"] == 0
    d = b["delivery_latency_ms"]
    assert 0 < d["p50"] <= d["p99"] <= d["max"]
    assert len(b["fanout_complete_ms"]) == 10 and b["fanout_complete_ms_max"] == pytest.approx(d["max"], abs=0.1)


def test_connect_broadcast_failure_is_loud_with_counts(tmp_path: Path) -> None:
    """A broadcast that cannot finish in its time (10,000 messages in 0.05 s) exits 1 and says how far it got."""
    out = tmp_path / "broadcast.json"
    done = harness(
        "connect",
        "--hold",
        "5",
        "--hold-seconds",
        "0.1",
        "--broadcast",
        "10000",
        "--broadcast-timeout",
        "0.05",
        "--quiet",
        "--output",
        str(out),
        timeout=30,
    )
    assert done.returncode == 1
    assert "FAILED broadcast: 0 of 5 held connections got all 10000 messages in order" in done.stdout
    b = json.loads(out.read_text())["result"]["broadcast"]
    assert not b["passed"] and b["published"] < 10000


def test_stress_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "stress.json"
    done = harness(
        "stress", "--max-level", "light", "--max-connections", "20", "--max-ops", "200", "--quiet", "--output", str(out)
    )
    assert done.returncode == 0, done.stderr
    assert "SCALED" in done.stdout and "scale factor" in done.stdout
    report = json.loads(out.read_text())
    levels = report["levels"]
    assert [level["level"] for level in levels] == ["minimal", "light"]
    assert levels[1]["connections"] == 20 and levels[1]["scale_factor"] == pytest.approx(200 / 10_000)
    for level in levels:
        assert level["throughput_msg_s"] > 0 and level["error_rate"] == 0
        ordered(level["latency_ms"])
    assert levels[0]["throughput_vs_first"] == 1.0


@pytest.mark.parametrize(
    "argv",
    [
        ["load", "--clients", "0"],
        ["load", "--mode", "bogus"],
        ["load", "--no-such-flag"],
        ["load", "--url", "ws://10.0.0.1:80/"],
        ["connect", "--hold", "20000"],
        ["connect", "--hold", "-3"],
        ["connect", "--broadcast", "-1"],
        ["stress", "--max-level", "ludicrous"],
        ["stress", "--max-connections", "50000"],
    ],
)
def test_bad_flags_exit_2_with_one_line(argv: list[str]) -> None:
    done = harness(*argv, timeout=15)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("command", ["load", "connect", "stress"])
def test_help_lists_every_option(command: str) -> None:
    done = harness(command, "--help", timeout=15)
    assert done.returncode == 0
    for flag in ("--output", "--seed", "--url", "--quiet"):
        assert flag in done.stdout


def test_connect_storm_retries_what_the_server_refuses_for_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reconnect refused with 503 (or closed before the handshake answer) is retried within the cap."""
    import asyncio
    import base64
    import hashlib

    from hdrh.histogram import HdrHistogram

    from harness import connect, rawws
    from harness.load import HIST_ARGS

    assert connect._refused(rawws.HandshakeError("HTTP/1.1 503 Service Unavailable")) == "http_503"
    assert connect._refused(ConnectionError("connection closed")) == "closed_before_handshake"
    assert connect._refused(rawws.HandshakeError("HTTP/1.1 404 Not Found")) is None

    monkeypatch.setattr(connect, "RETRY_AFTER_S", 0.05)

    async def scenario() -> tuple[list, list[str], dict]:
        seen = 0

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal seen
            seen += 1
            attempt = seen
            head = await reader.readuntil(b"\r\n\r\n")
            if attempt <= 2:
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n")
            elif attempt == 3:
                writer.transport.abort()
                return
            else:
                key = next(
                    line.split(b":", 1)[1].strip()
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"sec-websocket-key:")
                )
                accept = base64.b64encode(hashlib.sha1(key + rawws.GUID).digest())
                writer.write(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                )
            await writer.drain()
            await reader.read()  # until the client goes
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            got = await connect._open_all("127.0.0.1", port, "/", 3, 3, HdrHistogram(*HIST_ARGS), None, 5.0, retry=True)
        finally:
            for ws in got[0]:
                ws.abort()
            server.close()
        return got

    conns, errors, stats = asyncio.run(scenario())
    assert len(conns) == 3 and errors == []
    assert stats["refusals"] == {"http_503": 2, "closed_before_handshake": 1}
    assert stats["first_try"] + stats["retried_ok"] == 3 and stats["retried_ok"] >= 1


def _opened(port: int) -> int:
    """WebSocket connections the server on ``port`` accepted, every endpoint (its /metrics)."""
    import re
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return sum(int(float(n)) for n in re.findall(r"^wsnursery_connections_total\{[^}]*\} (\S+)$", text, re.M))


@pytest.mark.parametrize(
    "command, flags, per_server",
    [
        (["load", "--clients", "4", "--messages", "5"], [], 2),
        (["connect", "--hold", "6", "--hold-seconds", "0.5", "--broadcast", "0"], [], 3),
    ],
)
def test_several_urls_spread_the_clients_round_robin(tmp_path: Path, command, flags, per_server) -> None:
    from harness.servers import ServerProcess

    out = tmp_path / "run.json"
    with ServerProcess("wsnursery") as a, ServerProcess("wsnursery") as b:
        urls = [f"ws://127.0.0.1:{a.port}/", f"ws://127.0.0.1:{b.port}/"]
        done = harness(*command, *flags, "--url", urls[0], "--url", urls[1], "--quiet", "--output", str(out))
        assert done.returncode == 0, done.stdout + done.stderr
        assert (_opened(a.port), _opened(b.port)) == (per_server, per_server)
    result = json.loads(out.read_text())["result"]
    assert urls[0] in result["target"] and urls[1] in result["target"]


@pytest.mark.parametrize("command", ["load", "connect"])
def test_each_url_is_checked(command: str) -> None:
    done = harness(command, "--url", "ws://127.0.0.1:1/", "--url", "ws://10.0.0.1:80/", timeout=15)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "loopback" in done.stderr, done.stderr


def test_stress_takes_one_url_and_says_why() -> None:
    done = harness("stress", "--help", timeout=15)
    assert "one URL only" in " ".join(done.stdout.split())
    done = harness("stress", "--url", "ws://127.0.0.1:1/", "--url", "ws://127.0.0.1:2/", timeout=15)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "stress takes one --url" in done.stderr, done.stderr
