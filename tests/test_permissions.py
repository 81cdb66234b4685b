"""Channel permissions: the glob matcher against a reference, and the channels-claim parser."""

from __future__ import annotations

import fnmatch
import functools
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from wsnursery.permissions import (
    ALL,
    MAX_PATTERN_LENGTH,
    MAX_PATTERNS,
    NONE,
    ClaimError,
    Matcher,
    parse_channels_claim,
)


def reference_match(pattern: str, name: str) -> bool:
    """``*`` matches any run of characters, everything else itself (dynamic programming)."""

    @functools.cache
    def match(i: int, j: int) -> bool:
        if i == len(pattern):
            return j == len(name)
        if pattern[i] == "*":
            return match(i + 1, j) or (j < len(name) and match(i, j + 1))
        return j < len(name) and pattern[i] == name[j] and match(i + 1, j + 1)

    return match(0, 0)


# A small alphabet makes matches likely; the specials of other glob dialects must stay literal.
ALPHABET = "ab.*?[]\\"
names = st.text(alphabet="ab.?[]\\*", max_size=12)
patterns = st.text(alphabet=ALPHABET, min_size=1, max_size=10)


@settings(max_examples=600)
@given(st.lists(patterns, max_size=6), names)
@example(["a*"], "a")
@example(["*"], "")
@example(["a*b*a"], "aba")
@example(["a*a"], "a")
@example(["[ab]"], "a")
@example(["a?"], "ab")
@example(["**"], "x")
def test_matcher_agrees_with_the_reference(globs: list[str], name: str) -> None:
    expected = any(reference_match(glob, name) for glob in globs)
    assert Matcher(globs)(name) is expected


@settings(max_examples=300)
@given(st.lists(st.text(alphabet="ab.*", min_size=1, max_size=10), max_size=4), st.text(alphabet="ab.", max_size=12))
def test_matcher_agrees_with_fnmatch_when_only_star_is_used(globs: list[str], name: str) -> None:
    expected = any(fnmatch.fnmatchcase(name, glob) for glob in globs)
    assert Matcher(globs)(name) is expected


def test_matcher_examples() -> None:
    chat = Matcher(["chat.*", "jobs.42", "*.public", "user.*.inbox"])
    assert chat("chat.x") and chat("chat.") and chat("chat.room.1")
    assert chat("jobs.42") and not chat("jobs.1") and not chat("jobs.420")
    assert chat("news.public") and not chat("news.publicx")
    assert chat("user.alice.inbox") and not chat("user.alice.outbox")
    assert not chat("chat") and not chat("")
    assert not Matcher([])("anything")
    assert Matcher(["*"])("") and Matcher(["*"])("x.y")
    assert not Matcher(["[a]"])("a") and Matcher(["[a]"])("[a]")


def test_matching_stays_linear_on_hostile_patterns() -> None:
    # Without atomic groups this pattern backtracks O(n^k) on a long name of 'a's.
    hostile = Matcher(["*a*a*a*a*a*a*a*a*a*b"] * 1 + ["x*a*a*a*a*a*a*a*a*c"])
    name = "a" * 4000
    started = time.process_time()
    assert not hostile(name)
    assert time.process_time() - started < 1.0  # seconds: a backtracking engine takes hours


def test_claim_absent_grants_nothing() -> None:
    grants = parse_channels_claim(None)
    assert grants is NONE
    assert not grants.may_subscribe("chat.x") and not grants.may_publish("chat.x")
    assert ALL.may_subscribe("anything") and ALL.may_publish("anything")


def test_claim_grants_per_action() -> None:
    grants = parse_channels_claim({"subscribe": ["chat.*", "jobs.42"], "publish": ["chat.*"], "later": 1})
    assert grants.may_subscribe("chat.x") and grants.may_subscribe("jobs.42")
    assert not grants.may_subscribe("jobs.1")
    assert grants.may_publish("chat.x") and not grants.may_publish("jobs.42")
    only_subscribe = parse_channels_claim({"subscribe": ["a"]})
    assert only_subscribe.may_subscribe("a") and not only_subscribe.may_publish("a")


@pytest.mark.parametrize(
    "claim",
    [
        "chat.*",
        ["chat.*"],
        1,
        {"subscribe": "chat.*"},
        {"subscribe": [1]},
        {"subscribe": [""]},
        {"publish": [None]},
        {"publish": {"a": 1}},
        {"subscribe": ["x" * (MAX_PATTERN_LENGTH + 1)]},
        {"subscribe": ["a"] * (MAX_PATTERNS + 1)},
    ],
)
def test_claims_of_the_wrong_shape_are_refused(claim: object) -> None:
    with pytest.raises(ClaimError):
        parse_channels_claim(claim)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
claim_like = st.dictionaries(
    st.sampled_from(["subscribe", "publish", "other"]),
    json_values | st.lists(st.text(alphabet="ab.*", max_size=6), max_size=4),
    max_size=3,
)


@settings(max_examples=400)
@given(json_values | claim_like, st.text(alphabet="ab.", max_size=8))
def test_the_claim_parser_accepts_only_the_documented_shape(claim: object, channel: str) -> None:
    def valid_list(value: object) -> bool:
        return (
            isinstance(value, list)
            and len(value) <= MAX_PATTERNS
            and all(isinstance(p, str) and 0 < len(p) <= MAX_PATTERN_LENGTH for p in value)
        )

    well_formed = claim is None or (
        isinstance(claim, dict) and all(valid_list(claim.get(a, [])) for a in ("subscribe", "publish"))
    )
    if not well_formed:
        with pytest.raises(ClaimError):
            parse_channels_claim(claim)
        return
    grants = parse_channels_claim(claim)
    lists = claim or {}
    assert isinstance(lists, dict)
    for action, check in (("subscribe", grants.may_subscribe), ("publish", grants.may_publish)):
        globs = lists.get(action, [])
        assert check(channel) is any(reference_match(g, channel) for g in globs)


def test_regex_specials_in_patterns_are_literal() -> None:
    for special in ".^$+(){}|":
        assert Matcher([f"a{special}*"])(f"a{special}b")
        assert not Matcher([f"a{special}*"])("axb")
    assert not Matcher(["a.b"])("axb") and not Matcher(["x*a.b"])("xaxb")


def test_one_list_for_both_actions_is_compiled_once() -> None:
    same = parse_channels_claim({"subscribe": ["chat.*", "a.*.b"], "publish": ["chat.*", "a.*.b"]})
    assert same.subscribe is same.publish and same.may_publish("a.x.b") and not same.may_publish("b")
    different = parse_channels_claim({"subscribe": ["chat.*", "a.*.b"], "publish": ["chat.*"]})
    assert different.may_subscribe("a.x.b") and not different.may_publish("a.x.b")
    only = parse_channels_claim({"subscribe": ["chat.*"]})
    assert only.may_subscribe("chat.x") and not only.may_publish("chat.x")
