"""The fleet manager's drill-down pages: a rollout's history, a release, a device. One HTML document,
self-contained (no CDN: charts are inline SVG drawn by a few lines of script), that renders
``/v1/history/...`` for the path it is opened at, or, in a snapshot written to disk, the data embedded
in it (``snapshot()``), so a report opens in any browser with no server and no network.

Everything shown goes through ``esc()`` (names, reasons and evidence are data, never markup); embedded
data is JSON with ``<``, ``>`` and ``&`` escaped, so it cannot close its script element.
"""

from __future__ import annotations

import json

__all__ = ["PAGE", "snapshot", "live", "embed_json"]

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Fleet history - edge model factory</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:14px system-ui,sans-serif;margin:24px;color:#222;background:#fafafa;max-width:1200px}
 h1{font-size:20px} h2{font-size:16px;margin-top:28px} h3{font-size:14px;margin:18px 0 4px}
 table{border-collapse:collapse;margin:8px 0 16px;background:#fff} td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
 th{background:#f0f0f0} .ok{color:#1a7f37;font-weight:600} .bad{color:#cf222e;font-weight:600} .muted{color:#888}
 .pill{display:inline-block;padding:1px 8px;border-radius:10px;background:#eee;margin-left:6px}
 .charts{display:flex;flex-wrap:wrap;gap:12px} figure{margin:0;background:#fff;border:1px solid #ddd;padding:6px}
 figcaption{font-size:12px;color:#555} svg text{font:10px system-ui,sans-serif;fill:#555}
 pre{white-space:pre-wrap;margin:0;font-size:12px}
</style></head>
<body>
<p><a href="__HOME__">fleet status</a></p>
<h1 id="title">loading...</h1>
<div id="error" class="bad"></div>
<div id="main"></div>
<script id="factory-data" type="application/json">__DATA__</script>
<script>
function esc(x){ return String(x === null || x === undefined ? "" : x).replace(/[&<>"']/g,
  c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]); }
function f(x, d=3){ return x === null || x === undefined || Number.isNaN(x) ? "-" : esc(Number(x).toFixed(d)); }
function when(t){ return t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : "-"; }
const COLORS = ["#4363d8", "#e6194b", "#3cb44b", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"];
// an inline SVG line chart: series [{name, pts: [[t, v], ...]}], thresholds [{value, label}]
function chart(title, series, thresholds=[], unit=""){
  const W = 540, H = 200, L = 46, R = 10, T = 12, B = 34;
  const all = series.flatMap(s => s.pts).filter(p => p[1] !== null && p[1] !== undefined && isFinite(p[1]));
  if(!all.length) return `<figure><figcaption>${esc(title)}</figcaption><p class="muted">no data</p></figure>`;
  const ts = all.map(p => p[0]), vs = all.map(p => p[1]).concat(thresholds.map(t => t.value));
  let t0 = Math.min(...ts), t1 = Math.max(...ts); if(t1 === t0) t1 = t0 + 1;
  let v0 = Math.min(0, ...vs), v1 = Math.max(...vs); if(v1 === v0) v1 = v0 + 1; v1 += (v1 - v0) * 0.08;
  const x = t => L + (t - t0) / (t1 - t0) * (W - L - R), y = v => H - B - (v - v0) / (v1 - v0) * (H - T - B);
  let g = `<line x1="${L}" y1="${H-B}" x2="${W-R}" y2="${H-B}" stroke="#999"/><line x1="${L}" y1="${T}" x2="${L}" y2="${H-B}" stroke="#999"/>`;
  for(const k of [0, 0.5, 1]){ const v = v0 + k * (v1 - v0); g += `<text x="${L-4}" y="${y(v)+3}" text-anchor="end">${f(v, v1 < 1 ? 3 : 2)}</text>`; }
  for(const k of [0, 0.5, 1]){ const t = t0 + k * (t1 - t0); g += `<text x="${x(t)}" y="${H-B+14}" text-anchor="middle">${esc(when(t).slice(5, 16))}</text>`; }
  for(const th of thresholds){ g += `<line class="threshold" x1="${L}" x2="${W-R}" y1="${y(th.value)}" y2="${y(th.value)}" stroke="#cf222e" stroke-dasharray="5,4"/>` +
    `<text x="${W-R-2}" y="${y(th.value)-3}" text-anchor="end" fill="#cf222e">${esc(th.label)} ${f(th.value, 3)}</text>`; }
  series.forEach((s, i) => {
    const c = COLORS[i % COLORS.length], pts = s.pts.filter(p => p[1] !== null && p[1] !== undefined && isFinite(p[1]));
    if(!pts.length) return;
    g += `<polyline fill="none" stroke="${c}" stroke-width="1.5" points="${pts.map(p => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" ")}"/>`;
    if(pts.length <= 120) g += pts.map(p => `<circle class="point" cx="${x(p[0]).toFixed(1)}" cy="${y(p[1]).toFixed(1)}" r="2" fill="${c}"><title>${esc(s.name)} ${esc(when(p[0]))}: ${f(p[1], 4)}</title></circle>`).join("");
    g += `<text x="${L + 6 + i * 120}" y="${H-4}" fill="${c}">\\u25a0 ${esc(s.name)}</text>`;
  });
  return `<figure><figcaption>${esc(title)}${unit ? " (" + esc(unit) + ")" : ""}</figcaption>` +
         `<svg class="chart" data-points="${all.length}" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}">${g}</svg></figure>`;
}
const pts = (s, k) => (s || []).map(w => [w.window_start, k(w)]);
function evidence(a){
  const d = a.detail || {}; let h = d.reason ? esc(d.reason) : "";
  const ev = d.evidence || {};
  for(const w of (ev.windows || [])){ h += `<div>${esc(when(w.window_start))}: ${(w.violations || []).map(v => '<span class="bad rule">' + esc(v) + '</span>').join("; ") || '<span class="ok">healthy</span>'}</div>`; }
  if(d.stage) h += `<div class="muted">stage ${esc(JSON.stringify(d.stage))}</div>`;
  if(d.release) h += `<div class="muted">release ${esc(d.release)}</div>`;
  return h;
}
function timeline(entries){
  if(!entries.length) return '<p class="muted">no decisions recorded</p>';
  return '<table><tr><th>when</th><th>who / which rule</th><th>decision</th><th>evidence</th></tr>' + entries.map(a =>
    `<tr><td>${esc(a.ts)}</td><td>${esc(a.actor)}</td><td class="${/rollback|halt/.test(a.action) ? "bad" : ""}">${esc(a.action)}</td><td>${evidence(a)}</td></tr>`).join("") + '</table>';
}
function charts(t, lim){
  const psi = Object.keys(Object.assign({}, ...(t.series || []).map(w => w.drift || {}))).sort();
  return '<div class="charts">' +
    chart("latency of " + t.release, [{name: "p50", pts: pts(t.series, w => w.p50_ms)}, {name: "p95", pts: pts(t.series, w => w.p95_ms)},
      {name: "previous p95", pts: pts(t.previous_series, w => w.p95_ms)}],
      t.manifest_p95_ms ? [{value: t.manifest_p95_ms, label: "p95 at build"}] : [], "ms") +
    chart("error rate", [{name: "errors / inferences", pts: pts(t.series, w => w.error_rate)}], lim ? [{value: lim.max_error_rate, label: "max_error_rate"}] : []) +
    chart("drift: PSI per signal", psi.filter(s => s.startsWith("psi")).map(s => ({name: s.slice(4), pts: pts(t.series, w => (w.drift || {})[s])})),
      [{value: (lim || {}).max_psi || 0.25, label: "max_psi"}]) +
    chart("drift: class mix (JS)", [{name: "js_class", pts: pts(t.series, w => (w.drift || {}).js_class)}], [{value: (lim || {}).max_js || 0.1, label: "max_js"}]) +
    chart("devices reporting", [{name: "devices", pts: pts(t.series, w => w.devices)}]) + '</div>';
}
function renderRollout(d){
  document.getElementById("title").innerHTML = `Rollout ${esc(d.name)} <span class="pill ${/rolled_back|halted/.test(d.status) ? "bad" : "ok"}">${esc(d.status)}</span>`;
  let h = `<p>model ${esc(d.model)}; stage ${f(d.stage + 1, 0)} of ${f(d.stages.length, 0)} (${d.stages.map(s => f(s.percent, 0) + "%").join(" -> ")}); created ${esc(d.created_at)}, updated ${esc(d.updated_at)}</p>`;
  h += '<h2>Timeline</h2>' + timeline(d.timeline);
  for(const [target, t] of Object.entries(d.targets)){
    h += `<h2>${esc(target)}: <a href="${link("releases", t.release)}">${esc(t.release)}</a> (previous ${t.previous ? '<a href="' + link("releases", t.previous) + '">' + esc(t.previous) + '</a>' : "none"})</h2>` + charts(t, d.limits);
  }
  return h;
}
function kv(obj){ return '<table>' + Object.entries(obj || {}).map(([k, v]) => `<tr><th>${esc(k)}</th><td><pre>${esc(typeof v === "object" ? JSON.stringify(v, null, 1) : v)}</pre></td></tr>`).join("") + '</table>'; }
function renderRelease(d){
  document.getElementById("title").textContent = "Release " + d.key;
  const v = d.validation || {};
  let h = `<p>published ${esc(d.published_at)} by ${esc(d.published_by)}; sha256 ${esc(d.sha256)}; ${f(d.size / 1e6, 2)} MB</p>`;
  if((d.stages || []).length){
    const e = d.end_to_end || {};
    h += '<h2>Stages (a pipeline release: one assignment, both verified and run)</h2><table><tr><th>stage</th><th>bundle</th><th>task</th><th>runtime</th><th>precision</th><th>manifest sha256</th></tr>' +
         d.stages.map(s => `<tr><td>${esc(s.stage)}</td><td>${esc(s.name)} ${esc(s.version)} ${esc(s.target)}</td><td>${esc(s.task)}</td><td>${esc(s.backend)}</td><td>${esc(s.precision)}</td><td><code>${esc((s.manifest_sha256 || "").slice(0, 16))}</code></td></tr>`).join("") + '</table>' +
         `<p>end to end on ${f(e.n, 0)} test frames: top-1 ${f(e.top1_end_to_end, 4)} (canonical pair ${f(e.canonical_top1_end_to_end, 4)}), ${esc(e.why)}; corner error ${f(e.corner_error_pct, 2)}%. In the field: the class mix and confidence are the classifier's, the document area (box area) the localiser's.</p>`;
  }
  h += '<h2>Rollouts</h2>' + (d.rollouts.length ? d.rollouts.map(r => `<h3><a href="${link("rollouts", r.name)}">${esc(r.name)}</a> <span class="pill ${/rolled_back|halted/.test(r.status) ? "bad" : "ok"}">${esc(r.status)}</span> ${r.new ? "" : '<span class="muted">(as the previous release)</span>'}</h3>` + timeline(r.decisions)).join("") : '<p class="muted">none</p>');
  h += '<h2>In the field</h2>' + charts({release: d.key, series: d.series, manifest_p95_ms: (d.latency || {}).p95_ms}, null);
  h += '<h2>Validation at build</h2>' + `<p>${v.passed ? '<span class="ok">passed</span>' : '<span class="bad">failed</span>'}; task ${esc(v.task || "classification")}; dataset ${esc(v.dataset_hash)}</p>` +
       '<table><tr><th>check</th><th>value</th><th>limit</th><th>verdict</th><th>why</th></tr>' + (v.checks || []).map(c =>
       `<tr><td>${esc(c.check)}</td><td>${esc(c.value)}</td><td>${esc(c.limit)}</td><td class="${c.passed ? "ok" : "bad"}">${esc(c.verdict || (c.passed ? "pass" : "fail"))}</td><td>${esc(c.why)}</td></tr>`).join("") + '</table>';
  h += '<h2>Recipe</h2>' + kv(d.recipe) + '<h2>Latency at build</h2>' + kv(d.latency) + '<h2>Lineage</h2>' + kv(d.lineage) + '<h2>Parity</h2>' + kv(v.parity);
  return h;
}
function renderDevice(d){
  document.getElementById("title").textContent = "Device " + d.device_id;
  let h = `<p>target ${esc(d.target)}; tags ${esc(d.tags.join(", ") || "none")}; last seen ${esc(d.last_seen)}; runs ${d.current ? '<a href="' + link("releases", d.current) + '">' + esc(d.current) + '</a>' : "nothing yet"}; ${f(d.captures, 0)} captures</p>`;
  h += `<h2>Recent summaries (${f(d.errors, 0)} errors)</h2><table><tr><th>window</th><th>release</th><th>rollout / stage</th><th>inferences</th><th>errors</th><th>sync errors</th></tr>` +
       d.recent.map(r => `<tr><td>${esc(when(r.window_start))}</td><td>${esc(r.release)}</td><td>${esc(r.rollout || "-")} ${r.stage !== null && r.stage !== undefined ? f(r.stage + 1, 0) : ""}</td><td>${f(r.count, 0)}</td><td class="${r.errors ? "bad" : ""}">${f(r.errors, 0)}</td><td>${f(r.sync_errors, 0)}</td></tr>`).join("") + '</table>';
  return h;
}
const SNAPSHOT = JSON.parse(document.getElementById("factory-data").textContent || "null");
// links between pages: live paths on the server, relative file names in a snapshot
function link(kind, id){ return SNAPSHOT ? (SNAPSHOT.links || {})[kind + ":" + id] || "#" : "/status/" + kind + "/" + id.split("/").map(encodeURIComponent).join("/"); }
function token(){ const m = location.hash.match(/token=([^&]+)/);
  if(m){ localStorage.setItem("factory-token", decodeURIComponent(m[1])); history.replaceState(null, "", location.pathname); }
  return localStorage.getItem("factory-token"); }
async function load(){
  try{
    let kind, data;
    if(SNAPSHOT){ kind = SNAPSHOT.kind; data = SNAPSHOT.data; }
    else{
      const parts = location.pathname.split("/").filter(Boolean); kind = parts[1];
      const t = token(); if(!t) throw new Error("open this page with #token=<a viewer or admin token>");
      const r = await fetch("/v1/history/" + parts.slice(1).join("/"), {headers: {"Authorization": "Bearer " + t}});
      if(!r.ok) throw new Error("GET /v1/history: " + r.status + " " + (await r.text()).slice(0, 300));
      data = await r.json();
    }
    const render = {rollouts: renderRollout, releases: renderRelease, devices: renderDevice}[kind];
    if(!render) throw new Error("unknown page " + kind);
    document.getElementById("main").innerHTML = render(data);
    document.body.dataset.renderedMs = performance.now().toFixed(1);
  }catch(e){ document.getElementById("error").textContent = String(e); document.getElementById("title").textContent = "Fleet history"; }
}
load();
</script></body></html>
"""


def embed_json(obj) -> str:
    """JSON that is safe inside a script element (no ``</script>``, no ``<!--``)."""
    return json.dumps(obj).replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def snapshot(kind: str, data: dict, links: dict[str, str] | None = None, home: str = "status.html") -> str:
    """A self-contained page of ``kind`` (rollouts | releases | devices) with ``data`` embedded."""
    return PAGE.replace("__DATA__", embed_json({"kind": kind, "data": data, "links": links or {}})).replace(
        "__HOME__", home
    )


def live() -> str:
    """The page the server serves: no data embedded; it asks /v1/history for its path."""
    return PAGE.replace("__DATA__", "null").replace("__HOME__", "/status")
