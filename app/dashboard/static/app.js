// The dashboard: a thin client of the public API. The access token lives in sessionStorage
// (this tab only); every request carries it as a Bearer token, refreshed when it expires.
"use strict";

const $ = (sel) => document.querySelector(sel);
const store = window.sessionStorage;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  const token = store.getItem("access_token");
  if (token) headers.Authorization = `Bearer ${token}`;
  if (options.body && !(options.body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.body);
  }
  let resp = await fetch(path, { ...options, headers });
  if (resp.status === 401 && store.getItem("refresh_token") && !options._retried) {
    if (await refresh()) return api(path, { ...options, _retried: true, body: options.body && JSON.parse(options.body) });
    showLogin();
  }
  return resp;
}

async function refresh() {
  const resp = await fetch("/api/auth/refresh", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ refresh_token: store.getItem("refresh_token") }),
  });
  if (!resp.ok) { store.clear(); return false; }
  saveTokens(await resp.json());
  return true;
}

function saveTokens(body) {
  store.setItem("access_token", body.access_token);
  store.setItem("refresh_token", body.refresh_token);
}

function showLogin() {
  $("#login-view").hidden = false;
  $("#app-view").hidden = true;
  $("#logout").hidden = true;
  $("#who").textContent = "";
}

async function showApp() {
  const me = await api("/api/auth/me");
  if (!me.ok) return showLogin();
  const who = await me.json();
  const user = who.user || who.api_key || who;
  $("#who").textContent = `${user.email || user.name || ""} · ${user.role || ""}`;
  $("#login-view").hidden = true;
  $("#app-view").hidden = false;
  $("#logout").hidden = false;
  openTab("overview");
}

function metric(label, value, cls = "") {
  return el("div", { class: "card metric" }, el("b", { class: cls }, String(value)), el("span", {}, label));
}

const pct = (x) => (x == null ? "—" : `${(100 * x).toFixed(1)}%`);

const loaders = {
  async overview() {
    const health = await (await fetch("/health")).json().catch(() => null);
    const h = $("#health");
    h.replaceChildren();
    if (health) {
      h.append(metric("platform", health.status, `status ${health.status}`));
      for (const [pool, p] of Object.entries(health.checks.workers.pools || {})) h.append(metric(`${pool} workers`, p.live));
    }
    const since = new Date(Date.now() - 86400e3).toISOString();
    const resp = await api(`/api/analytics/overview?from=${encodeURIComponent(since)}`);
    const s = $("#stats");
    s.replaceChildren();
    if (resp.ok) {
      const o = await resp.json();
      s.append(metric("sent", o.sent), metric("delivered", o.delivered), metric("read", o.read), metric("failed", o.failed),
        metric("received", o.received), metric("delivery rate", pct(o.delivery_rate)), metric("read rate", pct(o.read_rate)));
    } else {
      s.append(el("p", {}, "Could not load analytics."));
    }
  },
  async clients() {
    const resp = await api("/api/clients?limit=100");
    const body = $("#clients");
    body.replaceChildren();
    if (!resp.ok) return body.append(el("tr", {}, el("td", { colspan: 5 }, "Could not load accounts.")));
    for (const c of (await resp.json()).items) {
      const actions = el("td", {});
      if (["created", "stopped", "failed", "disconnected"].includes(c.status))
        actions.append(el("button", { onclick: () => act(c.id, "start") }, "Start"));
      if (c.status === "qr") actions.append(el("button", { onclick: () => showQr(c.id) }, "Show QR"));
      if (["ready", "qr", "starting"].includes(c.status)) actions.append(" ", el("button", { class: "link", onclick: () => act(c.id, "stop") }, "Stop"));
      body.append(el("tr", {}, el("td", {}, c.name), el("td", {}, c.transport),
        el("td", {}, el("span", { class: `status ${c.status}` }, c.status)), el("td", {}, c.phone || "—"), actions));
    }
  },
  async messages() {
    const resp = await api("/api/messages?limit=100");
    const body = $("#messages");
    body.replaceChildren();
    if (!resp.ok) return body.append(el("tr", {}, el("td", { colspan: 5 }, "Could not load messages.")));
    for (const m of (await resp.json()).items) {
      body.append(el("tr", {}, el("td", {}, new Date(m.created_at).toLocaleString()), el("td", {}, m.direction),
        el("td", {}, m.direction === "inbound" ? m.from : m.to), el("td", {}, (m.text || m.type || "").slice(0, 80)),
        el("td", {}, el("span", { class: `status ${m.status}` }, m.status))));
    }
  },
  async campaigns() {
    const resp = await api("/api/campaigns?limit=100");
    const body = $("#campaigns");
    body.replaceChildren();
    if (!resp.ok) return body.append(el("tr", {}, el("td", { colspan: 3 }, "Could not load campaigns.")));
    for (const c of (await resp.json()).items) {
      const p = c.progress || {};
      body.append(el("tr", {}, el("td", {}, c.name), el("td", {}, el("span", { class: `status ${c.status}` }, c.status)),
        el("td", {}, `${p.sent ?? 0} sent · ${p.delivered ?? 0} delivered · ${p.read ?? 0} read of ${p.total ?? 0}`)));
    }
  },
};

async function act(id, verb) {
  await api(`/api/clients/${id}/${verb}`, { method: "POST" });
  setTimeout(loaders.clients, 500);
  if (verb === "start") pollQr(id, 20);
}

async function pollQr(id, tries) {
  const resp = await api(`/api/clients/${id}`);
  if (!resp.ok || tries <= 0) return;
  const c = await resp.json();
  if (c.status === "qr") return showQr(id);
  if (c.status === "ready") { $("#qr").hidden = true; return loaders.clients(); }
  setTimeout(() => pollQr(id, tries - 1), 700);
}

async function showQr(id) {
  const resp = await api(`/api/clients/${id}/qr`, { headers: { Accept: "image/png" } });
  if (!resp.ok) { $("#qr").hidden = true; return loaders.clients(); }
  $("#qr-img").src = URL.createObjectURL(await resp.blob());
  $("#qr-note").textContent = "The code refreshes by itself; this page checks every few seconds.";
  $("#qr").hidden = false;
  setTimeout(() => pollQr(id, 30), 2000);
}

function openTab(name) {
  document.querySelectorAll("nav button").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  document.querySelectorAll("[data-panel]").forEach((p) => { p.hidden = p.dataset.panel !== name; });
  loaders[name]();
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("nav button").forEach((b) => b.addEventListener("click", () => openTab(b.dataset.tab)));
  $("#login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = new FormData(ev.target);
    const resp = await fetch("/api/auth/login", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ email: form.get("email"), password: form.get("password") }),
    });
    const body = await resp.json();
    if (!resp.ok) { $("#login-error").textContent = body.error ? body.error.message : "Sign-in failed"; return; }
    saveTokens(body);
    showApp();
  });
  $("#client-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = new FormData(ev.target);
    const resp = await api("/api/clients", { method: "POST", body: { name: form.get("name"), transport: form.get("transport"), config: {} } });
    if (!resp.ok) alert((await resp.json()).error.message);
    ev.target.reset();
    loaders.clients();
  });
  $("#logout").addEventListener("click", async () => {
    await api("/api/auth/logout", { method: "POST", body: { refresh_token: store.getItem("refresh_token") } });
    store.clear();
    showLogin();
  });
  if (store.getItem("access_token")) showApp(); else showLogin();
});
