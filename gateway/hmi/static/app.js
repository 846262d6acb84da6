// Stima HMI: the one-line diagram, alarms, events, trends and careful control.
// Everything comes from this gateway (no CDN, no external fonts); writes carry the session's
// CSRF token; the diagram is laid out by the gateway and coloured from the live stream.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const $ = (sel) => document.querySelector(sel);
const S = { session: null, diagram: null, state: null, ws: null, selected: null, sel: null, trend: null,
            alarms: { active: [], unacknowledged: 0 }, pointsWanted: [], retry: 0 };

// ------------------------------------------------------------------ http

async function api(path, opts = {}) {
  const init = { method: opts.method || "GET", headers: { "Accept": "application/json" }, credentials: "same-origin" };
  if (opts.body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(opts.body);
  }
  if (init.method !== "GET") init.headers["X-CSRF-Token"] = opts.csrf || (S.session && S.session.csrf) || "";
  const res = await fetch(path, init);
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (res.status === 401 && path !== "/api/login") { showLogin("Your session ended: log in again."); }
  return { status: res.status, ok: res.ok, data };
}

function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function svg(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function when(t) {
  if (t === null || t === undefined) return "-";
  const d = new Date(t * 1000);
  return d.toLocaleString(undefined, { hour12: false });
}

function fmt(v) {
  if (v === null || v === undefined) return "-";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(5);
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

// ------------------------------------------------------------------ login

async function start() {
  const r = await api("/api/session");
  if (r.data && r.data.authenticated) { S.session = r.data; await enter(); }
  else showLogin("", r.data && r.data.login_csrf);
}

function showLogin(message, token) {
  if (S.ws) { try { S.ws.close(); } catch (e) { /* closed */ } S.ws = null; }
  S.session = null;
  $("#app").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  if (token) S.loginToken = token;
  else api("/api/session").then((r) => { if (r.data) S.loginToken = r.data.login_csrf; });
}

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (!S.loginToken) { const r = await api("/api/session"); S.loginToken = r.data && r.data.login_csrf; }
  const r = await api("/api/login", { method: "POST", csrf: S.loginToken,
    body: { user: $("#login-user").value, password: $("#login-password").value } });
  $("#login-password").value = "";
  if (!r.ok) {
    $("#login-error").textContent = (r.data && r.data.error) || `login failed (${r.status})`;
    if (r.status === 403) { S.loginToken = null; }
    return;
  }
  const s = await api("/api/session");
  S.session = s.data;
  await enter();
});

$("#logout").addEventListener("click", async () => {
  await api("/api/logout", { method: "POST" });
  showLogin("Logged out.");
});

async function enter() {
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#who").textContent = `${S.session.user} (${S.session.role})`;
  $("#substation").textContent = S.session.substation || "Stima";
  document.body.dataset.role = S.session.role;
  await loadDiagram();
  connect();
  loadAlarms();
}

// ------------------------------------------------------------------ tabs

for (const b of document.querySelectorAll("header .tab")) {
  b.addEventListener("click", () => showTab(b.dataset.tab));
}

function showTab(name) {
  for (const b of document.querySelectorAll("header .tab")) b.classList.toggle("active", b.dataset.tab === name);
  for (const p of document.querySelectorAll(".tab-page")) p.hidden = p.id !== `tab-${name}`;
  if (name === "events") { loadEvents(); loadRecords(); }
  if (name === "alarms") loadAlarms();
  if (name === "trends") loadPointList();
}

// ------------------------------------------------------------------ the diagram

async function loadDiagram() {
  const r = await api("/api/diagram");
  if (!r.ok) return;
  S.diagram = r.data;
  drawDiagram();
  const s = await api("/api/state");
  if (s.ok) applyState(s.data, true);
}

