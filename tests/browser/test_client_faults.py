"""/client.js in real chromium: exactly once, in order, through the fault proxy; gaps reported.

The browser client talks to the server through the harness's frame-aware fault proxy
(``harness.proxy``) with a seeded schedule at failure rate 0.15: resets, stalls, drops,
duplicates, delays and slices, both ways. A Python publisher talks to the server directly.
"""

from __future__ import annotations

import os

import pytest
import trio

from harness.faults import FaultSchedule
from harness.proxy import FaultProxy
from wsnursery.client import sdk

SEED = int(os.environ.get("WSNURSERY_BROWSER_SEED", "7"))
MESSAGES = 150  # published from Python, read in the browser
BROWSER_PUBLISHES = 30  # published from the browser, read from Python
# The browser client's timers: short, like the reliability harness's CLIENT_SETTINGS.
FAST_CLIENT = {
    "heartbeatInterval": 0.25,
    "heartbeatTimeout": 0.6,
    "requestTimeout": 0.5,
    "backoffMax": 0.5,
    "maxReconnects": 100,
    "seed": SEED,
}

# Starts a client.js client in the page; everything it sees goes to window.seen.
START_CLIENT = """async ([url, channel, options]) => {
  const { connect } = await import('/client.js');
  window.seen = [];
  window.opens = 0;
  window.closeCodes = [];
  const client = connect(url, options);
  window.client = client;
  client.addEventListener('open', () => { window.opens += 1; });
  client.addEventListener('close', (e) => { window.closeCodes.push(e.detail.code); });
  const sub = client.subscribe(channel, { ack: options.ack, since: options.since });
  window.sub = sub;
  (async () => {
    for await (const item of sub) window.seen.push(item.kind === 'gap'
      ? { kind: 'gap', expected: item.expectedSeq, resumed: item.resumedAtSeq, reason: item.reason }
      : { kind: 'message', seq: item.seq, data: item.data });
  })();
  await sub.ready();
  return true;
}"""


async def publish_all(url: str, channel: str, items: list) -> list[int]:
    async with sdk.connect(url, encoding="json") as client:
        return [(await client.publish(channel, item)).seq for item in items]


