// wsnursery browser client, the sans-I/O half: protocol state and decisions, no socket, no
// clock, no timers. Time comes in as `now` (seconds), frames come in as parsed objects, and what
// to send and what to tell the application comes out (Session.out). /client.js is the shell.
//
// Read it side by side with the Python SDK's sans-I/O session (wsnursery/client/):
// - ChannelReceiver <-> receiver.py ChannelReceiver: order, repeats, gaps, batched acks.
// - PublishTracker  <-> publisher.py PublishTracker: keys, retries with full jitter.
// - ChannelRecord   <-> channel.py ChannelRecord: per-connection request bookkeeping and the ack
//                       clamp (ceiling, owed, sent, and a lost ack sent again on a repeat).
// - Session         <-> session.py ClientSession: resubscribe with `since`, request re-sends,
//                       what a publish or a subscribe refusal ends.
//                       (Reconnect backoff, the heartbeat and token refresh, which session.py
//                       also decides, live in the shell here: they are timers, not frames.)
// tests/browser/test_client_mirror.py checks that the two ChannelReceivers, and the acks the two
// ChannelRecords let out of them, decide alike.
//
// Bounds: at most `maxPending` held out-of-order frames per channel (the farthest ahead is
// dropped and replayed); at most `maxPendingPublishes` unconfirmed publishes (one more throws).

// ------------------------------------------------------------------- sans-I/O: one channel

/**
 * Client-side state of one subscribed channel; every on*()/tick() returns effects:
 * {kind: "deliver", message}, {kind: "gap", ...}, {kind: "ack", seq}, {kind: "replay", since}.
 * With `ack`: a cumulative ack after `ackEvery` deliveries or `ackInterval` seconds after the
 * first unacked one; a repeat of a delivered message also schedules one (its ack was probably
 * lost). ChannelRecord decides which of them go out.
 */
export class ChannelReceiver {
  constructor(channel, { ack = false, maxPending = 1024, ackEvery = 32, ackInterval = 0.05,
                         replayTimeout = 1.0 } = {}) {
    Object.assign(this, { channel, ack, maxPending, ackEvery, ackInterval, replayTimeout });
    this.duplicatesDropped = 0;
    this.staleDropped = 0;
    this.overflowDropped = 0;
    this.gapsReported = 0;
    this.epoch = null;
    this.delivered = 0;
    this.pending = new Map(); // seq -> message, held ahead of the next expected seq
    this.replayClock = null;
    this.resync = null; // {epoch, reason}: waiting for the first frame of a resumed stream
    this.unacked = 0;
    this.ackDueAt = null;
  }

  /** [epoch, last delivered seq]: what to send as `since`; null before subscribing. */
  get position() { return this.epoch === null ? null : [this.epoch, this.delivered]; }

  /** A `subscribed` (or `replaying`) reply; `since` is what the request carried. */
  onSubscribed(epoch, seq, recovered, since = null) {
    const held = this.position || since;
    if (held === null) { this.epoch = epoch; this.delivered = seq; return []; }
    [this.epoch, this.delivered] = held;
    if (epoch !== this.epoch) {
      this.pending.clear();
      this.replayClock = null;
      this.forgetAcks();
      this.resync = { epoch, reason: "epoch_changed" };
      if (seq === 0) return this.resume(epoch, 1); // the new stream is empty: it resumes at 1
    } else if (!recovered) {
      this.replayClock = null;
      this.resync = { epoch, reason: "history_exceeded" };
    } else {
      this.resync = null;
    }
    return [];
  }

