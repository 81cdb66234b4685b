"""Presence: who is subscribed to a channel, and the ``join``/``leave`` frames that say so.

Sans-I/O. Every subscriber of a channel is a member (``user`` is the token's ``sub``, null
without tokens; ``conn`` names the connection). A subscription made with ``"presence": true``
is a *watcher*: it also gets ``join`` and ``leave`` frames. Each event is stamped with the
channel's head seq when it happened (``after``) and is delivered after every message up to
that seq and before any later one: the channel's order. Its frame is encoded once per
encoding, like a message, whatever the number of watchers.

This registry is one process's. With the Redis engine, ``redis_presence.ClusterPresence``
(a subclass) keeps the members in Redis for the whole cluster and gets the events back from
the channel's stream; only the watchers stay here.

Bounds, and what happens at each:
- ``max_members`` tracked members per channel. A subscriber past it is subscribed as usual,
  but it is not listed, and no ``join``/``leave`` is sent for it; replies to ``presence``
  then carry ``"complete": false`` until every untracked subscriber has left. A freed slot
  goes to the next subscriber that joins (an untracked one is not promoted).
- watchers hold the events not yet written to them; the connection bounds that queue (a
  watcher past it is a slow consumer: 4008), see ``connection``.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from typing import Any, Protocol

import attrs

from . import codec, wsframe
from .codec import Encoding

DEFAULT_MAX_MEMBERS = 1000


@attrs.frozen
class Member:
    user: str | None
    conn: str

    def as_dict(self) -> dict[str, Any]:
        return {"user": self.user, "conn": self.conn}


class PresenceEvent:
    """One ``join`` or ``leave`` on a channel, after the message with seq ``after``."""

    __slots__ = ("_cbor", "_json", "after", "channel", "kind", "member")

    def __init__(self, kind: str, channel: str, member: Member, after: int) -> None:
        self.kind = kind
        self.channel = channel
        self.member = member
        self.after = after
        self._json: bytes | None = None
        self._cbor: bytes | None = None

    def as_frame(self) -> dict[str, Any]:
        return {"type": self.kind, "channel": self.channel, **self.member.as_dict()}

    def frame(self, encoding: Encoding) -> bytes:
        """The complete WebSocket frame in ``encoding``, encoded the first time it is asked for."""
        if encoding is Encoding.JSON:
            if self._json is None:
                self._json = self._encode(encoding)
            return self._json
        if self._cbor is None:
            self._cbor = self._encode(encoding)
        return self._cbor

    def _encode(self, encoding: Encoding) -> bytes:
        return wsframe.data_frame(codec.encode(self.as_frame(), encoding), binary=encoding.is_binary)


class Watcher(Protocol):
    """A subscription that asked for ``join``/``leave`` frames."""

    def presence_event(self, event: PresenceEvent) -> None:
        """Called without blocking, as the member joins or leaves."""


class _Channel:
    __slots__ = ("members", "untracked", "watchers")

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}  # by conn, in the order they joined
        self.untracked = 0
        self.watchers: dict[Watcher, None] = {}

    @property
    def empty(self) -> bool:
        return not (self.members or self.untracked or self.watchers)


class PresenceRegistry:
    """Members and watchers per channel in this process."""

    def __init__(self, max_members: int = DEFAULT_MAX_MEMBERS) -> None:
        self.max_members = max_members
        self._channels: dict[str, _Channel] = {}

    def join(self, channel: str, member: Member, after: int) -> bool:
        """``member`` subscribed: tell the watchers (including its own watcher, if it is one).

        Returns False when the channel already tracks ``max_members``: the member is counted
        as untracked and nobody is told.
        """
        state = self._channels.setdefault(channel, _Channel())
        if member.conn in state.members:
            return True
        if len(state.members) >= self.max_members:
            state.untracked += 1
            return False
        state.members[member.conn] = member
        if state.watchers:
            self._tell(state, PresenceEvent("join", channel, member, after))
        return True

    def leave(self, channel: str, conn: str, tracked: bool, after: int) -> None:
        """The member ``conn`` (``tracked`` as ``join`` answered) unsubscribed or went away."""
        state = self._channels.get(channel)
        if state is None:
            return
        if tracked:
            member = state.members.pop(conn, None)
            if member is not None and state.watchers:
                self._tell(state, PresenceEvent("leave", channel, member, after))
        elif state.untracked:
            state.untracked -= 1
        if state.empty:
            del self._channels[channel]

    def watch(self, channel: str, watcher: Watcher) -> None:
        self._channels.setdefault(channel, _Channel()).watchers[watcher] = None

    def unwatch(self, channel: str, watcher: Watcher) -> None:
        state = self._channels.get(channel)
        if state is not None:
            state.watchers.pop(watcher, None)
            if state.empty:
                del self._channels[channel]

    def members(self, channel: str) -> list[Member]:
        state = self._channels.get(channel)
        return [] if state is None else list(state.members.values())

    def complete(self, channel: str) -> bool:
        """False while some subscriber of ``channel`` is past ``max_members`` and not listed."""
        state = self._channels.get(channel)
        return state is None or state.untracked == 0

    async def listing(self, channel: str) -> tuple[list[Member], bool]:
        """The members and the ``complete`` flag, as a ``presence`` reply gives them (a cluster's
        registry asks its store here: ``redis_presence``)."""
        return self.members(channel), self.complete(channel)

    def watched(self, channel: str) -> bool:
        state = self._channels.get(channel)
        return state is not None and bool(state.watchers)

    def tell(self, channel: str, event: PresenceEvent) -> None:
        """Hand ``event`` to the channel's watchers in this process."""
        state = self._channels.get(channel)
        if state is not None and state.watchers:
            self._tell(state, event)

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    @staticmethod
    def _tell(state: _Channel, event: PresenceEvent) -> None:
        for watcher in tuple(state.watchers):
            watcher.presence_event(event)


def connection_ids(prefix: str | None = None) -> Iterator[str]:
    """Short connection names, unique within a process (``c-`` + a random prefix + a counter)."""
    prefix = secrets.token_hex(2) if prefix is None else prefix
    return (f"c-{prefix}{number:x}" for number in itertools.count(1))


def presence_reply(request_id: int | None, channel: str, members: list[Member], complete: bool) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "presence"}
    if request_id is not None:
        frame["id"] = request_id
    frame.update(channel=channel, members=[member.as_dict() for member in members], complete=complete)
    return frame
