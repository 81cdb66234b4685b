// wsnursery browser client: the same delivery rules as the Python SDK, with no dependency.
//
//   import { connect } from "/client.js";
//   const client = connect("ws://127.0.0.1:8765/");
//   const sub = client.subscribe("chat.room1", { ack: true });
//   for await (const item of sub) console.log(item.kind, item.seq, item.data);
//   await client.publish("chat.room1", { text: "hi" });
//
// Layout (read it side by side with the Python code):
// - ChannelReceiver  <-> wsnursery/reliability.py ChannelReceiver: order, repeats, gaps, acks.
// - PublishTracker   <-> wsnursery/reliability.py PublishTracker: keys, retries, full jitter.
// - Session          <-> wsnursery/client/sdk.py Client bookkeeping: requests, resubscribe with
//                        `since`, the ack ceiling. Sans-I/O: no socket, no clock, no timers; it
//                        takes frames and `now` and returns what to send and what to tell.
// - Client (connect) the thin shell: one WebSocket at a time, setTimeout, backoff, heartbeat.
//
// Bounds (what happens at each): a subscription buffers at most `bufferSize` items for the
// application; past that, frames of that channel are left on the server and asked for again
// (`replay`) once the application caught up, so nothing grows and nothing is lost silently.
// At most `maxPendingPublishes` unconfirmed publishes: one more is rejected at once. At most
// `maxPending` held out-of-order frames per channel (the farthest ahead is dropped and
// replayed). Loss the server cannot repair is a `gap` item, never silence.

/** Close codes after which reconnecting would only repeat the refusal (as in the SDK). */
const FATAL_CLOSE_CODES = new Set([1002, 1003, 1007, 1008, 1009, 4003]);
const PROTOCOL_VERSION = 1;

// ------------------------------------------------------------------- sans-I/O: one channel

/**
 * Client-side state of one subscribed channel; every on*()/tick() returns effects:
 * {kind: "deliver", message}, {kind: "gap", ...}, {kind: "ack", seq}, {kind: "replay", since}.
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
    const sub = { channel, ack, since, paused, confirmed: false, outstanding: new Map(),
                  serverEpoch: null, ackCeiling: 0, ackOwed: 0, ackSent: 0, starved: false,
                  receiver: new ChannelReceiver(channel, { ack, replayTimeout: this.requestTimeout }) };
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
      Object.assign(sub, { confirmed: false, outstanding: new Map(), serverEpoch: null,
                           ackCeiling: 0, ackOwed: 0, ackSent: 0, starved: false });
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
    if (epoch === sub.serverEpoch && seq > sub.ackCeiling) sub.ackCeiling = seq;
    const data = bytesFromJson(frame.data);
    this.apply(sub, sub.receiver.onMessage(epoch, seq, data, frame.ts, now), now);
  }

  repositioned(sub, id, frame, now, subscribed) {
    const since = sub.outstanding.get(id).since;
    for (const older of [...sub.outstanding.keys()]) if (older <= id) sub.outstanding.delete(older);
    const { epoch, seq } = frame;
    if (typeof epoch !== "string" || !Number.isInteger(seq)) return;
    if (epoch !== sub.serverEpoch) { sub.serverEpoch = epoch; sub.ackOwed = sub.ackSent = 0; }
    if (since === null) sub.ackCeiling = seq;
    else sub.ackCeiling = since[0] === epoch ? since[1] : 0;
    sub.ackSent = Math.min(sub.ackSent, sub.ackCeiling);
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
        sub.ackOwed = Math.max(sub.ackOwed, effect.seq);
      } else if (effect.kind === "replay") {
        this.sendReplay(sub, effect.since, now);
      }
    }
    if (sub.ack) this.flushAck(sub);
  }

  /** The owed cumulative ack, never past what the server is sure to have sent (see the SDK). */
  flushAck(sub) {
    let allowed = sub.ackCeiling;
    for (const { since } of sub.outstanding.values()) {
      allowed = Math.min(allowed, since !== null && since[0] === sub.serverEpoch ? since[1] : 0);
    }
    const target = Math.min(sub.ackOwed, allowed);
    if (target > sub.ackSent) {
      sub.ackSent = target;
      this.send({ type: "ack", channel: sub.channel, seq: target });
    }
  }

  /** Fire timers: request re-sends, replays, acks, publishes due. */
  tick(now) {
    if (!this.connected) return;
    const timeout = this.requestTimeout;
    for (const sub of [...this.subs.values()]) {
      const lastSent = lastSentAt(sub);
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
      const lastSent = lastSentAt(sub);
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
    sub.outstanding.set(id, { since, sentAt: now });
    this.send(frame);
  }

  sendReplay(sub, since, now) {
    const id = this.newId();
    sub.outstanding.set(id, { since, sentAt: now });
    this.counters.replaysRequested += 1;
    this.send({ type: "replay", id, channel: sub.channel, since: { epoch: since[0], seq: since[1] } });
  }

  send(frame) { if (this.connected) this.out.push({ send: frame }); }

  emit(event, detail) { this.out.push({ event, detail }); }
}