  /** A `message` frame: deliver, hold, or drop it. */
  onMessage(epoch, seq, data, ts, now) {
    const effects = [];
    if (this.resync !== null) {
      if (epoch !== this.resync.epoch) { this.staleDropped += 1; return []; }
      if (epoch !== this.epoch || seq > this.delivered) {
        const resumeAt = epoch === this.epoch ? Math.min(seq, ...this.pending.keys()) : seq;
        effects.push(...this.resume(epoch, resumeAt));
      }
    }
    if (epoch !== this.epoch) { this.staleDropped += 1; return effects; }
    if (seq <= this.delivered || this.pending.has(seq)) {
      this.duplicatesDropped += 1;
      if (this.ack && seq <= this.delivered) this.scheduleAck(now);
    } else {
      this.pending.set(seq, { channel: this.channel, epoch, seq, data, ts });
    }
    const before = this.delivered;
    effects.push(...this.drain(now));
    if (this.pending.size > this.maxPending) {
      this.pending.delete(Math.max(...this.pending.keys()));
      this.overflowDropped += 1;
    }
    if (this.pending.size === 0) this.replayClock = null;
    else if (this.resync === null && this.replayClock === null) effects.push(this.askReplay(now));
    else if (this.delivered > before) this.replayClock = now;
    return effects;
  }

  /** Fire timers: re-ask a stalled replay, send a batched ack. */
  tick(now) {
    const effects = [];
    const replayAt = this.replayDeadline();
    if (replayAt !== null && now >= replayAt) effects.push(this.askReplay(now));
    if (this.ackDueAt !== null && now >= this.ackDueAt) effects.push(this.sendAck());
    return effects;
  }

  nextDeadline() {
    const all = [this.replayDeadline(), this.ackDueAt].filter((d) => d !== null);
    return all.length ? Math.min(...all) : null;
  }

  /** The connection was replaced: forget per-connection state, keep the position. */
  onReconnect() {
    this.pending.clear();
    this.replayClock = null;
    this.resync = null;
    this.forgetAcks();
  }

  drain(now) {
    const effects = [];
    let message;
    while ((message = this.pending.get(this.delivered + 1)) !== undefined) {
      this.pending.delete(message.seq);
      this.delivered = message.seq;
      effects.push({ kind: "deliver", message });
    }
    if (this.ack && effects.length) {
      this.unacked += effects.length;
      this.scheduleAck(now);
      if (this.unacked >= this.ackEvery) effects.push(this.sendAck());
    }
    return effects;
  }

  resume(epoch, resumeAt) {
    const effects = [];
    if (epoch !== this.epoch || resumeAt !== this.delivered + 1) {
      this.gapsReported += 1;
      effects.push({ kind: "gap", channel: this.channel, expectedSeq: this.delivered + 1,
                     resumedAtSeq: resumeAt, reason: this.resync.reason });
    }
    this.epoch = epoch;
    this.delivered = resumeAt - 1;
    this.resync = null;
    return effects;
  }

  askReplay(now) {
    this.replayClock = now;
    return { kind: "replay", since: [this.epoch, this.delivered] };
  }

  replayDeadline() {
    return this.pending.size && this.replayClock !== null ? this.replayClock + this.replayTimeout : null;
  }

  scheduleAck(now) { if (this.ackDueAt === null) this.ackDueAt = now + this.ackInterval; }

  sendAck() { this.unacked = 0; this.ackDueAt = null; return { kind: "ack", seq: this.delivered }; }

  forgetAcks() { this.unacked = 0; this.ackDueAt = null; }
}

// ------------------------------------------------------------------- sans-I/O: publishes

/** Idempotency keys, retries with full-jitter backoff, confirmation (as the SDK's). */
export class PublishTracker {
  constructor({ random = Math.random, base = 0.5, cap = 5.0, maxPending = 256, nextId } = {}) {
    Object.assign(this, { random, base, cap, maxPending, nextId });
    this.prefix = randomHex(16, random);
    this.counter = 0;
    this.retries = 0;
    this.pending = new Map(); // key -> publish
    this.keyById = new Map();
  }

  get size() { return this.pending.size; }

  /** Register a publish, due at once; throws at the bound. */
  newPublish(channel, data, now) {
    if (this.pending.size >= this.maxPending) {
      throw new Error(`${this.maxPending} publishes await confirmation; wait for one to complete`);
    }
    this.counter += 1;
    const publish = { channel, data, key: `${this.prefix}-${this.counter}`, id: this.nextId(),
                      dueAt: now, sends: 0 };
    this.pending.set(publish.key, publish);
    this.keyById.set(publish.id, publish.key);
    return publish;
  }

