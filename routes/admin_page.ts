/**
 * `GET /admin`: the admin page (README "Admin API and page"). One server-rendered HTML page
 * with its style and script inline: no build step, no external assets, and no data. Once the
 * operator enters the admin token, the script fetches `admin/status` and the newest dead
 * letters with it. The token lives only in a variable of the script: never in storage, cookies
 * or the URL (the form is never submitted, and the Content-Security-Policy forbids it).
 *
 * @module
 */

import { encodeBase64Url } from "../lib/encoding.ts";

const STYLE = `
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f4f5f7; }
header { background: #1d2330; color: #fff; padding: 12px 24px; }
header h1 { font-size: 18px; margin: 0; }
main { padding: 16px 24px; }
form { display: flex; gap: 8px; align-items: center; margin-bottom: 16px; }
input { font: inherit; padding: 4px 8px; width: 22em; }
button { font: inherit; padding: 4px 12px; cursor: pointer; }
#error { color: #b00020; min-height: 1.4em; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; margin: 8px 0 16px; }
.card { background: #fff; border: 1px solid #d5d9e0; border-radius: 6px; padding: 8px 16px; }
.card span { display: block; font-size: 22px; font-weight: 600; }
table { border-collapse: collapse; background: #fff; margin: 4px 0 16px; }
th, td { border: 1px solid #d5d9e0; padding: 4px 8px; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
h2 { font-size: 15px; margin: 16px 0 4px; }
.muted { color: #5b6474; }
[hidden] { display: none; }
`;

const SCRIPT = `
"use strict";
(() => {
  const OUTCOMES = ["delivered", "pruned", "retried", "dead_lettered", "failed", "replaced",
    "short_circuited", "coalesced"];
  let token = null; // only here: never in storage, cookies or the URL
  const $ = (id) => document.getElementById(id);
  function el(tag, props, children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "text") e.textContent = String(v);
      else e.setAttribute(k, v);
    }
    for (const c of children || []) e.append(c);
    return e;
  }
  const fig = (key, value) => el("span", { "data-k": key, text: value });
  const num = (key, value) => el("td", { class: "n" }, [fig(key, value)]);
  const cell = (text) => el("td", { text: text === null ? "" : text });
  async function api(method, path) {
    const res = await fetch(path, {
      method, cache: "no-store", credentials: "omit",
      headers: { Authorization: "Bearer " + token },
    });
    if (res.status === 401) {
      token = null;
      throw new Error("The token was not accepted.");
    }
    if (!res.ok) {
      let message = "HTTP " + res.status;
      try { message = (await res.json()).error.message; } catch (_) { /* keep the status */ }
      throw new Error(message);
    }
    return res.status === 204 ? null : res.json();
  }
  function renderStatus(s) {
    $("generated").textContent = "Status at " + s["generated-at"] +
      "; delivery counts of this process since " + s["started-at"] + ".";
    const q = s.queue;
    $("cards").replaceChildren(...[
      ["Subscriptions", "subscriptions", s.subscriptions],
      ["Outbox messages", "queue.outbox", q.outbox],
      ["Queued deliveries", "queue.queued", q.queued],
      ["Dead letters", "queue.dead-letters", q["dead-letters"]],
      ["Open breakers", "breakers.open", s.breakers.length],
    ].map(([label, key, value]) => el("div", { class: "card" }, [label, fig(key, value)])));
    $("apps").replaceChildren(...s.apps.map((a) => el("tr", {}, [cell(a.app),
      num("apps." + a.app + ".subscriptions", a.subscriptions),
      num("apps." + a.app + ".registrations", a.registrations)])));
    $("deliveries-head").replaceChildren(el("th", { text: "Transport" }),
      ...OUTCOMES.map((o) => el("th", { text: o })));
    $("deliveries").replaceChildren(...s.transports.map((t) => el("tr", {}, [cell(t.transport),
      ...OUTCOMES.map((o) => num("transports." + t.transport + "." + o, t.deliveries[o]))])));
    $("breakers").replaceChildren(...(s.breakers.length === 0
      ? [el("li", { class: "muted", text: "All closed." })]
      : s.breakers.map((b) => el("li", {}, [b.service + ": open for another " +
        Math.ceil(b["open-for-ms"] / 1000) + " s"]))));
    $("upstream").textContent = s.upstream === null ? "Off."
      : s.upstream.reachable === null ? "No contact yet."
      : (s.upstream.reachable ? "Reachable." : "Not reachable.");
  }
  function renderDead(page) {
    const rows = page["dead-letters"].map((d) => {
      const actions = el("td", {}, [
        el("button", { type: "button", "data-retry": d.id, text: "Retry" }),
        el("button", { type: "button", "data-delete": d.id, text: "Delete" }),
      ]);
      if (!d.retryable) actions.firstChild.disabled = true;
      return el("tr", { "data-dead": d.id }, [cell(d["dead-at"]), cell(d.id), cell(d.app),
        cell(d.transport), cell(d.kind), cell(String(d.attempts)),
        cell(d["last-status"] === null ? null : String(d["last-status"])), cell(d.reason),
        cell(d["last-error"]), actions]);
    });
    $("dead").replaceChildren(...(rows.length > 0 ? rows
      : [el("tr", {}, [el("td", { colspan: "10", class: "muted", text: "None." })])]));
    $("dead-more").hidden = page["next-cursor"] === null;
  }
  async function load() {
    const [status, dead] = await Promise.all([
      api("GET", "admin/status"),
      api("GET", "admin/dead-letters?limit=20"),
    ]);
    renderStatus(status);
    renderDead(dead);
    $("view").hidden = false;
    document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
  }
  async function run(work) {
    $("error").textContent = "";
    try {
      await work();
    } catch (err) {
      $("error").textContent = err.message;
      if (token === null) $("view").hidden = true;
    }
  }
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value;
    $("token").value = "";
    run(load);
  });
  $("refresh").addEventListener("click", () => run(load));
  $("forget").addEventListener("click", () => {
    token = null;
    $("view").hidden = true;
  });
  $("dead").addEventListener("click", (event) => {
    const b = event.target.closest("button");
    if (!b) return;
    const id = b.dataset.retry || b.dataset.delete;
    const path = "admin/dead-letters/" + encodeURIComponent(id);
    run(async () => {
      await api(b.dataset.retry ? "POST" : "DELETE", b.dataset.retry ? path + "/retry" : path);
      await load();
    });
  });
})();
`;

