"""The till's checkout page: plain HTML, a stylesheet and a script, no build step.

The page carries no inline script or style, so its Content-Security-Policy
allows only this origin's files (``script-src 'self'``, no ``'unsafe-inline'``):
an injected ``<script>`` does not run. It also refuses to be framed
(``frame-ancestors 'none'``), so another site cannot overlay the till's buttons
(clickjacking). Everything that comes from a wallet (claim names and values) is
inserted with ``textContent``, never as HTML, so a hostile credential cannot
script the till.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CHECKOUT_CSS", "CHECKOUT_HTML", "CHECKOUT_JS", "PAGE_HEADERS"]

# CSP level 3. img-src allows blob: for the QR code, which the page fetches with
# the till's key and shows from memory (an <img src> cannot send the key).
PAGE_HEADERS: Final[dict[str, str]] = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'",
    # For browsers older than CSP 2's frame-ancestors.
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

CHECKOUT_HTML: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<script src="/checkout.js" defer></script>
<title>Checkout - member benefits</title>
<link rel="stylesheet" href="/checkout.css">
</head>
<body>
<h1>Member benefits at checkout</h1>
<section id="login" hidden>
  <p>This till has no key yet. Paste the till key the operator created
  (<code>tessera verifier till create</code>); it stays on this device.</p>
  <p><label for="till-key">Till key</label>
  <input id="till-key" type="password" autocomplete="off" size="60">
  <button id="till-save" type="button">Use this key</button></p>
  <p id="login-error" hidden>The service refused this key.</p>
</section>
<p id="intro" hidden>Pick what to ask the member's wallet for. Only the answer to that
question is shared.</p>
<div class="policies" id="policies"></div>

<section id="request" hidden>
  <h2 id="request-label"></h2>
  <p id="request-purpose"></p>
  <img id="qr" alt="QR code with the request for the member's wallet">
  <p>Or open on this device: <a id="deep-link" href="#"></a></p>
  <p>Status: <strong id="status">waiting for the wallet</strong></p>
</section>

<section id="result" hidden>
  <h2 id="result-title"></h2>
  <p id="reason"></p>
  <table id="claims" hidden><thead><tr><th>claim</th><th>value</th></tr></thead>
  <tbody></tbody></table>
  <p id="issuer"></p>
  <p><button id="again" type="button">New checkout</button></p>
</section>

</body>
</html>
"""

CHECKOUT_CSS: Final = """\
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 46rem; color: #1d2330; }
h1 { font-size: 1.5rem; }
.policies button { font-size: 1rem; margin: 0 .5rem .5rem 0; padding: .6rem 1rem;
                   border-radius: .4rem; border: 1px solid #345; background: #f4f7fb;
                   cursor: pointer; }
#request, #result { margin-top: 1.5rem; padding: 1rem; border-radius: .5rem;
                    border: 1px solid #ccd; }
#qr { width: 16rem; height: 16rem; image-rendering: pixelated; }
#deep-link { word-break: break-all; font-size: .8rem; }
#result.ok { background: #e8f7ec; border-color: #3a8a52; }
#result.refused { background: #fcebea; border-color: #b4443a; }
table { border-collapse: collapse; margin-top: .5rem; }
td, th { border: 1px solid #ccd; padding: .25rem .6rem; text-align: left; }
#login-error { color: #b4443a; }
[hidden] { display: none !important; }
"""