function drawDiagram() {
  const d = S.diagram;
  const root = $("#diagram");
  root.replaceChildren();
  root.setAttribute("width", d.width);
  root.setAttribute("height", d.height);
  root.setAttribute("viewBox", `0 0 ${d.width} ${d.height}`);
  const wires = svg("g", { id: "wires" });
  const sections = svg("g", { id: "sections" });
  const things = svg("g", { id: "things" });
  root.append(wires, sections, things);
  for (const w of d.wires) {
    wires.append(svg("polyline", { class: "wire", "data-node": w.node, points: w.points.map((p) => p.join(",")).join(" "),
      fill: "none", stroke: d.colors.deenergised, "stroke-width": 2 }));
  }
  for (const b of d.buses) {
    const g = svg("g", { class: "bus", "data-id": b.id });
    g.append(svg("line", { x1: b.x1, x2: b.x2, y1: b.y, y2: b.y, stroke: d.colors.red, "stroke-width": 6 }));
    g.append(svg("text", { x: b.label_x, y: b.y - 10 }, b.label));
    things.append(g);
  }
  for (const s of d.sections) {
    const g = svg("g", { class: "section clickable", "data-id": s.id, "data-line": s.line });
    g.append(svg("line", { class: "section-line", "data-id": s.id, x1: s.x, x2: s.x, y1: s.y1, y2: s.y2,
      stroke: d.colors.deenergised, "stroke-width": 3 }));
    g.append(svg("line", { x1: s.x, x2: s.x, y1: s.y1, y2: s.y2, stroke: "transparent", "stroke-width": 14 }));
    g.append(svg("text", { x: s.label_x, y: s.label_y, transform: `rotate(-90 ${s.label_x} ${s.label_y})` }, s.label));
    g.addEventListener("click", () => openDetails(s.line, s.id));
    sections.append(g);
  }
  for (const x of d.devices) {
    const g = svg("g", { class: "device clickable", "data-id": x.id });
    g.append(svg("rect", { class: "symbol", x: x.x - 8, y: x.y - 8, width: 16, height: 16, fill: "#fff",
      stroke: d.colors.magenta, "stroke-width": 2 }));
    const t = x.label_rotated
      ? svg("text", { x: x.label_x, y: x.label_y, transform: `rotate(90 ${x.label_x} ${x.label_y})` }, x.label)
      : svg("text", { x: x.label_x, y: x.label_y }, x.label);
    g.append(t);
    g.addEventListener("click", () => openDetails(x.id, x.id, true));
    things.append(g);
  }
  for (const e of d.elements) {
    const g = svg("g", { class: "element clickable", "data-id": e.id, "data-type": e.type });
    if (e.type === "transformer") {
      g.append(svg("circle", { class: "symbol", cx: e.x - 3, cy: e.y, r: 6, fill: "none", stroke: d.colors.grey, "stroke-width": 2 }));
      g.append(svg("circle", { class: "symbol2", cx: e.x + 3, cy: e.y, r: 6, fill: "none", stroke: d.colors.grey, "stroke-width": 2 }));
    } else if (e.type === "capacitor_bank") {
      g.append(svg("rect", { class: "symbol", x: e.x - 8, y: e.y - 6, width: 16, height: 12, fill: "#fff", stroke: d.colors.grey, "stroke-width": 2 }));
      g.append(svg("line", { x1: e.x - 8, x2: e.x + 8, y1: e.y, y2: e.y, stroke: d.colors.grey }));
    } else {
      g.append(svg("polygon", { class: "symbol", points: `${e.x - 8},${e.y + 7} ${e.x + 8},${e.y + 7} ${e.x},${e.y - 8}`,
        fill: "#fff", stroke: d.colors.grey, "stroke-width": 2 }));
    }
    g.append(svg("text", { x: e.label_x, y: e.y + 4 }, e.label));
    if (e.meters) {
      const m = svg("g", { class: "meters", "data-id": e.id });
      m.append(svg("circle", { class: "meter-dot", cx: e.meter_x, cy: e.y, r: 6, fill: d.colors.grey }));
      m.append(svg("text", { x: e.meter_x + 9, y: e.y + 4 }, e.meter_label));
      g.append(m);
    }
    g.addEventListener("click", () => openDetails(e.id, e.id));
    things.append(g);
  }
  for (const x of d.externals) {
    const g = svg("g", { class: "external", "data-id": x.id });
    g.append(svg("circle", { cx: x.x, cy: x.y, r: 8, fill: "#fff", stroke: "#37474f", "stroke-width": 2 }));
    g.append(svg("text", { x: x.label_x, y: x.label_y, transform: `rotate(90 ${x.label_x} ${x.label_y})` }, x.label));
    things.append(g);
  }
}

