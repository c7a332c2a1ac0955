"""The admin's stylesheet, script and icon, served from ``/assets/`` (the CSP allows no inline).

The script only refreshes: every few seconds it fetches the page's fragment and swaps each
``[data-live]`` element for its fresh copy (keeping open ``<details>`` open and leaving
forms alone), and it pauses while the tab is hidden or when the operator pauses it.
"""

from __future__ import annotations

import hashlib

__all__ = ["ASSETS", "Asset", "asset_url"]

CSS = """
:root {
  --bg: #f5f6f8; --card: #ffffff; --line: #e4e7ec; --text: #1d2433; --muted: #667085;
  --accent: #3b5bdb; --accent-soft: #edf2ff; --danger: #c92a2a; --ok: #2b8a3e;
  --radius: 10px; --shadow: 0 1px 2px rgba(16, 24, 40, .06), 0 1px 3px rgba(16, 24, 40, .04);
  --mono: ui-monospace, SFMono-Regular, "SF Mono", Menlo, Consolas, "Liberation Mono", monospace;
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body {
  margin: 0; background: var(--bg); color: var(--text); font-size: 14px; line-height: 1.5;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
}
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
h1 { font-size: 22px; margin: 0; font-weight: 650; letter-spacing: -.01em; }
h2 { font-size: 15px; margin: 0 0 12px; font-weight: 650; }
.muted { color: var(--muted); }
.topbar {
  position: sticky; top: 0; z-index: 5; background: rgba(255, 255, 255, .92);
  backdrop-filter: blur(6px); border-bottom: 1px solid var(--line);
}
.topbar .inner { display: flex; align-items: center; gap: 16px; height: 54px; }
.brand { display: flex; align-items: center; gap: 10px; font-weight: 650; color: var(--text); }
.brand:hover { text-decoration: none; }
.brand .logo {
  width: 26px; height: 26px; border-radius: 7px; display: grid; place-items: center;
  background: linear-gradient(135deg, #3b5bdb, #0ca678); color: #fff; font-size: 13px;
}
.topbar .spacer { flex: 1; }
.pill {
  font-size: 12px; padding: 2px 10px; border-radius: 999px; border: 1px solid var(--line);
  color: var(--muted); background: #fff; white-space: nowrap;
}
.pill.admin { color: var(--ok); border-color: #b2f2bb; background: #ebfbee; }
.live {
  display: inline-flex; align-items: center; gap: 6px; font-size: 12px; color: var(--muted);
}
.live .dot { width: 8px; height: 8px; border-radius: 50%; background: #adb5bd; }
.live[data-state="live"] .dot { background: #37b24d; box-shadow: 0 0 0 3px #d3f9d8; }
.live[data-state="offline"] .dot { background: var(--danger); }
.wrap { max-width: 1360px; margin: 0 auto; padding: 0 24px; }
main.wrap { padding-top: 22px; padding-bottom: 48px; }
.card {
  background: var(--card); border: 1px solid var(--line); border-radius: var(--radius);
  box-shadow: var(--shadow); padding: 18px 20px; margin-bottom: 18px;
}
.card.flush { padding: 0; overflow: hidden; }
.card.flush > h2 { padding: 16px 20px 0; }
.head { display: flex; align-items: center; gap: 12px; flex-wrap: wrap; margin-bottom: 6px; }
.crumbs { font-size: 13px; margin-bottom: 10px; color: var(--muted); }
.chip {
  display: inline-flex; align-items: center; gap: 6px; padding: 2px 10px 2px 8px;
  border-radius: 999px; font-size: 12px; font-weight: 600; white-space: nowrap;
  border: 1px solid transparent; line-height: 18px;
}
.chip::before {
  content: ""; width: 7px; height: 7px; border-radius: 50%; background: currentColor;
}
a.chip:hover { text-decoration: none; filter: brightness(.97); }
.s-pending { background: #f4f4f5; color: #52525b; border-color: #e4e4e7; }
.s-running { background: #fef3c7; color: #92400e; border-color: #fcd34d; }
.s-waiting { background: #e0f2fe; color: #0369a1; border-color: #7dd3fc; }
.s-compensating { background: #ffedd5; color: #9a3412; border-color: #fdba74; }
.s-completed { background: #dcfce7; color: #166534; border-color: #86efac; }
.s-compensated { background: #dbeafe; color: #1e40af; border-color: #93c5fd; }
.s-failed { background: #fee2e2; color: #991b1b; border-color: #fca5a5; }
.s-other { background: #f4f4f5; color: #52525b; border-color: #e4e4e7; }
.counts { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin-bottom: 16px; }
.counts .chip { font-size: 13px; padding: 4px 12px 4px 10px; }
.counts .chip b { font-variant-numeric: tabular-nums; }
.counts .chip.active { outline: 2px solid currentColor; outline-offset: 1px; }
.counts .chip.zero { opacity: .55; }
.counts .total { font-size: 13px; color: var(--muted); margin-right: 6px; }
form.filters { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-end; }
label.field {
  display: flex; flex-direction: column; gap: 4px; font-size: 12px; color: var(--muted);
}
label.check { display: flex; align-items: center; gap: 6px; font-size: 13px; min-height: 34px; }
input, select, textarea {
  font: inherit; color: var(--text); background: #fff; border: 1px solid #d0d5dd;
  border-radius: 8px; padding: 6px 10px; min-height: 34px;
}
textarea { font-family: var(--mono); font-size: 13px; min-height: 74px; width: 100%; }
input:focus, select:focus, textarea:focus {
  outline: none; border-color: var(--accent); box-shadow: 0 0 0 3px var(--accent-soft);
}
.button, button {
  font: inherit; font-weight: 600; font-size: 13px; border-radius: 8px; padding: 6px 14px;
  min-height: 34px; border: 1px solid #d0d5dd; background: #fff; color: var(--text);
  cursor: pointer; display: inline-flex; align-items: center; gap: 6px;
}
.button:hover, button:hover { background: #f9fafb; text-decoration: none; }
button.primary { background: var(--accent); border-color: var(--accent); color: #fff; }
button.primary:hover { background: #364fc7; }
button.danger { color: var(--danger); border-color: #ffc9c9; }
button.danger:hover { background: #fff5f5; }
button.quiet { border-color: transparent; background: transparent; color: var(--muted); }
.errors, .flash {
  border-radius: 8px; padding: 10px 14px; margin: 0 0 16px; border: 1px solid;
}
.errors, .flash.bad { background: #fff5f5; border-color: #ffc9c9; color: #a61e1e; }
.flash.good { background: #ebfbee; border-color: #b2f2bb; color: #1e6b2f; }
.errors ul { margin: 0; padding-left: 18px; }
table.grid { width: 100%; border-collapse: collapse; font-size: 13.5px; }
table.grid th {
  text-align: left; font-size: 11.5px; font-weight: 600; text-transform: uppercase;
  letter-spacing: .04em; color: var(--muted); background: #fafbfc; padding: 9px 12px;
  border-bottom: 1px solid var(--line); white-space: nowrap;
}
table.grid td { padding: 9px 12px; border-bottom: 1px solid #f0f1f4; vertical-align: top; }
table.grid tr:last-child td { border-bottom: none; }
table.grid tbody tr:hover { background: #fafbff; }
table.grid .num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.grid .nowrap { white-space: nowrap; }
table.grid tr.upcoming td { color: #98a2b3; }
table.grid tr.d1 td.step { padding-left: 30px; }
table.grid tr.d2 td.step { padding-left: 48px; }
table.grid tr.d3 td.step { padding-left: 66px; }
table.grid tr.child td.step::before { content: "\\21b3  "; color: #98a2b3; }
.table-scroll { overflow-x: auto; }
.mono {
  font-family: var(--mono); font-size: 12.5px; display: inline-block; max-width: 17ch;
  overflow: hidden; text-overflow: ellipsis; white-space: nowrap; vertical-align: bottom;
}
.mono.wide { max-width: 44ch; }
.error-text { color: #b42318; max-width: 46ch; overflow-wrap: anywhere; }
.clip { display: inline-block; max-width: 30ch; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; vertical-align: bottom; }
.empty { padding: 34px 20px; text-align: center; color: var(--muted); }
.pager { display: flex; align-items: center; gap: 10px; padding: 12px 16px;
  border-top: 1px solid var(--line); font-size: 13px; color: var(--muted); }
.pager .spacer { flex: 1; }
.pager .disabled { opacity: .45; pointer-events: none; }
dl.facts {
  display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr)); gap: 14px 24px;
  margin: 16px 0 0;
}
dl.facts div { min-width: 0; }
dl.facts dt {
  font-size: 11.5px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted);
}
dl.facts dd { margin: 2px 0 0; overflow-wrap: anywhere; }
.callout { border-radius: 8px; padding: 10px 14px; margin-top: 16px; border-left: 4px solid; }
.callout.error { background: #fff5f5; border-color: #e03131; }
.callout.error .kind { font-weight: 600; color: #c92a2a; margin-right: 6px; }
.callout.wait { background: #f0f9ff; border-color: #0ea5e9; }
.callout.cancel { background: #fff4e6; border-color: #f76707; }
.actions { display: grid; grid-template-columns: repeat(auto-fit, minmax(260px, 1fr)); gap: 16px; }
.actions form { display: flex; flex-direction: column; gap: 8px; }
.actions form > button, .actions form > div > button { align-self: flex-start; }
.actions .row { display: flex; gap: 8px; }
.actions .row input { flex: 1; min-width: 0; }
.actions h3 { margin: 0; font-size: 13px; }
.actions p { margin: 0; font-size: 12.5px; color: var(--muted); }
.diagram { overflow-x: auto; padding: 6px 0 4px; text-align: center; }
.diagram svg { max-width: 100%; height: auto; }
.diagram svg .lx-node:hover rect, .diagram svg .lx-node:hover polygon { filter: brightness(.96); }
.legend { display: flex; flex-wrap: wrap; gap: 6px; justify-content: center; margin-top: 8px; }
.keys { display: flex; flex-wrap: wrap; gap: 6px; }
.keys code {
  font-family: var(--mono); font-size: 12.5px; background: #f2f4f7; border: 1px solid var(--line);
  border-radius: 6px; padding: 1px 8px;
}
pre.json {
  font-family: var(--mono); font-size: 12.5px; background: #0f172a; color: #e2e8f0;
  border-radius: 8px; padding: 14px 16px; overflow: auto; max-height: 420px; margin: 12px 0 0;
}
details > summary { cursor: pointer; color: var(--muted); font-size: 12.5px; }
details ol { margin: 6px 0 0; padding-left: 20px; }
.login { max-width: 380px; margin: 10vh auto; }
.login form { display: flex; flex-direction: column; gap: 12px; }
.notfound { text-align: center; padding: 48px 20px; }
.notfound h1 { margin-bottom: 8px; }
td.where { max-width: 240px; }
@media (max-width: 1200px) {
  .hide-narrow { display: none; }
  .clip { max-width: 22ch; }
}
@media (max-width: 760px) {
  .wrap { padding: 0 12px; }
}
"""

