"""Settings: precedence flag > environment > TOML > default; bad values give one line and exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from wsnursery.cli import main
from wsnursery.config import Config, ConfigError, load


def test_defaults_are_the_documented_ones():
    config = load(flags={}, environ={})
    assert (config.host, config.port) == ("127.0.0.1", 8765)
    assert config == Config()


def test_precedence_flag_over_env_over_file_over_default(tmp_path):
    toml = tmp_path / "server.toml"
    toml.write_text("max_connections = 10\nmax_errors = 3\n[server]\nheartbeat_interval = 2.5\n")
    environ = {"WSNURSERY_MAX_CONNECTIONS": "20", "WSNURSERY_MAX_ERRORS": "4"}
    config = load(flags={"max_connections": "30"}, environ=environ, config_file=str(toml))
    assert config.max_connections == 30  # flag
    assert config.max_errors == 4  # environment beats the file
    assert config.heartbeat_interval == 2.5  # file, under [server]
    assert config.max_subscriptions == 100  # default


@pytest.mark.parametrize(
    "flags, environ, words",
    [
        ({"max_connections": "0"}, {}, ["max_connections", "--max-connections", "1 to"]),
        ({"port": "x"}, {}, ["port", "whole number"]),
        ({}, {"WSNURSERY_HEARTBEAT_TIMEOUT": "-1"}, ["heartbeat_timeout", "WSNURSERY_HEARTBEAT_TIMEOUT"]),
        ({"slow_consumer_policy": "drop"}, {}, ["slow_consumer_policy", "close, block"]),
        ({"channel_pattern": "("}, {}, ["channel_pattern", "regular expression"]),
        ({"history_size": "8"}, {}, ["history_size", "outbound_queue_size"]),
        ({"heartbeat_interval": "nan"}, {}, ["heartbeat_interval", "greater than 0"]),
        ({"node_ttl": "0.01"}, {}, ["node_ttl", "0.5 to 3600"]),
    ],
)
def test_bad_values_name_the_setting_and_the_source(flags, environ, words):
    with pytest.raises(ConfigError) as caught:
        load(flags=flags, environ=environ)
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_bad_toml_and_unknown_keys(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("max_connections = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(environ={}, config_file=str(broken))
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("max_conections = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'max_conections'"):
        load(environ={}, config_file=str(unknown))
    with pytest.raises(ConfigError, match="does not exist"):
        load(environ={}, config_file=str(tmp_path / "missing.toml"))
    typed = tmp_path / "typed.toml"
    typed.write_text('max_connections = "many"\n')
    with pytest.raises(ConfigError, match="max_connections"):
        load(environ={}, config_file=str(typed))


def test_cli_bad_setting_prints_one_line_and_exits_2(capsys):
    assert main(["serve", "--max-connections", "-5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("wsnursery: max_connections=-5 (from --max-connections)")


@pytest.mark.parametrize("argv", [["serve", "--no-such-flag"], ["bogus"], []])
def test_cli_usage_errors_print_one_line_and_exit_2(argv):
    result = subprocess.run([sys.executable, "-m", "wsnursery", *argv], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_cli_help_lists_every_setting():
    result = subprocess.run(
        [sys.executable, "-m", "wsnursery", "serve", "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    for name in ("--max-connections", "--heartbeat-timeout", "--slow-consumer-policy", "--log-format", "--config"):
        assert name in result.stdout
