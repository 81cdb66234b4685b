// The live console (GET /): connect, subscribe, watch, publish, and the server's figures.
// Uses /client.js like any page would; /metrics is read once a second for the charts.
import { connect } from "/client.js";

const $ = (id) => document.getElementById(id);
const MAX_ROWS = 500; // the log keeps the newest rows only
const POINTS = 60; // chart history: one point a second
let client = null;
const subs = new Map();

$("url").value = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;
const params = new URLSearchParams(location.search);
if (params.get("url")) $("url").value = params.get("url");

function setConnected(on) {
  $("connect").disabled = on;
  $("disconnect").disabled = !on;
  $("subscribe").disabled = !on;
  $("publish").disabled = !on;
}

function row(kind, cells, attrs = {}) {
  const tr = document.createElement("tr");
  tr.className = kind;
  tr.dataset.kind = kind;
  for (const [key, value] of Object.entries(attrs)) tr.dataset[key] = value;
  for (const [cls, text] of cells) {
    const td = document.createElement("td");
    td.className = cls;
    td.textContent = text;
    if (cls === "data" && cells.length === 2) td.colSpan = 3;
    tr.append(td);
  }
  const body = $("log").tBodies[0];
  body.prepend(tr);
  while (body.rows.length > MAX_ROWS) body.deleteRow(-1);
}

const clock = () => new Date().toTimeString().slice(0, 8);
const show = (data) => (typeof data === "string" ? data : JSON.stringify(data));

function note(kind, text) { row(kind, [["time", clock()], ["data", text]]); }

function figures() {
  if (!client) return;
  $("connects").textContent = client.stats.connects;
  $("reconnects").textContent = client.stats.reconnects;
  $("delivered").textContent = client.session.counters.delivered;
  $("gaps").textContent = client.session.counters.gaps;
}

$("connect-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  client = connect($("url").value.trim(), {
    token: token ? () => token : undefined,
    maxReconnects: Infinity,
    backoffMax: 5,
  });
  window.consoleClient = client; // for the curious (and the browser tests)
  client.addEventListener("state", (e) => {
    $("state").dataset.state = e.detail;
    $("state").textContent = e.detail;
  });
  client.addEventListener("open", (e) => {
    note("open", `connected: ${e.detail.server}, heartbeat ${e.detail.heartbeat}s`);
    figures();
  });
  client.addEventListener("reconnect", (e) => {
    note("reconnect", `reconnecting (attempt ${e.detail.attempt}, in ${e.detail.delay.toFixed(2)}s)`);
    figures();
  });
  client.addEventListener("close", (e) => note("event", `connection closed: ${e.detail.code} ${e.detail.reason || ""}`));
  client.addEventListener("error", (e) => note("event", `error: ${e.detail.code} ${e.detail.reason || e.detail.message || ""}`));
  client.addEventListener("gaveup", () => note("event", "gave up reconnecting"));
  setConnected(true);
});

$("disconnect").addEventListener("click", () => {
  if (client) client.close();
  client = null;
  for (const li of $("subscriptions").querySelectorAll("li")) li.remove();
  subs.clear();
  setConnected(false);
});

$("subscribe-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const channel = $("sub-channel").value.trim();
  if (!client || !channel || subs.has(channel)) return;
  const sub = client.subscribe(channel, {
    ack: $("sub-ack").checked,
    onItem: (item) => {
      if (item.kind === "gap") {
        row("gap", [["time", clock()], ["channel", item.channel], ["seq", `${item.expectedSeq}…${item.resumedAtSeq - 1}`],
                    ["data", `GAP: messages ${item.expectedSeq} to ${item.resumedAtSeq - 1} lost (${item.reason})`]],
            { channel: item.channel, expected: item.expectedSeq, resumed: item.resumedAtSeq, reason: item.reason });
      } else {
        row("message", [["time", clock()], ["channel", item.channel], ["seq", item.seq], ["data", show(item.data)]],
            { channel: item.channel, seq: item.seq });
      }
      figures();
    },
  });
  subs.set(channel, sub);
  const li = document.createElement("li");
  li.dataset.channel = channel;
  li.textContent = channel;
  const off = document.createElement("button");
  off.type = "button";
  off.className = "small";
  off.textContent = "unsubscribe";
  off.addEventListener("click", () => { sub.close(); subs.delete(channel); li.remove(); });
  li.append(off);
  $("subscriptions").append(li);
  sub.ready().then((d) => { li.dataset.ready = "1"; li.title = `epoch ${d.epoch}, head ${d.seq}`; },
                   (e) => { note("event", `subscribe to ${channel} refused: ${e.code} ${e.reason}`); li.remove(); subs.delete(channel); });
});

$("publish-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const channel = $("pub-channel").value.trim();
  const text = $("pub-data").value;
  let data;
  try { data = JSON.parse(text); } catch { data = text; }
  $("pub-result").textContent = "publishing…";
  try {
    const done = await client.publish(channel, data);
    $("pub-result").textContent = `published: ${done.channel} seq ${done.seq}`;
  } catch (error) {
    $("pub-result").textContent = `refused: ${error.message}`;
  }
});

$("clear").addEventListener("click", () => { $("log").tBodies[0].replaceChildren(); });

// -- server figures from /metrics (Prometheus text format) as small live charts

function sample(text, name) {
  let total = null;
  for (const line of text.split("\n")) {
    if (line.startsWith(name) && (line[name.length] === " " || line[name.length] === "{")) {
      total = (total ?? 0) + Number(line.slice(line.lastIndexOf(" ") + 1));
    }
  }
  return total;
}

const charts = {
  connections: { series: [], format: (v) => v.toFixed(0) },
  messages: { series: [], format: (v) => v.toFixed(1) },
  deliveries: { series: [], format: (v) => v.toFixed(1) },
};

function draw(name) {
  const { series, format } = charts[name];
  const figure = $(`chart-${name}`);
  const svg = figure.querySelector("svg");
  const top = Math.max(1, ...series) * 1.15;
  const x = (i) => (i * 240) / Math.max(series.length - 1, 1); // the last POINTS seconds, full width
  const y = (v) => 58 - (v / top) * 56;
  const points = series.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
  const first = series.length ? x(0).toFixed(1) : "0";
  const last = series.length ? x(series.length - 1).toFixed(1) : "0";
  svg.innerHTML = series.length
    ? `<polygon points="${first},58 ${points} ${last},58"></polygon><polyline points="${points}"></polyline>`
    : "";
  svg.dataset.points = series.length;
  figure.querySelector("b").textContent = series.length ? format(series[series.length - 1]) : "";
  figure.querySelector("small").textContent = series.length > 1
    ? `last ${series.length} s · peak ${format(Math.max(...series))}` : "";
}

let previous = null;
async function poll() {
  try {
    const response = await fetch("/metrics", { cache: "no-store" });
    const text = await response.text();
    const now = performance.now() / 1000;
    const current = { t: now, published: sample(text, "wsnursery_publishes_total"),
                      delivered: sample(text, "wsnursery_deliveries_total") };
    const push = (name, value) => {
      const { series } = charts[name];
      series.push(value);
      if (series.length > POINTS) series.shift();
      draw(name);
    };
    push("connections", sample(text, "wsnursery_connections_active") ?? 0);
    if (previous) {
      const dt = Math.max(1e-3, now - previous.t);
      push("messages", Math.max(0, (current.published - previous.published) / dt));
      push("deliveries", Math.max(0, (current.delivered - previous.delivered) / dt));
    }
    previous = current;
  } catch {
    // a server that went away: the charts stop moving; the state badge says why
  }
  setTimeout(poll, 1000);
}
poll();
