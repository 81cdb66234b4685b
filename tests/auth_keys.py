"""Keys and tokens for the auth tests (this module holds no tests): generated, never read from disk."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

SECRET = "test-secret-that-is-long-enough-for-hs256!"
OTHER_SECRET = "another-secret-that-is-long-enough-for-hs256"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def public_pem(private: Any) -> bytes:
    return private.public_key().public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_pem(private: Any) -> bytes:
    return private.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def claims(sub: str = "alice", ttl: float = 300, **more: Any) -> dict[str, Any]:
    return {"sub": sub, "exp": int(time.time() + ttl), **more}


def mint(payload: dict[str, Any] | None = None, key: Any = SECRET, algorithm: str = "HS256", **headers: Any) -> str:
    return jwt.encode(payload if payload is not None else claims(), key, algorithm=algorithm, headers=headers or None)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(payload: dict[str, Any]) -> str:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(payload).encode())}."


def write(tmp: Path, name: str, data: bytes | str) -> str:
    path = tmp / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


def jwks(*entries: dict[str, Any]) -> str:
    return json.dumps({"keys": list(entries)})


def oct_jwk(kid: str, secret: str) -> dict[str, Any]:
    return {"kty": "oct", "kid": kid, "alg": "HS256", "k": b64url(secret.encode())}


def public_jwk(kid: str, private: Any, algorithm: str) -> dict[str, Any]:
    algo = jwt.algorithms.RSAAlgorithm if algorithm == "RS256" else jwt.algorithms.ECAlgorithm
    entry: dict[str, Any] = json.loads(algo.to_jwk(private.public_key()))
    return entry | {"kid": kid, "alg": algorithm}


def self_signed(tmp: Path, host: str = "127.0.0.1") -> tuple[str, str]:
    """A throwaway self-signed certificate for ``host`` (and localhost): (certfile, keyfile)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wsnursery test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    certfile = write(tmp, "cert.pem", cert.public_bytes(serialization.Encoding.PEM))
    keyfile = write(tmp, "key.pem", private_pem(key))
    return certfile, keyfile