  /** Publishes to send now; each counts as sent and gets its next retry time. */
  due(now) {
    const out = [...this.pending.values()].filter((p) => p.dueAt <= now);
    for (const p of out) {
      if (p.sends) this.retries += 1;
      p.dueAt = now + this.random() * Math.min(this.cap, this.base * 2 ** Math.min(p.sends, 64));
      p.sends += 1;
    }
    return out;
  }

  /** Confirm (or cancel) by request id; returns the publish or null. */
  pop(id) {
    const key = this.keyById.get(id);
    const publish = key === undefined ? undefined : this.pending.get(key);
    if (publish === undefined) return null;
    this.pending.delete(key);
    this.keyById.delete(id);
    return publish;
  }

  /** A new connection: every unconfirmed publish is due now (same key, same id). */
  onReconnect(now) { for (const p of this.pending.values()) p.dueAt = now; }

  nextDeadline() {
    let min = null;
    for (const p of this.pending.values()) if (min === null || p.dueAt < min) min = p.dueAt;
    return min;
  }
}

// ------------------------------------------------------------------- sans-I/O: one subscription

/**
 * One subscription as the session sees it; `reset()` starts a new connection's part.
 *
 * Acks: the server answers an ack past its last sent seq with an error frame (and closes with
 * 1008 after `max_errors` of them). After a reposition its count restarts at the `since` it was
 * given, while frames it sent before may still be on their way to us; so an ack stays at or below
 * the `since` of every repositioning request not yet answered, and at or below the highest seq
 * received since the last answered one (`ackCeiling`). A repeat of an acked message means that
 * ack went missing (the server retransmits until it comes): the ack is sent again.
 */
export class ChannelRecord {
  constructor(channel, { ack = false, since = null, paused = () => false, receiver }) {
    Object.assign(this, { channel, ack, since, paused, receiver });
    this.reset();
  }

  /** A new connection: nothing is subscribed on it yet, nothing was sent or acked. */
  reset() {
    this.confirmed = false; // this connection's subscribe was answered
    this.outstanding = new Map(); // request id -> {since, sentAt}: subscribe/replay unanswered
    this.serverEpoch = null;
    this.ackCeiling = 0;
    this.ackOwed = 0;
    this.ackSent = 0;
    this.ackAgain = false; // a repeat arrived: the last ack was probably lost, send it again
    this.starved = false; // frames were left on the server while the application was full
  }

  lastSent() {
    let last = null;
    for (const { sentAt } of this.outstanding.values()) if (last === null || sentAt > last) last = sentAt;
    return last;
  }

  requested(id, since, now) { this.outstanding.set(id, { since, sentAt: now }); }

  messageSeen(epoch, seq) { if (epoch === this.serverEpoch && seq > this.ackCeiling) this.ackCeiling = seq; }

  /** The reply to `id` came; returns the `since` it carried. Older requests' replies are lost. */
  answered(id) {
    const since = this.outstanding.get(id).since;
    for (const older of [...this.outstanding.keys()]) if (older <= id) this.outstanding.delete(older);
    return since;
  }

  /** The server restarted this channel's count at `since` (or the `head`). */
  repositioned(since, epoch, head) {
    if (epoch !== this.serverEpoch) { this.serverEpoch = epoch; this.ackOwed = this.ackSent = 0; }
    if (since === null) this.ackCeiling = head;
    else this.ackCeiling = since[0] === epoch ? since[1] : 0;
    this.ackSent = Math.min(this.ackSent, this.ackCeiling);
  }

  /** The receiver asks for an ack of `seq`; at or below what was sent, that ack went missing. */
  oweAck(seq) {
    if (seq <= this.ackSent) this.ackAgain = true;
    this.ackOwed = Math.max(this.ackOwed, seq);
  }