JS = """
(function () {
  "use strict";
  var root = document.querySelector("[data-refresh]");
  var badge = document.getElementById("live");
  var toggle = document.getElementById("live-toggle");
  if (!root || !badge) { return; }
  var url = root.getAttribute("data-refresh");
  var every = Math.max(1, Number(root.getAttribute("data-every") || "5")) * 1000;
  var timer = null;
  var paused = false;
  var stopped = false;

  function show(state, text) {
    badge.setAttribute("data-state", state);
    badge.querySelector(".text").textContent = text;
  }

  function openDetails(element) {
    var open = [];
    element.querySelectorAll("details[open][data-key]").forEach(function (item) {
      open.push(item.getAttribute("data-key"));
    });
    return open;
  }

  function swap(fresh) {
    document.querySelectorAll("[data-live]").forEach(function (current) {
      var key = current.getAttribute("data-live");
      var next = null;
      fresh.querySelectorAll("[data-live]").forEach(function (candidate) {
        if (candidate.getAttribute("data-live") === key) { next = candidate; }
      });
      if (!next || next.innerHTML === current.innerHTML) { return; }
      var open = openDetails(current);
      var copy = document.importNode(next, true);
      copy.querySelectorAll("details[data-key]").forEach(function (item) {
        if (open.indexOf(item.getAttribute("data-key")) >= 0) { item.setAttribute("open", ""); }
      });
      current.replaceWith(copy);
    });
  }

  function schedule() {
    clearTimeout(timer);
    if (!paused && !stopped && !document.hidden) { timer = setTimeout(refresh, every); }
  }

  function refresh() {
    fetch(url, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { "Accept": "text/html", "X-Requested-With": "fetch" }
    }).then(function (response) {
      if (response.status === 401 || response.status === 403) {
        stopped = true;
        show("offline", "signed out: reload");
        return null;
      }
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.text();
    }).then(function (text) {
      if (text === null) { return; }
      swap(new DOMParser().parseFromString(text, "text/html"));
      var now = new Date();
      show("live", "live");
      badge.setAttribute("title", "updated " + now.toLocaleTimeString());
    }).catch(function () {
      show("offline", "offline, retrying");
    }).then(schedule);
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      clearTimeout(timer);
      if (!paused && !stopped) { show("paused", "paused (tab hidden)"); }
    } else if (!paused && !stopped) {
      refresh();
    }
  });

  if (toggle) {
    toggle.hidden = false;
    toggle.addEventListener("click", function () {
      paused = !paused;
      toggle.textContent = paused ? "Resume" : "Pause";
      if (paused) { clearTimeout(timer); show("paused", "paused"); } else { refresh(); }
    });
  }
  show("live", "live");
  schedule();
})();
"""

