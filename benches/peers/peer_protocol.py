"""The minimal subset of protocol v1 every peer speaks, sans-I/O.

Each peer moves frames with its own library; this module decides what the frames are, so
every peer does the same work per request (one JSON encode per broadcast) and the side-by-side
benches compare the transports, not three copies of the protocol code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Hashable
from typing import Any

EPOCH = "p"
HEARTBEAT = 20.0
MAX_SIZE = 2**20
dumps = json.JSONEncoder(separators=(",", ":")).encode


def welcome(server: str) -> str:
    return dumps(
        {"type": "welcome", "protocol": 1, "server": server, "heartbeat": HEARTBEAT, "max_message_size": MAX_SIZE}
    )


class Registry:
    """Channels, their seqs and subscribers, for one peer process."""

    def __init__(self) -> None:
        self.subscribers: dict[str, set[Any]] = {}
        self.seqs: dict[str, int] = {}
        self._channels_of: dict[Hashable, set[str]] = {}

    def handle(self, conn: Hashable, raw: str | bytes) -> tuple[str, tuple[list[Any], str] | None]:
        """The reply to one request, and the broadcast it causes: (subscribers, frame) or None."""
        try:
            req = json.loads(raw)
            kind, rid = req.get("type"), req.get("id")
        except (ValueError, AttributeError):
            return dumps({"type": "error", "code": "bad_request", "reason": "not a JSON object"}), None
        if kind == "publish":
            ch = req["channel"]
            seq = self.seqs[ch] = self.seqs.get(ch, 0) + 1
            frame = dumps(
                {
                    "type": "message",
                    "channel": ch,
                    "epoch": EPOCH,
                    "seq": seq,
                    "data": req.get("data"),
                    "ts": int(time.time() * 1000),
                }
            )
            reply = dumps({"type": "published", "id": rid, "channel": ch, "epoch": EPOCH, "seq": seq})
            return reply, (list(self.subscribers.get(ch, ())), frame)
        if kind == "subscribe":
            ch = req["channel"]
            self.subscribers.setdefault(ch, set()).add(conn)
            self._channels_of.setdefault(conn, set()).add(ch)
            return dumps(
                {"type": "subscribed", "id": rid, "channel": ch, "epoch": EPOCH, "seq": self.seqs.get(ch, 0)}
            ), None
        if kind == "unsubscribe":
            ch = req["channel"]
            self.subscribers.get(ch, set()).discard(conn)
            self._channels_of.get(conn, set()).discard(ch)
            return dumps({"type": "unsubscribed", "id": rid, "channel": ch}), None
        return dumps({"type": "error", "id": rid, "code": "unknown_type", "reason": str(kind)}), None

    def drop(self, conn: Hashable) -> None:
        """A connection ended: it leaves every channel it subscribed to."""
        for ch in self._channels_of.pop(conn, ()):
            self.subscribers[ch].discard(conn)
