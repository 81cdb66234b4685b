"""Connection tokens (JWT): the keys a server accepts, and verifying one token into an ``Identity``.

Sans-I/O (key files are read once, at startup). Verification is PyJWT's; this module decides
which key may verify which token and pins the algorithm per key, so a token never chooses:
- ``--jwt-secret SECRET``: one HS256 key (at least 32 bytes, RFC 7518 §3.2), for tokens
  without a ``kid`` header;
- ``--jwt-public-key FILE``: a PEM file with one or more public keys, for tokens without a
  ``kid``: an RSA key (2048 bits or more) verifies RS256, a P-256 key ES256, nothing else;
- ``--jwt-keys FILE``: a JSON Web Key Set (``{"keys": [...]}``, RFC 7517) for rotation: every
  key names its ``kid`` and its ``alg`` (HS256, RS256 or ES256); a token whose header names a
  ``kid`` is verified by that key alone. Several keys are live at once: publish the new key,
  mint with it, drop the old one once its tokens have expired.
A token's ``alg`` must be the key's algorithm: ``none`` is never accepted, and an HS256 token
is never checked against a public key (PyJWT gets the key object, and only the one algorithm;
its decoder here knows no algorithm but these three). An HS256 secret is prepared by PyJWT once,
when it is loaded: one that looks like a PEM, SSH or JSON key is refused then.

A token is at most ``MAX_TOKEN_BYTES`` (its header at most 1 KiB); it must carry ``sub`` (a string of 1 to
``MAX_SUB_LENGTH`` characters) and ``exp``; ``aud`` and ``iss`` are checked when configured
(a token that names an audience is refused by a server that expects none); ``nbf`` and ``iat``
in the future are refused. ``channels`` is parsed by ``permissions``. A token verified once is
remembered (bounded LRU, expiry checked on every use), so a reconnect storm after a restart
does not pay PyJWT's verification again for every client. Every failure is a
``TokenError`` with a short reason that says nothing about the keys.
"""

from __future__ import annotations

import base64
import collections
import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import HMACAlgorithm

from .permissions import ClaimError, Grants, parse_channels_claim

ALGORITHMS = ("HS256", "RS256", "ES256")
MAX_TOKEN_BYTES = 8192
MAX_SUB_LENGTH = 256
MAX_KEYS = 32
# Recently verified tokens (a reconnect presents the same one again): the exact token string
# maps to its identity, whose expiry is still checked on every use. At most CACHED_TOKENS of at
# most CACHED_TOKEN_BYTES each (8 MiB); refused tokens are never kept.
CACHED_TOKENS = 4096
CACHED_TOKEN_BYTES = 2048
MIN_SECRET_BYTES = 32
MIN_RSA_BITS = 2048

_COMPACT = re.compile(r"[A-Za-z0-9_-]{2,1024}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")  # JWS compact form
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", re.DOTALL)


class _Secret(bytes):
    """An HS256 secret PyJWT has already checked and prepared (once, in ``secret_key``)."""


class _PreparedHMAC(HMACAlgorithm):
    """HS256 whose key preparation is done at startup: PyJWT's ``prepare_key`` otherwise
    re-checks the secret on every decode (JSON, PEM, SSH and DER parsing, ~6 us a token).
    Anything but a ``_Secret`` gets PyJWT's own preparation."""

    def prepare_key(self, key: str | bytes) -> bytes:
        return key if type(key) is _Secret else super().prepare_key(key)


def _decoder() -> jwt.PyJWT:
    """One PyJWT for every token: it knows only ``ALGORITHMS`` (never ``none``), HS256 with
    prepared secrets, and requires ``exp`` and ``sub`` without an options dict per call."""
    signatures = jwt.PyJWS(algorithms=[name for name in ALGORITHMS if name != "HS256"])
    signatures.register_algorithm("HS256", _PreparedHMAC(HMACAlgorithm.SHA256))
    decoder = jwt.PyJWT(options={"require": ["exp", "sub"]})
    decoder._jws = signatures  # as PyJWT wires its own global decoder (jwt.api_jwt)
    return decoder


_DECODER = _decoder()


class TokenError(Exception):
    """A token we refuse (HTTP 401, or ``bad_request`` on ``refresh``); the reason is one line."""


class KeyFileError(Exception):
    """A key setting we cannot use; the message is one readable line (exit status 2)."""