ICON = """<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">
<defs><linearGradient id="g" x1="0" y1="0" x2="1" y2="1">
<stop offset="0" stop-color="#3b5bdb"/><stop offset="1" stop-color="#0ca678"/>
</linearGradient></defs>
<rect width="32" height="32" rx="8" fill="url(#g)"/>
<path d="M9 10h9M9 16h14M9 22h7" stroke="#fff" stroke-width="3" stroke-linecap="round"/>
</svg>
"""


class Asset:
    """One file under ``/assets/``: its body, type and a version for its URL."""

    def __init__(self, name: str, body: str, media_type: str) -> None:
        self.name = name
        self.body = body.encode("utf-8")
        self.media_type = media_type
        self.version = hashlib.sha256(self.body).hexdigest()[:12]


ASSETS = {
    asset.name: asset
    for asset in (
        Asset("admin.css", CSS, "text/css; charset=utf-8"),
        Asset("admin.js", JS, "text/javascript; charset=utf-8"),
        Asset("icon.svg", ICON, "image/svg+xml"),
    )
}
"""The files ``/assets/{name}`` serves."""


def asset_url(name: str) -> str:
    """The URL of an asset, versioned by its content (so it can be cached for long)."""
    return f"/assets/{name}?v={ASSETS[name].version}"
