"""Channel permissions: glob patterns from a token's ``channels`` claim, compiled once.

Sans-I/O. The claim is ``{"subscribe": [...], "publish": [...]}``; each list holds glob
patterns in which ``*`` matches any run of characters (the empty run, dots and slashes too)
and every other character stands for itself: ``?``, ``[`` and ``\\`` are not special. A
missing list, or a missing claim, grants nothing: deny by default. ``presence`` (the request
and ``"presence": true``) needs the right to subscribe; ``replay`` too.

A token's grants are compiled when it is verified (on connect or ``refresh``), never on a
request; connections whose tokens grant the same lists share one compiled ``Grants`` (an LRU
of ``COMPILED_GRANTS``). A ``Matcher`` answers ``matcher(channel)`` with, in order: a set lookup for exact names, one
``str.startswith`` with a tuple for ``prefix*`` patterns, then one compiled regular
expression for every other pattern. The expression is built so matching stays linear in the
channel name: each middle segment is found leftmost inside an atomic group (``(?>.*?seg)``),
which is exact for ``*``-only globs, so no pattern can make the engine backtrack badly.

Bounds (a claim past them is refused, which makes the token invalid: HTTP 401 on connect,
``bad_request`` on ``refresh``): at most ``MAX_PATTERNS`` patterns per list, each of 1 to
``MAX_PATTERN_LENGTH`` characters.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

import attrs

MAX_PATTERNS = 256
COMPILED_GRANTS = 1024  # distinct grant lists kept compiled (least recently used dropped)
MAX_PATTERN_LENGTH = 256
ACTIONS = ("subscribe", "publish")


class ClaimError(ValueError):
    """The ``channels`` claim has the wrong shape; the message is one readable line."""


def glob_regex(pattern: str) -> str:
    """The regular expression (for ``fullmatch``, DOTALL) of one glob pattern."""
    parts = pattern.split("*")
    if len(parts) == 1:
        return re.escape(pattern)
    first, *middle, last = parts
    body = [re.escape(first)]
    body.extend(f"(?>.*?{re.escape(segment)})" for segment in middle if segment)
    body.append(".*" + re.escape(last))
    return "".join(body)


class Matcher:
    """Answers whether a channel name matches any of a fixed set of glob patterns."""

    __slots__ = ("_everything", "_exact", "_prefixes", "_regex", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns: tuple[str, ...] = tuple(dict.fromkeys(patterns))
        exact: set[str] = set()
        prefixes: list[str] = []
        others: list[str] = []
        for pattern in self.patterns:
            star = pattern.find("*")
            if star < 0:
                exact.add(pattern)
            elif pattern[star:].strip("*") == "":  # "prefix*" (or "prefix**")
                prefixes.append(pattern[:star])
            else:
                others.append(pattern)
        self._everything = "" in prefixes
        self._exact = frozenset(exact)
        self._prefixes = tuple(prefixes)
        self._regex = re.compile("|".join(f"(?:{glob_regex(p)})" for p in others), re.DOTALL) if others else None

    def __call__(self, channel: str) -> bool:
        if self._everything or channel in self._exact:
            return True
        if self._prefixes and channel.startswith(self._prefixes):
            return True
        return self._regex is not None and self._regex.fullmatch(channel) is not None

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def __repr__(self) -> str:
        return f"Matcher({list(self.patterns)!r})"


NOTHING = Matcher(())
EVERYTHING = Matcher(("*",))


@attrs.frozen
class Grants:
    """What one connection may do, per channel. ``ALL`` is what a server without tokens grants."""

    subscribe: Matcher
    publish: Matcher

    def may_subscribe(self, channel: str) -> bool:
        return self.subscribe(channel)

    def may_publish(self, channel: str) -> bool:
        return self.publish(channel)


ALL = Grants(EVERYTHING, EVERYTHING)
NONE = Grants(NOTHING, NOTHING)


def parse_channels_claim(claim: Any) -> Grants:
    """The ``channels`` claim (``None`` when absent) as compiled grants; ``ClaimError`` if malformed.

    Other keys in the claim are ignored (a later version may add actions); the two known
    ones must be lists of non-empty strings within the bounds above.
    """
    if claim is None:
        return NONE
    if not isinstance(claim, dict):
        raise ClaimError("the channels claim must be an object with subscribe and publish lists")
    lists = []
    for action in ACTIONS:
        patterns = claim.get(action, [])
        if not isinstance(patterns, list):
            raise ClaimError(f"channels.{action} must be a list of patterns")
        if len(patterns) > MAX_PATTERNS:
            raise ClaimError(f"channels.{action} holds more than {MAX_PATTERNS} patterns")
        for pattern in patterns:
            if not isinstance(pattern, str) or not (0 < len(pattern) <= MAX_PATTERN_LENGTH):
                raise ClaimError(f"channels.{action} patterns must be strings of 1 to {MAX_PATTERN_LENGTH} characters")
        lists.append(tuple(patterns))
    return _compiled(lists[0], lists[1])


@functools.lru_cache(maxsize=COMPILED_GRANTS)
def _compiled(subscribe: tuple[str, ...], publish: tuple[str, ...]) -> Grants:
    """Grants are immutable, so connections whose tokens grant the same lists share them: a
    token's patterns are compiled at most once, and the common grant shapes only once (and
    once for both actions when they grant the same list)."""
    subscriber = Matcher(subscribe) if subscribe else NOTHING
    return Grants(subscriber, subscriber if publish == subscribe else Matcher(publish) if publish else NOTHING)