# Raw: the script's own "\n" escapes must reach the browser as written.
CHECKOUT_JS: Final = r"""
"use strict";
// The till's key authenticates every call but the page itself: creating a
// request, its QR code, its result and its events. It is sent in an
// Authorization header, never in a URL, so it is not in the QR code, the
// server's access log or the browser's history. An <img src> or an EventSource
// cannot send a header, so the QR code and the events are fetched with fetch().
const $ = (id) => document.getElementById(id);
const KEY_ITEM = "tessera-till-key";
const STATUS_TEXT = {pending: "waiting for the wallet", fetched: "the wallet opened the request",
                     done: "answered"};
let qrUrl = null;

function auth() {
  return {authorization: "Bearer " + (localStorage.getItem(KEY_ITEM) || "")};
}

function show(value) {
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

function render(view) {
  $("status").textContent = STATUS_TEXT[view.status] || view.status;
  if (view.status !== "done" || !view.result) return;
  const res = view.result;
  const box = $("result");
  box.hidden = false;
  box.className = res.ok ? "ok" : "refused";
  box.dataset.outcome = res.ok ? "approved" : "refused";
  $("result-title").textContent = res.ok ? "Approved: " + view.label : "Refused";
  $("reason").textContent = res.ok ? "" : (res.reason || res.errors.join(", "));
  const body = $("claims").querySelector("tbody");
  body.replaceChildren();
  const names = Object.keys(res.claims || {});
  for (const name of names) {
    const row = document.createElement("tr");
    const k = document.createElement("td");
    const v = document.createElement("td");
    k.textContent = name;
    v.textContent = show(res.claims[name]);
    row.append(k, v);
    body.append(row);
  }
  $("claims").hidden = names.length === 0;
  $("issuer").textContent = res.ok && res.issuer ? "Issued by " + res.issuer : "";
}

async function poll(req) {
  for (;;) {
    const r = await fetch(req.result, {cache: "no-store", headers: auth()});
    if (!r.ok) { $("status").textContent = "request expired"; return; }
    const view = await r.json();
    render(view);
    if (view.status === "done") return;
    await new Promise((ok) => setTimeout(ok, 1000));
  }
}

// Server-sent events read from a fetch() body (text/event-stream, one
// "status" event per change); polling if the stream fails.
async function listen(req) {
  let finished = false;
  try {
    const r = await fetch(req.events, {cache: "no-store", headers: auth()});
    if (!r.ok || !r.body) throw new Error("no event stream");
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    while (!finished) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const lines = block.split("\n");
        if (!lines.includes("event: status")) continue;
        const data = lines.filter((l) => l.startsWith("data: ")).map((l) => l.slice(6));
        const view = JSON.parse(data.join("\n"));
        render(view);
        if (view.status === "done") { finished = true; reader.cancel(); break; }
      }
    }
  } catch (e) {
    // fall through to polling
  }
  if (!finished) poll(req);
}

async function showQr(req) {
  const r = await fetch(req.qr, {cache: "no-store", headers: auth()});
  if (!r.ok) return;
  if (qrUrl) URL.revokeObjectURL(qrUrl);
  qrUrl = URL.createObjectURL(await r.blob());
  $("qr").src = qrUrl;
}

async function start(policy) {
  $("result").hidden = true;
  const r = await fetch("/requests", {method: "POST",
    headers: {"content-type": "application/json", ...auth()},
    body: JSON.stringify({policy})});
  const req = await r.json();
  if (r.status === 401) { login(true); return; }
  if (!r.ok) { alert(req.detail || "cannot create the request"); return; }
  $("request").hidden = false;
  $("request").dataset.requestId = req.id;
  $("request-label").textContent = req.label;
  $("request-purpose").textContent = req.purpose;
  $("deep-link").href = req.deep_link;
  $("deep-link").textContent = req.deep_link;
  $("status").textContent = STATUS_TEXT.pending;
  showQr(req);
  listen(req);
}

function login(refused) {
  $("login").hidden = false;
  $("login-error").hidden = !refused;
  $("intro").hidden = true;
  $("policies").replaceChildren();
  $("request").hidden = true;
  $("result").hidden = true;
}

async function loadPolicies() {
  const r = await fetch("/policies", {headers: auth()});
  if (!r.ok) { login(localStorage.getItem(KEY_ITEM) !== null); return; }
  $("login").hidden = true;
  $("intro").hidden = false;
  $("policies").replaceChildren();
  for (const p of await r.json()) {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.policy = p.id;
    b.textContent = p.label;
    b.addEventListener("click", () => start(p.id));
    $("policies").append(b);
  }
}

function init() {
  $("till-save").addEventListener("click", () => {
    localStorage.setItem(KEY_ITEM, $("till-key").value.trim());
    $("till-key").value = "";
    loadPolicies();
  });
  $("again").addEventListener("click", () => {
    $("result").hidden = true; $("request").hidden = true;
  });
  loadPolicies();
}
init();
"""
