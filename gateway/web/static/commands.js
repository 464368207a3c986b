// fieldgate status page: the device page's "Commands" panel (recent commands, and the operator's write form).
// A panel of its own below the live view (#commands, outside #main): the live redraw of the device page
// never rebuilds it, so a value being typed keeps its focus. Plain JavaScript, text via textContent only.
// The form is there only when the gateway says this device takes commands from the local API
// (commands.enabled, commands.allow, web.commands); every write goes through a confirmation step that
// shows the point's current and new value and its allowed range, and is checked again by the gateway.
"use strict";

(() => {
  // h() and api() are app.js's (loaded first): the same element builder and the same fetch, with the
  // page's CSRF token and its redirect to the login page
  const panel = { device: null, doc: null, timer: null, pending: null, result: null };

  function show(v, unit) {
    if (v === null || v === undefined) return "–";
    const text = typeof v === "boolean" ? (v ? "on" : "off") : String(v);
    return unit && typeof v !== "boolean" ? `${text} ${unit}` : text;
  }

  function rangeText(p) {
    if (isFlag(p)) return "on or off";
    if (!p.write_range) return "any value";
    return `${p.write_range[0]} to ${p.write_range[1]}${p.unit ? ` ${p.unit}` : ""}`;
  }

  // a point whose value reads as true/false is set with on/off; any other with a number
  function isFlag(p) { return typeof p.value === "boolean"; }

  function commandId() {
    const b = new Uint8Array(6);
    crypto.getRandomValues(b);
    return `web-${Date.now()}-${[...b].map((x) => x.toString(16).padStart(2, "0")).join("")}`;
  }

  // --- the form and its confirmation step -----------------------------------------------------

  function pointRow(p) {
    const input = isFlag(p)
      ? h("select", { id: `cmd-value-${p.name}`, "aria-label": `new value of ${p.name}` },
        h("option", { value: "true" }, "on"), h("option", { value: "false" }, "off"))
      : h("input", { id: `cmd-value-${p.name}`, type: "number", inputmode: "decimal", step: "any",
        min: p.write_range ? p.write_range[0] : null, max: p.write_range ? p.write_range[1] : null,
        "aria-label": `new value of ${p.name}`, placeholder: p.value === null || p.value === undefined ? "" : String(p.value) });
    return h("div", { class: "cmd-point", "data-point": p.name },
      h("div", { class: "cmd-label" }, h("strong", {}, p.name), " ",
        h("span", { class: "muted small" }, `now ${show(p.value, p.unit)} · allowed ${rangeText(p)}`)),
      h("div", { class: "cmd-input" }, input,
        h("button", { class: "primary", id: `cmd-set-${p.name}`, onclick: () => ask(p.name, input) }, "Set…")));
  }

  function ask(name, input) {
    const p = panel.doc.writable.find((x) => x.name === name);  // its latest value, not the one when drawn
    if (!p) return;
    const raw = input.value.trim();
    let value;
    if (isFlag(p)) value = raw === "true";
    else {
      if (raw === "" || !Number.isFinite(Number(raw))) { say(false, `${p.name}: type a number`); return; }
      value = Number(raw);
      if (p.write_range && (value < p.write_range[0] || value > p.write_range[1])) {
        say(false, `${p.name}: ${value} is outside the allowed ${rangeText(p)}`);
        return;
      }
    }
    panel.pending = { point: p, value };
    panel.result = null;
    draw();
    document.getElementById("cmd-confirm")?.focus();
  }

  function confirmBox() {
    const c = panel.pending;
    if (!c) return null;
    const p = c.point;
    return h("div", { id: "cmd-confirm-box", class: "alert cmd-confirm", role: "alertdialog", "aria-labelledby": "cmd-confirm-title" },
      h("p", { id: "cmd-confirm-title" }, h("strong", {}, `Write ${p.name} on ${panel.device}?`)),
      h("p", { class: "cmd-change", id: "cmd-change" },
        h("span", { class: "cmd-old" }, show(p.value, p.unit)), " → ", h("strong", { class: "cmd-new" }, show(c.value, p.unit))),
      h("p", { class: "muted small", id: "cmd-range" }, `allowed ${rangeText(p)}; the gateway checks it again and reads the value back`),
      h("div", { class: "row" },
        h("button", { id: "cmd-confirm", class: "primary", onclick: send }, "Confirm write"),
        h("button", { id: "cmd-cancel", onclick: () => { panel.pending = null; draw(); } }, "Cancel")));
  }

  async function send() {
    const c = panel.pending;
    if (!c) return;
    const button = document.getElementById("cmd-confirm");
    if (button) { button.disabled = true; button.textContent = "Writing…"; }
    const msg = { schema: "fieldgate.command/1", id: commandId(), op: "write", metrics: { [c.point.name]: c.value } };
    try {
      const r = await api(`/api/v1/devices/${encodeURIComponent(panel.device)}/commands`, { method: "POST", body: JSON.stringify(msg) });
      const m = (r.metrics || {})[c.point.name];
      const back = m ? `read back ${show(m.value, m.unit || c.point.unit)}` : "";
      say(r.status === "ok", `${c.point.name}: ${r.status}${r.reason ? ` (${r.reason})` : ""}${back ? `, ${back}` : ""}`);
    } catch (e) {
      say(false, `${c.point.name}: ${e.message}`);
    }
    panel.pending = null;
    await refresh();
  }

  function say(ok, text) {
    panel.result = { ok, text };
    draw();
  }

  // --- recent commands ------------------------------------------------------------------------

  function recentTable(entries) {
    if (!entries.length) return h("p", { class: "muted", id: "cmd-none" }, "No commands yet.");
    return h("table", { class: "cmd-recent", id: "cmd-recent" },
      h("thead", {}, h("tr", {}, h("th", {}, "When"), h("th", {}, "Command"), h("th", {}, "Result"), h("th", {}, "From"))),
      h("tbody", {}, entries.map((e) => {
        const cmd = e.command || {}, res = e.result || {};
        const what = cmd.metrics && !Array.isArray(cmd.metrics)
          ? Object.entries(cmd.metrics).map(([k, v]) => `${k} = ${show(v)}`).join(", ")
          : `${cmd.op || "?"}${Array.isArray(cmd.metrics) ? ` ${cmd.metrics.join(", ")}` : ""}`;
        const status = res.status || "running";
        const cls = status === "ok" ? "ok" : status === "running" ? "idle" : "bad";
        const when = new Date(e.received * 1000);
        return h("tr", { "data-id": res.id || cmd.id || "", "data-status": status },
          h("td", { "data-label": "When", title: when.toISOString() }, clock(when)),
          h("td", { "data-label": "Command" }, what, h("div", { class: "muted small" }, res.id || cmd.id || "")),
          h("td", { "data-label": "Result" }, h("span", { class: `badge ${cls}` }, status),
            res.reason ? h("span", { class: "muted small" }, ` ${res.reason}`) : null,
            res.duplicate ? h("span", { class: "muted small" }, " (repeat)") : null),
          h("td", { "data-label": "From" }, e.origin || ""));
      })));
  }

  // The panel's parts are built once and updated in place: a refresh never takes the focus
  // from a value being typed, nor the value itself.
  function slots(root) {
    if (!panel.slots) {
      panel.slots = { form: h("div", { class: "cmd-form", id: "cmd-form" }), off: h("p", { class: "muted", id: "cmd-off" }),
        confirm: h("div"), result: h("div"), recent: h("div") };
      panel.rows = new Map();
      root.replaceChildren(h("h2", {}, "Commands"), panel.slots.off, panel.slots.form, panel.slots.confirm,
        panel.slots.result, h("h3", {}, "Recent commands"), panel.slots.recent);
    }
    return panel.slots;
  }

  function draw() {
    const root = document.getElementById("commands");
    if (!root || !panel.doc) return;
    const d = panel.doc, s = slots(root);
    const on = d.enabled && d.writable.length > 0;
    s.form.hidden = !on;
    s.off.hidden = on;
    s.off.textContent = d.enabled ? "This device has no writable points."
      : `Writing from this page is off: ${d.reason || "not configured"}.`;
    if (on) {
      for (const p of d.writable) {
        const row = panel.rows.get(p.name);
        const fresh = pointRow(p);
        if (row) row.querySelector(".cmd-label").replaceWith(fresh.querySelector(".cmd-label"));
        else { panel.rows.set(p.name, fresh); s.form.append(fresh); }
      }
    }
    s.confirm.replaceChildren(...[confirmBox()].filter(Boolean));
    s.result.replaceChildren(...(panel.result ? [h("p", { id: "cmd-result", class: panel.result.ok ? "alert ok" : "alert",
      role: "status" }, panel.result.text)] : []));
    s.recent.replaceChildren(recentTable(d.recent || []));
    root.hidden = false;
  }

  async function refresh() {
    try {
      panel.doc = await api(`/api/v1/devices/${encodeURIComponent(panel.device)}/commands`);
    } catch (e) {
      if (e.status === 404 || e.status === 401) return;
    }
    draw();
  }

  async function start() {
    const path = location.pathname;
    if (!path.startsWith("/devices/")) return;
    panel.device = decodeURIComponent(path.slice(9));
    try {
      const s = await api("/api/v1/session");
      if (!state.csrf) state.csrf = s.csrf_token;  // app.js's boot() may not have set it yet
    } catch (e) { return; }
    await refresh();
    // the recent list follows commands from MQTT and other operators; not while a confirmation is open
    panel.timer = setInterval(() => { if (!panel.pending && document.visibilityState === "visible") refresh(); }, 5000);
    window.__commandsReady = true;
  }

  document.addEventListener("DOMContentLoaded", start);
})();