function applyState(state, full) {
  if (full || !S.state) S.state = { sections: {}, devices: {}, elements: {}, buses: {} };
  for (const part of ["sections", "devices", "elements", "buses"]) Object.assign(S.state[part], state[part] || {});
  const root = $("#diagram");
  const colors = S.diagram ? S.diagram.colors : {};
  for (const [id, s] of Object.entries(state.sections || {})) {
    const line = root.querySelector(`line.section-line[data-id="${CSS.escape(id)}"]`);
    if (!line) continue;
    line.setAttribute("stroke", s.color);
    line.setAttribute("stroke-width", s.width);
    line.dataset.energised = s.energised;
    line.classList.toggle("dashed", s.style === "dashed" && !s.flow);
    line.classList.toggle("flow", !!s.flow);
    for (const w of root.querySelectorAll(`polyline.wire[data-node="${CSS.escape(id)}"]`)) w.setAttribute("stroke", s.color);
  }
  for (const [id, x] of Object.entries(state.devices || {})) {
    const r = root.querySelector(`g.device[data-id="${CSS.escape(id)}"] rect.symbol`);
    if (!r) continue;
    r.setAttribute("stroke", x.color);
    r.setAttribute("fill", x.filled ? x.color : "#fff");
    r.dataset.position = x.position;
    r.dataset.color = x.color;
    r.parentNode.querySelector("text").textContent = labelOf(id) + (x.locked_out ? " ⚠ lockout" : "") + (x.tagged ? " ⛔" : "");
  }
  for (const [id, e] of Object.entries(state.elements || {})) {
    const g = root.querySelector(`g.element[data-id="${CSS.escape(id)}"]`);
    if (!g) continue;
    for (const sym of g.querySelectorAll(".symbol, .symbol2")) sym.setAttribute("stroke", e.color);
    g.dataset.color = e.color;
    if (e.meters) {
      const dot = g.querySelector(".meter-dot");
      if (dot) { dot.setAttribute("fill", e.meters.color); dot.dataset.color = e.meters.color; }
    }
  }
  for (const [id, b] of Object.entries(state.buses || {})) {
    const g = root.querySelector(`g.bus[data-id="${CSS.escape(id)}"] line`);
    if (g) g.setAttribute("stroke", b.energised ? colors.red : colors.deenergised);
  }
  if (S.selected) refreshDetailsLive();
}

function labelOf(id) {
  const d = S.diagram && S.diagram.devices.find((x) => x.id === id);
  return d ? d.label : id;
}

// ------------------------------------------------------------------ details and control

