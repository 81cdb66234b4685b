"""Issue-13 settings: flag / environment / TOML, and one-line exit-2 errors for unusable files."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from wsnursery import security
from wsnursery.cli import main
from wsnursery.config import Config, ConfigError, load

from .auth_keys import (
    EC_KEY,
    RSA_KEY,
    SECRET,
    jwks,
    oct_jwk,
    private_pem,
    public_pem,
    self_signed,
    write,
)


def test_everything_is_off_by_default() -> None:
    config = load(flags={}, environ={})
    assert config == Config() and not config.tokens_enabled
    loaded = security.load(config)
    assert loaded.keys is None and loaded.ssl_context is None and loaded.api_key is None
    assert (loaded.publish_rate, loaded.subscribe_rate, loaded.max_connections_per_ip) == (0, 0, 0)
    assert loaded.origins.allows("https://anything.test")


def test_every_setting_from_the_environment_and_toml(tmp_path: Path) -> None:
    pem = write(tmp_path, "k.pem", public_pem(RSA_KEY))
    environ = {
        "WSNURSERY_JWT_SECRET": SECRET,
        "WSNURSERY_JWT_AUDIENCE": "app",
        "WSNURSERY_ECHO_OPEN": "yes",
        "WSNURSERY_ALLOWED_ORIGIN": "https://*.example.com, http://localhost:*",
        "WSNURSERY_PUBLISH_RATE": "50",
        "WSNURSERY_MAX_CONNECTIONS_PER_IP": "8",
        "WSNURSERY_API_KEY": "a-key-of-sixteen-chars",
    }
    toml = write(
        tmp_path, "s.toml", f'jwt_public_key = "{pem}"\nallowed_origin = ["https://toml.test"]\nsubscribe_rate = 2.5\n'
    )
    config = load(flags={}, environ=environ, config_file=toml)
    assert config.jwt_secret == SECRET and config.jwt_audience == "app" and config.echo_open is True
    assert config.allowed_origin == ("https://*.example.com", "http://localhost:*")  # env beats the file
    assert (config.publish_rate, config.subscribe_rate, config.max_connections_per_ip) == (50.0, 2.5, 8)
    loaded = security.load(config)
    assert loaded.keys is not None and {k.algorithm for k in loaded.keys.keys} == {"HS256", "RS256"}
    assert loaded.keys.audience == "app"
    assert load(flags={}, environ={}, config_file=toml).allowed_origin == ("https://toml.test",)


def test_repeatable_and_boolean_flags_on_the_command_line() -> None:
    from wsnursery.cli import build_parser

    args = build_parser().parse_args(
        ["serve", "--allowed-origin", "https://a.test", "--allowed-origin", "https://b.test", "--echo-open"]
    )
    assert args.allowed_origin == ["https://a.test", "https://b.test"] and args.echo_open is True
    config = load(flags={"allowed_origin": args.allowed_origin, "echo_open": args.echo_open}, environ={})
    assert config.allowed_origin == ("https://a.test", "https://b.test")
    assert build_parser().parse_args(["serve"]).echo_open is None  # unset: the default applies


def test_tls_context_from_a_generated_certificate(tmp_path: Path) -> None:
    certfile, keyfile = self_signed(tmp_path)
    context = security.load(load(flags={"certfile": certfile, "keyfile": keyfile}, environ={})).ssl_context
    assert isinstance(context, ssl.SSLContext)


def _cli_error(
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
    environ: dict[str, str] | None = None,
    monkeypatch: pytest.MonkeyPatch | None = None,
) -> str:
    if environ and monkeypatch:
        for name, value in environ.items():
            monkeypatch.setenv(name, value)
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--jwt-audience", "app"], ["jwt_audience needs a token key"]),
        (["--jwt-issuer", "https://i"], ["jwt_issuer needs a token key"]),
        (["--keyfile", "k.pem"], ["keyfile needs certfile"]),
        (["--jwt-secret", "short"], ["at least 32 bytes"]),
        (
            ["--jwt-secret", '{{"kty": "oct", "k": "a-secret-that-is-really-a-json-web-key"}}'],
            ["jwt_secret looks like"],
        ),
        (["--jwt-public-key", "{tmp}/missing.pem"], ["does not exist"]),
        (["--jwt-public-key", "{tmp}/private.pem"], ["give the public key"]),
        (["--jwt-public-key", "{tmp}/junk.pem"], ["no PEM block"]),
        (["--jwt-keys", "{tmp}/junk.pem"], ["not JSON"]),
        (["--jwt-keys", "{tmp}/bad.json"], ["needs alg"]),
        (["--certfile", "{tmp}/missing.pem"], ["certfile", "does not exist"]),
        (["--certfile", "{tmp}/junk.pem"], ["certfile", "not a usable certificate"]),
        (["--certfile", "{tmp}/cert.pem", "--keyfile", "{tmp}/other-key.pem"], ["not a usable certificate"]),
        (["--publish-rate", "-1"], ["publish_rate", "per second"]),
        (["--max-connections-per-ip", "x"], ["max_connections_per_ip", "whole number"]),
        (["--api-key", "short"], ["api_key", "16 characters"]),
        (["--allowed-origin", " "], ["allowed_origin"]),
    ],
)
def test_unusable_settings_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], words: list[str]
) -> None:
    write(tmp_path, "private.pem", private_pem(EC_KEY))
    write(tmp_path, "junk.pem", b"hello")
    write(tmp_path, "bad.json", jwks(oct_jwk("a", SECRET) | {"alg": "HS512"}))
    self_signed(tmp_path)
    write(tmp_path, "other-key.pem", private_pem(RSA_KEY))
    err = _cli_error([arg.format(tmp=tmp_path) for arg in argv], capsys)
    for word in words:
        assert word in err, err


def test_secrets_are_never_echoed(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    err = _cli_error(["--api-key", "my secret key"], capsys)
    assert "my secret key" not in err and "(hidden)" in err
    err = _cli_error([], capsys, {"WSNURSERY_JWT_SECRET": "too-short-secret"}, monkeypatch)
    assert "too-short-secret" not in err
    key_shaped = '{"kty": "oct", "k": "a-secret-that-is-really-a-json-web-key"}'
    err = _cli_error([], capsys, {"WSNURSERY_JWT_SECRET": key_shaped}, monkeypatch)
    assert "looks like" in err and "really-a-json-web-key" not in err


def test_bad_boolean_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"echo_open='maybe'.*true or false"):
        load(flags={}, environ={"WSNURSERY_ECHO_OPEN": "maybe"})