  /** The cumulative ack to send now (counted as sent), clamped as the class says; or null. */
  ackDue() {
    let allowed = this.ackCeiling;
    for (const { since } of this.outstanding.values()) {
      allowed = Math.min(allowed, since !== null && since[0] === this.serverEpoch ? since[1] : 0);
    }
    const target = Math.min(this.ackOwed, allowed);
    const again = this.ackAgain;
    this.ackAgain = false;
    if (target > this.ackSent) { this.ackSent = target; return target; }
    if (again && this.ackSent > 0 && this.ackSent <= allowed) return this.ackSent;
    return null;
  }
}

// ------------------------------------------------------------------- sans-I/O: the session

/**
 * Protocol state of one client across its connections. Inputs: onOpen/onFrame/tick/
 * subscribe/unsubscribe/publish/resume, each with `now` in seconds. Output: `this.out`, a queue
 * of {send: frame} and {event: name, detail} the shell drains after every call.
 */
export class Session {
  constructor({ requestTimeout = 2.0, publishBackoffMax = 5.0, maxPendingPublishes = 256,
                random = Math.random } = {}) {
    this.requestTimeout = requestTimeout;
    this.lastId = 0;
    this.publishes = new PublishTracker({ random, base: requestTimeout, cap: publishBackoffMax,
                                          maxPending: maxPendingPublishes, nextId: () => this.newId() });
    this.subs = new Map(); // channel -> subscription state
    this.unsubscribes = new Map(); // channel -> {id, sentAt}
    this.connected = false;
    this.out = [];
    this.counters = { delivered: 0, gaps: 0, replaysRequested: 0, published: 0, serverErrors: 0,
                      requestsResent: 0 };
  }

  newId() { this.lastId += 1; return this.lastId; }

  // -- application side

  subscribe(channel, { ack = false, since = null, paused = () => false } = {}, now) {
    if (this.subs.has(channel)) throw new Error(`already subscribed to ${channel}`);
    const receiver = new ChannelReceiver(channel, { ack, replayTimeout: this.requestTimeout });
    const sub = new ChannelRecord(channel, { ack, since, paused, receiver });
    this.subs.set(channel, sub);
    this.unsubscribes.delete(channel);
    if (this.connected) this.sendSubscribe(sub, now);
    return sub;
  }

  unsubscribe(channel) {
    if (!this.subs.delete(channel)) return;
    if (this.connected) this.unsubscribes.set(channel, { id: this.newId(), sentAt: null });
  }

  publish(channel, data, now) {
    const publish = this.publishes.newPublish(channel, data, now);
    if (this.connected) this.tick(now);
    return publish;
  }

  /** The application made room in a paused subscription: ask for what was left on the server. */
  resume(channel, now) {
    const sub = this.subs.get(channel);
    if (sub && sub.starved && sub.receiver.position && this.connected) {
      sub.starved = false;
      this.sendReplay(sub, sub.receiver.position, now);
    }
  }

  // -- connection side

  /** A fresh connection got its welcome: resubscribe everything, make every publish due. */
  onOpen(now) {
    this.connected = true;
    this.unsubscribes.clear();
    for (const sub of this.subs.values()) {
      sub.receiver.onReconnect();
      sub.reset();
      this.sendSubscribe(sub, now);
    }
    this.publishes.onReconnect(now);
    this.tick(now);
  }

  onClose() { this.connected = false; }

  onFrame(frame, now) {
    const kind = frame.type;
    if (kind === "message") return this.onMessage(frame, now);
    const id = frame.id;
    if (kind === "published") {
      const publish = this.publishes.pop(id);
      if (publish) {
        this.counters.published += 1;
        this.emit("published", { key: publish.key, channel: publish.channel, epoch: frame.epoch,
                                 seq: frame.seq });
      }
    } else if (kind === "subscribed" || kind === "replaying") {
      const sub = this.subs.get(frame.channel);
      if (sub && sub.outstanding.has(id)) this.repositioned(sub, id, frame, now, kind === "subscribed");
    } else if (kind === "unsubscribed") {
      const entry = this.unsubscribes.get(frame.channel);
      if (entry && entry.id === id) this.unsubscribes.delete(frame.channel);
    } else if (kind === "error") {
      this.onError(frame);
    } else if (kind === "refreshed") {
      this.emit("refreshed", { exp: frame.exp });
    }
    // "welcome" again, or a type this client does not know: nothing to do
  }

