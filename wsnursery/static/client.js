// wsnursery browser client: the same delivery rules as the Python SDK, with no dependency.
//
//   import { connect } from "/client.js";
//   const client = connect("ws://127.0.0.1:8765/");
//   const sub = client.subscribe("chat.room1", { ack: true });
//   for await (const item of sub) console.log(item.kind, item.seq, item.data);
//   await client.publish("chat.room1", { text: "hi" });
//
// Two files, like the Python SDK's sans-I/O core and its I/O shell:
// - /client-session.js: ChannelReceiver, ChannelRecord, PublishTracker and Session, the decisions
//   (order, repeats, gaps, acks, replays, publish keys and retries), no I/O at all;
// - this file: Client (connect) and Subscription, the thin shell: one WebSocket at a time,
//   setTimeout, reconnect with jittered backoff, heartbeat, token refresh, the buffers.
//
// Bounds (what happens at each): a subscription buffers at most `bufferSize` items for the
// application; past that, frames of that channel are left on the server and asked for again
// (`replay`) once the application caught up, so nothing grows and nothing is lost silently.
// At most `maxPendingPublishes` unconfirmed publishes: one more is rejected at once. Loss the
// server cannot repair is a `gap` item, never silence.

import { Session, seededRandom, tokenExpiry } from "./client-session.js";

export {
  ChannelReceiver, ChannelRecord, PublishTracker, Session, bytesFromJson, bytesToJson, seededRandom, tokenExpiry,
} from "./client-session.js";

/** Close codes after which reconnecting would only repeat the refusal (as in the SDK). */
const FATAL_CLOSE_CODES = new Set([1002, 1003, 1007, 1008, 1009, 4003]);
const PROTOCOL_VERSION = 1;

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
 * pending publishes reject), "state" (detail: "connecting" | "open" | "closed"), "refreshed"
 * (detail: {exp}: the server took the renewed token).
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
    ws.onclose = (event) => this.lost(ws, event.code, event.reason, true);
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
        this.lost(ws, 1002, `expected a protocol ${PROTOCOL_VERSION} welcome`, true); // final: it would repeat
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
        this.takeWaiter(detail.key)?.resolve({ channel: detail.channel, epoch: detail.epoch,
                                                seq: detail.seq, key: detail.key });
      } else if (event === "publishFailed") {
        const { code, reason } = detail.error;
        this.takeWaiter(detail.key)?.reject(Object.assign(new Error(`${code}: ${reason}`), detail.error));
      } else if (event === "subscribeFailed") {
        this.subscriptions.get(detail.channel)?.fail(detail.error);
        this.subscriptions.delete(detail.channel);
        this.dispatch("error", detail.error);
      } else if (event === "serverError") {
        if (detail.id !== undefined && detail.id === this.refreshId) {
          this.refreshId = null; // refused: not asked again on this connection (then 4001, reconnect)
        }
        this.dispatch("error", detail);
      } else if (event === "refreshed") {
        this.refreshId = null;
        this.scheduleRefresh(); // the connection now runs on the new token
        this.dispatch("refreshed", detail);
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

  /** The publish waiter for `key`, taken out of the map (undefined if there is none). */
  takeWaiter(key) {
    const waiter = this.waiters.get(key);
    this.waiters.delete(key);
    return waiter;
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

  /**
   * Token renewal (as the SDK's TokenRefresh): due `refreshMargin` seconds before the token's
   * `exp`, or half-way through what is left for a shorter token; the new token goes in-band
   * (`refresh`). A refusal is not retried on this connection: the worst case is a close 4001 at
   * expiry, after which the client reconnects with a fresh token from the same function.
   */
  scheduleRefresh() {
    this.clearTimer("refresh");
    const exp = this.token ? tokenExpiry(this.token) : null;
    if (exp === null || !this.options.token) return;
    const remaining = exp - Date.now() / 1000;
    const wait = Math.max(0, remaining - Math.min(this.options.refreshMargin, remaining / 2));
    this.timers.refresh = setTimeout(async () => {
      const ws = this.ws;
      let token;
      try {
        token = await this.options.token();
      } catch (error) {
        this.dispatch("error", { code: "token", reason: String(error) });
        return;
      }
      if (ws !== this.ws || !this.opened) return; // that connection is gone; the next one fetches its own
      this.token = token;
      this.refreshId = this.session.newId();
      ws.send(JSON.stringify({ type: "refresh", id: this.refreshId, token }));
    }, wait * 1000);
  }

  /** The connection ended; `remote`: the code came from the server (only then can it be final). */
  lost(ws, code, reason, remote = false) {
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
    if (remote && FATAL_CLOSE_CODES.has(code)) {
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
