"""Figures over time, sampled during a run, for the HTML report (``--html``).

A :class:`Timeline` keeps at most ``max_points`` samples: past that it keeps every other one
and samples half as often from then on, so a long run costs the same memory as a short one
and still covers the whole run evenly. Percentile curves (:func:`curve`) come from the run's
HDR histograms at fixed percentiles.
"""

from __future__ import annotations

import time
from typing import Any

#: Percentiles of a latency curve: dense in the tail, where the interesting part is.
CURVE_PERCENTILES = (0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0)


class Timeline:
    """``add(**figures)`` samples (seconds since the start go in ``t``); ``points`` is the list."""

    def __init__(self, max_points: int = 1000) -> None:
        self.max_points = max_points
        self.started = time.monotonic()
        self.points: list[dict[str, Any]] = []
        self._every = 1  # keep one add() in this many
        self._calls = 0

    def add(self, **figures: Any) -> None:
        self._calls += 1
        if (self._calls - 1) % self._every:
            return
        self.points.append({"t": round(time.monotonic() - self.started, 3), **figures})
        if len(self.points) > self.max_points:
            self.points = self.points[::2]
            self._every *= 2


def curve(histogram: Any) -> list[list[float]]:
    """``[[percentile, milliseconds], ...]`` of an HDR histogram in microseconds; [] when empty."""
    if histogram.get_total_count() == 0:
        return []
    out = []
    for p in CURVE_PERCENTILES:
        if p == 0.0:
            value = histogram.get_min_value()
        elif p == 100.0:
            value = histogram.get_max_value()
        else:
            value = histogram.get_value_at_percentile(p)
        out.append([p, round(value / 1000.0, 3)])
    return out