function lastSentAt(sub) {
  let last = null;
  for (const { sentAt } of sub.outstanding.values()) if (last === null || sentAt > last) last = sentAt;
  return last;
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

// ------------------------------------------------------------------- the shell

/**
 * @typedef {object} ConnectOptions
 * @property {() => (string|Promise<string>)} [token] called before every connection (and to
 *   refresh before `exp`); sent as the `token` query parameter, never logged by the server.
 * @property {number} [refreshMargin=30] seconds before `exp` to send `refresh` with a new token.
 * @property {number} [requestTimeout=2] seconds without a reply before a request is re-sent.
 * @property {number} [connectTimeout=10] seconds for the WebSocket handshake and the welcome.
 * @property {number} [heartbeatInterval] seconds of silence before probing the link (default:
 *   the server's heartbeat from `welcome`, else 15).
 * @property {number} [heartbeatTimeout=10] seconds a probe or request may wait, with nothing at
 *   all arriving, before the link counts as dead and is replaced.
 * @property {number} [maxReconnects=10] consecutive failed attempts before giving up.
 * @property {number} [backoffBase=0.1] reconnect delay: min(backoffMax, base * 2**n) * U(0.5, 1).
 * @property {number} [backoffMax=10]
 * @property {number} [publishBackoffMax=5] cap on the jittered wait between publish retries.
 * @property {number} [maxPendingPublishes=256] unconfirmed publishes; one more is rejected.
 * @property {number} [bufferSize=1024] default per-subscription buffer (see subscribe()).
 * @property {number} [seed] seeds the jitter, for reproducible runs.
 */

/**
 * @typedef {object} Item one thing a subscription yields, strictly in `seq` order, never twice.
 * @property {"message"|"gap"} kind
 * @property {string} channel
 * @property {string} [epoch] message: the stream.
 * @property {number} [seq] message: its position in the stream.
 * @property {*} [data] message: as published (bytes as Uint8Array).
 * @property {number} [ts] message: server time, unix ms.
 * @property {number} [expectedSeq] gap: first seq that will never be delivered.
 * @property {number} [resumedAtSeq] gap: where delivery resumes.
 * @property {"history_exceeded"|"epoch_changed"} [reason] gap: why.
 */

/**
 * Connect to a wsnursery server. Returns at once; the client connects (and reconnects, with
 * jittered backoff) in the background. Events (addEventListener): "open" (detail: welcome),
 * "reconnect" (detail: {attempt, delay}), "close" (detail: {code, reason}), "gap", "error"
 * (detail: server error frames and failures), "gaveup" (after maxReconnects failed attempts;
 * pending publishes reject), "state" (detail: "connecting" | "open" | "closed").
 * @param {string} url ws:// or wss:// URL of the pub/sub endpoint.
 * @param {ConnectOptions} [options]
 * @returns {Client}
 */
export function connect(url, options = {}) {
  return new Client(url, options);
}

/** A pub/sub client; make one with {@link connect}. */
export class Client extends EventTarget {
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.options = { requestTimeout: 2, connectTimeout: 10, heartbeatTimeout: 10, maxReconnects: 10,
                     backoffBase: 0.1, backoffMax: 10, bufferSize: 1024, refreshMargin: 30, ...options };
    this.random = options.seed === undefined ? Math.random : seededRandom(options.seed);
    this.session = new Session({ requestTimeout: this.options.requestTimeout,
                                 publishBackoffMax: options.publishBackoffMax ?? 5,
                                 maxPendingPublishes: options.maxPendingPublishes ?? 256,
                                 random: this.random });
    this.subscriptions = new Map();
    this.waiters = new Map(); // publish key -> {resolve, reject}
    this.stats = { connects: 0, reconnects: 0, connectFailures: 0, heartbeatTimeouts: 0 };
    this.state = "connecting";
    this.ws = null;
    this.closed = false;
    this.retries = 0;
    this.timers = {};
    this.lastHeard = 0;
    this.welcome = null;
    this.openSocket();
  }

  /**
   * Subscribe to `channel`. Iterate with `for await (const item of sub)` or pass `onItem`.
   * @param {string} channel
   * @param {{ack?: boolean, since?: [string, number], bufferSize?: number,
   *          onItem?: (item: Item) => void}} [options] `ack: true` asks the server for
   *   acknowledged delivery (it re-sends what was not acknowledged); `since` resumes after a
   *   position held from earlier (`sub.position`); `bufferSize` bounds the items waiting for the
   *   iterating application (default the client's).
   * @returns {Subscription}
   */
  subscribe(channel, options = {}) {
    if (this.closed) throw new Error("the client is closed");
    const sub = new Subscription(this, channel, options.bufferSize ?? this.options.bufferSize, options.onItem);
    sub.state = this.session.subscribe(channel, { ack: Boolean(options.ack), since: options.since ?? null,
                                                  paused: () => sub.full }, this.now()); // throws if taken
    this.subscriptions.set(channel, sub);
    this.pump();
    return sub;
  }

  /**
   * Publish `data`; resolves once the server holds it, with {channel, epoch, seq, key}.
   * Survives reconnects: an unconfirmed publish is re-sent with the same idempotency key, so
   * the server stores it at most once. Rejects when the server refuses it, when
   * `maxPendingPublishes` are unconfirmed, and when the client closes or gives up first.
   * @param {string} channel
   * @param {*} data any JSON value (Uint8Array travels as bytes).
   * @returns {Promise<{channel: string, epoch: string, seq: number, key: string}>}
   */
  publish(channel, data) {
    if (this.closed) return Promise.reject(new Error("the client is closed"));
    let publish;
    try {
      publish = this.session.publish(channel, data, this.now());
    } catch (error) {
      return Promise.reject(error);
    }
    const promise = new Promise((resolve, reject) => this.waiters.set(publish.key, { resolve, reject }));
    this.pump();
    return promise;
  }

  /** Close for good: close frame 1000, no reconnect; pending publishes reject. */
  close() {
    this.finish(new Error("the client is closed"));
    if (this.ws) this.ws.close(1000, "client closing");
  }

  /** Drop the connection as if the network died (for tests): the client reconnects. */
  abort() { if (this.ws) this.lost(this.ws, 4000, "aborted by client.abort()"); }

  get connected() { return this.state === "open"; }

  // -- internals

  now() { return performance.now() / 1000; }

  async openSocket() {
    if (this.closed) return;
    this.setState("connecting");
    let url = this.url;
    try {
      if (this.options.token) {
        this.token = await this.options.token();
        const u = new URL(url);
        u.searchParams.set("token", this.token);
        url = u.toString();
      }
    } catch (error) {
      this.dispatch("error", { code: "token", reason: String(error) });
      this.scheduleReconnect();
      return;
    }
    if (this.closed) return;
    let ws;
    try {
      ws = new WebSocket(url, ["wsnursery.v1.json"]);
    } catch (error) { // a malformed URL: retrying cannot help
      this.finish(error, "error");
      return;
    }
    this.ws = ws;
    this.opened = false;
    this.clearTimer("connect");
    this.timers.connect = setTimeout(() => this.lost(ws, 4000, "connect timeout"),
                                     this.options.connectTimeout * 1000);
    ws.onmessage = (event) => this.onMessage(ws, event);
    ws.onclose = (event) => this.lost(ws, event.code, event.reason);
    ws.onerror = () => {}; // always followed by close
  }

  onMessage(ws, event) {
    if (ws !== this.ws) return;
    this.lastHeard = this.now();
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      this.lost(ws, 1002, "undecodable frame from the server");
      return;
    }
    if (!this.opened) {
      if (frame.type !== "welcome" || frame.protocol !== PROTOCOL_VERSION) {
        this.lost(ws, 1002, `expected a protocol ${PROTOCOL_VERSION} welcome`);
        return;
      }
      this.opened = true;
      this.clearTimer("connect");
      this.welcome = frame;
      this.stats.connects += 1;
      if (this.stats.connects > 1) this.stats.reconnects += 1;
      this.session.onOpen(this.now());
      this.setState("open");
      this.checkHealthy();
      this.dispatch("open", frame);
      this.scheduleRefresh();
    } else {
      this.session.onFrame(frame, this.now());
    }
    this.pump();
  }

  /** Drain the session's output, then arm the one timer it needs. */
  pump() {
    const session = this.session;
    while (session.out.length) {
      const { send, event, detail } = session.out.shift();
      if (send) {
        if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(send));
        if (send.type !== "ack") this.sentAt = this.now();
      } else if (event === "item") {
        this.subscriptions.get(detail.channel)?.push(detail);
        if (detail.kind === "gap") this.dispatch("gap", detail);
      } else if (event === "published") {
        const waiter = this.waiters.get(detail.key);
        this.waiters.delete(detail.key);
        waiter?.resolve({ channel: detail.channel, epoch: detail.epoch, seq: detail.seq, key: detail.key });
      } else if (event === "publishFailed") {
        const waiter = this.waiters.get(detail.key);
        this.waiters.delete(detail.key);
        waiter?.reject(Object.assign(new Error(`${detail.error.code}: ${detail.error.reason}`), detail.error));
      } else if (event === "subscribeFailed") {
        this.subscriptions.get(detail.channel)?.fail(detail.error);
        this.subscriptions.delete(detail.channel);
        this.dispatch("error", detail.error);
      } else if (event === "serverError") {
        this.dispatch("error", detail);
      } else if (event === "subscribed") {
        this.subscriptions.get(detail.channel)?.confirm(detail);
        this.checkHealthy();
      }
    }
    this.clearTimer("tick");
    const deadline = session.nextDeadline();
    if (deadline !== null && session.connected) {
      const wait = Math.max(0, deadline - this.now());
      this.timers.tick = setTimeout(() => { session.tick(this.now()); this.pump(); }, wait * 1000 + 1);
    }
    this.armHeartbeat();
  }

  /**
   * Heartbeat: browsers answer the server's WebSocket pings by themselves and never show them,
   * so the link is judged by what arrives. After `heartbeatInterval` of silence the client
   * sends a probe (a replay from where it is: answered, changes nothing); when a probe or any
   * request has waited `heartbeatTimeout` with nothing at all arriving, the link is dead.
   */
  armHeartbeat() {
    this.clearTimer("heartbeat");
    if (!this.opened || this.closed) return;
    const interval = this.options.heartbeatInterval ?? this.welcome?.heartbeat ?? 15;
    const now = this.now();
    if (this.session.awaiting && this.sentAt > this.lastHeard) {
      const left = this.sentAt + this.options.heartbeatTimeout - now;
      if (left <= 0) {
        this.stats.heartbeatTimeouts += 1;
        this.lost(this.ws, 4000, "heartbeat timeout: nothing arrived");
        return;
      }
      this.timers.heartbeat = setTimeout(() => this.armHeartbeat(), left * 1000 + 1);
      return;
    }
    let left = this.lastHeard + interval - now;
    if (left <= 0) {
      if (this.session.probe(now)) { this.pump(); return; } // pump() arms the timer again
      left = interval;
    }
    this.timers.heartbeat = setTimeout(() => this.armHeartbeat(), left * 1000 + 1);
  }

  /** Welcome and every (re)subscribe answered: the backoff starts over (as in the SDK). */
  checkHealthy() {
    for (const sub of this.session.subs.values()) if (!sub.confirmed) return;
    this.retries = 0;
  }

  scheduleRefresh() {
    this.clearTimer("refresh");
    const exp = this.token ? tokenExpiry(this.token) : null;
    if (exp === null || !this.options.token) return;
    const wait = Math.max(1, exp - Date.now() / 1000 - this.options.refreshMargin);
    this.timers.refresh = setTimeout(async () => {
      try {
        this.token = await this.options.token();
        if (this.ws && this.opened) {
          this.ws.send(JSON.stringify({ type: "refresh", id: this.session.newId(), token: this.token }));
        }
      } catch (error) {
        this.dispatch("error", { code: "token", reason: String(error) });
      }
      this.scheduleRefresh();
    }, wait * 1000);
  }

  lost(ws, code, reason) {
    if (ws !== this.ws || ws === null) return;
    this.ws = null;
    ws.onmessage = ws.onclose = null;
    if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) {
      try { ws.close(); } catch { /* already closing */ }
    }
    const wasOpen = this.opened;
    this.opened = false;
    for (const name of ["connect", "tick", "heartbeat", "refresh"]) this.clearTimer(name);
    this.session.onClose();
    if (!wasOpen) this.stats.connectFailures += 1;
    this.dispatch("close", { code, reason });
    if (this.closed) return;
    if (FATAL_CLOSE_CODES.has(code)) {
      this.finish(Object.assign(new Error(`closed by the server: ${code} ${reason}`), { code, reason }));
      return;
    }
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    if (this.closed) return;
    if (this.retries >= this.options.maxReconnects) {
      this.finish(new Error(`gave up after ${this.retries} reconnect attempts`), "gaveup");
      return;
    }
    this.retries += 1;
    const { backoffBase, backoffMax } = this.options;
    const delay = Math.min(backoffMax, backoffBase * 2 ** (this.retries - 1)) * (0.5 + this.random() / 2);
    this.setState("connecting");
    this.dispatch("reconnect", { attempt: this.retries, delay });
    this.timers.reconnect = setTimeout(() => this.openSocket(), delay * 1000);
  }

  finish(error, event = null) {
    if (this.closed) return;
    this.closed = true;
    this.error = error;
    for (const name of Object.keys(this.timers)) this.clearTimer(name);
    for (const waiter of this.waiters.values()) waiter.reject(error);
    this.waiters.clear();
    for (const sub of this.subscriptions.values()) sub.fail(error);
    this.setState("closed");
    if (event) this.dispatch(event, error);
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.dispatch("state", state);
  }

  clearTimer(name) { clearTimeout(this.timers[name]); delete this.timers[name]; }

  dispatch(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }
}