async function openDetails(agentId, drawnId, isDevice) {
  S.selected = { agent: agentId, drawn: drawnId, device: !!isDevice };
  for (const g of document.querySelectorAll("#diagram .selected")) g.classList.remove("selected");
  const g = document.querySelector(`#diagram [data-id="${CSS.escape(drawnId)}"]`);
  if (g) g.classList.add("selected");
  $("#details").hidden = false;
  $("#details-title").textContent = drawnId === agentId ? agentId : `${drawnId} (${agentId})`;
  $("#control-result").textContent = "";
  $("#control-result").className = "";
  $("#ctl-selected").hidden = true;
  S.sel = null;
  const operator = S.session && (S.session.role === "operator" || S.session.role === "engineer");
  $("#control").hidden = !(isDevice && operator);
  const body = $("#details-body");
  body.replaceChildren(el("p", {}, "loading…"));
  const r = await api(`/api/agents/${encodeURIComponent(agentId)}`);
  body.replaceChildren();
  if (isDevice) {
    const dev = await api(`/api/devices/${encodeURIComponent(agentId)}`);
    if (dev.ok) body.append(el("h3", {}, "Switching"), table(dev.data));
  }
  if (!r.ok) { body.append(el("p", {}, (r.data && r.data.error) || "no agent data")); return; }
  const a = r.data;
  body.append(el("p", { id: "details-state" }, `${a.type} · state ${a.state || "-"}` + (a.since_wall ? ` since ${when(a.since_wall)}` : "")));
  if (a.visualization_metadata) body.append(el("h3", {}, "Display"), table(a.visualization_metadata));
  if (a.attributes) body.append(el("h3", {}, "Attributes (live)"), table(a.attributes));
  if (a.states) body.append(el("h3", {}, "Meters by state"), table(a.states));
  if (a.meters) {
    for (const [gid, m] of Object.entries(a.meters)) body.append(el("h3", {}, `Meters of ${gid} (${m.count})`), table(m.states));
  }
  if (a.points) {
    const rows = {};
    for (const [name, p] of Object.entries(a.points)) rows[name] = `${fmt(p.value)} ${p.unit || ""} (${p.quality})`;
    body.append(el("h3", {}, "Points"), table(rows));
  }
  if (a.last_transitions && a.last_transitions.length) {
    const rows = {};
    for (const t of a.last_transitions.slice(-15).reverse()) rows[when(t.time + (a.wall_offset || 0))] = `${t.old} → ${t.new} (${t.cause || t.event})`;
    body.append(el("h3", {}, "State history"), table(rows));
  }
  if (a.events && a.events.length) {
    const rows = {};
    for (const e of a.events.slice(-15).reverse()) rows[`${when(e.time)} #${e.seq}`] = `${e.kind}: ${e.message || e.new || e.action || ""}`;
    body.append(el("h3", {}, "Events"), table(rows));
  }
  if (a.configured) body.append(el("h3", {}, "Configured"), table(a.configured));
  if (isDevice) {
    const rec = await api(`/api/records?breaker=${encodeURIComponent(agentId)}&limit=5`);
    if (rec.ok && rec.data.length) {
      const t = el("table", { id: "details-records" });
      for (const x of rec.data) {
        const tr = el("tr", { "data-record": x.record_id });
        const files = el("td");
        for (const [kind, href] of Object.entries(x.links || {})) {
          if (kind !== "json") files.append(el("a", { href, download: href.split("/").pop(), class: `record-${kind}` }, `.${kind}`), document.createTextNode(" "));
        }
        tr.append(el("td", {}, `${when(x.trigger_time)} · ${x.trips} trip(s)${x.lockout ? ", lockout" : ""}`), files);
        t.append(tr);
      }
      body.append(el("h3", {}, "Disturbance records (COMTRADE)"), t);
    }
  }
}

function refreshDetailsLive() { /* the panel is re-read on click; the diagram itself is live */ }

function table(obj) {
  const t = el("table");
  for (const [k, v] of Object.entries(obj || {})) {
    const tr = el("tr");
    tr.append(el("td", {}, k), el("td", {}, fmt(v)));
    t.append(tr);
  }
  return t;
}

$("#details-close").addEventListener("click", () => {
  $("#details").hidden = true;
  S.selected = null;
  for (const g of document.querySelectorAll("#diagram .selected")) g.classList.remove("selected");
});

function showResult(ok, text, refusal) {
  const box = $("#control-result");
  box.className = ok ? "ok" : "refused";
  box.textContent = text;
  if (refusal) {
    box.dataset.interlock = refusal.interlock || "";
    box.dataset.reason = refusal.reason || "";
  } else {
    delete box.dataset.interlock;
    delete box.dataset.reason;
  }
}

function refusalText(d) {
  if (!d) return "refused";
  const code = d.interlock || d.reason || "refused";
  return `Refused (${code}): ${d.message || d.error || ""}`;
}

