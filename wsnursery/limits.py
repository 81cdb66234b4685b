"""Per-connection rate limits, the per-IP connection cap and the Origin check.

Sans-I/O: callers pass the time (``trio.current_time()``), nothing here sleeps or reads a clock.

- ``TokenBucket``: ``rate`` requests per second with a burst of ``burst`` (by default one
  second's worth, at least 1). A request that finds the bucket empty is refused, not delayed:
  the connection answers ``error`` ``rate_limited``, which counts toward ``max_errors``.
- ``AddressCounter``: WebSocket connections per client IP address; past ``limit`` the upgrade
  gets HTTP 429. It holds one entry per address with a connection open, so it is bounded by
  ``max_connections``.
- ``OriginPolicy``: ``--allowed-origin`` globs (``*`` any run of characters, matched without
  regard to case, e.g. ``https://*.example.com``). With none configured every Origin is
  accepted (as before). With some, an upgrade whose ``Origin`` header matches none gets HTTP
  403; a request without ``Origin`` is not from a browser page and is accepted (browsers
  always send it on WebSocket upgrades, and a non-browser client can send any Origin anyway).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from .permissions import Matcher


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``; ``take`` spends one if there is one."""

    __slots__ = ("_level", "_stamp", "burst", "rate")

    def __init__(self, rate: float, burst: float | None = None, now: float = 0.0) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError("rate must be a positive number")
        self.rate = rate
        self.burst = float(burst if burst is not None else max(1.0, rate))
        if self.burst < 1:
            raise ValueError("burst must be at least 1")
        self._level = self.burst
        self._stamp = now

    def take(self, now: float) -> bool:
        """Spend one token at time ``now``; False (and nothing spent) when the bucket is empty."""
        if now > self._stamp:
            self._level = min(self.burst, self._level + (now - self._stamp) * self.rate)
            self._stamp = now
        if self._level >= 1.0:
            self._level -= 1.0
            return True
        return False

    def wait_time(self, now: float) -> float:
        """Seconds until ``take`` would succeed (0 when it would now)."""
        level = min(self.burst, self._level + max(0.0, now - self._stamp) * self.rate)
        return 0.0 if level >= 1.0 else (1.0 - level) / self.rate


class AddressCounter:
    """Open connections per client address, at most ``limit`` each (0: no limit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, address: str) -> bool:
        count = self._open.get(address, 0)
        if self.limit and count >= self.limit:
            return False
        self._open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self._open.get(address, 0) - 1
        if count > 0:
            self._open[address] = count
        else:
            self._open.pop(address, None)

    def __len__(self) -> int:
        return len(self._open)

    def count(self, address: str) -> int:
        return self._open.get(address, 0)


class OriginPolicy:
    """Which browser origins may open WebSocket connections."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(pattern.strip().lower() for pattern in patterns if pattern.strip())
        self._matcher = Matcher(self.patterns)

    def allows(self, origin: str | None) -> bool:
        if not self.patterns or origin is None:
            return True
        return self._matcher(origin.strip().lower())
