"""Fixtures of the harness tests."""

from __future__ import annotations

import pytest

from wsnursery.client import session
from wsnursery.client.receiver import ChannelReceiver, Deliver, Message


class DeliversRepeats(ChannelReceiver):
    """A broken receiver: dedup switched off, so repeats reach the application."""

    def on_message(self, epoch, seq, data, ts, now):
        if epoch == self._epoch and self._resync is None and seq <= self._delivered:
            return [Deliver(Message(self.channel, epoch, seq, data, ts))]
        return super().on_message(epoch, seq, data, ts, now)


@pytest.fixture
def broken_dedup(monkeypatch):
    """Every client of the test delivers repeated messages to its application (the client
    session makes each subscription's receiver)."""
    monkeypatch.setattr(session, "ChannelReceiver", DeliversRepeats)
