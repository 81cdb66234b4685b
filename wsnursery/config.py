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


def _positive_seconds(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
        raise ValueError("must be a number of seconds greater than 0")


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


def _setting(default: Any, validator: Any, help: str) -> Any:
    return attrs.field(default=default, validator=validator, metadata={"help": help})


@attrs.frozen(kw_only=True)
class Config:
    """Every setting of the server, with its default. Each limit says what happens at it."""

    host: str = _setting("127.0.0.1", _host, "address to listen on")
    port: int = _setting(8765, _port, "port to listen on (0 picks a free one)")
    log_level: str = _setting(
        "info", _choice("debug", "info", "warning", "error"), "log level"
    )
    log_format: str = _setting("text", _choice("text", "json"), "log line format")

    max_connections: int = _setting(
        10_000, _positive_int(), "WebSocket connections at once; past it the handshake gets HTTP 503"
    )
    max_message_size: int = _setting(
        1_048_576, _positive_int(64 * 2**20), "largest message a client may send, in bytes; bigger closes 1009"
    )
    handshake_timeout: float = _setting(
        10.0, _positive_seconds, "seconds for a client to finish the HTTP/WebSocket handshake; then the socket is closed"
    )
    max_subscriptions: int = _setting(
        100, _positive_int(), "subscriptions per connection; more get error too_many_subscriptions"
    )
    max_errors: int = _setting(
        20, _positive_int(), "error frames a connection may earn before it is closed with 1008"
    )
    channel_pattern: str = _setting(
        DEFAULT_CHANNEL_PATTERN, _regex, "regular expression a channel name must match (else invalid_channel)"
    )
    max_channels: int = _setting(
        10_000, _positive_int(), "channels held; a new one evicts an idle one, else error too_many_channels"
    )
    heartbeat_interval: float = _setting(
        20.0, _positive_seconds, "seconds between WebSocket pings to each client"
    )
    heartbeat_timeout: float = _setting(
        10.0, _positive_seconds, "seconds to wait for a pong (or any frame) after a ping; then close 4000"
    )
    outbound_queue_size: int = _setting(
        1024, _positive_int(), "messages a subscriber may lag behind its channel; then the slow-consumer policy applies"
    )
    slow_consumer_policy: str = _setting(
        "close", _choice("close", "block"), "close: close a slow subscriber with 4008; block: the publisher waits"
    )
    history_size: int = _setting(
        4096, _positive_int(), "messages kept per channel for resume and replay (at least the queue and unacked limits)"
    )
    history_bytes: int = _setting(
        64 * 2**20, _positive_int(2**40),
        "bytes of history kept per channel (each message counts the size its publisher sent); the oldest are dropped",
    )
    history_age: float = _setting(
        300.0, _positive_seconds, "seconds a message is kept in a channel's history"
    )
    dedup_size: int = _setting(
        10_000, _positive_int(), "idempotency keys remembered per channel"
    )
    dedup_age: float = _setting(
        300.0, _positive_seconds, "seconds an idempotency key is remembered"
    )
    ack_timeout: float = _setting(
        1.0, _positive_seconds, "seconds before an unacknowledged delivery is re-sent (doubles each time)"
    )
    ack_max_timeout: float = _setting(
        30.0, _positive_seconds, "cap on the re-send backoff, in seconds"
    )
    max_unacked: int = _setting(
        1024, _positive_int(), "unacknowledged messages per acking subscription; past it close 4008"
    )
    max_control_queue: int = _setting(
        256, _positive_int(), "replies queued to a client before the server stops reading its requests"
    )
    close_timeout: float = _setting(
        2.0, _positive_seconds, "seconds to wait for a close handshake before the socket is dropped"
    )
    shutdown_timeout: float = _setting(
        5.0, _positive_seconds, "seconds to drain clients on shutdown before exiting"
    )

    def __attrs_post_init__(self) -> None:
        if self.history_size < self.outbound_queue_size:
            raise ValueError(
                f"history_size ({self.history_size}) must be at least outbound_queue_size ({self.outbound_queue_size})"
            )
        if self.history_size < self.max_unacked:
            raise ValueError(
                f"history_size ({self.history_size}) must be at least max_unacked ({self.max_unacked})"
            )


SETTINGS: tuple[attrs.Attribute[Any], ...] = attrs.fields(Config)
ENV_PREFIX = "WSNURSERY_"


def _convert(attribute: attrs.Attribute[Any], raw: Any, source: str) -> Any:
    """Turn text (env, flags) into the setting's type; TOML values pass through typed."""
    kind: object = attribute.type  # the annotation's text (this module uses postponed annotations)
    if not isinstance(raw, str) or kind == "str":
        return raw
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
            raise ConfigError(f"{name}={value!r} (from {sources[name]}): {exc}") from None
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