/** One channel's items; made by {@link Client#subscribe}. */
export class Subscription {
  constructor(client, channel, bufferSize, onItem) {
    Object.assign(this, { client, channel, bufferSize, onItem });
    this.buffer = [];
    this.readers = [];
    this.error = null;
    this.closed = false;
    this.confirmed = new Promise((resolve, reject) => { this.onConfirm = resolve; this.onRefuse = reject; });
    this.confirmed.catch(() => {});
  }

  /** [epoch, seq] of the last item handed over: what to pass as `since` to resume later. */
  get position() { return this.state ? this.state.receiver.position : null; }

  /** Whether the buffer is at its bound (frames are then left on the server; see the top). */
  get full() { return !this.onItem && this.buffer.length >= this.bufferSize; }

  /** Resolves once the server confirmed the subscription ({epoch, seq, recovered}). */
  ready() { return this.confirmed; }

  /** The next item; resolves with null once the subscription is closed. */
  next() {
    if (this.buffer.length) {
      const item = this.buffer.shift();
      if (this.buffer.length === Math.floor(this.bufferSize / 2)) {
        this.client.session.resume(this.channel, this.client.now());
        this.client.pump();
      }
      return Promise.resolve(item);
    }
    if (this.error) return Promise.reject(this.error);
    if (this.closed) return Promise.resolve(null);
    return new Promise((resolve, reject) => this.readers.push({ resolve, reject }));
  }

  async *[Symbol.asyncIterator]() {
    for (;;) {
      const item = await this.next();
      if (item === null) return;
      yield item;
    }
  }

  /** Stop delivering and unsubscribe. */
  close() {
    if (this.closed) return;
    this.closed = true;
    this.client.session.unsubscribe(this.channel);
    this.client.subscriptions.delete(this.channel);
    this.client.pump();
    for (const reader of this.readers.splice(0)) reader.resolve(null);
  }

  push(item) {
    if (this.closed) return;
    if (this.onItem) { this.onItem(item); return; }
    const reader = this.readers.shift();
    if (reader) reader.resolve(item);
    else this.buffer.push(item);
  }

  confirm(detail) { this.onConfirm(detail); }

  fail(error) {
    this.error = error;
    this.onRefuse(error);
    for (const reader of this.readers.splice(0)) reader.reject(error);
  }
}