for (const b of [$("#ctl-open"), $("#ctl-close")]) {
  b.addEventListener("click", async () => {
    if (!S.selected) return;
    const action = b.dataset.action;
    const device = S.selected.agent;
    showResult(true, `selecting ${device} for ${action}…`);
    const r = await api("/api/control/select", { method: "POST", body: { device, action } });
    if (!r.ok) { showResult(false, refusalText(r.data), r.data); return; }
    S.sel = r.data;
    $("#ctl-selected").hidden = false;
    $("#ctl-selected-text").textContent = `${device} selected for ${action.toUpperCase()} (${r.data.select_id}); execute within ${Math.round(r.data.expires_in_s)} s`;
    showResult(true, "selected: interlocks passed");
  });
}

$("#ctl-execute").addEventListener("click", async () => {
  if (!S.sel) return;
  const sel = S.sel;
  S.sel = null;
  $("#ctl-selected").hidden = true;
  const r = await api("/api/control/operate", { method: "POST", body: { device: sel.device, action: sel.action, select_id: sel.select_id } });
  if (!r.ok) { showResult(false, refusalText(r.data), r.data); return; }
  showResult(true, `${sel.action} of ${sel.device} accepted (${r.data.op_id}); the diagram shows the position read back`);
});

$("#ctl-cancel").addEventListener("click", async () => {
  if (!S.sel) return;
  const sel = S.sel;
  S.sel = null;
  $("#ctl-selected").hidden = true;
  const r = await api("/api/control/cancel", { method: "POST", body: { select_id: sel.select_id } });
  showResult(r.ok, r.ok ? "select cancelled" : refusalText(r.data), r.ok ? null : r.data);
});

// ------------------------------------------------------------------ alarms

async function loadAlarms() {
  const r = await api("/api/alarms");
  if (r.ok) drawAlarms(r.data);
}

function drawAlarms(a) {
  // An alarm is in the list until its condition has cleared and someone acknowledged it.
  S.alarms = a;
  const n = a.unacknowledged;
  $("#alarm-count").textContent = n;
  $("#alarm-count").classList.toggle("hot", n > 0);
  const body = $("#alarms-table tbody");
  body.replaceChildren();
  const operator = S.session && (S.session.role === "operator" || S.session.role === "engineer");
  for (const x of a.active) {
    const tr = el("tr", { "data-alarm": x.id, class: `${x.severity}${x.acknowledged ? " acknowledged" : ""}` });
    tr.append(el("td", {}, when(x.raised)), el("td", {}, x.severity), el("td", {}, x.source), el("td", {}, x.message),
              el("td", { class: "condition" }, x.cleared ? `cleared ${when(x.cleared)}` : "standing"));
    const td = el("td", { class: "ack-state" });
    if (x.acknowledged) td.textContent = `${x.acknowledged_by} at ${when(x.acknowledged)}`;
    else if (operator) {
      const b = el("button", { class: "ack", "data-alarm": x.id }, "Acknowledge");
      b.addEventListener("click", async () => {
        b.disabled = true;
        const r = await api(`/api/alarms/${encodeURIComponent(x.id)}/acknowledge`, { method: "POST", body: {} });
        if (!r.ok) { b.disabled = false; b.textContent = (r.data && r.data.error) || "failed"; return; }
        loadAlarms();
      });
      td.append(b);
    } else td.textContent = "not yet";
    tr.append(td);
    body.append(tr);
  }
  if (!a.acknowledged) { if (!$("#tab-alarms").hidden) loadAlarms(); return; }  // a change from the stream
  const acked = $("#acked-table tbody");
  acked.replaceChildren();
  for (const e of a.acknowledged) {
    const tr = el("tr", { "data-acked": e.id });
    tr.append(el("td", {}, when(e.time)), el("td", {}, e.source), el("td", {}, e.message), el("td", {}, e.origin));
    acked.append(tr);
  }
}

// ------------------------------------------------------------------ events

