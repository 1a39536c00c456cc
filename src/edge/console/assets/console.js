// scopegate console: reads /api/* and renders it. Every value from the server is set as text
// (textContent), never as HTML: refusals carry paths and hosts that clients chose.
"use strict";

const REFRESH_MS = 3000;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function time(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return el("time", { dateTime: iso, title: iso }, isNaN(d) ? iso : d.toLocaleString());
}

async function getJson(path) {
  const r = await fetch(path, { cache: "no-store", credentials: "same-origin" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

function countsOf(counts) {
  const entries = Object.entries(counts || {}).filter(([, n]) => n > 0);
  if (entries.length === 0) return [el("span", { class: "hint" }, "none yet")];
  return entries.map(([decision, n]) =>
    el("span", { class: "count " + decision, "data-decision": decision }, decision + " ", el("b", {}, n)));
}

function requirements(r) {
  const parts = [];
  if (r.public) parts.push(el("span", { class: "tag public" }, "public"));
  if (r.report_only) parts.push(el("span", { class: "tag report" }, "report-only"));
  if (r.websocket) parts.push(el("span", { class: "tag" }, "websocket"));
  if (!r.public) {
    if (r.scopes.length) parts.push(el("div", {}, "all of: ", el("code", {}, r.scopes.join(" "))));
    if (r.any_scopes.length) parts.push(el("div", {}, "one of: ", el("code", {}, r.any_scopes.join(" "))));
    if (!r.scopes.length && !r.any_scopes.length) parts.push(el("div", {}, "any valid token"));
  }
  for (const c of r.claims) parts.push(el("div", {}, c));
  for (const q of r.quotas || []) parts.push(el("span", { class: "tag" }, "quota " + q));
  return parts;
}

function renderRoutes(data) {
  document.getElementById("generation").textContent = "config generation " + data.generation;
  const apis = data.apis.map((api) => {
    const head = el("div", { class: "api-head" },
      el("h3", {}, api.display_name),
      el("span", {}, "audience: ", api.audiences.length ? api.audiences.join(", ") : "—"),
      el("span", {}, "issuers: ", api.issuers.length ? api.issuers.join(", ") : "—"),
      el("span", {}, "hosts: ", api.hosts.length ? api.hosts.join(", ") : "any"),
      api.strip_prefix ? el("span", {}, "strip_prefix: ", api.strip_prefix) : null,
      api.report_only ? el("span", { class: "tag report" }, "report-only API") : null,
      api.cors_origins ? el("span", {}, "CORS: ", api.cors_origins.join(", ")) : null);
    const rows = api.routes.map((r) =>
      el("tr", { "data-route": r.label, title: r.label },
        el("td", { "data-label": "Methods" }, r.methods.length ? r.methods.join(", ") : "any"),
        el("td", { class: "path", "data-label": "Path" }, el("code", {}, r.path)),
        el("td", { "data-label": "Requires" }, el("div", {}, requirements(r))),
        el("td", { "data-label": "Upstream" }, r.upstream),
        el("td", { class: "counts", "data-label": "Requests" }, el("div", {}, countsOf(r.counts)))));
    const table = el("div", { class: "scroll" }, el("table", { class: "cards-on-phone" },
      el("thead", {}, el("tr", {}, ["Methods", "Path", "Requires", "Upstream", "Requests"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)));
    return el("div", { class: "api", "data-api": api.display_name }, head, table);
  });
  document.getElementById("apis").replaceChildren(...apis);
  const unrouted = document.getElementById("unrouted");
  unrouted.replaceChildren("Requests that matched no route: ", ...countsOf(data.unrouted));
}

function renderRefusals(data) {
  const rows = data.refusals.map((r) =>
    el("tr", {},
      el("td", { "data-label": "Time" }, time(r.time)),
      el("td", { "data-label": "Method" }, r.method),
      el("td", { class: "wrap", "data-label": "Host" }, r.host),
      el("td", { class: "path", "data-label": "Path" }, el("code", {}, r.path)),
      el("td", { class: "wrap", "data-label": "Route" }, r.route),
      el("td", { class: "status-4", "data-label": "Status" }, r.status),
      el("td", { class: "reason", "data-label": "Reason" }, r.reason || r.decision),
      el("td", { class: "wrap", "data-label": "sub" }, r.sub || "—")));
  document.getElementById("refusal-rows").replaceChildren(...rows);
  document.getElementById("no-refusals").hidden = rows.length > 0;
}

function sourceText(source) {
  const [kind, value] = Object.entries(source)[0] || ["", ""];
  return kind + " " + value;
}

function renderKeys(data) {
  const cards = data.issuers.map((i) => {
    const keys = i.keys.length
      ? i.keys.map((k) => el("div", { class: "mono" }, (k.kid || "(no kid)") + " · " + k.alg))
      : [el("span", { class: "failing" }, "no keys loaded")];
    return el("div", { class: "card", "data-issuer": i.issuer },
      el("h3", { class: "wrap" }, i.issuer),
      el("dl", {},
        el("dt", {}, "source"), el("dd", {}, sourceText(i.source)),
        el("dt", {}, "keys"), el("dd", {}, keys),
        el("dt", {}, "loaded"), el("dd", {}, time(i.loaded_at)),
        el("dt", {}, "last refresh"), el("dd", {}, time(i.last_refresh)),
        el("dt", {}, "next refresh"), el("dd", {}, time(i.next_refresh)),
        el("dt", {}, "failures"), el("dd", { class: i.failing_in_a_row ? "failing" : "" },
          String(i.failures) + (i.failing_in_a_row ? " (" + i.failing_in_a_row + " in a row)" : "")),
        i.last_error ? el("dt", {}, "last error") : null,
        i.last_error ? el("dd", { class: "failing" }, i.last_error) : null));
  });
  document.getElementById("issuers").replaceChildren(...cards);
}

function renderReloads(data) {
  const items = data.reloads.map((r) => {
    const label = { start: "started", ok: "reloaded", error: "reload failed" }[r.result] || r.result;
    return el("li", { "data-result": r.result },
      el("div", {}, time(r.time), " · generation " + r.generation + " · ",
        el("span", { class: "result-" + r.result }, label)),
      r.error ? el("pre", { class: "error" }, r.error) : null,
      r.result === "ok"
        ? (r.changes.length
          ? el("ul", { class: "changes" }, r.changes.map((c) => el("li", {}, el("code", {}, c))))
          : el("div", { class: "hint" }, "no change in who may do what"))
        : null);
  });
  document.getElementById("reload-list").replaceChildren(...items);
}

let refreshes = 0;

async function refresh() {
  const error = document.getElementById("error");
  try {
    const [routes, refusals, keys, reloads] = await Promise.all(
      ["/api/routes", "/api/refusals", "/api/keys", "/api/reloads"].map(getJson));
    renderRoutes(routes);
    renderRefusals(refusals);
    renderKeys(keys);
    renderReloads(reloads);
    error.hidden = true;
    refreshes += 1;
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.refreshes = String(refreshes);
    if (document.body.dataset.state !== "explained") document.body.dataset.state = "ready";
  } catch (e) {
    error.textContent = "Could not read the console's data: " + e.message;
    error.hidden = false;
  }
}

async function explain(event) {
  event.preventDefault();
  const form = event.target;
  const f = new FormData(form);
  const body = { method: f.get("method"), host: f.get("host"), path: f.get("path") };
  const token = String(f.get("token") || "").trim();
  const scopes = String(f.get("scopes") || "").split(/[\s,]+/).filter(Boolean);
  if (token) body.token = token;
  else if (scopes.length) body.scopes = scopes;
  const out = document.getElementById("explain-answer");
  try {
    const r = await fetch("/api/explain", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      cache: "no-store",
    });
    const a = await r.json();
    if (!r.ok) {
      out.replaceChildren(el("div", { class: "failing" }, a.error || ("HTTP " + r.status)));
    } else {
      out.replaceChildren(
        el("div", { class: "big" }, el("span", { class: "explain-status" }, a.status), " ",
          el("span", { class: "explain-decision" }, a.decision)),
        el("dl", {},
          el("dt", {}, "reason"), el("dd", { class: "explain-reason" }, a.reason || "—"),
          el("dt", {}, "route"), el("dd", { class: "explain-route" }, a.route)));
    }
  } catch (e) {
    out.replaceChildren(el("div", { class: "failing" }, "explain failed: " + e.message));
  }
  out.hidden = false;
  document.body.dataset.state = "explained";
}

// `#explain?method=GET&path=/contacts/7&scopes=read:contacts` fills the form and submits it (a
// token is never taken from a URL: it would stay in the browser's history).
function explainFromFragment() {
  const hash = location.hash;
  if (!hash.startsWith("#explain?")) return;
  const params = new URLSearchParams(hash.slice("#explain?".length));
  const form = document.getElementById("explain-form");
  for (const name of ["method", "host", "path", "scopes"]) {
    if (params.has(name)) form.elements[name].value = params.get(name);
  }
  form.requestSubmit();
}

document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("explain-form").addEventListener("submit", explain);
  await refresh();
  explainFromFragment();
  setInterval(refresh, REFRESH_MS);
});
