// The ops console: plain DOM over the admin JSON API and /metrics; no build step, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("payroute-admin-token") || "";

async function api(path, options = {}) {
  const resp = await fetch(path, {
    ...options,
    headers: { "Authorization": "Bearer " + token, "Content-Type": "application/json", ...(options.headers || {}) },
  });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    throw new Error((body.error && body.error.message) || resp.status + " " + resp.statusText);
  }
  return body;
}

// Prometheus text → [{name, labels, value}], for the few counters the console shows.
async function metrics() {
  const text = await (await fetch("/metrics")).text();
  const out = [];
  for (const line of text.split("\n")) {
    const m = line.match(/^([a-z_]+)(?:\{(.*)\})? ([0-9.eE+-]+)$/);
    if (!m) continue;
    const labels = {};
    for (const pair of (m[2] || "").matchAll(/([a-z_]+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  return td;
}

function fill(tableId, items, draw) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren();
  for (const item of items) draw(body.insertRow(), item);
}

async function loadChannels(samples) {
  const { channels } = await api("/admin/channels");
  fill("channels", channels, (row, c) => {
    const calls = samples.filter((s) => s.name === "payroute_channel_requests_total" && s.labels.channel === c.name);
    const total = calls.reduce((n, s) => n + s.value, 0);
    const ok = calls.filter((s) => s.labels.result === "ok").reduce((n, s) => n + s.value, 0);
    cell(row, c.name);
    cell(row, c.kind);
    cell(row, c.mode);
    cell(row, c.circuit, c.circuit === "closed" ? "ok" : "open");
    cell(row, total, "num");
    cell(row, total ? (100 * ok / total).toFixed(1) + "%" : "–", "num");
    row.dataset.channel = c.name;
    const d = c.drained;
    cell(row, d ? "drained since " + d.since + " by " + d.by + ": " + d.reason : "–", d ? "open drained" : "");
    row.insertCell().append(d ? resumeButton(c.name) : drainButton(c.name));
  });
}

// The operator named in the log and in /admin/channels (the server says "admin" if none).
function operatorHeaders() {
  const name = $("operator").value.trim();
  sessionStorage.setItem("payroute-operator", name);
  return name ? { "X-Payroute-Operator": name } : {};
}

// Drain and resume act at once on routing (and every instance within seconds): each asks first.
function switchButton(label, cls, act) {
  const button = document.createElement("button");
  button.textContent = label;
  button.className = cls;
  button.onclick = async () => {
    const body = act();
    if (!body) return;
    button.disabled = true;
    try {
      await api(body.path, { method: "POST", body: JSON.stringify(body.json), headers: operatorHeaders() });
      await loadChannels(await metrics());
    } catch (err) {
      button.disabled = false;
      button.textContent = err.message;
    }
  };
  return button;
}

function drainButton(name) {
  return switchButton("Drain", "drain", () => {
    const reason = prompt("Why drain " + name + "? (up to 200 characters)");
    if (!reason || !reason.trim()) return null;
    if (!confirm("Drain " + name + "? It takes no new payments until resumed; its open orders go on.")) return null;
    return { path: "/admin/channels/" + encodeURIComponent(name) + "/drain", json: { reason } };
  });
}

function resumeButton(name) {
  return switchButton("Resume", "resume", () => {
    if (!confirm("Resume " + name + "? It takes new payments again.")) return null;
    return { path: "/admin/channels/" + encodeURIComponent(name) + "/resume", json: {} };
  });
}

async function loadRules(samples) {
  const { config } = await api("/admin/config");
  const rules = (config.routing && config.routing.rules) || [];
  const hits = (rule) => samples
    .filter((s) => s.name === "payroute_route_decisions_total" && s.labels.rule === rule)
    .reduce((n, s) => n + s.value, 0);
  fill("rules", rules, (row, r) => {
    cell(row, rules.indexOf(r));
    cell(row, r.name);
    cell(row, r.to || (r.split || []).map((s) => s.to + " ×" + s.weight).join(", "));
    cell(row, hits(r.name), "num");
  });
}

async function loadPayments() {
  const q = new URLSearchParams({ limit: "50" });
  if ($("payments-merchant").value) q.set("merchant_id", $("payments-merchant").value);
  if ($("payments-status").value) q.set("status", $("payments-status").value);
  const { payments } = await api("/admin/payments?" + q);
  fill("payments", payments, (row, p) => {
    cell(row, p.created_at);
    cell(row, p.merchant_id);
    cell(row, p.out_trade_no);
    cell(row, p.amount, "num");
    cell(row, p.status, p.status === "succeeded" ? "ok" : p.status === "unknown" ? "bad" : "");
    cell(row, p.channel);
    cell(row, p.rule);
  });
}

async function loadEvents() {
  const { events } = await api("/admin/events?status=dead&limit=100");
  fill("events", events, (row, e) => {
    row.dataset.event = e.id;
    cell(row, e.id);
    cell(row, e.type);
    cell(row, e.merchant_id);
    cell(row, e.attempts, "num");
    cell(row, e.last_error, "bad");
    const button = document.createElement("button");
    button.textContent = "Resend";
    button.className = "resend";
    button.onclick = async () => {
      button.disabled = true;
      try {
        const again = await api("/admin/events/" + encodeURIComponent(e.id) + "/resend", { method: "POST" });
        button.textContent = "resent: " + again.status;
      } catch (err) {
        button.textContent = err.message;
      }
    };
    row.insertCell().append(button);
  });
}

async function refresh() {
  try {
    const samples = await metrics();
    await Promise.all([loadChannels(samples), loadRules(samples), loadPayments(), loadEvents()]);
    $("status").textContent = "connected";
    $("status").className = "ok";
  } catch (err) {
    $("status").textContent = err.message;
    $("status").className = "bad";
  }
}

$("login").onsubmit = (ev) => {
  ev.preventDefault();
  token = $("token").value;
  sessionStorage.setItem("payroute-admin-token", token);
  refresh();
};

$("operator").value = sessionStorage.getItem("payroute-operator") || "";
$("operator-form").onsubmit = (ev) => ev.preventDefault();

$("payments-filter").onsubmit = (ev) => {
  ev.preventDefault();
  loadPayments().catch((err) => { $("status").textContent = err.message; });
};

$("explain").onsubmit = async (ev) => {
  ev.preventDefault();
  const body = {
    merchant_id: $("explain-merchant").value,
    method: $("explain-method").value,
    amount: Number($("explain-amount").value),
  };
  if ($("explain-shop").value) body.shop_id = $("explain-shop").value;
  try {
    const ex = await api("/admin/explain", { method: "POST", body: JSON.stringify(body) });
    showCandidates(ex.candidates || []);
    $("explain-result").textContent = ex.text;
  } catch (err) {
    showCandidates([]);
    $("explain-result").textContent = err.message;
  }
};

// One quota period as "used/limit (left)"; amounts in fen, as the API gives them.
function period(name, p) {
  return p ? name + " " + p.used + "/" + p.limit + " (" + p.left + " left)" : null;
}

function quotaText(q) {
  if (!q) return "–";
  const parts = [period("day", q.daily), period("month", q.monthly)];
  if (q.single !== null && q.single !== undefined) parts.push("single ≤ " + q.single);
  if (q.over) parts.push("over");
  return parts.filter((p) => p).join(", ") || "–";
}

function healthText(h) {
  if (!h || !h.samples) return "no samples";
  return (100 * h.ratio).toFixed(0) + "% (" + h.successes + "/" + h.samples + ")" + (h.eliminated ? " eliminated" : "");
}

// explain's candidates in the order considered: the chosen one, those next in line, and
// those passed over (eliminated, drained, over quota) with why.
function showCandidates(candidates) {
  $("explain-candidates").hidden = candidates.length === 0;
  fill("explain-candidates", candidates, (row, c) => {
    row.dataset.channel = c.channel;
    row.dataset.verdict = c.verdict;
    cell(row, c.position === null || c.position === undefined ? "" : c.position + 1, "num");
    cell(row, c.channel);
    cell(row, c.verdict + " (" + c.why + ")", c.verdict === "skipped" ? "bad" : c.verdict === "chosen" ? "ok" : "");
    cell(row, healthText(c.health), c.health && c.health.eliminated ? "open" : "");
    cell(row, c.drained ? "drained" : "–", c.drained ? "open" : "");
    cell(row, c.circuit || "–", c.circuit === "closed" ? "ok" : "open");
    cell(row, quotaText(c.quota), c.quota && c.quota.over ? "quota open" : "quota");
    cell(row, c.fee, "num");
    cell(row, c.value, "num");
  });
}

if (token) refresh();
