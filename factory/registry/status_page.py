"""The status page: releases, rollouts and their stages, health per stage with drift and latency
figures and their trend. One static HTML document that renders /v1/health in the browser.

The page itself holds no data; it asks /v1/health with a viewer or admin token taken from the URL
fragment (``/status#token=...``, never sent to the server or its logs) and kept in localStorage.
Everything it shows goes through ``esc()``: names, releases and reasons are data, never markup.
Rollouts, releases and devices link to their history pages (:mod:`.history_page`); a snapshot
(``snapshot()``) embeds the report instead of asking for it, for a report folder opened with no server."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Fleet status - edge model factory</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:14px system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
 h1{font-size:20px} h2{font-size:16px;margin-top:28px}
 table{border-collapse:collapse;margin:8px 0 16px;background:#fff} td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}
 th{background:#f0f0f0} td.l,th.l{text-align:left}
 .ok{color:#1a7f37;font-weight:600} .bad{color:#cf222e;font-weight:600} .muted{color:#888}
 .pill{display:inline-block;padding:1px 8px;border-radius:10px;background:#eee;margin-left:6px}
 .spark{font-family:monospace;letter-spacing:1px}
</style></head>
<body>
<h1>Fleet status <span id="updated" class="muted"></span></h1>
<div id="error" class="bad"></div>
<h2>Rollouts</h2><div id="rollouts" class="muted">loading...</div>
<h2>Stable releases</h2><div id="stable" class="muted">loading...</div>
<h2>Retraining triggers</h2><div id="triggers" class="muted">loading...</div>
<script id="factory-data" type="application/json">__DATA__</script>
<script>
const SNAPSHOT = JSON.parse(document.getElementById("factory-data").textContent || "null");
function link(kind, id){ return SNAPSHOT ? (SNAPSHOT.links || {})[kind + ":" + id] || "#" : "/status/" + kind + "/" + String(id).split("/").map(encodeURIComponent).join("/"); }
const BARS = "\\u2581\\u2582\\u2583\\u2584\\u2585\\u2586\\u2587\\u2588";
function spark(vals){ const v = vals.filter(x => x !== null && x !== undefined); if(!v.length) return "";
  const lo = Math.min(...v), hi = Math.max(...v); return vals.map(x => x === null || x === undefined ? " " :
  BARS[Math.round((x - lo) / ((hi - lo) || 1) * 7)]).join(""); }
function esc(x){ return String(x === null || x === undefined ? "" : x).replace(/[&<>"']/g,
  c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]); }
function f(x, d=3){ return x === null || x === undefined ? "-" : esc(Number(x).toFixed(d)); }
function token(){ const m = location.hash.match(/token=([^&]+)/);
  if(m){ localStorage.setItem("factory-token", decodeURIComponent(m[1])); history.replaceState(null, "", location.pathname); }
  return localStorage.getItem("factory-token"); }
// drift signals on one scale: each as a share of its own limit (PSI and JS are not comparable)
function maxDrift(w, lim){ const v = Object.entries(w.drift || {}).filter(([k, x]) => x !== null)
  .map(([k, x]) => x / (k.startsWith("js") ? lim.max_js : lim.max_psi)); return v.length ? Math.max(...v) : null; }
function windowsTable(ws, lim){
  lim = lim || {max_psi: 0.25, max_js: 0.1};
  if(!ws.length) return '<p class="muted">no telemetry in the last ' + (30 * ((window.HEALTH || {}).window_seconds || 60)) + ' s: the history page keeps the rest</p>';
  let h = '<table><tr><th class="l">window</th><th>inferences</th><th>devices</th><th>error rate</th><th>p50 ms</th><th>p95 ms</th>' +
          '<th>p95 vs previous</th><th>PSI conf.</th><th>PSI bright.</th><th>PSI contr.</th><th>JS class</th><th class="l">verdict</th></tr>';
  for(const w of ws.slice(-8)){
    const v = w.verdict || {}; const verdict = v.healthy === true ? '<span class="ok">healthy</span>' :
      v.healthy === false ? '<span class="bad">unhealthy: ' + esc(v.violations.join("; ")) + '</span>' : '<span class="muted">' + esc(v.why || "") + '</span>';
    const stage = w.stage ? ` (stage ${f(w.stage, 0)})` : "";
    h += `<tr><td class="l">${new Date(w.window_start*1000).toISOString().slice(11,19)}${stage}</td><td>${f(w.count, 0)}</td><td>${f(w.devices, 0)}</td>` +
         `<td>${f(w.error_rate)}</td><td>${f(w.p50_ms,2)}</td><td>${f(w.p95_ms,2)}</td><td>${f(w.latency_p95_ratio,2)}</td>` +
         `<td>${f(w.drift.psi_confidence)}</td><td>${f(w.drift.psi_brightness)}</td><td>${f(w.drift.psi_contrast)}</td><td>${f(w.drift.js_class)}</td><td class="l">${verdict}</td></tr>`;
  }
  return h + '</table>' + `<div>trend p95 <span class="spark">${spark(ws.map(w => w.p95_ms))}</span> &nbsp; ` +
         `drift (largest signal / its limit) <span class="spark">${spark(ws.map(w => maxDrift(w, lim)))}</span></div>`;
}
async function refresh(){
  try{
    let h;
    if(SNAPSHOT){ h = SNAPSHOT.data; }
    else{
      const t = token(); if(!t) throw new Error("open this page as /status#token=<a viewer or admin token>");
      const r = await fetch("/v1/health", {headers: {"Authorization": "Bearer " + t}});
      if(!r.ok) throw new Error("GET /v1/health: " + r.status + (r.status === 401 || r.status === 403 ? " (check the token)" : ""));
      h = await r.json();
    }
    document.getElementById("error").textContent = ""; window.HEALTH = h;
    document.getElementById("updated").textContent = "updated " + h.generated_at;
    let out = "";
    for(const ro of h.rollouts){
      const cls = ro.status === "rolled_back" || ro.status === "halted" ? "bad" : "ok";
      out += `<div class="rollout" data-name="${esc(ro.name)}"><b><a href="${link("rollouts", ro.name)}">${esc(ro.name)}</a></b><span class="pill ${cls}">${esc(ro.status)}</span>` +
             `<span class="pill">stage ${f(ro.stage + 1, 0)}/${f(ro.stages, 0)} (${f(ro.percent, 0)}%)</span>` +
             (ro.error ? `<p class="bad">${esc(ro.error)}</p>` : "");
      for(const [t, d] of Object.entries(ro.targets)){ out += `<p>${esc(t)}: <b><a href="${link("releases", d.release)}">${esc(d.release)}</a></b> (previous ${esc(d.previous || "none")})</p>` + windowsTable(d.windows, d.limits); }
      out += "</div>";
    }
    document.getElementById("rollouts").innerHTML = out || '<p class="muted">no rollouts</p>';
    document.getElementById("stable").innerHTML = h.stable.map(s => `<p><b><a href="${link("releases", s.release)}">${esc(s.release)}</a></b> (${esc(s.target)})</p>` + windowsTable(s.windows)).join("") || "none";
    document.getElementById("triggers").innerHTML = h.triggers.map(t => `<p class="bad">${esc(t.ts)}: ${esc(t.detail.release)}: ${esc(t.detail.reason)}; start from dataset ${esc(t.detail.start_from.dataset_hash)}</p>`).join("") || "none";
  }catch(e){ document.getElementById("error").textContent = String(e); }
}
refresh(); if(!SNAPSHOT) setInterval(refresh, 2000);
</script></body></html>
"""


def live() -> str:
    """The page the server serves (it asks /v1/health)."""
    return PAGE.replace("__DATA__", "null")


def snapshot(report: dict, links: dict[str, str]) -> str:
    """The page with ``report`` (a /v1/health answer) embedded and links to snapshot files."""
    from .history_page import embed_json

    return PAGE.replace("__DATA__", embed_json({"data": report, "links": links}))
