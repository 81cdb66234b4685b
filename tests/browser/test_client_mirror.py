"""client-session.js's ChannelReceiver makes the same decisions as the Python one, event for event.

Seeded random event scripts (subscribed replies with and without recovery or a new epoch,
messages in and out of order with repeats and stale epochs, timer ticks, reconnects) go through
``wsnursery.client.receiver.ChannelReceiver`` here and through ``ChannelReceiver`` of /client.js in
chromium; every effect list and the final counters must be equal. A failing script is printed
with its seed, so it replays.
"""

from __future__ import annotations

import random

from wsnursery.client.receiver import ChannelReceiver, Deliver, Gap, SendAck, SendReplay
from wsnursery.protocol import Position

SCRIPTS = 150
OPTIONS = {"max_pending": 8, "ack_every": 4, "ack_interval": 0.05, "replay_timeout": 0.5}

RUN_IN_PAGE = """async ([scripts, options]) => {
  const { ChannelReceiver } = await import('/client.js');
  const out = [];
  for (const script of scripts) {
    const r = new ChannelReceiver('c', { ack: script.ack, maxPending: options.max_pending,
      ackEvery: options.ack_every, ackInterval: options.ack_interval, replayTimeout: options.replay_timeout });
    const effects = [];
    for (const [kind, a, b, c, d] of script.events) {
      let got = [];
      if (kind === 'subscribed') got = r.onSubscribed(a, b, c, d);
      else if (kind === 'message') got = r.onMessage(a, b, {v: b}, null, c);
      else if (kind === 'tick') got = r.tick(a);
      else r.onReconnect();
      effects.push(got.map(e => e.kind === 'deliver' ? ['deliver', e.message.epoch, e.message.seq]
        : e.kind === 'gap' ? ['gap', e.expectedSeq, e.resumedAtSeq, e.reason]
        : e.kind === 'ack' ? ['ack', e.seq] : ['replay', e.since[0], e.since[1]]));
    }
    out.push({ effects, counters: [r.duplicatesDropped, r.staleDropped, r.overflowDropped, r.gapsReported],
               position: r.position, deadline: r.nextDeadline() });
  }
  return out;
}"""


def script(seed: int) -> dict:
    rng = random.Random(seed)
    epochs = ["e1", "e2"]
    epoch, head, now = "e1", rng.randint(0, 5), 0.0
    events: list[list] = [["subscribed", epoch, head, True, None]]
    for _ in range(rng.randint(5, 40)):
        now += rng.choice([0.0, 0.01, 0.1, 0.6])
        roll = rng.random()
        if roll < 0.65:
            head += rng.random() < 0.7
            seq = max(1, head + rng.randint(-4, 3))
            events.append(["message", rng.choice(epochs) if rng.random() < 0.1 else epoch, seq, now])
        elif roll < 0.8:
            events.append(["tick", now])
        elif roll < 0.9:
            events.append(["reconnect"])
        else:
            if rng.random() < 0.3:
                epoch = rng.choice(epochs)
            since = [rng.choice(epochs), rng.randint(0, head)] if rng.random() < 0.5 else None
            events.append(["subscribed", epoch, rng.randint(0, head + 3), rng.random() < 0.5, since])
    return {"seed": seed, "ack": rng.random() < 0.5, "events": events}


def run_in_python(s: dict) -> dict:
    r = ChannelReceiver("c", ack=s["ack"], **OPTIONS)
    effects = []
    for kind, *args in s["events"]:
        if kind == "subscribed":
            epoch, seq, recovered, since = args
            got = r.on_subscribed(epoch, seq, recovered, Position(*since) if since else None)
        elif kind == "message":
            epoch, seq, now = args
            got = r.on_message(epoch, seq, {"v": seq}, None, now)
        elif kind == "tick":
            got = r.tick(args[0])
        else:
            r.on_reconnect()
            got = []
        effects.append([_effect(e) for e in got])
    position = [r.position.epoch, r.position.seq] if r.position else None
    return {"effects": effects, "position": position, "deadline": r.next_deadline(),
            "counters": [r.duplicates_dropped, r.stale_dropped, r.overflow_dropped, r.gaps_reported]}


def _effect(e) -> list:
    if isinstance(e, Deliver):
        return ["deliver", e.message.epoch, e.message.seq]
    if isinstance(e, Gap):
        return ["gap", e.expected_seq, e.resumed_at_seq, e.reason]
    if isinstance(e, SendAck):
        return ["ack", e.seq]
    assert isinstance(e, SendReplay)
    return ["replay", e.since.epoch, e.since.seq]


def test_the_javascript_receiver_mirrors_the_python_one(page, start_server):
    server = start_server()
    page.goto(server.http + "/")
    scripts = [script(seed) for seed in range(SCRIPTS)]
    results = page.evaluate(RUN_IN_PAGE, [scripts, OPTIONS])
    seen: dict[str, int] = {}
    for s, js in zip(scripts, results):
        expected = run_in_python(s)
        for index, (want, got) in enumerate(zip(expected["effects"], js["effects"])):
            assert got == want, f"seed {s['seed']}, event {index} {s['events'][index]}: js {got} != py {want}"
        assert js["counters"] == expected["counters"], s["seed"]
        assert js["position"] == expected["position"], s["seed"]
        assert js["deadline"] == expected["deadline"], s["seed"]
        for effects in expected["effects"]:
            for effect in effects:
                seen[effect[0]] = seen.get(effect[0], 0) + 1
        for name, count in zip(("duplicate", "stale", "overflow"), expected["counters"]):
            seen[name] = seen.get(name, 0) + count
    # The scripts reach every path: deliveries, gaps, replays, acks, repeats, stale and overflow.
    assert all(seen.get(kind, 0) >= 10 for kind in
               ("deliver", "gap", "replay", "ack", "duplicate", "stale", "overflow")), seen
