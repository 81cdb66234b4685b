"""Connection tokens: every bad token is refused with a short reason; keys chosen by kid."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from wsnursery.tokens import (
    MAX_TOKEN_BYTES,
    KeyFileError,
    KeySet,
    TokenError,
    load_jwks,
    load_pem_keys,
    secret_key,
    token_from_request,
)

from .auth_keys import (
    EC_KEY,
    OTHER_SECRET,
    RSA_KEY,
    SECRET,
    b64url,
    claims,
    jwks,
    mint,
    oct_jwk,
    private_pem,
    public_jwk,
    public_pem,
    unsigned,
    write,
)

HS = KeySet([secret_key(SECRET)])


@pytest.fixture
def hs() -> KeySet:
    return HS


@pytest.fixture
def pem_keys(tmp_path: Path) -> KeySet:
    path = write(tmp_path, "keys.pem", public_pem(RSA_KEY) + public_pem(EC_KEY))
    return KeySet(load_pem_keys(path))


def test_a_good_hs256_token_gives_the_identity(hs: KeySet) -> None:
    token = mint(claims("alice", channels={"subscribe": ["chat.*"], "publish": []}))
    identity = hs.verify(token)
    assert identity.sub == "alice"
    assert identity.exp > time.time()
    assert identity.grants.may_subscribe("chat.x") and not identity.grants.may_subscribe("jobs.1")
    assert not identity.grants.may_publish("chat.x")


def test_rs256_and_es256_from_one_pem_file(pem_keys: KeySet) -> None:
    assert pem_keys.verify(mint(claims("r"), private_pem(RSA_KEY), "RS256")).sub == "r"
    assert pem_keys.verify(mint(claims("e"), private_pem(EC_KEY), "ES256")).sub == "e"
    with pytest.raises(TokenError, match="no key"):
        pem_keys.verify(mint(claims()))  # HS256: there is no secret


BAD_HS256 = {
    "garbage": lambda: "not-a-token",
    "bad base64": lambda: "eyJhbGciOiJIUzI1NiJ9.@@@@.###",
    "two parts": lambda: mint().rsplit(".", 1)[0],
    "none algorithm": lambda: unsigned(claims()),
    "wrong key": lambda: mint(key=OTHER_SECRET),
    "tampered payload": lambda: _tamper(mint()),
    "expired": lambda: mint(claims(ttl=-5)),
    "not yet valid": lambda: mint(claims(nbf=int(time.time()) + 600)),
    "issued in the future": lambda: mint(claims(iat=int(time.time()) + 600)),
    "missing sub": lambda: mint({"exp": int(time.time()) + 60}),
    "missing exp": lambda: mint({"sub": "alice"}),
    "empty sub": lambda: mint(claims("")),
    "numeric sub": lambda: mint({"sub": 7, "exp": int(time.time()) + 60}),
    "string exp": lambda: mint({"sub": "a", "exp": "tomorrow"}),
    "huge": lambda: mint(claims(pad="x" * MAX_TOKEN_BYTES)),
    "channels a list": lambda: mint(claims(channels=["chat.*"])),
    "channels subscribe a string": lambda: mint(claims(channels={"subscribe": "chat.*"})),
    "unexpected audience": lambda: mint(claims(aud="elsewhere")),
    "unknown kid": lambda: mint(kid="k9"),
    "RS256 header on an HMAC key": lambda: mint(claims(), private_pem(RSA_KEY), "RS256"),
    "HS384": lambda: mint(claims(), SECRET * 2, "HS384"),
    "empty": lambda: "",
}


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    body = jwt.utils.base64url_decode(payload).replace(b"alice", b"mallo")
    return ".".join([header, jwt.utils.base64url_encode(body).decode(), signature])


@pytest.mark.parametrize("case", sorted(BAD_HS256))
def test_each_bad_token_is_refused(hs: KeySet, case: str) -> None:
    token = BAD_HS256[case]()
    with pytest.raises(TokenError) as info:
        hs.verify(token)
    reason = str(info.value)
    assert "\n" not in reason and SECRET not in reason and len(reason) < 120


def test_hs256_signed_with_the_public_key_is_refused(pem_keys: KeySet) -> None:
    # The classic confusion attack: the public key's PEM used as an HMAC secret.
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    mac = hmac.new(public_pem(RSA_KEY), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    with pytest.raises(TokenError):
        pem_keys.verify(f"{header}.{payload}.{b64url(mac)}")


def test_audience_and_issuer_when_configured() -> None:
    keys = KeySet([secret_key(SECRET)], audience="chat-app", issuer="https://issuer.test")
    good = claims(aud="chat-app", iss="https://issuer.test")
    assert keys.verify(mint(good)).sub == "alice"
    for bad in (
        claims(aud="other", iss="https://issuer.test"),
        claims(aud="chat-app"),
        claims(iss="https://issuer.test"),
    ):
        with pytest.raises(TokenError):
            keys.verify(mint(bad))


def test_rotation_with_a_key_set_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "jwks.json",
        jwks(
            oct_jwk("old", SECRET),
            oct_jwk("new", OTHER_SECRET),
            public_jwk("rsa1", RSA_KEY, "RS256"),
            public_jwk("ec1", EC_KEY, "ES256"),
        ),
    )
    keys = KeySet(load_jwks(path))
    assert keys.verify(mint(claims("a"), SECRET, kid="old")).sub == "a"
    assert keys.verify(mint(claims("b"), OTHER_SECRET, kid="new")).sub == "b"
    assert keys.verify(mint(claims("c"), private_pem(RSA_KEY), "RS256", kid="rsa1")).sub == "c"
    assert keys.verify(mint(claims("d"), private_pem(EC_KEY), "ES256", kid="ec1")).sub == "d"
    for token in (
        mint(claims(), SECRET, kid="new"),  # the kid picks the key: the old secret does not verify
        mint(claims(), SECRET),  # no kid, and no key without one
        mint(claims(), private_pem(EC_KEY), "ES256", kid="rsa1"),  # algorithm pinned per key
        mint(claims(), SECRET, kid="gone"),
    ):
        with pytest.raises(TokenError):
            keys.verify(token)


def test_refresh_must_keep_the_sub(hs: KeySet) -> None:
    assert hs.verify_refresh(mint(claims("alice", ttl=900)), "alice").sub == "alice"
    with pytest.raises(TokenError, match="same sub"):
        hs.verify_refresh(mint(claims("mallory")), "alice")


@settings(max_examples=300)
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_arbitrary_text_is_a_token_error_and_nothing_else(text: str) -> None:
    with pytest.raises(TokenError):
        HS.verify(text)


@settings(max_examples=200)
@given(st.integers(0, 200), st.sampled_from(["header", "payload", "signature"]), st.binary(min_size=1, max_size=3))
def test_a_flipped_token_is_refused(position: int, part: str, junk: bytes) -> None:
    token = mint(claims())
    pieces = token.split(".")
    index = ["header", "payload", "signature"].index(part)
    text = pieces[index]
    at = position % (len(text) + 1)
    changed = text[:at] + junk.hex() + text[at:]
    pieces[index] = changed
    with pytest.raises(TokenError):
        HS.verify(".".join(pieces))


def test_token_from_request() -> None:
    assert token_from_request({"authorization": "Bearer abc.def.ghi"}, "/") == "abc.def.ghi"
    assert token_from_request({"authorization": "bearer  t "}, "/?token=q") == "t"
    assert token_from_request({}, "/?a=1&token=xyz&b=2") == "xyz"
    assert token_from_request({}, "/?token=a%2Bb") == "a+b"
    assert token_from_request({"authorization": "Basic dXNlcg=="}, "/") is None
    assert token_from_request({}, "/?tokens=1") is None
    assert token_from_request({}, "/") is None


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.pem", None, "does not exist"),
        ("empty.pem", b"", "no PEM block"),
        ("private.pem", private_pem(RSA_KEY), "give the public key"),
        ("junk.pem", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a public key"),
        ("p384.pem", public_pem(ec.generate_private_key(ec.SECP384R1())), "P-256"),
    ],
)
def test_bad_pem_files_are_one_line_errors(tmp_path: Path, name: str, content: bytes | None, message: str) -> None:
    path = str(tmp_path / name) if content is None else write(tmp_path, name, content)
    with pytest.raises(KeyFileError, match=message) as info:
        load_pem_keys(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not JSON"),
        ('{"keys": []}', "at least one key"),
        ('{"keys": [1]}', "not an object"),
        (jwks({"kty": "oct", "alg": "HS256", "k": "YQ"}), "no kid"),
        (jwks(oct_jwk("a", SECRET) | {"alg": "none"}), "needs alg"),
        (jwks(oct_jwk("a", "short")), "at least 32 bytes"),
        (jwks(oct_jwk("a", SECRET) | {"alg": "RS256"}), "not a valid RS256 key"),
        (jwks(public_jwk("e", EC_KEY, "ES256") | {"alg": "RS256"}), "not a valid RS256 key"),
    ],
)
def test_bad_key_set_files_are_one_line_errors(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(KeyFileError, match=message):
        load_jwks(write(tmp_path, "jwks.json", content))


def test_duplicate_kids_and_short_secrets_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="two keys"):
        load = load_jwks(write(tmp_path, "k.json", jwks(oct_jwk("a", SECRET), oct_jwk("a", OTHER_SECRET))))
        KeySet(load)
    with pytest.raises(KeyFileError, match="at least 32 bytes"):
        secret_key("short")


def test_a_verified_token_is_remembered_until_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    from wsnursery import tokens

    keys = KeySet([secret_key(SECRET)])
    token = mint(claims("alice", ttl=60))
    first = keys.verify(token)
    assert keys.verify(token) is first  # the second time from the cache
    later = time.time() + 120
    monkeypatch.setattr(tokens.time, "time", lambda: later)
    with pytest.raises(TokenError, match="expired"):
        keys.verify(token)  # the cache checks the expiry too
    monkeypatch.undo()
    for bad in BAD_HS256.values():  # refused tokens are never cached, so refused again
        value = bad()
        for _ in range(2):
            with pytest.raises(TokenError):
                keys.verify(value)
    monkeypatch.setattr(tokens, "CACHED_TOKENS", 3)
    many = [mint(claims(f"u{i}")) for i in range(5)]
    for value in many:
        keys.verify(value)
    assert len(keys._verified) == 3 and list(keys._verified) == many[2:]


def test_a_secret_pyjwt_would_refuse_is_refused_at_startup(tmp_path: Path) -> None:
    """A secret that looks like a key is one line at startup, not an error on every token."""
    with pytest.raises(KeyFileError, match="jwt_secret looks like a PEM, SSH or JSON key"):
        secret_key(json.dumps(oct_jwk("k", SECRET)))
    with pytest.raises(KeyFileError, match="jwt_secret looks like"):
        secret_key("-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----")
    pem_like = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"
    with pytest.raises(KeyFileError, match="key 'k' looks like"):
        load_jwks(write(tmp_path, "k.json", jwks(oct_jwk("k", pem_like))))


def test_hs256_secrets_are_prepared_once_not_per_token(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = KeySet([secret_key(SECRET)])
    good, forged = mint(claims("alice")), mint(claims("alice"), key=OTHER_SECRET)
    calls: list[bytes] = []
    original = jwt.algorithms.HMACAlgorithm.prepare_key

    def counted(self: jwt.algorithms.HMACAlgorithm, key: bytes) -> bytes:
        calls.append(key)
        return original(self, key)

    monkeypatch.setattr(jwt.algorithms.HMACAlgorithm, "prepare_key", counted)
    assert keys.verify(good).sub == "alice"
    with pytest.raises(TokenError, match="bad signature"):  # the prepared key still checks
        keys.verify(forged)
    assert calls == []
