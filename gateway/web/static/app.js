// fieldgate status page: plain JavaScript, no framework, no external requests.
// Every view is rendered from the JSON API; live views follow a Server-Sent Events stream.
// Text from the gateway is always inserted with textContent, never as HTML.
"use strict";

// notice: the result of the last action (reload), kept across live redraws until dismissed
const state = { csrf: "", authRequired: false, source: null, timer: null, notice: null, last: null };

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  // Views nest arrays freely (a card holds rows, a row is [dt, dd]): flatten all the way down,
  // or an inner array would be rendered as "[object HTMLElement],…" text.
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function pad(n) { return String(n).padStart(2, "0"); }

// "14:05:09": a local time of day, 24-hour in every locale (toLocaleTimeString says "2:05:09 PM" in en-US).
function clock(d) { return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`; }

// Local time on the page, UTC on hover (title).
function when(iso) {
  if (!iso) return h("span", { class: "muted" }, "never");
  const d = new Date(iso);
  const today = new Date().toDateString() === d.toDateString();
  const local = (today ? "" : `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `) +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return h("time", { datetime: iso, title: `UTC ${iso.replace("T", " ").replace("Z", "")}` }, local);
}

// "12 min ago": how long ago an instant was, coarse enough to read at a glance.
function ago(iso) {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

function duration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

// A URL that may wrap between its parts (after "://", before ":port", at a dot) but never inside
// a number or a name: "mqtt://127.0.0.1:3|7005" misreads as another port.
function urlText(url) {
  const parts = String(url).split(/(?<=:\/\/)|(?=:\d+$)|(?<=\.)/);
  const out = [];
  parts.forEach((p, i) => { if (i) out.push(h("wbr", {})); out.push(p); });
  return h("span", { class: "url" }, out);
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

const STATE_WORD = {
  online: "online", degraded: "degraded", offline: "offline", starting: "starting", disabled: "disabled",
  connected: "connected", connecting: "connecting", disconnected: "disconnected", none: "no uplink",
  good: "good", uncertain: "uncertain", bad: "bad", stale: "stale",
};
const STATE_CLASS = {
  online: "ok", connected: "ok", good: "ok", degraded: "warn", connecting: "warn", uncertain: "warn",
  starting: "idle", disabled: "idle", stale: "idle", none: "idle", offline: "bad", disconnected: "bad", bad: "bad",
};

function badge(s) {
  return h("span", { class: `badge ${STATE_CLASS[s] || "idle"}`, "data-state": s }, STATE_WORD[s] || s);
}

function fmtValue(m) {
  if (!m) return "–";
  if (m.value === null || m.value === undefined) return "–";
  if (typeof m.value === "number") return `${m.value}`;
  return String(m.value);
}

async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  if (opts.method && opts.method !== "GET") {
    opts.headers["X-CSRF-Token"] = state.csrf;
    opts.headers["Content-Type"] = "application/json";
  }
  let resp;
  try {
    resp = await fetch(path, opts);
  } catch (e) {  // no answer at all: the gateway is gone or the network is
    markStale(true);
    throw new Error("no contact with the gateway");
  }
  if (!state.source) { state.seen = Date.now(); state.seenIso = new Date().toISOString(); markStale(false); }
  if (resp.status === 401 && location.pathname !== "/login") {
    location.href = "/login?next=" + encodeURIComponent(location.pathname);
    throw new Error("not logged in");
  }
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const err = new Error(body.message || `HTTP ${resp.status}`);
    err.status = resp.status;
    throw err;
  }
  return body;
}

function setMain(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined && n !== false));
  // what comes after <main> (the commands panel) shows only now, below the content: shown while
  // "Loading…" it would jump down by a screen when the page filled in
  document.body.classList.add("rendered");
}

function setLive(on) {
  const el = document.getElementById("live");
  el.hidden = false;
  el.className = on ? "live on" : "live off";
  el.textContent = on ? "live" : "reconnecting";
  markStale(!on);
}

// The gateway is gone (process killed, network lost): the page keeps what it last saw, so it must
// say that it is old, not keep showing green. Set by a failed stream or fetch, or by silence.
state.seen = null;  // Date.now() of the last answer from the gateway
state.seenIso = null;  // the gateway's own clock at that answer
function markStale(on) {
  const was = document.body.classList.contains("stale");
  if (!on) { state.seen = Date.now(); }
  if (on === was && !on) return;
  document.body.classList.toggle("stale", on);
  let el = document.getElementById("stale");
  if (!on) { if (el) el.remove(); return; }
  if (!el) {
    el = h("p", { id: "stale", class: "alert stale-banner", role: "alert" });
    document.getElementById("main").before(el);
  }
  const at = state.seenIso || (state.seen ? new Date(state.seen).toISOString() : null);
  el.replaceChildren(...[h("strong", {}, "✖ No contact with the gateway"),
    at ? [": what you see is from ", when(at), ` (${ago(at) || "just now"}) and may be out of date.`] : ".",
    " Retrying…"].flat());
}
// Silence is also lost contact: a live page gets a document every second.
setInterval(() => {
  if (state.source && state.seen && Date.now() - state.seen > 10000) markStale(true);
  else if (document.body.classList.contains("stale")) markStale(true);  // keeps "x s ago" current
}, 2000);

function follow(url, eventName, render) {
  if (state.source) state.source.close();
  const src = new EventSource(url);
  state.source = src;
  src.addEventListener(eventName, (ev) => {
    state.last = JSON.parse(ev.data);
    const st = state.last.status;
    state.seenIso = st && st.now ? st.now : new Date().toISOString();
    setLive(true);
    render(state.last);
    window.__renders = (window.__renders || 0) + 1;  // the browser tests count redraws
  });
  src.onerror = () => {
    setLive(false);
    // EventSource retries a lost connection by itself, but gives up for good on an error answer
    // (a restarted gateway has forgotten the session: 401). Then ask once every few seconds;
    // api() sends a logged-out browser to the login page.
    if (src.readyState === EventSource.CLOSED && state.source === src) {
      setTimeout(() => {
        if (state.source !== src) return;
        api("/api/v1/session").then(() => follow(url, eventName, render)).catch(() => src.onerror());
      }, 3000);
    }
  };
}

// --- charts (uPlot, served by the gateway from /static) ------------------------

// Nodes that survive the live redraw (a chart's canvas is kept, not rebuilt every second).
const keep = new Map();
function kept(id, make) {
  if (!keep.has(id)) keep.set(id, make());
  return keep.get(id);
}
function forget(prefix) {
  for (const k of [...keep.keys()]) if (k.startsWith(prefix)) { const n = keep.get(k); if (n.__plot) n.__plot.destroy(); keep.delete(k); }
}
window.__charts = {};  // id -> uPlot instance (the browser tests read their data)

// The chart's inner width: its box less its padding and border (so it never widens the page).
function chartWidth(el) {
  const cs = getComputedStyle(el);
  const inner = el.getBoundingClientRect().width - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight)
    - parseFloat(cs.borderLeftWidth) - parseFloat(cs.borderRightWidth);
  return Math.max(150, Math.floor(Math.min(inner || 600, document.documentElement.clientWidth - 40)));
}

// Time-axis labels: 24-hour "HH:MM" (":SS" when the ticks are seconds apart), with the date under
// the first tick and under the first tick of a new day; the same whatever the browser's locale.
function timeLabels(u, splits, axisIdx, space, incr) {
  let day = null;
  return splits.map((t) => {
    const d = new Date(t * 1000);
    const ymd = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
    let s = `${pad(d.getHours())}:${pad(d.getMinutes())}${incr < 60 ? `:${pad(d.getSeconds())}` : ""}`;
    if (ymd !== day) { s += `\n${ymd}`; day = ymd; }
    return s;
  });
}
// Tick steps of whole seconds and minutes (uPlot's defaults go down to milliseconds: ":59.000").
const TIME_INCRS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];

// A line chart in `node`; `series` = [{label, stroke, scale}]; data = [t[], y1[], ...] (t in epoch s).
function plot(node, id, series, data, height = 180) {
  if (typeof uPlot === "undefined") { node.textContent = "chart library not loaded"; return null; }
  if (node.__plot) { node.__plot.setData(data); return node.__plot; }
  // axis labels in the page's muted text colour (light or dark), which holds 4.5:1 on a card; uPlot's
  // usual #888 is 3.5:1 on white
  const axis = getComputedStyle(document.documentElement).getPropertyValue("--muted").trim() || "#5d6670";
  const opts = {
    width: chartWidth(node), height, legend: { show: series.length > 1, live: false }, cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true } },
    axes: [{ stroke: axis, values: timeLabels, incrs: TIME_INCRS, space: 70, size: 56 }, { stroke: axis, scale: series[0].scale || "y", size: 55 },
      ...(series.length > 1 && series[1].scale ? [{ side: 1, stroke: axis, scale: series[1].scale, grid: { show: false }, size: 52 }] : [])],
    series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.stroke || "#0b5cad", width: 2, scale: s.scale || "y",
      fill: s.fill || undefined, dash: s.dash, spanGaps: false, points: { show: false } }))],
  };
  const u = new uPlot(opts, data, node);
  node.__plot = u;
  window.__charts[id] = u;
  return u;
}

// Light/dark switched while the page is open: the charts' axes take the new text colour.
window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
  const axis = getComputedStyle(document.documentElement).getPropertyValue("--muted").trim();
  for (const u of Object.values(window.__charts)) {
    for (const a of u.axes) a.stroke = () => axis;
    u.redraw(false, true);
  }
});

// A tiny canvas of the last values (no library: dozens of them on one page).
function sparkline(vs, w = 80, hgt = 20) {
  const c = h("canvas", { class: "spark", width: w * 2, height: hgt * 2, "aria-hidden": "true" });
  c.style.width = `${w}px`; c.style.height = `${hgt}px`;
  const nums = vs.filter((v) => typeof v === "number");
  if (nums.length < 2) return c;
  const lo = Math.min(...nums), hi = Math.max(...nums), span = hi - lo || 1;
  const g = c.getContext("2d");
  g.scale(2, 2);  // sharp on high-density screens
  g.strokeStyle = getComputedStyle(document.documentElement).getPropertyValue("--accent").trim() || "#0b5cad";
  g.lineWidth = 1.5;
  g.beginPath();
  let pen = false;
  vs.forEach((v, i) => {
    if (typeof v !== "number") { pen = false; return; }
    const x = i / (vs.length - 1) * w, y = hgt - 2 - (v - lo) / span * (hgt - 4);
    if (pen) g.lineTo(x, y); else g.moveTo(x, y);
    pen = true;
  });
  g.stroke();
  c.dataset.points = String(nums.length);
  return c;
}

// Device states over time as coloured segments (green online, amber degraded, red offline).
function timeline(states, since, now) {
  since = states.length ? Math.max(since, states[0].t) : since;  // from when the gateway knows the device
  const bar = h("div", { class: "timeline", role: "img", "aria-label": "device state over time" });
  const span = Math.max(1, now - since);
  states.forEach((s, i) => {
    const start = Math.max(s.t, since), end = i + 1 < states.length ? states[i + 1].t : now;
    if (end <= start) return;
    bar.append(h("span", { class: `seg ${STATE_CLASS[s.state] || "idle"}`, title: `${s.state} from ${clock(new Date(start * 1000))}${s.error ? `: ${s.error}` : ""}`,
      style: null, "data-state": s.state }));
    bar.lastChild.style.width = `${((end - start) / span * 100).toFixed(2)}%`;
  });
  return bar;
}

// --- views ------------------------------------------------------------------

function card(title, ...rows) {
  return h("section", { class: "card" }, h("h2", {}, title), h("dl", {}, rows.flat()));
}

// A driver's nested status document as [label, text] pairs: {"adapter": {"state": "on"}} -> ["adapter state", "on"].
function flatten(doc, prefix = "") {
  const out = [];
  for (const [k, v] of Object.entries(doc)) {
    const label = prefix ? `${prefix} ${k}` : k;
    if (v !== null && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length) out.push(...flatten(v, label));
    else if (Array.isArray(v)) out.push([label, v.map((x) => (typeof x === "object" ? JSON.stringify(x) : String(x))).join(", ") || "–"]);
    else out.push([label, v === null || v === undefined || (typeof v === "object") ? "–" : String(v)]);
  }
  return out;
}

function row(label, value) {
  return [h("dt", {}, label), h("dd", {}, value)];
}

function renderOverview(doc) {
  const s = doc.status;
  document.getElementById("gw-name").textContent = s.gateway;
  const u = s.uplink, b = s.buffer, sys = s.system;
  const cards = h("div", { class: "cards" },
    card("Gateway",
      row("Id", h("strong", { "data-field": "gateway" }, s.gateway)),
      row("Version", s.version),
      row("Up for", h("span", { title: `started ${s.started}` }, duration(s.uptime_s))),
      row("Clock", s.clock.synced ? badge("good") : h("span", { class: "badge warn" }, "not synchronized")),
      row("Devices", `${s.devices.online} online, ${s.devices.degraded} degraded, ${s.devices.offline} offline`)),
    card("Uplink",
      row("State", h("span", { "data-field": "uplink-state" }, badge(u.state))),
      row("Broker", h("span", { "data-field": "uplink-broker" },
        u.broker ? urlText(u.broker) : (u.kind === "stdout" ? "none: readings printed to stdout" : "none"))),
      u.state_since && u.state !== "none" ? row(u.state === "connected" ? "Connected" : "Since",
        h("span", { "data-field": "uplink-since" }, when(u.state_since), ` (${ago(u.state_since)})`)) : [],
      row("Published", `${u.published} (acked ${u.acked}, resent ${u.resent})`),
      row("Rate", h("span", { "data-field": "uplink-rate" }, u.publish_rate === null ? "–" : `${u.publish_rate} msg/s`)),
      u.last_error ? row("Last error", h("span", { class: u.state === "connected" ? "muted" : "err" },
        u.last_error, u.state === "connected" ? " (recovered)" : "")) : []),
    card("Buffer",
      b ? [row("Depth", [h("span", { "data-field": "buffer-depth" }, String(b.depth)), " reading(s)"]),
        row("Oldest", h("span", { "data-field": "buffer-oldest" },
          b.oldest_ts ? [when(b.oldest_ts), ` (${duration(b.oldest_age_s)} ago)`] : "empty")),
        row("Dropped", h("span", { class: b.dropped ? "err" : "", "data-field": "buffer-dropped" }, String(b.dropped))),
        row("On disk", h("span", { "data-field": "buffer-bytes" }, bytes(b.bytes))),
        b.disk_full ? row("Disk", h("span", { class: "badge bad" }, "full")) : []]
        : row("Buffer", "none (no MQTT uplink configured)")),
    card("System",
      row("CPU", sys.cpu_percent === null ? "–" : `${sys.cpu_percent} %`),
      row("Memory", `${bytes(sys.rss_bytes)} used by fieldgate`),
      row("Free", sys.mem_available_bytes ? `${bytes(sys.mem_available_bytes)} of ${bytes(sys.mem_total_bytes)}` : "–"),
      row("Load", sys.load1 === null ? "–" : String(sys.load1))));
  const alert = uplinkAlert(u, b);
  // without an uplink there is no buffer or rate: say so rather than draw an empty box
  const trend = u.state === "none"
    ? h("p", { class: "muted", id: "trend-none" }, "No uplink: nothing is forwarded or buffered, so nothing to chart.")
    : kept("overview-trend", () => h("div", { id: "trend-chart", class: "chart" }));
  setMain(h("h1", { class: "sr-only" }, `Overview of gateway ${s.gateway}`), alert, cards,
    h("h2", {}, "Buffer and uplink, last hour"), trend, h("h2", {}, "Devices"), deviceTable(problemsFirst(doc.devices), true),
    h("div", { class: "actions" }, h("button", { id: "reload", onclick: doReload }, "Reload configuration")),
    noticeBox());
  if (u.state !== "none" && !trend.__plot && !trend.__loading) {  // the first draw; then every 5 s
    trend.__loading = true;
    refreshTrend().finally(() => { trend.__loading = false; });
  }
}

// The overview answers "what broke" first: offline, then degraded, then starting devices, and the
// rest in the configured order (a stable sort, so rows do not shuffle while nothing changes).
const PROBLEM_RANK = { offline: 0, degraded: 1, starting: 2 };
function problemsFirst(devices) {
  return devices.map((d, i) => [PROBLEM_RANK[d.state] ?? 3, i, d]).sort((a, b) => a[0] - b[0] || a[1] - b[1])
    .map((x) => x[2]);
}

// Is data getting out? Said in words at the top while the broker is away: since when, and how much waits.
function uplinkAlert(u, b) {
  if (u.kind !== "mqtt" || u.state === "connected") return null;
  const waiting = b ? [`; ${b.depth} reading(s) wait in the buffer`,
    b.oldest_ts ? `, the oldest from ${duration(b.oldest_age_s)} ago` : "", b.dropped ? `, ${b.dropped} dropped` : ""] : [];
  return h("p", { id: "uplink-alert", class: "alert", role: "alert" }, h("strong", {}, "✖ Data is not getting out: "),
    `the broker is ${STATE_WORD[u.state] || u.state}`,
    u.state_since ? [" since ", when(u.state_since), ` (${ago(u.state_since)})`] : "", waiting, ".");
}

// The result of the last action, drawn by every redraw until the user dismisses it.
function noticeBox() {
  const n = state.notice;
  if (!n) return null;
  return h("div", { id: "reload-msg", class: n.ok ? "alert ok" : "alert", role: "status" },
    h("button", { id: "reload-dismiss", class: "link dismiss", "aria-label": "dismiss",
      onclick: () => { state.notice = null; document.getElementById("reload-msg")?.remove(); } }, "✕"),
    h("strong", {}, n.title), " ", h("span", { class: "muted" }, when(n.at)),
    n.lines.length ? h("ul", {}, n.lines.map((l) => h("li", {}, l))) : null);
}

// The buffer-depth hill and the publish/ack rates: fetched every 5 s (the history has 1 s points).
async function refreshTrend() {
  const node = keep.get("overview-trend");
  if (!node || !node.isConnected) return;
  try {
    const r = await api("/api/v1/history?since=3600");
    const g = r.gateway;
    plot(node, "buffer", [{ label: "buffer depth", stroke: "#b42318", scale: "n", fill: "rgba(180,35,24,.08)" },
      { label: "published msg/s", stroke: "#0b5cad", scale: "r", dash: [5, 4] }, { label: "acked msg/s", stroke: "#1a7f37", scale: "r" }],
    [g.buffer_depth.t, g.buffer_depth.v, g.publish_rate.v, g.ack_rate.v]);
  } catch (e) { /* the next refresh tries again; the live badge shows a lost connection */ }
}

async function doReload() {
  const at = new Date().toISOString();
  try {
    const r = await api("/api/v1/reload", { method: "POST", body: "{}" });
    if (r.result === "applied") {
      const c = r.changes || {};
      state.notice = { ok: true, at, title: "Configuration applied.", lines: [
        `${(c.added || []).length} device(s) added, ${(c.changed || []).length} changed, ${(c.removed || []).length} removed`,
        ...(r.warnings || [])] };
    } else if (r.result === "refused") {
      state.notice = { ok: false, at, title: "Configuration refused; the running one is kept.", lines: r.errors || [] };
    } else {
      state.notice = { ok: true, at, title: "Reload requested: see Events & log.", lines: [] };
    }
  } catch (e) {
    state.notice = { ok: false, at, title: "Reload failed.", lines: [e.message] };
  }
  if (state.last) renderOverview(state.last);
}

// A device's last error: red while it is current, muted with "recovered" once the device is online again.
function lastError(d) {
  if (!d.last_error) return h("span", { class: "muted" }, "–");
  const current = d.state !== "online";
  return h("span", { class: current ? "err current" : "muted recovered", title: d.last_error_ts || "" },
    current ? "" : "Last error, ", d.last_error_ts ? ago(d.last_error_ts) : "",
    current ? "" : ", recovered", ": ", d.last_error);
}

function deviceTable(devices, compact) {
  if (!devices.length) return h("p", { class: "muted" }, "No devices configured.");
  return h("table", { class: "devices" },
    h("thead", {}, h("tr", {}, h("th", {}, "Device"), h("th", {}, "State"), h("th", {}, "Last reading"),
      h("th", {}, "Polls / errors"), h("th", {}, "Latency"), compact ? null : h("th", {}, "Values"),
      h("th", {}, "Last error"))),
    h("tbody", {}, devices.map((d) => h("tr", { "data-device": d.id },
      h("td", { "data-label": "Device" }, h("a", { href: `/devices/${encodeURIComponent(d.id)}` }, d.id),
        h("div", { class: "muted small" }, d.driver)),
      h("td", { "data-label": "State", class: "state" }, badge(d.state)),
      h("td", { "data-label": "Last reading" }, when(d.last_reading)),
      h("td", { "data-label": "Polls / errors" }, `${d.polls} / ${d.failures}`),
      h("td", { "data-label": "Latency" }, d.latency_ms === null ? "–" : `${d.latency_ms} ms`),
      compact ? null : h("td", { "data-label": "Values" }, valueList(d.metrics, d.id)),
      h("td", { "data-label": "Last error", "data-field": "last-error",
        class: d.last_error && d.state !== "online" ? "err current" : "muted" }, lastError(d))))));
}

const sparks = {};  // device -> {metric: [values]} from the history, refreshed every 10 s

function valueList(metrics, device) {
  const sp = sparks[device] || {};
  return h("ul", { class: "values" }, Object.entries(metrics).map(([name, m]) =>
    h("li", { class: m.stale ? "q-stale" : `q-${m.quality}`, "data-metric": name,
      title: (m.stale ? "stale (device offline), " : "") + (m.reason ? `${m.quality}: ${m.reason}` : m.quality) },
      `${name} `, h("b", {}, fmtValue(m)), m.unit ? ` ${m.unit}` : "", sp[name] ? sparkline(sp[name], 48, 14) : null)));
}

async function refreshSparks(devices) {
  await Promise.all(devices.map(async (d) => {
    try {
      const r = await api(`/api/v1/devices/${encodeURIComponent(d.id)}/history?since=600`);
      sparks[d.id] = Object.fromEntries(r.metrics.map((m) => [m.metric, m.points.v.slice(-40)]));
    } catch (e) { /* shown without sparklines */ }
  }));
}

// A device matches the filter when its id, driver, state or a tag contains the text (any case).
function matches(d, text, problems) {
  if (problems && (d.state === "online" || d.state === "disabled")) return false;
  if (!text) return true;
  const hay = [d.id, d.driver, d.state, ...Object.entries(d.tags || {}).map(([k, v]) => `${k}=${v}`)].join(" ");
  return hay.toLowerCase().includes(text);
}

function renderDevices(doc) {
  document.getElementById("gw-name").textContent = doc.status.gateway;
  if (!renderDevices.asked) {  // sparklines: at once, then every 10 s
    renderDevices.asked = true;
    refreshSparks(doc.devices).then(() => { if (state.last) renderDevices(state.last); });
  }
  // The heading and the filter are built once and kept: a live redraw replaces only the list,
  // so typing in the filter is not interrupted (nor its focus lost) every second.
  let list = document.getElementById("device-list");
  if (!list) {
    const q = new URLSearchParams(location.search);
    const redraw = () => {
      const url = new URL(location.href);
      const text = document.getElementById("device-filter").value;
      if (text) url.searchParams.set("q", text); else url.searchParams.delete("q");
      if (document.getElementById("device-problems").checked) url.searchParams.set("problems", "1");
      else url.searchParams.delete("problems");
      history.replaceState(null, "", url);
      if (state.last) renderDevices(state.last);
    };
    list = h("div", { id: "device-list" });
    setMain(h("h1", {}, "Devices"),
      h("div", { class: "filters", role: "search" },
        h("label", {}, "Filter ", h("input", { type: "search", id: "device-filter", value: q.get("q") || "",
          placeholder: "id, driver, state or tag", autocomplete: "off", oninput: redraw })),
        h("label", { class: "check" }, h("input", { type: "checkbox", id: "device-problems",
          checked: q.get("problems") === "1", onchange: redraw }), " only devices with a problem"),
        h("span", { id: "device-count", class: "muted small", "aria-live": "polite" })),
      list);
  }
  const text = document.getElementById("device-filter").value.trim().toLowerCase();
  const problems = document.getElementById("device-problems").checked;
  const shown = doc.devices.filter((d) => matches(d, text, problems));
  document.getElementById("device-count").textContent = `${shown.length} of ${doc.devices.length} device(s)`;
  list.replaceChildren(shown.length || !doc.devices.length ? deviceTable(shown, false)
    : h("p", { class: "muted" }, problems && !text ? "No device has a problem." : "No device matches the filter."));
}

let detailStatic = null;
// the device page's history (refreshed every 5 s) and which point's chart is open
const devHist = { id: null, doc: null, open: null, quality: null };

async function showDevice(id) {
  detailStatic = await api(`/api/v1/devices/${encodeURIComponent(id)}`);
  devHist.id = id;
  devHist.open = new URLSearchParams(location.search).get("metric");
  await refreshDeviceHistory();
  renderDevice({ device: detailStatic });
  follow(`/api/v1/devices/${encodeURIComponent(id)}/stream`, "device", (msg) => {
    if (msg.status) document.getElementById("gw-name").textContent = msg.status.gateway;
    if (msg.device) {
      const changed = msg.device.state !== renderDevice.last;
      renderDevice(msg);
      if (changed) api(`/api/v1/devices/${encodeURIComponent(id)}`).then((d) => {
        detailStatic = d; renderEvents(d.events);
      }).catch(() => {});
    }
  });
  every(5000, async () => { await refreshDeviceHistory(); drawDeviceCharts(); });
}

async function refreshDeviceHistory() {
  const id = encodeURIComponent(devHist.id);
  try {
    const [hist, q] = await Promise.all([api(`/api/v1/devices/${id}/history?since=3600`), api("/api/v1/quality")]);
    devHist.doc = hist;
    devHist.quality = q.devices.find((d) => d.device === devHist.id) || null;
  } catch (e) { /* kept from the last refresh */ }
}

function metricHist(name) {
  return devHist.doc ? devHist.doc.metrics.find((m) => m.metric === name) : null;
}

// The open point's chart (and the state timeline) from the history just fetched.
function drawDeviceCharts() {
  const node = keep.get("device-chart");
  const m = devHist.open && metricHist(devHist.open);
  if (node && node.isConnected && m) {
    plot(node, `metric:${m.metric}`, [{ label: `${m.metric}${m.unit ? ` (${m.unit})` : ""}` }], withGaps(m.points.t, m.points.v), 200);
  }
  const tl = document.getElementById("state-timeline");
  if (tl && devHist.doc) tl.replaceChildren(timeline(devHist.doc.states, devHist.doc.since, devHist.doc.now));
  for (const row of document.querySelectorAll("tr[data-metric]")) {
    const mh = metricHist(row.dataset.metric);
    const cell = row.querySelector(".spark-cell");
    if (cell && mh) cell.replaceChildren(sparkline(mh.points.v.slice(-60)));
  }
}

// A time without readings (the device was offline) is a gap in the line, not a straight bridge:
// a null point is put in the middle of every step more than 3 times the usual one.
function withGaps(t, v) {
  if (t.length < 3) return [t, v];
  const steps = t.slice(1).map((x, i) => x - t[i]).sort((a, b) => a - b);
  const usual = steps[Math.floor(steps.length / 2)];
  const ts = [t[0]], vs = [v[0]];
  for (let i = 1; i < t.length; i++) {
    if (t[i] - t[i - 1] > 3 * usual) { ts.push((t[i] + t[i - 1]) / 2); vs.push(null); }
    ts.push(t[i]); vs.push(v[i]);
  }
  return [ts, vs];
}

function toggleChart(name) {
  devHist.open = devHist.open === name ? null : name;
  forget("device-chart");
  const url = new URL(location.href);
  if (devHist.open) url.searchParams.set("metric", devHist.open); else url.searchParams.delete("metric");
  history.replaceState(null, "", url);
  renderDevice({ device: Object.assign({}, detailStatic, renderDevice.lastDoc || {}) });
}

function renderEvents(events) {
  const el = document.getElementById("device-events");
  if (!el) return;
  el.replaceChildren(...(events.length ? events.map(eventItem) : [h("li", { class: "muted" }, "none yet")]));
}

const KIND_WORD = {
  device_state: "device", config_reloaded: "reload", config_rejected: "reload", started: "start",
  buffer_drop: "loss", buffer_corrupt: "loss", clock_jump: "clock", clock_sync: "clock",
};

function list(xs) { return (xs || []).length ? xs.join(", ") : "none"; }

// One sentence per event; unknown kinds fall back to their fields, never to "null".
function sentence(e) {
  switch (e.kind) {
    case "device_state":
      // the device is named by the link before the sentence
      return e.state === "online" ? `is online again (was ${e.previous}).`
        : `went ${e.state}${e.error ? `: ${e.error}` : "."}`;
    case "config_reloaded":
      return `Configuration reloaded: added ${list(e.added)}, changed ${list(e.changed)}, removed ${list(e.removed)}.`;
    case "config_rejected":
      return `Configuration refused (${(e.errors || []).length} error(s)); the running one is kept.`;
    case "started": return `Gateway started (version ${e.version}, ${e.devices} device(s)).`;
    case "buffer_drop": return `${e.dropped} reading(s) dropped (${e.reason || "buffer"}).`;
    case "clock_jump": return `The clock jumped by ${e.seconds} s.`;
    case "clock_sync": return e.synced ? "The clock is synchronized." : "The clock is not synchronized.";
    default: {
      const extra = Object.entries(e).filter(([k, v]) => !["id", "ts", "kind", "device"].includes(k) && v !== null)
        .map(([k, v]) => `${k.replace(/_/g, " ")}: ${typeof v === "string" ? v : JSON.stringify(v)}`).join("; ");
      return `${e.kind.replace(/_/g, " ")}${extra ? `: ${extra}` : ""}`;
    }
  }
}

function eventItem(e) {
  const bad = (e.kind === "device_state" && e.state !== "online") || ["config_rejected", "buffer_drop"].includes(e.kind);
  return h("li", { "data-kind": e.kind, "data-device": e.device || "", class: bad ? "ev-bad" : "" },
    h("span", { class: "ev-kind" }, KIND_WORD[e.kind] || e.kind.split("_")[0]), " ",
    e.device ? h("a", { href: `/devices/${encodeURIComponent(e.device)}`, class: "ev-device" }, e.device) : null,
    e.device ? " " : null, h("span", { class: "ev-text" }, sentence(e)), " ",
    h("span", { class: "muted small", title: e.ts }, ago(e.ts) || "just now", " · ", when(e.ts)));
}

function renderDevice(msg) {
  const d = Object.assign({}, detailStatic, msg.device);
  renderDevice.last = d.state;
  renderDevice.lastDoc = msg.device;
  const points = (detailStatic.profile_info || {}).points || [];
  const names = points.map((p) => p.name);
  for (const n of Object.keys(d.metrics)) if (!names.includes(n)) names.push(n);
  const cfg = detailStatic.config || {};
  const q = devHist.quality;
  const rows = [];
  for (const n of names) {
    const m = d.metrics[n];
    const p = points.find((x) => x.name === n) || {};
    const mh = metricHist(n);
    const open = devHist.open === n;
    rows.push(h("tr", { "data-metric": n, class: open ? "open" : "", tabindex: "0", role: "button",
      "aria-expanded": open ? "true" : "false", onclick: () => toggleChart(n),
      onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); toggleChart(n); } } },
      h("td", { class: "pname" }, n),
      h("td", { class: "num value" }, fmtValue(m), h("span", { class: "unit" }, (m && m.unit) || p.unit || "")),
      h("td", { class: "spark-cell" }, mh ? sparkline(mh.points.v.slice(-60)) : null),
      h("td", { class: "qual" }, m ? badge(m.stale ? "stale" : m.quality) : h("span", { class: "muted" }, "no value yet"),
        m && m.reason ? h("span", { class: "muted small" }, ` ${m.reason}`) : null)));
    if (open) {
      rows.push(h("tr", { class: "chart-row" }, h("td", { colspan: "4" },
        kept("device-chart", () => h("div", { id: "device-chart", class: "chart", "data-metric": n })))));
    }
  }
  setMain(
    h("p", {}, h("a", { href: "/devices" }, "← all devices")),
    h("h1", {}, d.id, " ", h("span", { id: "device-state", class: "state" }, badge(d.state))),
    d.last_error && d.state !== "online"
      ? h("p", { class: "alert", id: "device-error" }, d.last_error, " ", d.last_error_ts ? ["(", when(d.last_error_ts), ")"] : "")
      : d.last_error ? h("p", { class: "muted", id: "device-last-error" }, lastError(d)) : null,
    h("div", { id: "state-timeline", class: "timeline-wrap" },
      devHist.doc ? timeline(devHist.doc.states, devHist.doc.since, devHist.doc.now) : null),
    h("p", { class: "muted small" }, "Tap a point for its chart of the last hour."),
    h("table", { class: "points" },
      h("thead", {}, h("tr", {}, h("th", {}, "Point"), h("th", { class: "num" }, "Value"), h("th", {}, "Last 10 min"),
        h("th", {}, "Quality"))),
      h("tbody", {}, rows)),
    h("div", { class: "cards" },
      q ? card("Data quality",
        row("Complete (hour)", pct(q.hour.completeness)), row("Complete (day)", pct(q.day.completeness)),
        row("Bad / uncertain (hour)", `${q.hour.bad} / ${q.hour.uncertain}`),
        row("Clock not synced", String(q.hour.unsynced)),
        row("Stale points", q.stale.length ? q.stale.join(", ") : "none"),
        row("Reasons", Object.entries(q.reasons).map(([k, v]) => `${k} ×${v}`).join(", ") || "none")) : null,
      card("Polling",
        row("Last reading", when(d.last_reading)),
        row("Polls", String(d.polls)), row("Failed", String(d.failures)),
        row("Failed in a row", String(d.consecutive_failures)),
        row("Latency", d.latency_ms === null ? "–" : `${d.latency_ms} ms (avg ${d.avg_latency_ms} ms)`),
        row("Overruns", String(d.overruns))),
      card("Configuration",
        row("Driver", d.driver), row("Profile", d.profile),
        row("Model", `${(detailStatic.profile_info || {}).vendor || ""} ${(detailStatic.profile_info || {}).model || ""}`),
        row("Poll every", `${d.poll_interval_s} s (timeout ${cfg.timeout_s} s)`),
        row("Offline after", `${cfg.offline_after} failed polls`),
        row("Bus", cfg.bus || "–"),
        row("Tags", Object.entries(d.tags || {}).map(([k, v]) => `${k}=${v}`).join(", ") || "–")),
      detailStatic.driver_status
        ? h("section", { class: "card", id: "driver-status" }, h("h2", {}, "Driver"),
          h("dl", {}, flatten(detailStatic.driver_status).map(([k, v]) => row(k, v))))
        : null),
    h("h2", {}, "Recent events"), h("ul", { id: "device-events", class: "events" }));
  renderEvents(detailStatic.events || []);
  drawDeviceCharts();
}

// Run `fn` again in `ms`; a failure (the gateway gone) is shown by the stale banner and retried.
function again(fn, ms) {
  clearTimeout(state.timer);
  state.timer = setTimeout(() => { fn().catch(() => again(fn, ms)); }, ms);
}

function pct(x) { return x === null || x === undefined ? "–" : `${(x * 100).toFixed(1)} %`; }

// One repeating refresh per page (a new view replaces it).
function every(ms, fn) {
  clearInterval(state.every);
  fn();
  state.every = setInterval(fn, ms);
}

async function showQuality() {
  const r = await api("/api/v1/quality");
  setMain(h("h1", {}, "Data quality"),
    h("p", { class: "muted" }, "Completeness is readings received against expected from the poll interval; the worst device first."),
    r.devices.length ? h("table", { class: "quality", id: "quality" },
      h("thead", {}, h("tr", {}, h("th", {}, "Device"), h("th", { class: "num" }, "Hour"), h("th", { class: "num" }, "Day"),
        h("th", { class: "num" }, "Bad / uncertain"), h("th", { class: "num" }, "Unsynced"), h("th", {}, "Stale points"),
        h("th", {}, "Reasons"))),
      h("tbody", {}, r.devices.map((d) => h("tr", { "data-device": d.device },
        h("td", { "data-label": "Device" }, h("a", { href: `/devices/${encodeURIComponent(d.device)}` }, d.device), " ", badge(d.state)),
        h("td", { "data-label": "Hour", class: `num ${d.hour.completeness !== null && d.hour.completeness < 0.95 ? "err" : ""}` }, pct(d.hour.completeness)),
        h("td", { "data-label": "Day", class: "num" }, pct(d.day.completeness)),
        h("td", { "data-label": "Bad / uncertain", class: "num" }, `${d.hour.bad} / ${d.hour.uncertain}`),
        h("td", { "data-label": "Unsynced", class: "num" }, String(d.hour.unsynced)),
        h("td", { "data-label": "Stale points" }, d.stale.length ? d.stale.join(", ") : h("span", { class: "muted" }, "none")),
        h("td", { "data-label": "Reasons" }, Object.entries(d.reasons).map(([k, v]) => `${k} ×${v}`).join(", ") || h("span", { class: "muted" }, "none"))))))
      : h("p", { class: "muted" }, "No devices configured."));
  again(showQuality, 10000);
}

async function showEvents() {
  const q = new URLSearchParams(location.search);
  const level = q.get("level") || "INFO", device = q.get("device") || "", kind = q.get("kind") || "";
  const [ev, logs] = await Promise.all([api(`/api/v1/events?limit=200${device ? `&device=${encodeURIComponent(device)}` : ""}`),
    api(`/api/v1/logs?limit=200&level=${level}`)]);
  const go = (key, value) => { const n = new URLSearchParams(location.search); if (value) n.set(key, value); else n.delete(key); location.search = n.toString(); };
  const select = h("select", { id: "level", onchange: (e) => go("level", e.target.value) },
    ["DEBUG", "INFO", "WARNING", "ERROR"].map((l) => h("option", { value: l, selected: l === level }, l)));
  const devices = [...new Set(ev.events.map((e) => e.device).filter(Boolean).concat(device ? [device] : []))].sort();
  const kinds = [...new Set(ev.events.map((e) => e.kind).concat(kind ? [kind] : []))].sort();
  const shown = ev.events.filter((e) => !kind || e.kind === kind);
  setMain(
    h("h1", {}, "Events"),
    h("div", { class: "filters" },
      h("label", { class: "small" }, "device ", h("select", { id: "filter-device", onchange: (e) => go("device", e.target.value) },
        h("option", { value: "" }, "all"), devices.map((d) => h("option", { value: d, selected: d === device }, d)))),
      h("label", { class: "small" }, "kind ", h("select", { id: "filter-kind", onchange: (e) => go("kind", e.target.value) },
        h("option", { value: "" }, "all"), kinds.map((k) => h("option", { value: k, selected: k === kind }, k))))),
    shown.length ? h("ul", { class: "events", id: "events" }, shown.map(eventItem))
      : h("p", { class: "muted" }, "No events since the status page started."),
    h("h2", {}, "Log ", h("label", { class: "small" }, "level ", select)),
    logs.installed ? h("ol", { class: "log", id: "log" }, logs.lines.map((l) =>
      h("li", { class: `lvl-${l.level.toLowerCase()}` }, when(l.ts), " ", h("b", {}, l.level), " ",
        h("span", { class: "muted" }, l.logger), " ", l.message)))
      : h("p", { class: "muted" }, "Log lines are not collected in this process."));
  again(showEvents, 5000);
}

function showCheck() {
  const text = h("textarea", { id: "profile-text", rows: 16, spellcheck: "false",
    placeholder: "Paste a device profile (YAML) here, or choose a file" });
  const file = h("input", { type: "file", id: "profile-file", accept: ".yaml,.yml,text/yaml,text/plain" });
  const name = h("input", { type: "text", id: "profile-name", value: "pasted.yaml", "aria-label": "file name" });
  const out = h("div", { id: "check-result", "aria-live": "polite" });
  file.addEventListener("change", async () => {
    const f = file.files[0];
    if (!f) return;
    text.value = await f.text();
    name.value = f.name;
  });
  const run = async () => {
    out.replaceChildren(h("p", { class: "muted" }, "Checking…"));
    try {
      const r = await api("/api/v1/profile-check", { method: "POST",
        body: JSON.stringify({ text: text.value, filename: name.value }) });
      out.replaceChildren(
        h("p", { class: r.valid ? "alert ok" : "alert", id: "check-summary" }, r.valid ? "✔ " : "✖ ", r.summary),
        r.diagnostics.length ? h("ol", { class: "diagnostics", id: "diagnostics" }, r.diagnostics.map((d) =>
          h("li", { class: `sev-${d.severity}` }, h("code", {}, d.text)))) : null);
    } catch (e) {
      out.replaceChildren(h("p", { class: "alert" }, e.message));
    }
  };
  setMain(h("h1", {}, "Profile check"),
    h("p", { class: "muted" }, "Shows the same errors as ", h("code", {}, "fieldgate validate"), ", as file:line:col: key: message."),
    h("div", { class: "form" }, text, h("div", { class: "row" }, file, name,
      h("button", { id: "check", class: "primary", onclick: run }, "Check"))),
    out);
}

// Where to go after the login: a page of this gateway only. A prefix check is not enough: a browser
// reads "/\evil.example" and "/<tab>/evil.example" as "//evil.example", another site.
function safeNext(next) {
  try {
    const url = new URL(next || "/", location.origin);
    if (url.origin === location.origin && url.pathname !== "/login") return url.pathname + url.search + url.hash;
  } catch (e) { /* not a URL at all */ }
  return "/";
}

function showLogin() {
  const pw = h("input", { type: "password", id: "password", autocomplete: "current-password", required: true,
    "aria-label": "password" });
  const msg = h("p", { id: "login-msg", class: "err", "aria-live": "polite" });
  const form = h("form", { class: "login card", id: "login-form" },
    h("h1", {}, "Log in"), h("label", {}, "Status page password", pw),
    h("button", { type: "submit", class: "primary", id: "login" }, "Log in"), msg);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    msg.textContent = "";
    try {
      const r = await api("/api/v1/login", { method: "POST", body: JSON.stringify({ password: pw.value }) });
      state.csrf = r.csrf_token;
      location.href = safeNext(new URLSearchParams(location.search).get("next"));
    } catch (e) {
      msg.textContent = e.status === 401 ? "Wrong password." : e.message;
      pw.select();
    }
  });
  document.getElementById("nav").hidden = true;
  setMain(form);
  pw.focus();
}

async function boot() {
  const session = await api("/api/v1/session");
  state.csrf = session.csrf_token;
  state.authRequired = session.auth_required;
  const logout = document.getElementById("logout");
  if (session.auth_required && session.authenticated) {
    logout.hidden = false;
    logout.addEventListener("click", async () => {
      await api("/api/v1/logout", { method: "POST", body: "{}" }).catch(() => {});
      location.href = "/login";
    });
  }
  const path = location.pathname;
  if (path !== "/login") {  // the live views set it too; the others learn it once
    api("/api/v1/status").then((s) => { document.getElementById("gw-name").textContent = s.gateway; }).catch(() => {});
  }
  const section = path === "/" ? "overview" : path.split("/")[1];
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === section);
  }
  try {
    if (path === "/login") showLogin();
    else if (path === "/") { follow("/api/v1/stream", "live", renderOverview); every(5000, refreshTrend); }
    else if (path === "/devices") {
      follow("/api/v1/stream", "live", renderDevices);
      every(10000, async () => { if (state.last) { await refreshSparks(state.last.devices); renderDevices(state.last); } });
    }
    else if (path === "/quality") await showQuality();
    else if (path.startsWith("/devices/")) await showDevice(decodeURIComponent(path.slice(9)));
    else if (path === "/events") await showEvents();
    else if (path === "/check") showCheck();
    else setMain(h("p", {}, "Not found."));
  } catch (e) {
    setMain(h("p", { class: "alert" }, e.message));
  }
}

document.addEventListener("DOMContentLoaded", boot);