async function loadEvents(ev) {
  if (ev) ev.preventDefault();
  const win = Number($("#ev-window").value);
  const q = new URLSearchParams({ since: String(Date.now() / 1000 - win), limit: "500" });
  if ($("#ev-source").value) q.set("source", $("#ev-source").value);
  if ($("#ev-kind").value) q.set("kind", $("#ev-kind").value);
  const r = await api(`/api/events?${q}`);
  if (!r.ok) return;
  const body = $("#events-table tbody");
  body.replaceChildren();
  for (const e of r.data.slice().reverse()) body.append(eventRow(e));
}

function eventRow(e) {
  const tr = el("tr", { "data-seq": e.seq, "data-kind": e.kind });
  const skip = new Set(["seq", "time", "source", "kind"]);
  const detail = Object.entries(e).filter(([k]) => !skip.has(k)).map(([k, v]) => `${k}=${fmt(v)}`).join("  ");
  tr.append(el("td", {}, when(e.time)), el("td", {}, e.source), el("td", {}, e.kind), el("td", {}, detail.slice(0, 400)));
  return tr;
}

$("#events-form").addEventListener("submit", loadEvents);
for (const b of document.querySelectorAll("#events-form [data-preset]")) {
  b.addEventListener("click", () => { $("#ev-kind").value = b.dataset.preset; loadEvents(); });
}

async function loadRecords() {
  const r = await api("/api/records?limit=50");
  const body = $("#records-table tbody");
  if (!r.ok) { $("#records-info").textContent = (r.data && r.data.error) || "no disturbance records"; return; }
  $("#records-info").textContent = r.data.length ? "" : "No disturbance record yet: one is written at every protection trip.";
  body.replaceChildren();
  for (const rec of r.data) {
    const tr = el("tr", { "data-record": rec.record_id, "data-breaker": rec.breaker });
    const loc = rec.fault_location;
    const where = loc ? `${loc.section || ""} ${loc.distance_m !== undefined ? Math.round(loc.distance_m) + " m" : ""} ${loc.method || ""}`.trim() : "-";
    const files = el("td");
    for (const [kind, href] of Object.entries(rec.links || {})) {
      if (kind === "json") continue;
      const a = el("a", { href, download: href.split("/").pop(), class: `record-${kind}` }, `.${kind}`);
      files.append(a, document.createTextNode(" "));
    }
    tr.append(el("td", {}, when(rec.trigger_time)), el("td", {}, rec.breaker), el("td", {}, fmt(rec.element)),
              el("td", {}, fmt(rec.trips)), el("td", {}, rec.lockout ? "yes" : "no"), el("td", {}, where), files);
    body.append(tr);
  }
}

// ------------------------------------------------------------------ trends

async function loadPointList() {
  if ($("#point-list").childElementCount) return;
  const r = await api("/api/points");
  if (!r.ok) return;
  for (const p of r.data) $("#point-list").append(el("option", { value: p.id }));
}

$("#trend-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const point = $("#trend-point").value;
  const win = Number($("#trend-window").value);
  const now = Date.now() / 1000;
  const r = await api(`/api/points/${encodeURIComponent(point)}/history?since=${now - win}&until=${now}`);
  if (!r.ok) { $("#trend-info").textContent = (r.data && r.data.error) || "no history"; return; }
  S.trend = { point, win, unit: r.data.unit, buckets: r.data.buckets, live: [] };
  if (r.data.live && r.data.live.quality === "good" && typeof r.data.live.value === "number")
    S.trend.live.push([r.data.live.receive_time || now, r.data.live.value]);
  S.pointsWanted = [point];
  sendSubscription();
  drawTrend();
});

