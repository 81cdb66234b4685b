"""Server settings: one validated attrs class, loaded with a fixed precedence.

Precedence, highest first: command-line flag > ``WSNURSERY_<NAME>`` environment variable >
TOML file (``--config``; keys are the setting names, top level or under ``[server]``) >
the defaults below. A bad value raises ``ConfigError`` with one line that names the setting
and where the value came from; the CLI prints it and exits with status 2.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from typing import Any

import attrs

from .protocol import DEFAULT_CHANNEL_PATTERN


class ConfigError(Exception):
    """A setting that cannot be used; the message is one readable line."""


def _positive_int(limit: int = 2**31) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if type(value) is not int or not (1 <= value <= limit):
            raise ValueError(f"must be a whole number from 1 to {limit}")

    return check


def _whole_number(low: int, high: int) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if type(value) is not int or not (low <= value <= high):
            raise ValueError(f"must be a whole number from {low} to {high}")

    return check


def _positive_seconds(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
        raise ValueError("must be a number of seconds greater than 0")


def _seconds_between(low: float, high: float) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if type(value) not in (int, float) or not math.isfinite(value) or not (low <= value <= high):
            raise ValueError(f"must be a number of seconds from {low:g} to {high:g}")

    return check


def _choice(*choices: str) -> Any:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")

    return check


def _regex(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    try:
        re.compile(value)
    except (re.error, TypeError) as exc:
        raise ValueError(f"is not a valid regular expression ({exc})") from None


def _port(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not int or not (0 <= value <= 65535):
        raise ValueError("must be a port number from 0 to 65535")


def _host(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a host name or address")


def _engine(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value == "memory":
        return
    parts = urllib.parse.urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must be memory or a redis://HOST:PORT/DB URL")
    try:
        parts.port  # noqa: B018 (raises for a port that is not a number)
    except ValueError:
        raise ValueError("has a port that is not a number from 0 to 65535") from None
    if parts.scheme != "unix":
        if not parts.hostname:
            raise ValueError("needs a host (redis://HOST:PORT/DB)")
        if (db := parts.path.strip("/")) and not db.isdigit():
            raise ValueError(f"has a database {db!r} that is not a number")


def _setting(default: Any, validator: Any, help: str) -> Any:
    return attrs.field(default=default, validator=validator, metadata={"help": help})


def _optional_text(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value or "\n" in value):
        raise ValueError("must be a non-empty line of text")


def _api_key(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _optional_text(instance, attribute, value)
    if value is not None and (len(value) < 16 or any(c.isspace() for c in value)):
        raise ValueError("must be at least 16 characters, without spaces")


def _rate(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
        raise ValueError("must be a number of requests per second (0: no limit)")


def _count_or_zero(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not int or not (0 <= value <= 2**31):
        raise ValueError("must be a whole number (0: no limit)")


def _flag(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not bool:
        raise ValueError("must be true or false")


def _globs(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError("must be a list of non-empty glob patterns")


def _optional(validator: Any, help: str) -> Any:
    return attrs.field(default=None, validator=validator, metadata={"help": help})


@attrs.frozen(kw_only=True)
class Config:
    """Every setting of the server, with its default. Each limit says what happens at it."""

    host: str = _setting("127.0.0.1", _host, "address to listen on")
    port: int = _setting(8765, _port, "port to listen on (0 picks a free one)")
    log_level: str = _setting("info", _choice("debug", "info", "warning", "error"), "log level")
    log_format: str = _setting("text", _choice("text", "json"), "log line format")

    max_connections: int = _setting(
        10_000, _positive_int(), "WebSocket connections at once; past it the handshake gets HTTP 503"
    )
    max_message_size: int = _setting(
        1_048_576, _positive_int(64 * 2**20), "largest message a client may send, in bytes; bigger closes 1009"
    )
    max_fragments: int = _setting(
        1024, _positive_int(), "frames one message may come in (empty continuation frames count); more closes 1009"
    )
    handshake_timeout: float = _setting(
        10.0,
        _positive_seconds,
        "seconds for a client to finish the HTTP/WebSocket handshake; then the socket is closed",
    )
    max_subscriptions: int = _setting(
        100, _positive_int(), "subscriptions per connection; more get error too_many_subscriptions"
    )
    max_errors: int = _setting(20, _positive_int(), "error frames a connection may earn before it is closed with 1008")
    channel_pattern: str = _setting(
        DEFAULT_CHANNEL_PATTERN, _regex, "regular expression a channel name must match (else invalid_channel)"
    )
    max_channels: int = _setting(
        10_000, _positive_int(), "channels held; a new one evicts an idle one, else error too_many_channels"
    )
    heartbeat_interval: float = _setting(20.0, _positive_seconds, "seconds between WebSocket pings to each client")
    heartbeat_timeout: float = _setting(
        10.0, _positive_seconds, "seconds to wait for a pong (or any frame) after a ping; then close 4000"
    )
    outbound_queue_size: int = _setting(
        1024, _positive_int(), "messages a subscriber may lag behind its channel; then the slow-consumer policy applies"
    )
    slow_consumer_policy: str = _setting(
        "close", _choice("close", "block"), "close: close a slow subscriber with 4008; block: the publisher waits"
    )
    block_timeout: float = _setting(
        5.0,
        _positive_seconds,
        "policy block: seconds a publisher waits for a lagging subscriber; then that subscriber is closed 4008",
    )
    history_size: int = _setting(
        4096, _positive_int(), "messages kept per channel for resume and replay (at least the queue and unacked limits)"
    )
    history_bytes: int = _setting(
        64 * 2**20,
        _positive_int(2**40),
        "bytes of history kept per channel (a message counts its decoded size in memory, or the bytes sent if more); the oldest are dropped",
    )
    history_age: float = _setting(300.0, _positive_seconds, "seconds a message is kept in a channel's history")
    dedup_size: int = _setting(10_000, _positive_int(), "idempotency keys remembered per channel")
    dedup_age: float = _setting(300.0, _positive_seconds, "seconds an idempotency key is remembered")
    ack_timeout: float = _setting(
        1.0, _positive_seconds, "seconds before an unacknowledged delivery is re-sent (doubles each time)"
    )
    ack_max_timeout: float = _setting(30.0, _positive_seconds, "cap on the re-send backoff, in seconds")
    max_unacked: int = _setting(
        1024, _positive_int(), "unacknowledged messages per acking subscription; past it close 4008"
    )
    max_control_queue: int = _setting(
        256, _positive_int(), "replies queued to a client before the server stops reading its requests"
    )
    max_control_bytes: int = _setting(
        1_048_576,
        _positive_int(2**40),
        "bytes of replies, pongs and /echo echoes queued to a client before the server stops reading it",
    )
    close_timeout: float = _setting(
        2.0, _positive_seconds, "seconds to wait for a close handshake before the socket is dropped"
    )
    shutdown_timeout: float = _setting(5.0, _positive_seconds, "seconds to drain clients on shutdown before exiting")
    compression: str = _setting(
        "on", _choice("on", "off"), "on: accept a client's permessage-deflate offer (RFC 7692); off: never compress"
    )
    compression_threshold: int = _setting(
        256, _whole_number(0, 2**31), "messages under this many bytes (encoded) go out uncompressed"
    )
    compression_level: int = _setting(
        6, _whole_number(1, 9), "zlib level for what the server compresses: 1 is fastest, 9 smallest"
    )
    compression_client_context: str = _setting(
        "off",
        _choice("on", "off"),
        "on: a client may keep its deflate context between messages (an inflater per connection, 2**bits "
        "bytes + ~7 KiB); off: the 101 asks every client for client_no_context_takeover",
    )
    compression_client_window_bits: int = _setting(
        15,
        _whole_number(8, 15),
        "largest deflate window (bits) a client that allows it may compress with; its inflater holds 2**bits bytes",
    )
    engine: str = _setting(
        "memory",
        _engine,
        "where channels live: memory (this process only) or redis://HOST:PORT/DB (every process naming it shares them)",
    )
    node_ttl: float = _setting(
        10.0,
        _seconds_between(0.5, 3600),
        "with a redis engine: seconds a node's liveness key lasts (refreshed every third of it); a killed node's members drop out of presence within that",
    )
    workers: int = _setting(
        1,
        _positive_int(256),
        "server processes on one port (SO_REUSEPORT), restarted when they die; more than 1 needs a shared engine",
    )

    # -- identity, permissions, server API, exposure (issue 13; all off by default) --------
    jwt_secret: str | None = _optional(
        _optional_text, "HS256 secret (32+ bytes) for connection tokens without a kid; turns tokens on"
    )
    jwt_public_key: str | None = _optional(
        _optional_text, "PEM file of RSA (RS256) / P-256 (ES256) public keys for tokens without a kid; turns tokens on"
    )
    jwt_keys: str | None = _optional(
        _optional_text,
        "JSON Web Key Set file, every key with kid and alg, chosen by the token's kid (rotation); turns tokens on",
    )
    jwt_audience: str | None = _optional(_optional_text, "audience (aud) every token must name")
    jwt_issuer: str | None = _optional(_optional_text, "issuer (iss) every token must name")
    echo_open: bool = _setting(False, _flag, "with tokens on, /echo still needs no token")
    api_key: str | None = _optional(
        _api_key, "key of the HTTP server API (/api/...; 404 without it); calls carry Authorization: apikey KEY"
    )
    api_max_body: int = _setting(
        1_048_576, _positive_int(64 * 2**20), "largest server API request body, in bytes; bigger gets 413"
    )
    allowed_origin: tuple[str, ...] = attrs.field(
        default=(),
        validator=_globs,
        converter=tuple,
        metadata={
            "help": "browser Origin glob allowed to connect (repeatable; env: comma-separated); others get 403",
            "repeat": True,
        },
    )
    publish_rate: float = _setting(
        0.0,
        _rate,
        "publishes per second per connection, bursts of one second's worth; more get error rate_limited (0: off)",
    )
    subscribe_rate: float = _setting(
        0.0,
        _rate,
        "subscribes per second per connection, bursts of one second's worth; more get error rate_limited (0: off)",
    )
    max_connections_per_ip: int = _setting(
        0, _count_or_zero, "WebSocket connections per client address; past it the upgrade gets HTTP 429 (0: off)"
    )
    max_presence_members: int = _setting(
        1000, _positive_int(), "members listed per channel; later subscribers are not listed (presence complete: false)"
    )
    certfile: str | None = _optional(_optional_text, "PEM certificate chain: serve wss:// and https:// (TLS)")
    keyfile: str | None = _optional(_optional_text, "PEM private key of certfile (if not in certfile)")

    def __attrs_post_init__(self) -> None:
        if self.workers > 1 and self.engine == "memory":
            raise ValueError(
                f"workers={self.workers} needs a shared engine (--engine redis://HOST:PORT/DB): with memory each process would hold its own channels"
            )
        if self.history_size < self.outbound_queue_size:
            raise ValueError(
                f"history_size ({self.history_size}) must be at least outbound_queue_size ({self.outbound_queue_size})"
            )
        if self.history_size < self.max_unacked:
            raise ValueError(f"history_size ({self.history_size}) must be at least max_unacked ({self.max_unacked})")
        if not self.tokens_enabled:
            for name in ("jwt_audience", "jwt_issuer"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} needs a token key: set jwt_secret, jwt_public_key or jwt_keys")
        if self.keyfile is not None and self.certfile is None:
            raise ValueError("keyfile needs certfile")

    @property
    def tokens_enabled(self) -> bool:
        return any(key is not None for key in (self.jwt_secret, self.jwt_public_key, self.jwt_keys))


SETTINGS: tuple[attrs.Attribute[Any], ...] = attrs.fields(Config)
ENV_PREFIX = "WSNURSERY_"
SECRET_SETTINGS = frozenset({"jwt_secret", "api_key"})  # never echoed in an error line


def _convert(attribute: attrs.Attribute[Any], raw: Any, source: str) -> Any:
    """Turn text (env, flags) into the setting's type; TOML values pass through typed."""
    kind: object = attribute.type  # the annotation's text (this module uses postponed annotations)
    if not isinstance(raw, str) or kind == "str":
        return raw
    if str(attribute.type) == "bool":
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{attribute.name}={raw!r} (from {source}): must be true or false")
    if str(attribute.type) == "tuple[str, ...]":
        return [part.strip() for part in raw.split(",") if part.strip()]
    try:
        if kind == "int":
            return int(raw.replace("_", ""))
        if kind == "float":
            return float(raw)
    except ValueError:
        kind = "a whole number" if kind == "int" else "a number"
        raise ConfigError(f"{attribute.name}={raw!r} (from {source}): must be {kind}") from None
    return raw


def load(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Config:
    """Build a Config from flags > environment > TOML file > defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    known = {attribute.name: attribute for attribute in SETTINGS}

    if config_file is not None:
        for name, value in _read_toml(config_file).items():
            if name not in known:
                raise ConfigError(f"{config_file}: unknown setting {name!r}")
            values[name], sources[name] = value, config_file
    for attribute in SETTINGS:
        env_name = ENV_PREFIX + attribute.name.upper()
        if env_name in environ:
            values[attribute.name] = environ[env_name]
            sources[attribute.name] = f"environment {env_name}"
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = value
            sources[name] = "--" + name.replace("_", "-")

    typed = {name: _convert(known[name], value, sources[name]) for name, value in values.items()}
    for name, value in typed.items():
        validator = known[name].validator
        assert validator is not None  # every setting has one
        try:
            validator(None, known[name], value)
        except (ValueError, TypeError) as exc:
            shown = "(hidden)" if name in SECRET_SETTINGS else repr(value)
            raise ConfigError(f"{name}={shown} (from {sources[name]}): {exc}") from None
    try:
        return Config(**typed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    section = document.get("server", {})
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [server] must be a table")
    top = {key: value for key, value in document.items() if key != "server"}
    return top | section