const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>DAV-Push Relay admin</title>
<style>${STYLE}</style>
</head>
<body>
<header><h1>DAV-Push Relay admin</h1></header>
<main>
<form id="login" autocomplete="off">
<label for="token">Admin token</label>
<input id="token" type="password" autocomplete="off" spellcheck="false" required>
<button id="show" type="submit">Show</button>
</form>
<p id="error" role="alert"></p>
<section id="view" hidden>
<p><button id="refresh" type="button">Refresh</button>
<button id="forget" type="button">Forget the token</button></p>
<p id="generated" class="muted"></p>
<div id="cards" class="cards"></div>
<h2>Apps</h2>
<table><thead><tr><th>App</th><th>Subscriptions</th><th>Registrations</th></tr></thead>
<tbody id="apps"></tbody></table>
<h2>Deliveries by outcome</h2>
<table><thead><tr id="deliveries-head"></tr></thead><tbody id="deliveries"></tbody></table>
<h2>Circuit breakers</h2>
<ul id="breakers"></ul>
<h2>Upstream gateway</h2>
<p id="upstream"></p>
<h2>Newest dead letters</h2>
<table><thead><tr><th>Dead at</th><th>Id</th><th>App</th><th>Transport</th><th>Kind</th>
<th>Attempts</th><th>Last status</th><th>Reason</th><th>Last error</th><th></th></tr></thead>
<tbody id="dead"></tbody></table>
<p id="dead-more" class="muted" hidden>Older dead letters: GET admin/dead-letters with the
next-cursor.</p>
</section>
</main>
<script>${SCRIPT}</script>
</body>
</html>
`;

async function sha256(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  // CSP hashes are standard base64.
  return encodeBase64Url(digest).replaceAll("-", "+").replaceAll("_", "/").padEnd(44, "=");
}

let headers: Promise<Record<string, string>> | undefined;

/** The page's headers: a Content-Security-Policy that allows its own style and script only. */
function pageHeaders(): Promise<Record<string, string>> {
  headers ??= Promise.all([sha256(STYLE), sha256(SCRIPT)]).then(([style, script]) => ({
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": `default-src 'none'; style-src 'sha256-${style}'; ` +
      `script-src 'sha256-${script}'; connect-src 'self'; form-action 'none'; ` +
      `frame-ancestors 'none'; base-uri 'none'`,
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
  }));
  return headers;
}

/** The admin page and its headers. */
export async function adminPage(): Promise<{ html: string; headers: Record<string, string> }> {
  return { html: PAGE, headers: await pageHeaders() };
}
