"""What the identity and exposure settings turn into at startup: keys, TLS context, policies.

``load(config)`` reads every key file and certificate once, when the server starts (the CLI
calls ``check`` right after parsing the settings, so an unusable file is one line and exit
status 2, never a traceback at the first connection). A server with none of these settings
gets ``Security`` with everything off, and behaves as before.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

import attrs

from .config import ConfigError
from .limits import OriginPolicy
from .tokens import (
    KeyFileError,
    KeySet,
    VerificationKey,
    load_jwks,
    load_pem_keys,
    secret_key,
)

if TYPE_CHECKING:
    from .config import Config


@attrs.frozen
class Security:
    keys: KeySet | None  # None: tokens off
    echo_open: bool
    api_key: str | None
    origins: OriginPolicy
    publish_rate: float  # 0: no limit
    subscribe_rate: float
    max_connections_per_ip: int  # 0: no limit
    ssl_context: ssl.SSLContext | None

    @classmethod
    def off(cls) -> Security:
        """No tokens, no API, every origin, no rate limits, no TLS: version 1 behaviour."""
        return cls(None, False, None, OriginPolicy(()), 0.0, 0.0, 0, None)


def load(config: Config) -> Security:
    """Build the runtime objects; ``ConfigError`` (one line) when a file cannot be used."""
    return Security(
        keys=_keys(config),
        echo_open=config.echo_open,
        api_key=config.api_key,
        origins=OriginPolicy(config.allowed_origin),
        publish_rate=config.publish_rate,
        subscribe_rate=config.subscribe_rate,
        max_connections_per_ip=config.max_connections_per_ip,
        ssl_context=_ssl_context(config),
    )


def check(config: Config) -> None:
    load(config)


def _keys(config: Config) -> KeySet | None:
    if not config.tokens_enabled:
        return None
    keys: list[VerificationKey] = []
    try:
        if config.jwt_secret is not None:
            keys.append(secret_key(config.jwt_secret))
        if config.jwt_public_key is not None:
            keys.extend(load_pem_keys(config.jwt_public_key))
        if config.jwt_keys is not None:
            keys.extend(load_jwks(config.jwt_keys))
        return KeySet(keys, audience=config.jwt_audience, issuer=config.jwt_issuer)
    except KeyFileError as exc:
        raise ConfigError(str(exc)) from None


def _ssl_context(config: Config) -> ssl.SSLContext | None:
    if config.certfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.set_alpn_protocols(["http/1.1"])
    names = f"certfile {config.certfile}" + (f" / keyfile {config.keyfile}" if config.keyfile else "")
    try:
        context.load_cert_chain(config.certfile, config.keyfile)
    except FileNotFoundError as exc:
        raise ConfigError(f"{names}: {exc.filename or 'file'} does not exist") from None
    except PermissionError:
        raise ConfigError(f"{names} cannot be read: permission denied") from None
    except ssl.SSLError as exc:
        detail = exc.reason or str(exc).splitlines()[0]
        raise ConfigError(f"{names} is not a usable certificate and private key ({detail})") from None
    except OSError as exc:
        raise ConfigError(f"{names} cannot be read: {exc.strerror or exc}") from None
    return context