  onMessage(frame, now) {
    const sub = this.subs.get(frame.channel);
    const { epoch, seq } = frame;
    if (!sub || typeof epoch !== "string" || !Number.isInteger(seq)) return;
    if (sub.paused()) { sub.starved = true; return; } // left on the server; resume() replays it
    sub.messageSeen(epoch, seq);
    const data = bytesFromJson(frame.data);
    this.apply(sub, sub.receiver.onMessage(epoch, seq, data, frame.ts, now), now);
  }

  repositioned(sub, id, frame, now, subscribed) {
    const since = sub.answered(id);
    const { epoch, seq } = frame;
    if (typeof epoch !== "string" || !Number.isInteger(seq)) return;
    sub.repositioned(since, epoch, seq);
    const effects = sub.receiver.onSubscribed(epoch, seq, Boolean(frame.recovered), since);
    if (subscribed && !sub.confirmed) {
      sub.confirmed = true;
      this.emit("subscribed", { channel: sub.channel, epoch, seq, recovered: Boolean(frame.recovered) });
    }
    this.apply(sub, effects, now);
  }

  onError(frame) {
    this.counters.serverErrors += 1;
    const id = frame.id;
    const error = { code: String(frame.code), reason: String(frame.reason ?? ""), id };
    if (Number.isInteger(id)) {
      const publish = this.publishes.pop(id);
      if (publish) { this.emit("publishFailed", { key: publish.key, error }); return; }
      for (const sub of this.subs.values()) {
        if (!sub.outstanding.has(id)) continue;
        sub.outstanding.delete(id);
        if (!sub.confirmed) { // the (re)subscribe was refused: the subscription ends
          this.subs.delete(sub.channel);
          this.emit("subscribeFailed", { channel: sub.channel, error });
        }
        return;
      }
      for (const [channel, entry] of this.unsubscribes) {
        if (entry.id === id) { this.unsubscribes.delete(channel); return; }
      }
    }
    this.emit("serverError", error);
  }

  apply(sub, effects, now) {
    for (const effect of effects) {
      if (effect.kind === "deliver") {
        this.counters.delivered += 1;
        this.emit("item", { kind: "message", ...effect.message });
      } else if (effect.kind === "gap") {
        this.counters.gaps += 1;
        this.emit("item", effect);
      } else if (effect.kind === "ack") {
        sub.oweAck(effect.seq);
      } else if (effect.kind === "replay") {
        this.sendReplay(sub, effect.since, now);
      }
    }
    if (sub.ack) this.flushAck(sub);
  }

  /** The owed cumulative ack, if the clamp allows one (see ChannelRecord). */
  flushAck(sub) {
    if (!this.connected) return;
    const seq = sub.ackDue();
    if (seq !== null) this.send({ type: "ack", channel: sub.channel, seq });
  }

  /** Fire timers: request re-sends, replays, acks, publishes due. */
  tick(now) {
    if (!this.connected) return;
    const timeout = this.requestTimeout;
    for (const sub of [...this.subs.values()]) {
      const lastSent = sub.lastSent();
      if (!sub.confirmed) {
        if (lastSent === null || now >= lastSent + timeout) {
          if (lastSent !== null) this.counters.requestsResent += 1;
          this.sendSubscribe(sub, now);
        }
        continue;
      }
      if (lastSent !== null && now >= lastSent + timeout && sub.receiver.position) {
        this.counters.requestsResent += 1; // a replay answer went missing: ask again
        this.sendReplay(sub, sub.receiver.position, now);
      }
      this.apply(sub, sub.receiver.tick(now), now);
    }
    for (const [channel, entry] of this.unsubscribes) {
      if (entry.sentAt === null || now >= entry.sentAt + timeout) {
        if (entry.sentAt !== null) this.counters.requestsResent += 1;
        entry.sentAt = now;
        this.send({ type: "unsubscribe", id: entry.id, channel });
      }
    }
    for (const p of this.publishes.due(now)) {
      p.dueAt += timeout; // retry no sooner than requestTimeout, plus the jittered backoff
      this.send({ type: "publish", id: p.id, channel: p.channel, data: bytesToJson(p.data), key: p.key });
    }
  }