async def collect(url: str, channel: str, count: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Subscribe (directly, no faults); hand back (list, done event) once subscribed."""
    got: list = []
    done = trio.Event()
    async with sdk.connect(url, encoding="json") as client, client.subscribe(channel) as messages:
        task_status.started((got, done))
        async for item in messages:
            got.append(item)
            if len(got) >= count:
                done.set()
                await trio.sleep_forever()


# Acks on, with an unacked window that never fills, and with one where lost acks matter (the
# server goes back and resends; a client that never re-sent a lost ack filled it and was
# closed 4008, then resumed: nothing lost, but churn).
@pytest.mark.parametrize("max_unacked", [8192, 64])
def test_browser_client_behind_the_fault_proxy_sees_everything_once_in_order(
    page, start_server, trio_thread, max_unacked
):
    server = start_server(history_size=65_536, outbound_queue_size=8192, max_unacked=max_unacked)
    schedule = FaultSchedule(seed=SEED, failure_rate=0.15)
    proxy = FaultProxy("127.0.0.1", server.port, schedule)
    proxy_port = trio_thread.start(proxy.run)
    faulty_url = f"ws://127.0.0.1:{proxy_port}/"

    got, done = trio_thread.start(collect, server.ws, "from.browser", BROWSER_PUBLISHES)
    page.goto(server.http + "/")
    assert page.evaluate(START_CLIENT, [faulty_url, "to.browser", FAST_CLIENT | {"ack": True}]) is True

    # The browser publishes through the faults too: each stored once, same key on retries.
    page.evaluate(
        """(n) => {
      window.published = [];
      window.publishErrors = [];
      (async () => {
        for (let i = 0; i < n; i++) {
          try { window.published.push((await window.client.publish('from.browser', {i})).seq); }
          catch (e) { window.publishErrors.push(String(e)); }
        }
      })();
    }""",
        BROWSER_PUBLISHES,
    )

    items = [{"n": n} for n in range(1, MESSAGES + 1)]
    assert trio_thread.call(publish_all, server.ws, "to.browser", items) == list(range(1, MESSAGES + 1))

    page.wait_for_function(
        "([n, m]) => window.seen.some(x => x.kind === 'gap' || x.seq >= n)"
        " && window.published.length + window.publishErrors.length >= m",
        arg=[MESSAGES, BROWSER_PUBLISHES],
        timeout=90_000,
    )
    seen = page.evaluate("() => window.seen")
    assert [x["kind"] for x in seen] == ["message"] * MESSAGES, [x for x in seen if x["kind"] == "gap"]
    assert [x["seq"] for x in seen] == list(range(1, MESSAGES + 1))
    assert [x["data"] for x in seen] == items
    assert page.evaluate("() => window.publishErrors") == []
    assert page.evaluate("() => window.published") == list(range(1, BROWSER_PUBLISHES + 1))
    trio_thread.call(done.wait, timeout=30)
    assert [(m.seq, m.data) for m in got] == [(i + 1, {"i": i}) for i in range(BROWSER_PUBLISHES)]

    # The faults really fired, and the client really went through reconnects.
    faults = proxy.stats.as_dict()
    fired = {kind for direction in faults.values() for kind, n in direction.items() if n}
    stats = page.evaluate(
        "() => ({...window.client.stats, ...window.client.session.counters,"
        " retries: window.client.session.publishes.retries})"
    )
    print("faults", faults, "client", stats, "closes", page.evaluate("() => window.closeCodes"))
    assert proxy.stats.total > 0 and {"drop", "duplicate"} <= fired, faults
    assert {"reset", "stall"} & fired, faults
    assert stats["reconnects"] >= 1 and page.evaluate("() => window.opens") == stats["connects"]
    assert page.errors == []


@pytest.mark.parametrize("ack", [False, True])
def test_a_gap_is_reported_when_history_is_exceeded(page, start_server, trio_thread, ack):
    server = start_server(history_size=4, outbound_queue_size=4, max_unacked=4)
    page.goto(server.http + "/")
    trio_thread.call(publish_all, server.ws, "tiny", [{"n": n} for n in range(1, 3)])
    # Resume from seq 0 of the stream: 1 and 2 are still held, so nothing is missing.
    epoch = trio_thread.call(_epoch_of, server.ws, "tiny")
    assert page.evaluate(START_CLIENT, [server.ws, "tiny", {"since": [epoch, 0], "ack": ack}]) is True
    page.wait_for_function("() => window.seen.length >= 2")
    assert page.evaluate("() => window.seen") == [
        {"kind": "message", "seq": 1, "data": {"n": 1}},
        {"kind": "message", "seq": 2, "data": {"n": 2}},
    ]
    position = page.evaluate(
        "() => { const p = window.sub.position; window.sub.close(); window.client.close(); return p; }"
    )
    assert position == [epoch, 2]

    # Ten more while the page is away: the server holds only the last four (9..12).
    trio_thread.call(publish_all, server.ws, "tiny", [{"n": n} for n in range(3, 13)])
    assert page.evaluate(START_CLIENT, [server.ws, "tiny", {"since": position, "ack": ack}]) is True
    page.wait_for_function("() => window.seen.length >= 5")
    seen = page.evaluate("() => window.seen")
    assert seen[0] == {"kind": "gap", "expected": 3, "resumed": 9, "reason": "history_exceeded"}
    assert [(x["seq"], x["data"]["n"]) for x in seen[1:]] == [(n, n) for n in range(9, 13)]
    assert page.evaluate("() => window.client.session.counters.gaps") == 1
    assert page.errors == []


async def _epoch_of(url: str, channel: str) -> str:
    async with sdk.connect(url, encoding="json") as client, client.subscribe(channel, ack=False) as sub:
        assert sub.position is not None
        return sub.position.epoch


def test_a_full_subscription_buffer_leaves_messages_on_the_server_and_loses_none(page, start_server, trio_thread):
    server = start_server()
    page.goto(server.http + "/")
    page.evaluate(
        """async (url) => {
      const { connect } = await import('/client.js');
      window.client = connect(url);
      window.sub = window.client.subscribe('slow', { bufferSize: 4 });
      await window.sub.ready();
    }""",
        server.ws,
    )
    items = [{"n": n} for n in range(1, 41)]
    trio_thread.call(publish_all, server.ws, "slow", items)
    # Nobody reads: the buffer fills to its bound and further frames are left on the server.
    page.wait_for_function("() => window.client.session.subs.get('slow').starved")
    got = page.evaluate("""async () => {
      const out = [];
      let most = 0;
      for await (const item of window.sub) {
        most = Math.max(most, window.sub.buffer.length + 1);
        out.push([item.kind, item.seq, item.data.n]);
        if (item.seq === 40) break;
      }
      return { out, most, replays: window.client.session.counters.replaysRequested };
    }""")
    assert got["out"] == [["message", n, n] for n in range(1, 41)]
    assert got["most"] <= 4 and got["replays"] >= 1
    assert page.errors == []


# Drops the first ack frame the page sends (a lost ack, exactly where we want it) and records
# every ack frame it sends; installed before the client connects.
LOSE_FIRST_ACK = """() => {
  window.acks = [];
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    const frame = typeof data === 'string' ? JSON.parse(data) : null;
    if (frame && frame.type === 'ack') {
      window.acks.push(frame.seq);
      if (window.acks.length === 1) return; // lost on the way
    }
    return send.call(this, data);
  };
}"""


def test_a_lost_ack_is_sent_again_when_the_server_resends(page, start_server, trio_thread):
    """The server resends what stays unacked (go-back-N after ack_timeout); the repeat tells the
    client its ack went missing, so it sends the same ack again, on the same connection."""
    server = start_server()
    page.goto(server.http + "/")
    page.evaluate(LOSE_FIRST_ACK)
    assert page.evaluate(START_CLIENT, [server.ws, "lossy", {"ack": True}]) is True
    trio_thread.call(publish_all, server.ws, "lossy", [{"n": n} for n in range(1, 4)])
    page.wait_for_function("() => window.acks.length >= 2", timeout=10_000)
    assert page.evaluate("() => window.acks.slice(0, 2)") == [3, 3]
    assert page.evaluate("() => window.client.session.subs.get('lossy').receiver.duplicatesDropped") >= 1
    # Then the stream goes on, on the same connection: each message once, in order.
    trio_thread.call(publish_all, server.ws, "lossy", [{"n": n} for n in range(4, 7)])
    page.wait_for_function("() => window.acks.includes(6)", timeout=10_000)
    assert [x["seq"] for x in page.evaluate("() => window.seen")] == list(range(1, 7))
    assert page.evaluate("() => [window.opens, window.closeCodes]") == [1, []]
    assert page.errors == []