@attrs.frozen
class VerificationKey:
    kid: str | None
    algorithm: str
    key: Any = attrs.field(repr=False)  # bytes for HS256, a cryptography public key otherwise


@attrs.frozen
class Identity:
    """Who a verified token speaks for, until when, and what it may do."""

    sub: str
    exp: float
    grants: Grants


class KeySet:
    """The keys a server accepts, with the optional audience and issuer every token must name."""

    def __init__(
        self,
        keys: Iterable[VerificationKey],
        *,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> None:
        self.keys = tuple(keys)
        if not self.keys:
            raise KeyFileError("no verification key")
        if len(self.keys) > MAX_KEYS:
            raise KeyFileError(f"at most {MAX_KEYS} verification keys")
        self._by_kid: dict[str, VerificationKey] = {}
        self._unnamed: dict[str, list[VerificationKey]] = {}
        for key in self.keys:
            if key.algorithm not in ALGORITHMS:
                raise KeyFileError(f"algorithm {key.algorithm!r} is not one of {', '.join(ALGORITHMS)}")
            if key.kid is None:
                self._unnamed.setdefault(key.algorithm, []).append(key)
            elif key.kid in self._by_kid:
                raise KeyFileError(f"two keys have the kid {key.kid!r}")
            else:
                self._by_kid[key.kid] = key
        self.audience = audience
        self.issuer = issuer
        self._verified: collections.OrderedDict[str, Identity] = collections.OrderedDict()

    def verify(self, token: str) -> Identity:
        """The identity a token carries, or ``TokenError``."""
        if not isinstance(token, str) or not token:
            raise TokenError("missing token")
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenError(f"token longer than {MAX_TOKEN_BYTES} bytes")
        cached = self._verified.get(token)
        if cached is not None:
            if cached.exp <= time.time():
                del self._verified[token]
                raise TokenError("token expired")
            self._verified.move_to_end(token)
            return cached
        identity = self._verify(token)
        if len(token) <= CACHED_TOKEN_BYTES:
            self._verified[token] = identity
            if len(self._verified) > CACHED_TOKENS:
                self._verified.popitem(last=False)
        return identity

    def _verify(self, token: str) -> Identity:
        header = _header(token)
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in ALGORITHMS:
            raise TokenError("token algorithm not accepted")
        if kid is not None:
            key = self._by_kid.get(kid) if isinstance(kid, str) else None
            if key is None:
                raise TokenError("unknown key id")
            candidates = [key]
        else:
            candidates = self._unnamed.get(algorithm, [])
        if not candidates:
            raise TokenError("no key for this token")
        error = TokenError("bad signature")
        for key in candidates:
            if key.algorithm != algorithm:
                raise TokenError("token algorithm does not match its key")
            try:
                claims = _DECODER.decode(
                    token, key.key, algorithms=[key.algorithm], audience=self.audience, issuer=self.issuer
                )
            except jwt.InvalidSignatureError:
                continue  # another key without a kid may have signed it
            except jwt.InvalidTokenError as exc:
                error = TokenError(_reason(exc))
                break
            return _identity(claims)
        raise error

    def verify_refresh(self, token: str, sub: str) -> Identity:
        """A new token for the same user (``refresh``), or ``TokenError``."""
        identity = self.verify(token)
        if identity.sub != sub:
            raise TokenError("a refreshed token must be for the same sub")
        return identity


def _header(token: str) -> dict[str, Any]:
    """The token's JOSE header, read once here (PyJWT's own reader walks the token a character
    at a time in Python; the regular expression below checks the whole token in C first)."""
    if _COMPACT.fullmatch(token) is None:
        raise TokenError("malformed token")
    segment = token[: token.index(".")]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, UnicodeDecodeError):
        raise TokenError("malformed token") from None
    if not isinstance(header, dict):
        raise TokenError("malformed token")
    return header


def _identity(claims: Mapping[str, Any]) -> Identity:
    sub, exp = claims.get("sub"), claims.get("exp")
    if not isinstance(sub, str) or not (0 < len(sub) <= MAX_SUB_LENGTH):
        raise TokenError(f"sub must be a string of 1 to {MAX_SUB_LENGTH} characters")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool) or not math.isfinite(exp):
        raise TokenError("exp must be a number")
    try:
        grants = parse_channels_claim(claims.get("channels"))
    except ClaimError as exc:
        raise TokenError(str(exc)) from None
    return Identity(sub, float(exp), grants)


