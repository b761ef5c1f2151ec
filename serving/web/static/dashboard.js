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
  const NAMES = JSON.parse($("dashboard").dataset.names);  // violation id -> the page's name for it
  const STATES = JSON.parse($("dashboard").dataset.states);  // camera reader state -> words
  const violationName = (id) => NAMES[id] || id;
  const TIME = $("dashboard").dataset.time;  // the charts' x legend, not uPlot's English "Time"
  const pad = (n) => String(n).padStart(2, "0");
  // 24-hour times in the browser's zone, never uPlot's English am/pm.
  const day = (d) => `${d.getMonth() + 1}-${pad(d.getDate())}`;
  const clock = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  function timeAxis(withClock) {
    return {
      // Whole days on the per-day chart: no hourly ticks that would all read the same day.
      ...(withClock ? {} : { incrs: [86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400] }),
      values: (u, splits) => splits.map((v) => {
        const d = new Date(v * 1000);
        return withClock && (d.getHours() || d.getMinutes()) ? `${day(d)} ${clock(d)}` : day(d);
      }),
    };
  }
  const timeValue = (withClock) => (u, v) => {
    if (v === null || v === undefined) return "--";
    const d = new Date(v * 1000);
    return withClock ? `${d.getFullYear()}-${day(d)} ${clock(d)}` : `${d.getFullYear()}-${day(d)}`;
  };

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
    const days = data.days.map((d) => Date.parse(d + "T00:00:00") / 1000);  // local midnight: the label reads that day
    const names = Object.keys(data.series);
    const series = [{ label: TIME, value: timeValue(false) }].concat(names.map((name, i) => ({ label: violationName(name), stroke: PALETTE[i % PALETTE.length], width: 2, points: { size: 6 } })));
    const values = [days].concat(names.map((n) => data.series[n]));
    const width = Math.max(320, $("per-day").clientWidth - 10);
    if (chart) chart.destroy();
    chart = new uPlot({ width, height: 240, series, axes: [timeAxis(false), {}],
                        scales: { x: { time: true, auto: false, range: [days[0] - 86400, days[days.length - 1] + 86400] } } }, values, $("per-day"));
  }

  // Each camera x violation's alert threshold over time, a step line from one change to the next.
  function thresholdHistory(changes) {
    const element = $("threshold-history");
    if (!changes.length) return;
    const pairs = [...new Set(changes.map((c) => `${c.camera} · ${violationName(c.violation)}`))];
    const times = [...new Set(changes.map((c) => Date.parse(c.at) / 1000))].sort((a, b) => a - b);
    const columns = pairs.map(() => times.map(() => null));
    for (const c of changes) {
      const p = pairs.indexOf(`${c.camera} · ${violationName(c.violation)}`);
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
    const series = [{ label: TIME, value: timeValue(true) }].concat(pairs.map((name, i) => ({ label: name, stroke: PALETTE[i % PALETTE.length], width: 2, paths: uPlot.paths.stepped({ align: 1 }), points: { size: 6 } })));
    const width = Math.max(320, element.clientWidth - 10);
    if (thresholdChart) thresholdChart.destroy();
    thresholdChart = new uPlot({ width, height: 200, series, axes: [timeAxis(true), {}], scales: { y: { auto: false, range: [0, 1] } } }, [times].concat(columns), element);
  }

  function thresholdsInForce(rows) {
    $("thresholds").replaceChildren(...rows.map((r) => {
      const tr = document.createElement("tr");
      const score = (v) => (v === null || v === undefined ? "-" : v.toFixed(2));
      for (const value of [r.camera, violationName(r.violation), `${r.confirmed} / ${r.rejected}`, score(r.alert), score(r.auto_confirm)]) {
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
      for (const value of [c.camera, STATES[c.state] || c.state || "-", c.online ? "✔" : "✘", c.last_frame_local || "-", rate, String(c.dropped), String(c.errors)]) {
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
    const precisionRows = (rows, name) => rows.map((r) => [name(r.key), `${r.confirmed} / ${r.reviewed}`, (r.precision * 100).toFixed(0) + "%"]);
    table($("precision-violation"), precisionRows(data.precision_by_violation, violationName));
    table($("precision-camera"), precisionRows(data.precision_by_camera, (key) => key));
    $("r-verified").textContent = data.rechecks.verified;
    $("r-reopened").textContent = data.rechecks.reopened;
    $("r-pending").textContent = data.rechecks.pending;
    $("r-failed").textContent = data.rechecks.failed;
    const store = data.evidence;  // serving/retention.py: disk use and the purge schedule
    $("e-bytes").textContent = (store.bytes / 1048576).toFixed(1) + " MiB";
    $("e-files").textContent = store.files;
    $("e-purged").textContent = `${store.purged_items} · ${(store.purged_bytes / 1048576).toFixed(1)} MiB`;
    $("e-last").textContent = store.last_purge_local;
    $("e-next").textContent = store.next_purge_local;
    thresholdsInForce(data.thresholds.in_force);
    thresholdHistory(data.thresholds.history);
    cameras(data.cameras, previous ? (started - previous.at) / 1000 : 0);
    previous = { cameras: data.cameras, at: started };
    document.body.dataset.loaded = "1";
  }

  // 综合评价 for the dates in the page's address (the form above it reloads the page with them).
  async function evaluation() {
    const query = new URLSearchParams(location.search);
    const asked = new URLSearchParams();
    for (const key of ["since", "until", "deadline_h"]) if (query.get(key)) asked.set(key, query.get(key));
    const response = await fetch("/dashboard/evaluation?" + asked.toString(), { credentials: "same-origin" });
    $("evaluation-error").hidden = response.ok;
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      $("evaluation-error").textContent = typeof body.detail === "string" ? body.detail : `${response.status}`;
      document.body.dataset.evaluated = "error";
      return;
    }
    const report = await response.json();
    const rate = (v) => (v === null || v === undefined ? "-" : (v * 100).toFixed(1) + "%");
    const rows = (list) => list.map((r) => [r.key, r.found, r.confirmed, rate(r.false_alarm_rate),
      r.handled_on_time, rate(r.on_time_rate), r.recheck_passed, r.recheck_reopened]);
    const fillBody = (element, lines) => element.replaceChildren(...lines.map((line) => {
      const tr = document.createElement("tr");
      for (const cell of line) tr.insertCell().textContent = String(cell);
      return tr;
    }));
    fillBody($("eval-grids"), rows(report.grids));
    fillBody($("eval-divisions"), rows(report.divisions));
    fillBody($("eval-reviewers"), report.reviewers.map((r) => [r.reviewer, r.decisions, r.active_hours, r.per_hour]));
    document.body.dataset.evaluated = "1";
  }

  refresh();
  evaluation();
  setInterval(refresh, 15000);
})();
