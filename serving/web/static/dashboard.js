// The dashboard: figures from /dashboard/data, the per-day chart drawn with uPlot
// (shipped in static/vendor), refreshed every 15 s.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const PALETTE = ["#0b63ce", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#5c940d", "#1098ad", "#e67700", "#495057", "#a61e4d"];
  let chart = null;
  let previous = null;  // the last answer, to turn frame counters into a rate

  const UNITS = JSON.parse($("dashboard").dataset.units);

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    if (seconds < 120) return `${Math.round(seconds)} ${UNITS.s}`;
    if (seconds < 7200) return `${Math.round(seconds / 60)} ${UNITS.min}`;
    return `${(seconds / 3600).toFixed(1)} ${UNITS.h}`;
  }

  function table(element, rows) {
    const body = document.createElement("tbody");
    for (const row of rows) {
      const tr = body.insertRow();
      for (const cell of row) tr.insertCell().textContent = cell;
    }
    const t = document.createElement("table");
    t.className = "grid";
    t.append(body);
    element.replaceChildren(t);
  }

  function perDay(data) {
    if (!data.days.length) return;
    const days = data.days.map((d) => Date.parse(d + "T00:00:00Z") / 1000);
    const names = Object.keys(data.series);
    const series = [{}].concat(names.map((name, i) => ({ label: name, stroke: PALETTE[i % PALETTE.length], width: 2, points: { size: 6 } })));
    const values = [days].concat(names.map((n) => data.series[n]));
    const width = Math.max(320, $("per-day").clientWidth - 10);
    if (chart) chart.destroy();
    chart = new uPlot({ width, height: 240, series, scales: { x: { time: true, auto: false, range: [days[0] - 86400, days[days.length - 1] + 86400] } } }, values, $("per-day"));
  }

  function cameras(list, seconds) {
    const before = new Map((previous ? previous.cameras : []).map((c) => [c.camera, c]));
    $("cameras").replaceChildren(...list.map((c) => {
      const tr = document.createElement("tr");
      const old = before.get(c.camera);
      const rate = old && seconds > 0 ? ((c.frames_sampled - old.frames_sampled) * 60 / seconds).toFixed(1) : "-";
      for (const value of [c.camera, c.online ? "✔" : "✘", c.last_frame || "-", rate, String(c.dropped), String(c.errors)]) {
        tr.insertCell().textContent = value;
      }
      return tr;
    }));
  }

  async function refresh() {
    const started = performance.now();
    const response = await fetch("/dashboard/data", { credentials: "same-origin" });
    if (response.status === 401) { location.assign("/login"); return; }
    const data = await response.json();
    perDay(data.per_day);
    $("backlog").textContent = data.backlog.pending;
    $("backlog-age").textContent = duration(data.backlog.oldest_age_s);
    $("to-case").textContent = duration(data.latency_s.to_case);
    $("to-review").textContent = duration(data.latency_s.to_review);
    $("to-delivery").textContent = duration(data.latency_s.to_delivery);
    $("d-pending").textContent = data.delivery.pending;
    $("d-delivered").textContent = data.delivery.delivered;
    $("d-failed").textContent = data.delivery.failed_tries;
    $("d-dead").textContent = data.delivery.dead;
    const precisionRows = (rows) => rows.map((r) => [r.key, `${r.confirmed} / ${r.reviewed}`, (r.precision * 100).toFixed(0) + "%"]);
    table($("precision-violation"), precisionRows(data.precision_by_violation));
    table($("precision-camera"), precisionRows(data.precision_by_camera));
    cameras(data.cameras, previous ? (started - previous.at) / 1000 : 0);
    previous = { cameras: data.cameras, at: started };
    document.body.dataset.loaded = "1";
  }

  refresh();
  setInterval(refresh, 15000);
})();