def _reason(exc: jwt.InvalidTokenError) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token not yet valid"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token lacks the {exc.claim} claim"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "token algorithm not accepted"
    if isinstance(exc, jwt.DecodeError):
        return "malformed token"
    return "invalid token"


# -- where a request carries its token ---------------------------------------------------


def token_from_request(headers: Mapping[str, str], target: str) -> str | None:
    """``Authorization: Bearer <jwt>``, else the ``token`` query parameter, else None."""
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    query = urlsplit(target).query
    if "token=" not in query:
        return None
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "token":
            return value
    return None


# -- loading keys (at startup) -------------------------------------------------------------


def secret_key(secret: str, kid: str | None = None) -> VerificationKey:
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise KeyFileError(f"jwt_secret must be at least {MIN_SECRET_BYTES} bytes (HS256, RFC 7518)")
    return _hs256_key(secret.encode(), "jwt_secret", kid)


def _hs256_key(secret: bytes, where: str, kid: str | None) -> VerificationKey:
    """An HS256 key, prepared by PyJWT once here rather than on every token; a secret PyJWT
    refuses (one that looks like a PEM, SSH or JWK key) is refused at startup."""
    try:
        prepared = _PreparedHMAC(HMACAlgorithm.SHA256).prepare_key(secret)
    except jwt.InvalidKeyError:
        raise KeyFileError(f"{where} looks like a PEM, SSH or JSON key, not an HMAC secret") from None
    return VerificationKey(kid, "HS256", _Secret(prepared))


def _public_key(key: Any, where: str, kid: str | None = None) -> VerificationKey:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyFileError(f"{where}: RSA keys need at least {MIN_RSA_BITS} bits")
        return VerificationKey(kid, "RS256", key)
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return VerificationKey(kid, "ES256", key)
    raise KeyFileError(f"{where}: only RSA (RS256) and P-256 (ES256) public keys are accepted")


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read(1 << 20)
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"{what} {path} cannot be read: {exc.strerror}") from None


def load_pem_keys(path: str) -> list[VerificationKey]:
    """Every public key of a PEM file (``BEGIN PUBLIC KEY`` blocks)."""
    data = _read(path, "jwt_public_key file")
    blocks = [match for match in _PEM_BLOCK.finditer(data)]
    if not blocks:
        raise KeyFileError(f"jwt_public_key file {path} holds no PEM block")
    keys = []
    for block in blocks:
        kind = block.group(1).decode()
        if kind != "PUBLIC KEY":
            hint = "; give the public key" if "PRIVATE" in kind else ""
            raise KeyFileError(f"jwt_public_key file {path} holds a {kind}{hint}")
        try:
            key = load_pem_public_key(block.group(0))
        except ValueError:
            raise KeyFileError(f"jwt_public_key file {path} holds a PEM block that is not a public key") from None
        keys.append(_public_key(key, f"jwt_public_key file {path}"))
    return keys


def load_jwks(path: str) -> list[VerificationKey]:
    """Every key of a JSON Web Key Set file; each needs a ``kid`` and an ``alg``."""
    where = f"jwt_keys file {path}"
    try:
        document = json.loads(_read(path, "jwt_keys file"))
    except ValueError:
        raise KeyFileError(f"{where} is not JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise KeyFileError(f'{where} must be {{"keys": [...]}} with at least one key')
    keys = []
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise KeyFileError(f"{where}: key {number} is not an object")
        kid, algorithm = entry.get("kid"), entry.get("alg")
        if not isinstance(kid, str) or not kid:
            raise KeyFileError(f"{where}: key {number} has no kid")
        if algorithm not in ALGORITHMS:
            raise KeyFileError(f"{where}: key {kid!r} needs alg HS256, RS256 or ES256")
        try:
            material = jwt.PyJWK(entry, algorithm).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            raise KeyFileError(f"{where}: key {kid!r} is not a valid {algorithm} key") from None
        if algorithm == "HS256":
            if not isinstance(material, bytes) or len(material) < MIN_SECRET_BYTES:
                raise KeyFileError(f"{where}: key {kid!r} must be at least {MIN_SECRET_BYTES} bytes")
            keys.append(_hs256_key(material, f"{where}: key {kid!r}", kid))
            continue
        key = _public_key(material, f"{where}: key {kid!r}", kid)
        if key.algorithm != algorithm:
            raise KeyFileError(f"{where}: key {kid!r} is not a {algorithm} key")
        keys.append(key)
    return keys