  /** When tick() next has something to do (seconds, same clock as `now`), or null. */
  nextDeadline() {
    const all = [];
    for (const sub of this.subs.values()) {
      const lastSent = sub.lastSent();
      if (lastSent !== null) all.push(lastSent + this.requestTimeout);
      else if (!sub.confirmed) all.push(-Infinity);
      const d = sub.receiver.nextDeadline();
      if (d !== null) all.push(d);
    }
    for (const { sentAt } of this.unsubscribes.values()) all.push(sentAt === null ? -Infinity : sentAt + this.requestTimeout);
    const p = this.publishes.nextDeadline();
    if (p !== null) all.push(p);
    return all.length ? Math.min(...all) : null;
  }

  /** Whether a request waits for its answer (then silence on the link means trouble). */
  get awaiting() {
    if (this.publishes.size || this.unsubscribes.size) return true;
    for (const sub of this.subs.values()) if (sub.outstanding.size || !sub.confirmed) return true;
    return false;
  }

  /** A request that needs an answer and changes nothing: a replay from where we are. */
  probe(now) {
    for (const sub of this.subs.values()) {
      if (sub.confirmed && sub.receiver.position && !sub.outstanding.size) {
        this.sendReplay(sub, sub.receiver.position, now);
        return true;
      }
    }
    return false;
  }

  sendSubscribe(sub, now) {
    const id = this.newId();
    const since = sub.receiver.position || sub.since;
    const frame = { type: "subscribe", id, channel: sub.channel, ack: sub.ack };
    if (since) frame.since = { epoch: since[0], seq: since[1] };
    sub.requested(id, since, now);
    this.send(frame);
  }

  sendReplay(sub, since, now) {
    const id = this.newId();
    sub.requested(id, since, now);
    this.counters.replaysRequested += 1;
    this.send({ type: "replay", id, channel: sub.channel, since: { epoch: since[0], seq: since[1] } });
  }

  send(frame) { if (this.connected) this.out.push({ send: frame }); }

  emit(event, detail) { this.out.push({ event, detail }); }
}

// ------------------------------------------------------------------- data model helpers

/** `{"$bytes": base64}` is how bytes travel in JSON (as in the SDK): undo it everywhere. */
export function bytesFromJson(value) {
  if (Array.isArray(value)) return value.map(bytesFromJson);
  if (value !== null && typeof value === "object") {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === "$bytes" && typeof value.$bytes === "string") {
      try {
        return Uint8Array.from(atob(value.$bytes), (c) => c.charCodeAt(0));
      } catch {
        return value;
      }
    }
    return Object.fromEntries(keys.map((k) => [k, bytesFromJson(value[k])]));
  }
  return value;
}

/** Uint8Array -> `{"$bytes": base64}`, everywhere inside `value`. */
export function bytesToJson(value) {
  if (value instanceof Uint8Array) {
    let text = "";
    for (const byte of value) text += String.fromCharCode(byte);
    return { $bytes: btoa(text) };
  }
  if (Array.isArray(value)) return value.map(bytesToJson);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.keys(value).map((k) => [k, bytesToJson(value[k])]));
  }
  return value;
}

function randomHex(digits, random) {
  let out = "";
  while (out.length < digits) out += Math.floor(random() * 16).toString(16);
  return out;
}

/** A seeded generator (mulberry32) for reproducible jitter, as `seed` does in the SDK. */
export function seededRandom(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The `exp` claim of a JWT (seconds), or null; the signature is the server's business. */
export function tokenExpiry(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(part + "===".slice((part.length + 3) % 4))).exp;
    return Number.isFinite(exp) ? exp : null;
  } catch {
    return null;
  }
}