function drawTrend() {
  const t = S.trend;
  const root = $("#trend");
  root.replaceChildren();
  if (!t) return;
  const W = 900, H = 360, L = 60, R = 10, T = 10, B = 30;
  const now = Date.now() / 1000;
  const t0 = now - t.win, t1 = now;
  const pts = t.buckets.filter((b) => b.mean !== null).map((b) => ({ t: b.bucket_start + b.interval_s / 2, mean: b.mean, min: b.min, max: b.max }));
  for (const [tt, v] of t.live) pts.push({ t: tt, mean: v, min: v, max: v });
  pts.sort((a, b) => a.t - b.t);
  $("#trend-info").textContent = `${t.point}: ${t.buckets.length} stored intervals, ${t.live.length} live samples` + (t.unit ? ` (${t.unit})` : "");
  if (!pts.length) { root.append(svg("text", { x: 20, y: 30 }, "no data in this window")); return; }
  let lo = Math.min(...pts.map((p) => p.min)), hi = Math.max(...pts.map((p) => p.max));
  if (hi - lo < 1e-9) { hi += 1; lo -= 1; }
  const x = (tt) => L + (W - L - R) * (tt - t0) / (t1 - t0);
  const y = (v) => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
  root.append(svg("line", { x1: L, x2: L, y1: T, y2: H - B, stroke: "#90a4ae" }),
              svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: "#90a4ae" }));
  for (let k = 0; k <= 4; k++) {
    const v = lo + (hi - lo) * k / 4;
    root.append(svg("text", { x: 4, y: y(v) + 4 }, v.toPrecision(4)));
    const tt = t0 + (t1 - t0) * k / 4;
    root.append(svg("text", { x: x(tt) - 20, y: H - 10 }, new Date(tt * 1000).toLocaleTimeString(undefined, { hour12: false })));
  }
  const band = pts.map((p) => `${x(p.t)},${y(p.max)}`).concat(pts.slice().reverse().map((p) => `${x(p.t)},${y(p.min)}`));
  root.append(svg("polygon", { class: "band", points: band.join(" "), fill: "#bbdefb", stroke: "none" }));
  root.append(svg("polyline", { class: "mean", points: pts.map((p) => `${x(p.t)},${y(p.mean)}`).join(" "),
    fill: "none", stroke: "#0d47a1", "stroke-width": 2 }));
  root.dataset.points = String(pts.length);
}

// ------------------------------------------------------------------ the live stream

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/api/stream`);
  S.ws = ws;
  ws.addEventListener("open", () => { $("#link").classList.add("up"); S.retry = 0; sendSubscription(); });
  ws.addEventListener("close", (ev) => {
    $("#link").classList.remove("up");
    if (S.ws !== ws) return;
    S.ws = null;
    if (ev.code === 4401 || !S.session) { showLogin("Your session ended: log in again."); return; }
    S.retry = Math.min(S.retry + 1, 10);
    setTimeout(() => { if (S.session && !S.ws) connect(); }, 500 * S.retry);
  });
  ws.addEventListener("message", (ev) => {
    const m = JSON.parse(ev.data);
    if (m.type === "snapshot") { applyState(m.state, true); drawAlarms(m.alarms); }
    else if (m.type === "state") applyState(m.changes, false);
    else if (m.type === "alarms") drawAlarms(m);
    else if (m.type === "reload") loadDiagram();
    else if (m.type === "points") onPoints(m.points);
    else if (m.type === "events") onEvents(m.events);
  });
}

function sendSubscription() {
  if (S.ws && S.ws.readyState === WebSocket.OPEN) S.ws.send(JSON.stringify({ points: S.pointsWanted }));
}

function onPoints(points) {
  const t = S.trend;
  if (!t) return;
  let changed = false;
  for (const p of points) {
    if (p.id === t.point && p.quality === "good" && typeof p.value === "number") {
      const tt = p.receive_time || Date.now() / 1000;
      if (!t.live.length || t.live[t.live.length - 1][0] !== tt) { t.live.push([tt, p.value]); changed = true; }
    }
  }
  if (t.live.length > 5000) t.live.splice(0, t.live.length - 5000);
  if (changed && !$("#tab-trends").hidden) drawTrend();
}

function onEvents(events) {
  if ($("#tab-events").hidden) return;
  if (events.some((e) => e.kind === "record.written")) loadRecords();
  if ($("#ev-source").value || $("#ev-kind").value) return;
  const body = $("#events-table tbody");
  for (const e of events) body.prepend(eventRow(e));
}

start();
