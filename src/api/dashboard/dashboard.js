// binderd's dashboard: the same API every client uses, polled; an API key
// typed into the page is kept in this tab's sessionStorage, never in a URL.
"use strict";

const $ = (sel) => document.querySelector(sel);
const key = () => sessionStorage.getItem("binderd-key") || "";

function headers(json) {
  const h = {};
  if (key()) h["Authorization"] = "Bearer " + key();
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function api(method, path, body) {
  const resp = await fetch(path, {
    method,
    headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  let doc = null;
  try { doc = JSON.parse(text); } catch (_) { doc = text; }
  if (!resp.ok) {
    const msg = doc && doc.error ? doc.error.message : "HTTP " + resp.status;
    throw new Error(msg);
  }
  return doc;
}

function say(text, kind) {
  const m = $("#message");
  m.textContent = text;
  m.className = kind || "";
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function age(unix) {
  if (!unix) return "-";
  const s = Math.max(0, Math.round(Date.now() / 1000 - unix));
  return s < 120 ? s + " s" : Math.round(s / 60) + " min";
}

async function resize(name, profile, minInput, maxInput) {
  const body = {};
  if (minInput.value !== "") body.minPool = Number(minInput.value);
  if (maxInput.value !== "") body.maxPool = Number(maxInput.value);
  const query = profile ? "?profile=" + encodeURIComponent(profile) : "";
  try {
    await api("POST", "/pools/" + encodeURIComponent(name) + query, body);
    say("pool " + name + (profile ? " (" + profile + ")" : "") + " resized", "ok");
    minInput.value = "";
    maxInput.value = "";
    refresh();
  } catch (e) {
    say("resize refused: " + e.message, "error");
  }
}

// What a binding opens at in a browser: JupyterLab's `lab` for a binding
// whose command runs it, the server's root otherwise. The bindings' own
// documents, read once each (the same API every client uses).
const bindingDocs = new Map();
let configuration = null;

async function bindingDoc(name) {
  if (!bindingDocs.has(name)) {
    bindingDocs.set(name, api("GET", "/bindings/" + encodeURIComponent(name)).catch(() => null));
  }
  return bindingDocs.get(name);
}

function opensAt(doc) {
  const cmd = (doc && doc.command) || [];
  const lab = cmd.some((a, i) => a.endsWith("jupyter-lab") || (a.endsWith("jupyter") && cmd[i + 1] === "lab"));
  return lab ? "lab" : "";
}

// Hands out a binder and opens it in a new tab, with no way back to this
// page (`noopener`: the binder's page, someone else's code, cannot reach
// this tab or its key). A binder that is still starting gets a link to
// follow once it answers.
async function openBinder(name, profile, doc) {
  const query = profile ? "?profile=" + encodeURIComponent(profile) : "";
  try {
    const b = await api("POST", "/binders/" + encodeURIComponent(name) + query, {});
    const url = b.location + opensAt(doc);
    if (b.state === "ready") {
      window.open(url, "_blank", "noopener,noreferrer");
      say("opened a binder of " + name + " in a new tab", "ok");
    } else {
      say("a binder of " + name + " is starting: ", "ok");
      const a = Object.assign(document.createElement("a"), { href: url, target: "_blank", rel: "noopener noreferrer", className: "opened", textContent: "open it" });
      $("#message").append(a);
    }
  } catch (e) {
    say("cannot open a binder of " + name + ": " + e.message, "error");
  }
}

function snippet(title, text) {
  const h = document.createElement("h3");
  h.textContent = title;
  const pre = document.createElement("pre");
  pre.textContent = text;
  return [h, pre];
}

// How to put this binding on another page: links and a script, filled in
// with this server's address.
async function embed(name) {
  const doc = await bindingDoc(name);
  const origin = location.origin;
  const path = opensAt(doc);
  const parts = [];
  if (configuration && configuration.default_binding === name) {
    parts.push(...snippet("A link that opens a fresh binder (tmpnb's /spawn/, this server's default binding)",
      `${origin}/spawn/${path}`));
  }
  if (doc && doc.repo) {
    const gh = doc.repo.match(/github\.com\/([^/]+\/[^/.]+)/);
    if (gh) {
      parts.push(...snippet("A Binder link and badge (BinderHub's launch API)",
        `${origin}/v2/gh/${gh[1]}/HEAD\n[![Binder](https://mybinder.org/badge_logo.svg)](${origin}/v2/gh/${gh[1]}/HEAD)`));
      parts.push(...snippet("thebe (modern: Jupyter Book, MyST, sphinx-thebe)",
        `<script type="text/x-thebe-config">\n{"requestKernel": true, "binderOptions": {"repo": "${gh[1]}", "binderUrl": "${origin}"}}\n</script>`));
    }
  }
  parts.push(...snippet("Any page's script (set allow_origin for pages on other origins)",
    `const r = await fetch("${origin}/binders/${name}", {method: "POST"});\nconst binder = await r.json();\n// binder.location is its own Jupyter server: open ${origin}\${binder.location}${path}\n// or point thebe's / @jupyterlab/services' serverSettings.baseUrl at it`));
  parts.push(...snippet("The command line", `curl -X POST ${origin}/binders/${name}\nbinderd spawn ${name} --url ${origin}`));
  $("#embed-name").textContent = name;
  $("#embed").replaceChildren(...parts);
  $("#embed-section").hidden = false;
}

async function refreshPools() {
  if (!configuration) configuration = await api("GET", "/configuration").catch(() => ({}));
  const pools = await api("GET", "/pools");
  const body = $("#pools tbody");
  // What the operator is typing survives the refresh (the rows are rebuilt
  // every second): the resize boxes' values and which one has the focus.
  const rowKey = (name, profile) => name + "\u0000" + (profile || "");
  const typed = new Map();
  for (const tr of body.rows) {
    const min = tr.querySelector("input.new-min");
    const max = tr.querySelector("input.new-max");
    if (!min || !max) continue;
    const focus = document.activeElement === min ? "min" : document.activeElement === max ? "max" : null;
    if (min.value || max.value || focus) typed.set(rowKey(tr.dataset.name, tr.dataset.profile), { min: min.value, max: max.value, focus });
  }
  // A binding with profiles: one row per profile's pool.
  const rows = [];
  for (const p of pools) {
    if (p.profiles) {
      for (const [profile, counts] of Object.entries(p.profiles)) rows.push({ ...counts, name: p.name, profile });
    } else {
      rows.push(p);
    }
  }
  // Every binding's document first: the rows are then rebuilt at once.
  const docs = new Map();
  for (const p of pools) docs.set(p.name, await bindingDoc(p.name));
  body.replaceChildren();
  for (const p of rows) {
    const row = body.insertRow();
    row.dataset.name = p.name;
    if (p.profile) row.dataset.profile = p.profile;
    const nameCell = cell(row, p.profile ? p.name + " · " + p.profile : p.name, "name");
    if (p.build) {
      // Its environment or files are being made: the build's last line.
      const b = Object.assign(document.createElement("div"), { className: "build " + p.build.phase });
      b.textContent = p.build.phase + (p.build.line ? ": " + p.build.line : "");
      nameCell.append(b);
    }
    cell(row, p.available, "available");
    cell(row, p.starting, "starting");
    cell(row, p.running, "running");
    cell(row, p.minPool, "min");
    cell(row, p.maxPool, "max");
    cell(row, p.targetPool, "target");
    cell(row, Math.round(100 * p.warmShare) + " %", "warm");
    cell(row, p.handoutMicros ? (p.handoutMicros / 1000).toFixed(2) + " ms" : "-", "latency");
    const opener = row.insertCell();
    opener.className = "open";
    const doc = docs.get(p.name);
    const openBtn = Object.assign(document.createElement("button"), {
      textContent: opensAt(doc) === "lab" ? "Open JupyterLab" : "Open",
      className: "open-binder",
    });
    openBtn.addEventListener("click", () => openBinder(p.name, p.profile, doc));
    const embedBtn = Object.assign(document.createElement("button"), { textContent: "Embed", className: "embed" });
    embedBtn.addEventListener("click", () => embed(p.name));
    opener.append(openBtn, " ", embedBtn);
    const td = row.insertCell();
    const min = Object.assign(document.createElement("input"), { type: "number", min: 0, placeholder: "min", className: "new-min" });
    const max = Object.assign(document.createElement("input"), { type: "number", min: 1, placeholder: "max", className: "new-max" });
    const go = Object.assign(document.createElement("button"), { textContent: "Resize", className: "resize" });
    go.addEventListener("click", () => resize(p.name, p.profile, min, max));
    td.append(min, " ", max, " ", go);
    const kept = typed.get(rowKey(p.name, p.profile));
    if (kept) {
      min.value = kept.min;
      max.value = kept.max;
      if (kept.focus === "min") min.focus();
      if (kept.focus === "max") max.focus();
    }
  }
  $("#updated").textContent = "updated " + new Date().toLocaleTimeString();
}

// Charts of the last hour (GET /trends), drawn as plain SVG: a point per
// minute, oldest on the left.
const SVG = "http://www.w3.org/2000/svg";
const W = 240, H = 56;

function svg(cls, label) {
  const el = document.createElementNS(SVG, "svg");
  el.setAttribute("width", W);
  el.setAttribute("height", H);
  el.setAttribute("viewBox", `0 0 ${W} ${H}`);
  el.setAttribute("class", cls);
  el.setAttribute("role", "img");
  el.setAttribute("aria-label", label);
  return el;
}

// A line through the minutes' values (null: a gap), scaled to `top`.
function line(el, values, top, cls) {
  const step = W / Math.max(1, values.length - 1);
  let points = [];
  const flush = () => {
    if (points.length) {
      const pl = document.createElementNS(SVG, "polyline");
      pl.setAttribute("points", points.join(" "));
      pl.setAttribute("class", cls);
      el.append(pl);
    }
    points = [];
  };
  values.forEach((v, i) => {
    if (v === null || v === undefined) return flush();
    const x = (i * step).toFixed(1);
    const y = (H - 2 - (H - 4) * (top > 0 ? v / top : 0)).toFixed(1);
    points.push(x + "," + y);
    // A minute between gaps is a dot (a line needs two).
    const gap = (j) => values[j] === null || values[j] === undefined;
    if (!(gap(i - 1) && gap(i + 1))) return;
    const dot = document.createElementNS(SVG, "circle");
    dot.setAttribute("cx", x);
    dot.setAttribute("cy", y);
    dot.setAttribute("r", "1.6");
    dot.setAttribute("class", cls);
    el.append(dot);
  });
  flush();
}

function figure(chart, caption) {
  const fig = document.createElement("figure");
  const cap = document.createElement("figcaption");
  cap.textContent = caption;
  fig.append(chart, cap);
  return fig;
}

const last = (values) => [...values].reverse().find((v) => v !== null && v !== undefined);
const ms = (us) => (us === undefined ? "-" : us >= 1000 ? (us / 1000).toFixed(1) + " ms" : us + " µs");

function drawTrend(t) {
  const m = t.minutes;
  const card = document.createElement("div");
  card.className = "trend";
  card.dataset.name = t.name;
  if (t.profile) card.dataset.profile = t.profile;
  const h = document.createElement("h3");
  h.textContent = t.profile ? t.name + " · " + t.profile : t.name;
  card.append(h);

  const pick = (k) => m.map((p) => (p[k] === undefined ? null : p[k]));
  const avail = pick("available"), running = pick("running"), target = pick("targetPool");
  const top = Math.max(1, ...[...avail, ...running, ...target].filter((v) => v !== null));
  const counts = svg("trend-counts", "available, running and target per minute");
  line(counts, target, top, "target");
  line(counts, running, top, "running");
  line(counts, avail, top, "available");
  card.append(figure(counts, `available ${last(avail) ?? "-"} · running ${last(running) ?? "-"} · target ${last(target) ?? "-"}`));

  const handouts = m.map((p) => p.handouts);
  const most = Math.max(1, ...handouts);
  const bars = svg("trend-handouts", "handouts per minute");
  const step = W / m.length;
  handouts.forEach((n, i) => {
    if (!n) return;
    const r = document.createElementNS(SVG, "rect");
    const height = Math.max(2, (H - 4) * (n / most));
    r.setAttribute("x", (i * step).toFixed(1));
    r.setAttribute("y", (H - height).toFixed(1));
    r.setAttribute("width", Math.max(1, step - 1).toFixed(1));
    r.setAttribute("height", height.toFixed(1));
    r.setAttribute("class", "bar");
    bars.append(r);
  });
  bars.dataset.last = handouts[handouts.length - 1];
  bars.dataset.total = handouts.reduce((a, b) => a + b, 0);
  card.append(figure(bars, `handouts/min: ${handouts[handouts.length - 1]} now, ${bars.dataset.total} this hour`));

  const warm = pick("warmShare");
  const share = svg("trend-warm", "warm share per minute");
  line(share, warm, 1, "warm");
  const w = last(warm);
  card.append(figure(share, "warm share " + (w === undefined ? "-" : Math.round(100 * w) + " %")));

  const p50 = pick("p50Micros"), p99 = pick("p99Micros");
  const slowest = Math.max(1, ...p99.filter((v) => v !== null));
  const lat = svg("trend-latency", "handout p50 and p99 per minute");
  line(lat, p99, slowest, "p99");
  line(lat, p50, slowest, "p50");
  card.append(figure(lat, `handout p50 ${ms(last(p50))} · p99 ${ms(last(p99))}`));
  return card;
}

async function refreshTrends() {
  try {
    const trends = await api("GET", "/trends");
    $("#trends").replaceChildren(...trends.map(drawTrend));
  } catch (e) {
    say("cannot read the trends: " + e.message, "error");
  }
}

async function act(binding, id, what) {
  try {
    if (what === "stop") {
      await api("DELETE", `/binders/${binding}/${id}`);
    } else if (what === "logs") {
      const resp = await fetch(`/binders/${binding}/${id}/logs?tail=200`, { headers: headers(false) });
      const logs = $("#logs");
      logs.textContent = await resp.text();
      logs.hidden = false;
      return;
    } else {
      await api("POST", `/binders/${binding}/${id}/actions/pause`, { paused: what === "pause" });
    }
    say("binder " + id.slice(0, 8) + ": " + what, "ok");
    refresh();
  } catch (e) {
    say(what + " refused: " + e.message, "error");
  }
}

async function refreshBinders(pools) {
  const section = $("#binders-section");
  section.hidden = !key();
  if (!key()) return;
  const body = $("#binders tbody");
  const rows = [];
  for (const p of pools) {
    try {
      for (const b of await api("GET", "/binders/" + encodeURIComponent(p))) rows.push(b);
    } catch (_) { /* not this key's to list */ }
  }
  body.replaceChildren();
  for (const b of rows) {
    const row = body.insertRow();
    cell(row, b.id.slice(0, 12), "name");
    cell(row, b.profile ? b.binding + " · " + b.profile : b.binding);
    cell(row, b.owner || "-");
    cell(row, b.state);
    cell(row, age(b.assigned_at || b.created_at));
    cell(row, b.last_activity ? age(b.last_activity) + " ago" : "-");
    const td = row.insertCell();
    for (const what of ["pause", "resume", "stop", "logs"]) {
      const btn = Object.assign(document.createElement("button"), { textContent: what });
      btn.addEventListener("click", () => act(b.binding, b.id, what));
      td.append(btn, " ");
    }
  }
}

async function refresh() {
  try {
    await refreshPools();
    const names = [...new Set([...document.querySelectorAll("#pools tbody tr")].map((r) => r.dataset.name))];
    await refreshBinders(names);
  } catch (e) {
    say("cannot read the pools: " + e.message, "error");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#key").value = key();
  $("#key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem("binderd-key", $("#key").value.trim());
    say(key() ? "key in use (this tab only)" : "no key", "ok");
    refresh();
    refreshTrends();
  });
  $("#forget").addEventListener("click", () => {
    sessionStorage.removeItem("binderd-key");
    $("#key").value = "";
    say("key forgotten", "ok");
    refresh();
  });
  refresh();
  setInterval(refresh, 1000);
  refreshTrends();
  setInterval(refreshTrends, 2000);
});
