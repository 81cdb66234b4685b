"""Prometheus metrics of one server, in a registry of its own.

Each Server owns a ``Metrics`` so that several servers in one process (tests, benches) never
share counters. Hot paths add in batches (a writer counts a whole write at once), gauges the
server counts anyway are read at scrape time, and labelled children are looked up once.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    exposition,
    generate_latest,
)

# What ``generate_latest`` writes is the 0.0.4 text format. prometheus_client >= 0.22 names
# "version=1.0.0" in CONTENT_TYPE_LATEST, which its own server sends only to scrapers that ask
# for it (Accept, with an escaping scheme); without negotiation the body is 0.0.4, so say so.
CONTENT_TYPE = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections_opened = Counter(
            "wsnursery_connections", "WebSocket connections accepted", ["endpoint"], registry=r
        )
        self.connections_active = Gauge("wsnursery_connections_active", "WebSocket connections open now", registry=r)
        self.connections_rejected = Counter(
            "wsnursery_connections_rejected", "Handshakes refused", ["reason"], registry=r
        )
        self.connections_closed = Counter(
            "wsnursery_connections_closed", "Connections closed, by close code", ["code"], registry=r
        )
        self.messages_in = Counter("wsnursery_messages_received", "WebSocket messages received", registry=r)
        self.messages_out = Counter("wsnursery_messages_sent", "WebSocket messages sent", registry=r)
        self.bytes_in = Counter("wsnursery_received_bytes", "Bytes received on WebSocket connections", registry=r)
        self.bytes_out = Counter("wsnursery_sent_bytes", "Bytes sent on WebSocket connections", registry=r)
        self.publishes = Counter("wsnursery_publishes", "Messages published (duplicates excluded)", registry=r)
        self.duplicate_publishes = Counter(
            "wsnursery_duplicate_publishes", "Publishes answered from the dedup window", registry=r
        )
        self.deliveries = Counter("wsnursery_deliveries", "Message frames written to subscribers", registry=r)
        self.retransmits = Counter("wsnursery_retransmits", "Unacknowledged deliveries re-sent", registry=r)
        self.slow_consumer_closes = Counter(
            "wsnursery_slow_consumer_closes", "Subscribers closed with 4008", registry=r
        )
        self.heartbeat_timeouts = Counter("wsnursery_heartbeat_timeouts", "Connections closed with 4000", registry=r)
        self.errors = Counter("wsnursery_errors", "Error frames sent, by code", ["code"], registry=r)
        self.queue_depth = Gauge(
            "wsnursery_queue_depth", "Messages waiting to be written, over all subscribers", registry=r
        )

        # (counter, label value) -> child. Label values come from small fixed sets (endpoints,
        # refusal reasons, error codes) or from close codes, which are 1000-4999 at most.
        self._children: dict[tuple[Counter, str], Counter] = {}

    def track_queue_depth(self, read: Callable[[], float]) -> None:
        self.queue_depth.set_function(read)

    def track_connections_active(self, read: Callable[[], float]) -> None:
        self.connections_active.set_function(read)

    def count(self, counter: Counter, label: str) -> None:
        """``counter.labels(label).inc()``, with the child looked up here after the first time:
        ``labels()`` checks the label and takes the metric's lock on every call, about 2 us
        more, twice per connection."""
        child = self._children.get((counter, label))
        if child is None:
            child = self._children[(counter, label)] = counter.labels(label)
        child.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
