"""Admission before the upgrade, and per-request checks (sans-I/O)."""

from __future__ import annotations

import attrs
import pytest

from wsnursery import security
from wsnursery.access import Access, Refused, admit
from wsnursery.config import Config
from wsnursery.protocol import ProtocolError

from .auth_keys import SECRET, claims, mint


def secured(**settings: object) -> security.Security:
    return security.load(Config(**settings))  # type: ignore[arg-type]


TOKENS = secured(jwt_secret=SECRET)


def test_without_tokens_everything_is_admitted_and_allowed() -> None:
    plain = secured()
    assert admit(plain, {}, "/", "pubsub") is None
    access = Access(plain, None, 0.0)
    assert access.user is None and access.expires is None
    access.may_subscribe("any", 1, 0.0)
    access.may_publish("any", 1, 0.0)
    with pytest.raises(ProtocolError) as info:
        access.refresh(mint(), 3)
    assert (info.value.code, info.value.request_id) == ("bad_request", 3)


def test_a_token_from_header_or_query() -> None:
    token = mint(claims("alice", channels={"subscribe": ["chat.*"]}))
    identity = admit(TOKENS, {"authorization": f"Bearer {token}"}, "/", "pubsub")
    assert identity is not None and identity.sub == "alice"
    identity = admit(TOKENS, {}, f"/?token={token}", "pubsub")
    assert identity is not None and identity.sub == "alice"


@pytest.mark.parametrize(
    ("headers", "target"),
    [({}, "/"), ({"authorization": "Bearer nope"}, "/"), ({}, "/?token="), ({}, "/?token=" + mint(claims(ttl=-1)))],
)
def test_missing_or_bad_tokens_are_401(headers: dict[str, str], target: str) -> None:
    with pytest.raises(Refused) as info:
        admit(TOKENS, headers, target, "pubsub")
    assert info.value.status == 401 and ("WWW-Authenticate", 'Bearer realm="wsnursery"') in info.value.headers
    assert "token=" not in str(info.value)


def test_echo_open_and_origins() -> None:
    with pytest.raises(Refused):
        admit(TOKENS, {}, "/echo", "echo")
    assert admit(secured(jwt_secret=SECRET, echo_open=True), {}, "/echo", "echo") is None
    guarded = secured(allowed_origin=("https://*.example.com",))
    assert admit(guarded, {"origin": "https://app.example.com"}, "/", "pubsub") is None
    with pytest.raises(Refused) as info:
        admit(guarded, {"origin": "https://evil.test"}, "/", "pubsub")
    assert info.value.status == 403 and info.value.headers == []


def test_grants_and_refresh() -> None:
    identity = admit(
        TOKENS,
        {"authorization": "Bearer " + mint(claims("alice", channels={"subscribe": ["chat.*"], "publish": ["chat.x"]}))},
        "/",
        "pubsub",
    )
    access = Access(TOKENS, identity, 0.0)
    assert access.user == "alice"
    access.may_subscribe("chat.y", 1, 0.0)
    access.may_read("chat.y", 1)
    access.may_publish("chat.x", 1, 0.0)
    for check in (
        lambda: access.may_subscribe("jobs.1", 2, 0.0),
        lambda: access.may_read("jobs.1", 2),
        lambda: access.may_publish("chat.y", 2, 0.0),
    ):
        with pytest.raises(ProtocolError) as info:
            check()
        assert (info.value.code, info.value.request_id) == ("forbidden", 2)
    old_exp = access.expires
    renewed = access.refresh(mint(claims("alice", ttl=3600, channels={"subscribe": ["jobs.*"]})), 4)
    assert renewed.exp > (old_exp or 0) and access.expires == renewed.exp
    access.may_subscribe("jobs.1", 5, 0.0)  # the new token's grants apply
    with pytest.raises(ProtocolError, match="same sub"):
        access.refresh(mint(claims("mallory")), 6)
    with pytest.raises(ProtocolError, match="expired"):
        access.refresh(mint(claims("alice", ttl=-1)), 7)
    assert access.expires == renewed.exp  # a refused refresh leaves the token in force
    assert access.seconds_left(renewed.exp - 10) == pytest.approx(10)


def test_rate_limits() -> None:
    limited = attrs.evolve(secured(), publish_rate=2.0, subscribe_rate=1.0)
    access = Access(limited, None, 100.0)
    access.may_publish("a", 1, 100.0)
    access.may_publish("a", 1, 100.0)
    with pytest.raises(ProtocolError) as info:
        access.may_publish("a", 9, 100.0)
    assert (info.value.code, info.value.request_id) == ("rate_limited", 9)
    access.may_publish("a", 1, 100.5)
    access.may_subscribe("a", 1, 100.0)
    with pytest.raises(ProtocolError, match="subscribes a second"):
        access.may_subscribe("b", 1, 100.1)
