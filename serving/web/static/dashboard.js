// The dashboard: figures from /dashboard/data, the per-day chart drawn with uPlot
// (shipped in static/vendor), refreshed every 15 s.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const PALETTE = ["#0b63ce", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#5c940d", "#1098ad", "#e67700", "#495057", "#a61e4d"];
  let chart = null;
  let thresholdChart = null;
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

  // Each camera x violation's alert threshold over time, a step line from one change to the next.
  function thresholdHistory(changes) {
    const element = $("threshold-history");
    if (!changes.length) return;
    const pairs = [...new Set(changes.map((c) => `${c.camera} · ${c.violation}`))];
    const times = [...new Set(changes.map((c) => Date.parse(c.at) / 1000))].sort((a, b) => a - b);
    const columns = pairs.map(() => times.map(() => null));
    for (const c of changes) {
      const p = pairs.indexOf(`${c.camera} · ${c.violation}`);
      const from = times.indexOf(Date.parse(c.at) / 1000);
      for (let i = from; i < times.length; i++) columns[p][i] = c.alert;  // until its next change
    }
    // The last thresholds are in force now: the steps run on to the present (and a lone change
    // is a line, not a point that uPlot would centre in a range of years).
    const now = Date.now() / 1000;
    if (now > times[times.length - 1]) {
      times.push(now);
      for (const column of columns) column.push(column[column.length - 1]);
    }
    const series = [{}].concat(pairs.map((name, i) => ({ label: name, stroke: PALETTE[i % PALETTE.length], width: 2, paths: uPlot.paths.stepped({ align: 1 }), points: { size: 6 } })));
    const width = Math.max(320, element.clientWidth - 10);
    if (thresholdChart) thresholdChart.destroy();
    thresholdChart = new uPlot({ width, height: 200, series, scales: { y: { auto: false, range: [0, 1] } } }, [times].concat(columns), element);
  }

  function thresholdsInForce(rows) {
    $("thresholds").replaceChildren(...rows.map((r) => {
      const tr = document.createElement("tr");
      const score = (v) => (v === null || v === undefined ? "-" : v.toFixed(2));
      for (const value of [r.camera, r.violation, `${r.confirmed} / ${r.rejected}`, score(r.alert), score(r.auto_confirm)]) {
        tr.insertCell().textContent = value;
      }
      return tr;
    }));
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
    $("r-verified").textContent = data.rechecks.verified;
    $("r-reopened").textContent = data.rechecks.reopened;
    $("r-pending").textContent = data.rechecks.pending;
    $("r-failed").textContent = data.rechecks.failed;
    thresholdsInForce(data.thresholds.in_force);
    thresholdHistory(data.thresholds.history);
    cameras(data.cameras, previous ? (started - previous.at) / 1000 : 0);
    previous = { cameras: data.cameras, at: started };
    document.body.dataset.loaded = "1";
  }

  refresh();
  setInterval(refresh, 15000);
})();
