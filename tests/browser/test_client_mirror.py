"""client-session.js's ChannelReceiver and ChannelRecord decide as the Python ones, event for event.

Seeded random event scripts (requests left unanswered, subscribed replies with and without
recovery or a new epoch, messages in and out of order with repeats and stale epochs, timer
ticks, reconnects) go through ``wsnursery.client.receiver.ChannelReceiver`` and the ack clamp of
``wsnursery.client.channel.ChannelRecord`` here, wired as ``ClientSession`` wires them, and
through ``ChannelReceiver`` and ``ChannelRecord`` of /client.js in chromium, wired as its
``Session`` does. Every effect list, every ack let out (a repeat of an acked message, i.e. a
lost ack, sends it again), and the final counters must be equal. A failing script is printed
with its seed, so it replays.
"""

from __future__ import annotations

import random

from wsnursery.client.channel import ChannelRecord
from wsnursery.client.receiver import ChannelReceiver, Deliver, Gap, SendAck, SendReplay
from wsnursery.protocol import Position

SCRIPTS = 150
OPTIONS = {"max_pending": 8, "ack_every": 4, "ack_interval": 0.05, "replay_timeout": 0.5}

RUN_IN_PAGE = """async ([scripts, options]) => {
  const { ChannelReceiver, ChannelRecord } = await import('/client.js');
  const out = [];
  for (const script of scripts) {
    const r = new ChannelReceiver('c', { ack: script.ack, maxPending: options.max_pending,
      ackEvery: options.ack_every, ackInterval: options.ack_interval, replayTimeout: options.replay_timeout });
    const record = new ChannelRecord('c', { ack: script.ack, receiver: r });
    let lastId = 0;
    const effects = [];
    for (const [kind, a, b, c, d] of script.events) {
      let got = [];
      if (kind === 'request') { lastId += 1; record.requested(lastId, a, b); }
      else if (kind === 'subscribed') {
        lastId += 1;
        record.requested(lastId, d, 0);
        record.repositioned(record.answered(lastId), a, b);
        got = r.onSubscribed(a, b, c, d);
      } else if (kind === 'message') { record.messageSeen(a, b); got = r.onMessage(a, b, {v: b}, null, c); }
      else if (kind === 'tick') got = r.tick(a);
      else { r.onReconnect(); record.reset(); }
      const step = got.map(e => e.kind === 'deliver' ? ['deliver', e.message.epoch, e.message.seq]
        : e.kind === 'gap' ? ['gap', e.expectedSeq, e.resumedAtSeq, e.reason]
        : e.kind === 'ack' ? ['ack', e.seq] : ['replay', e.since[0], e.since[1]]);
      for (const e of got) if (e.kind === 'ack') record.oweAck(e.seq); // as Session.apply does
      const sent = record.ack ? record.ackDue() : null;
      if (sent !== null) step.push(['send ack', sent]);
      effects.push(step);
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
        elif roll < 0.85:
            events.append(["reconnect"])
        elif roll < 0.9:  # a subscribe or replay whose answer is still on its way
            since = [rng.choice(epochs), rng.randint(0, head)] if rng.random() < 0.8 else None
            events.append(["request", since, now])
        else:
            if rng.random() < 0.3:
                epoch = rng.choice(epochs)
            since = [rng.choice(epochs), rng.randint(0, head)] if rng.random() < 0.5 else None
            events.append(["subscribed", epoch, rng.randint(0, head + 3), rng.random() < 0.5, since])
    return {"seed": seed, "ack": rng.random() < 0.5, "events": events}


def run_in_python(s: dict) -> dict:
    r = ChannelReceiver("c", ack=s["ack"], **OPTIONS)
    record = ChannelRecord("c", s["ack"], None, r)
    ids = iter(range(1, 10_000))
    effects = []
    for kind, *args in s["events"]:
        got = []
        if kind == "request":
            since, now = args
            record.requested(next(ids), Position(*since) if since else None, now)
        elif kind == "subscribed":
            epoch, seq, recovered, since = args
            request_id = next(ids)
            record.requested(request_id, Position(*since) if since else None, 0.0)
            record.repositioned(record.answered(request_id), epoch, seq)
            got = r.on_subscribed(epoch, seq, recovered, Position(*since) if since else None)
        elif kind == "message":
            epoch, seq, now = args
            record.message_seen(epoch, seq)
            got = r.on_message(epoch, seq, {"v": seq}, None, now)
        elif kind == "tick":
            got = r.tick(args[0])
        else:
            r.on_reconnect()
            record.reset()
        step = [_effect(e) for e in got]
        for e in got:  # as ClientSession._apply does
            if isinstance(e, SendAck):
                record.owe_ack(e.seq)
        sent = record.ack_due() if record.ack else None
        if sent is not None:
            step.append(["send ack", sent])
        effects.append(step)
    position = [r.position.epoch, r.position.seq] if r.position else None
    return {
        "effects": effects,
        "position": position,
        "deadline": r.next_deadline(),
        "counters": [r.duplicates_dropped, r.stale_dropped, r.overflow_dropped, r.gaps_reported],
    }


def _effect(e) -> list:
    if isinstance(e, Deliver):
        return ["deliver", e.message.epoch, e.message.seq]
    if isinstance(e, Gap):
        return ["gap", e.expected_seq, e.resumed_at_seq, e.reason]
    if isinstance(e, SendAck):
        return ["ack", e.seq]
    assert isinstance(e, SendReplay)
    return ["replay", e.since.epoch, e.since.seq]


def test_the_javascript_receiver_and_ack_clamp_mirror_the_python_ones(page, start_server):
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
        last_sent = 0
        for event, effects in zip(s["events"], expected["effects"]):
            if event[0] == "reconnect":
                last_sent = 0
            owed = max((e[1] for e in effects if e[0] == "ack"), default=None)
            sent = next((e[1] for e in effects if e[0] == "send ack"), None)
            for effect in effects:
                seen[effect[0]] = seen.get(effect[0], 0) + 1
            if owed is not None and (sent is None or sent < owed):
                seen["ack held back"] = seen.get("ack held back", 0) + 1  # by the clamp
            if sent is not None and sent == last_sent:
                seen["ack again"] = seen.get("ack again", 0) + 1  # a repeat: it was lost
            last_sent = sent if sent is not None else last_sent
        for name, count in zip(("duplicate", "stale", "overflow"), expected["counters"]):
            seen[name] = seen.get(name, 0) + count
    print("paths reached", seen)
    # The scripts reach every path: deliveries, gaps, replays, acks owed, sent and sent again
    # (a lost one), acks held back by the clamp, repeats, stale and overflow.
    assert all(
        seen.get(kind, 0) >= 10
        for kind in (
            "deliver",
            "gap",
            "replay",
            "ack",
            "send ack",
            "ack again",
            "ack held back",
            "duplicate",
            "stale",
            "overflow",
        )
    ), seen
