// The review queue: one keypress per clear case. Cases are leased from the server one
// ahead of the one on screen (its image preloaded), and a decision is held for a few
// seconds before it is sent, so Z can take it back without touching the case system.
// L switches to labelling mode: frames the model was unsure about (active learning), each
// shown with the model's boxes to fix, delete or add and give a detector class; the same
// box keys and drawing as box mode, one save per frame, no case made.
// The frame is fitted to the stage (scaled up too) and can be zoomed and panned; a case's
// frames across the event's life step with ←/→. Keys are the city's (settings review_hotkeys).
"use strict";

(function () {
  const config = JSON.parse(document.getElementById("review-config").textContent);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (id) => document.getElementById(id);
  const img = $("evidence"), overlay = $("overlay"), root = $("review");
  const SVG = "http://www.w3.org/2000/svg";
  const REASONS = config.reasons;
  const HOTKEYS = config.hotkeys;  // action -> key
  const CLASS_NAMES = config.class_names || {};  // detector class -> the page's word for it
  const className = (name) => CLASS_NAMES[name] || name;
  const view = { zoom: 1, x: 0, y: 0, fit: 1 };  // zoom over the fitted size, pan in screen px

  const state = {
    queue: [],        // leased cases, in the order shown
    index: 0,         // the one on screen
    pending: null,    // {item, body, timer}: a decision waiting out its undo time
    sending: new Set(), // case numbers whose decision is on its way to the server
    exhausted: false, // the server had no more cases
    menu: null,       // "reason" | "kind" | "load" | null
    boxMode: false,
    selected: 0,
    drag: null,
    decidedAt: null,  // performance.now() of the last decision's keypress
    mode: "review",   // "review" | "labelling"
  };
  // Labelling mode's own queue: items leased like cases, with their boxes' classes.
  const lab = { queue: [], index: 0, exhausted: false, classes: [], lastClass: null, fetching: null, recheck: null,
                sending: new Set(),  // ids whose save or skip is on its way: not to be leased again
                pending: null };     // {item, action, body, timer}: a save or skip waiting out its undo time
  window.gwReview = { timings: [], sent: 0, failed: 0, labelled: 0 };  // read by tests and the benchmark

  function filters() {
    const params = new URLSearchParams(location.search);
    const body = {};
    for (const key of ["order", "camera", "violation", "grid"]) if (params.get(key)) body[key] = params.get(key);
    if (params.get("min_score")) body.min_score = Number(params.get("min_score"));
    // Dates are local days (the service's zone, e.g. +08:00), as the times on the page are.
    if (params.get("since")) body.since = params.get("since") + "T00:00:00" + config.day_offset;
    if (params.get("until")) body.until = params.get("until") + "T23:59:59" + config.day_offset;
    return body;
  }

  async function post(url, body, keepalive) {
    const response = await fetch(url, {
      method: "POST", keepalive: !!keepalive, credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    });
    if (response.status === 401) location.assign("/login");
    if (!response.ok) throw Object.assign(new Error(await response.text()), { status: response.status });
    return response.json();
  }

  // -- the queue ---------------------------------------------------------------------------
  function held() {
    const numbers = state.queue.map((item) => item.case.case_number);
    if (state.pending) numbers.push(state.pending.item.case.case_number);
    return numbers.concat([...state.sending]);
  }

  let fetching = null;
  function fill() {
    // Keep the case on screen and one more leased and loaded.
    if (fetching || state.exhausted || state.queue.length - state.index >= 2 || away()) return fetching;
    fetching = post("/review/next", { ...filters(), skip: held() }).then((answer) => {
      fetching = null;
      if (!answer.case) {
        state.exhausted = true;
        if (!current()) show();  // the queue ran dry while the page waited for this answer
        return;
      }
      state.queue.push(prepare(answer.case));
      if (givenBackWhileAway()) return;  // the tab went out of sight while this case was on its way
      if (state.queue.length - 1 === state.index) show();
      return fill();
    }).catch((error) => { fetching = null; toast(config.t.error + ": " + error.message); });
    return fetching;
  }

  function prepare(c) {
    const item = { case: c, boxes: (c.review_boxes || (c.box ? [c.box] : [])).map((b) => b.slice()), note: "",
                   load: null };  // a truck case: the load the reviewer said (T, then its number)
    item.original = JSON.stringify(item.boxes);
    item.image = new Image();
    item.loaded = c.image_url ? new Promise((resolve) => {
      item.image.onload = item.image.onerror = resolve;
      item.image.src = c.image_url;
    }) : Promise.resolve();
    if (c.crop_url) new Image().src = c.crop_url;
    return item;
  }

  // The item on screen: a case, or a frame to label in labelling mode.
  function current() { return state.mode === "labelling" ? lab.queue[lab.index] || null : state.queue[state.index] || null; }

  // An empty queue asks again now and then: new cases arrive, other reviewers' leases run out.
  let recheck = null;

  function show() {
    if (state.mode !== "review") return;
    const item = current();
    state.selected = 0;
    setBoxMode(false);
    closeMenu();
    if (!item) {
      root.dataset.state = state.exhausted ? "empty" : "loading";
      $("empty").hidden = !state.exhausted;
      $("frame").hidden = true;
      // Nothing on screen: the details beside it must not be the case just decided.
      $("case-details").hidden = true;
      delete root.dataset.case;
      delete root.dataset.shown;
      refreshCounts();
      if (!state.exhausted) fill();
      else if (!recheck) recheck = setTimeout(() => { recheck = null; state.exhausted = false; fill(); }, 15000);
      return;
    }
    const c = item.case;
    root.dataset.state = "case";
    root.dataset.case = c.case_number;
    $("empty").hidden = true;
    $("frame").hidden = false;
    $("case-details").hidden = false;
    $("case-number").textContent = c.case_number;
    $("kind-name").textContent = config.lang === "zh-CN" ? c.name_zh : `${c.name_en} · ${c.name_zh}`;
    $("matter-code").textContent = c.matter_code;
    $("camera").textContent = c.camera;
    $("grid").textContent = c.grid;
    $("address").textContent = c.address || "-";
    $("dwell").textContent = `${Math.round(c.dwell_s / 60)} ${config.t.unit_min} (${Math.round(c.dwell_s)} ${config.t.unit_s})`;
    $("score").textContent = c.score.toFixed(2);
    $("model").textContent = c.model_version || "-";
    $("note").value = item.note;
    $("crop").src = c.crop_url || "";
    $("crop").hidden = !c.crop_url;
    $("first-seen").textContent = c.first_seen_local;
    list($("timeline"), c.timeline.map((o) => `${o.at} · ${o.type_label} · ${o.score.toFixed(2)}` + stageWords(c, o)));
    showLoad(item);
    list($("history"), c.audit.map((h) => `${h.at} · ${h.actor} · ${h.action}` +
      (h.changes.length ? ": " + h.changes.map((ch) => `${ch.field} ${ch.before} → ${ch.after}`).join("; ") : "")));
    showContext(item);
    item.frame = bestFrame(item);  // the best frame, the one the boxes belong to
    showFrame(item);
    overlay.removeAttribute("hidden");
    delete root.dataset.frame;
    showImage(item, c.image_url || "", () => {
      if (state.decidedAt !== null) {
        window.gwReview.timings.push(performance.now() - state.decidedAt);
        state.decidedAt = null;
      }
      root.dataset.shown = c.case_number;
    });
    fill();
    refreshCounts();
  }

  // `onShown` runs once the image is decoded and painted with its boxes, and only while the item
  // is still the one on screen (a reviewer may have moved on before the image arrived).
  function showImage(item, url, onShown) {
    img.src = url;
    resetView();
    item.loaded.then(() => {
      if (current() !== item) return;
      layout();
      drawBoxes();
      img.decode().catch(() => null).then(() => requestAnimationFrame(() => {
        if (current() === item) onShown();
      }));
    });
  }

  // The event over time (its frames, ←/→), the case a duplicate points to, the same place's recent cases.
  function showContext(item) {
    const c = item.case;
    const frames = c.frames || [];
    item.frameCount = frames.length;
    // In camera time order, each with its moment (opened, best, update, closed) and local time.
    $("frames").replaceChildren(...frames.map((f, i) => {
      const figure = document.createElement("figure");
      figure.className = "thumb";
      figure.dataset.index = String(i);
      figure.dataset.moments = f.moments.join(",");
      const thumb = Object.assign(document.createElement("img"), { src: f.url, alt: `${f.label} ${f.at}`, title: `${f.label} · ${f.at}` });
      const caption = document.createElement("figcaption");
      caption.append(Object.assign(document.createElement("b"), { textContent: f.label }), document.createElement("br"), f.at.split(" ")[1] || f.at);
      figure.append(thumb, caption);
      return figure;
    }));
    $("frames-block").hidden = frames.length < 2;
    const links = (c.duplicate_of ? [["dup", c.duplicate_of]] : []).concat((c.nearby || []).map((n) => ["near", n]));
    $("related").replaceChildren(...links.map(([kind, n]) => {
      const li = document.createElement("li");
      const a = Object.assign(document.createElement("a"), { href: n.url, textContent: n.case_number, target: "_blank" });
      li.append(kind === "dup" ? config.t.duplicate_of + " " : "", a, ` · ${n.name} · ${config.t["status_" + n.review_status] || n.review_status} · ${n.first_seen}`);
      return li;
    }));
    $("related-block").hidden = !links.length;
  }

  // The truck load decision: what the load stage said (or why the truck is here) and what the
  // reviewer says it was, sent with the decision. Shown on truck load cases only.
  // A case of another violation may be corrected to a truck load one (a kind with `load`):
  // the load said then goes with the correction.
  const LOAD_KINDS = config.kinds.some((k) => k.load);
  const loadChoices = (c) => (c.load ? c.load.choices : config.load_choices);

  function loadWord(c, label) {
    const choice = loadChoices(c).find((ch) => ch.id === label);
    return choice ? choice.label : label;
  }

  function stageWords(c, o) {
    if (!o.stage_label) return "";
    return ` · ${loadWord(c, o.stage_label)}` + (o.stage_score != null ? ` ${o.stage_score.toFixed(2)}` : "");
  }

  function showLoad(item) {
    const load = item.case.load;
    $("load-block").hidden = !load && !item.load;
    if (!load && !item.load) { delete root.dataset.load; return; }
    $("load-stage").textContent = load ? load.text : config.t.load_with_correction;
    $("load-review").textContent = item.load ? loadWord(item.case, item.load) : config.t.load_not_said;
    root.dataset.load = item.load || "";
  }

  // The best frame (the case's photo, the one the boxes belong to); the last one if none is marked.
  function bestFrame(item) {
    const i = (item.case.frames || []).findIndex((f) => f.best);
    return i >= 0 ? i : Math.max(0, item.frameCount - 1);
  }

  function showFrame(item) {
    const frames = item.case.frames || [];
    const frame = frames[item.frame];
    const best = !frame || frame.best || item.frame === bestFrame(item);
    for (const thumb of $("frames").children) thumb.classList.toggle("selected", thumb.dataset.index === String(item.frame));
    $("frame-now").textContent = frame && frames.length > 1
      ? `${frame.label} · ${frame.at} (${config.t.frame_of.replace("{i}", item.frame + 1).replace("{n}", frames.length)})` : "";
    root.dataset.moment = frame ? frame.moments.join(",") : "";
    return best;
  }

  function stepFrame(step) {
    const item = current();
    if (state.mode !== "review" || !item || item.frameCount < 2) return;
    item.frame = Math.max(0, Math.min(item.frameCount - 1, item.frame + step));
    const best = showFrame(item);
    img.src = best ? item.case.image_url : item.case.frames[item.frame].url;
    overlay.toggleAttribute("hidden", !best);  // the boxes were drawn on the best frame only
    root.dataset.frame = String(item.frame);
  }

  // -- counts: this filter's pending cases, those others hold, my decisions today ------------------
  let counting = null;
  function refreshCounts() {
    if (counting) return;
    counting = post("/review/counts", filters()).then((n) => {
      counting = null;
      $("count-pending").textContent = n.pending;
      $("count-mine").textContent = n.mine_today;
      const others = config.t.leased_others.replace("{n}", n.leased_to_others);
      $("count-others").textContent = n.leased_to_others ? others : "";
      $("empty-others").textContent = n.leased_to_others ? others : "";
      root.dataset.pending = String(n.pending);
      root.dataset.leasedToOthers = String(n.leased_to_others);
      root.dataset.mineToday = String(n.mine_today);
    }).catch(() => { counting = null; });
  }

  // -- fitting, zoom and pan -----------------------------------------------------------------
  // The frame fills the stage at the largest scale that shows all of it (up as well as down);
  // zoom and pan are a CSS transform over that, so boxes and drawing stay in image pixels.
  function layout() {
    const w = img.naturalWidth, h = img.naturalHeight;
    const stage = $("stage");
    if (!w || !h || !stage.clientWidth) return;
    view.fit = Math.min(stage.clientWidth / w, stage.clientHeight / h);
    $("frame").style.width = `${Math.floor(w * view.fit)}px`;
    $("frame").style.height = `${Math.floor(h * view.fit)}px`;
    applyView();
  }

  function applyView() {
    $("frame").style.transform = `translate(${view.x}px, ${view.y}px) scale(${view.zoom})`;
    root.dataset.zoom = view.zoom.toFixed(2);
  }

  function resetView() { view.zoom = 1; view.x = 0; view.y = 0; applyView(); }

  function zoomBy(factor, cx, cy) {
    // Keep the point under (cx, cy) (stage px from its centre) where it is.
    const zoom = Math.max(1, Math.min(16, view.zoom * factor));
    const k = zoom / view.zoom;
    view.x = (cx || 0) - ((cx || 0) - view.x) * k;
    view.y = (cy || 0) - ((cy || 0) - view.y) * k;
    view.zoom = zoom;
    if (zoom === 1) { view.x = 0; view.y = 0; }
    applyView();
  }

  function pan(dx, dy) {
    if (view.zoom === 1) return;
    view.x += dx; view.y += dy;
    applyView();
  }

  $("stage").addEventListener("wheel", (event) => {
    if (!current()) return;
    event.preventDefault();
    const rect = $("stage").getBoundingClientRect();
    zoomBy(event.deltaY < 0 ? 1.25 : 0.8, event.clientX - rect.left - rect.width / 2, event.clientY - rect.top - rect.height / 2);
  }, { passive: false });

  let panning = null;
  $("stage").addEventListener("pointerdown", (event) => {
    if (state.boxMode || view.zoom === 1) return;
    panning = { x: event.clientX, y: event.clientY };
    $("stage").setPointerCapture(event.pointerId);
  });
  $("stage").addEventListener("pointermove", (event) => {
    if (!panning) return;
    pan(event.clientX - panning.x, event.clientY - panning.y);
    panning = { x: event.clientX, y: event.clientY };
  });
  $("stage").addEventListener("pointerup", () => { panning = null; });

  function list(element, lines) {
    element.replaceChildren(...lines.map((line) => Object.assign(document.createElement("li"), { textContent: line })));
  }

  // -- decisions and undo --------------------------------------------------------------------
  // A decision (or a labelling save/skip) waits out config.undo_ms before it is sent, so Z can
  // take it back; the next decision, the timer or leaving the page sends it.
  function undoWindow(owner, send, restore) {
    function flush(keepalive) {
      const pending = owner.pending;
      if (!pending) return;
      clearTimeout(pending.timer);
      owner.pending = null;
      send(pending, keepalive);
    }
    function hold(pending) {
      flush();
      owner.pending = { ...pending, timer: setTimeout(flush, config.undo_ms) };
    }
    function undo() {
      const pending = owner.pending;
      if (!pending) return;
      clearTimeout(pending.timer);
      owner.pending = null;
      restore(pending);
    }
    window.addEventListener("pagehide", () => flush(true));
    return { hold, undo };
  }

  // Decisions already sent: the last DECIDE.undo_depth of this page, each undoable for
  // DECIDE.undo_window_ms by the server (audited as review.undo), newest last.
  const DECIDE = JSON.parse(document.getElementById("decision-config").textContent);
  const sent = [];
  const decisions = undoWindow(state, (pending, keepalive) => {
    const number = pending.item.case.case_number;
    state.sending.add(number);
    post(`/review/cases/${encodeURIComponent(number)}/decision`, pending.body, keepalive)
      .then((answer) => {
        window.gwReview.sent += 1;
        sent.push({ item: pending.item, version: answer.version, at: Date.now() });
        if (sent.length > DECIDE.undo_depth) sent.shift();
      })
      .catch((error) => {
        window.gwReview.failed += 1;
        if (error.status === 429) {  // not lost: back in front of the reviewer
          state.queue.splice(state.index, 0, pending.item);
          show();
        }
        // 409: another tab, another reviewer or the case system moved it on; this page already has.
        const said = { 409: DECIDE.t.conflict, 429: DECIDE.t.throttled }[error.status] || config.t.error;
        toast(`${said} (${number})`);
        root.dataset.conflict = error.status === 409 ? number : "";
      })
      .finally(() => state.sending.delete(number));
  }, (pending) => {
    state.decidedAt = null;
    state.queue.splice(state.index, 0, pending.item);
    toast(`${config.t.undone}: ${pending.item.case.case_number}`);
    show();
  });

  // Z with nothing waiting: take back the newest decision already sent (while the server allows).
  function undoSent() {
    const last = sent[sent.length - 1];
    if (!last || Date.now() - last.at > DECIDE.undo_window_ms) { toast(DECIDE.t.nothing_to_undo); return; }
    sent.pop();
    const number = last.item.case.case_number;
    post(`/review/cases/${encodeURIComponent(number)}/undo`, { version: last.version }).then((answer) => {
      last.item.case.version = answer.version;
      last.item.case.review_status = answer.review_status;
      if (answer.review_status === "pending") state.queue.splice(state.index, 0, last.item);
      toast(`${config.t.undone}: ${number}`);
      show();
    }).catch((error) => toast(`${error.status === 409 ? DECIDE.t.conflict : config.t.error} (${number})`));
  }

  function decide(body) {
    const item = current();
    if (!item) return;
    if (body.action === "correct" && body.violation === item.case.violation) {
      closeMenu();  // the same kind is no correction: the server refuses it too
      toast(DECIDE.t.same_kind);
      return;
    }
    body.version = item.case.version;
    state.decidedAt = performance.now();
    item.note = $("note").value;
    if (JSON.stringify(item.boxes) !== item.original) body.boxes = item.boxes.map((b) => b.map((v) => Math.round(v * 10) / 10));
    if (item.note) body.note = item.note;
    if (item.load) {
      // With a correction the load goes only to a kind that has the load decision (else 422).
      const kind = body.action === "correct" ? config.kinds.find((k) => k.id === body.violation) : null;
      if (body.action === "correct" ? kind && kind.load : item.case.load) body.load_label = item.load;
    }
    state.queue.splice(state.index, 1);
    decisions.hold({ item, body });
    const label = { confirm: config.t.confirmed, reject: config.t.rejected, correct: config.t.corrected }[body.action];
    toast(`${label} ${item.case.case_number} · ${config.t.press_z}`);
    show();
  }

  // -- menus -----------------------------------------------------------------------------------
  // More than ten kinds: the kind's number is typed in full (12, then Enter where 1 could
  // still become 12); up to ten, one key as before (0 is the tenth).
  const MANY_KINDS = config.kinds.length > 10;
  let typed = "";
  function openMenu(kind) {
    state.menu = kind;
    typed = "";
    const menu = $("menu");
    const kindName = (k) => (config.lang === "zh-CN" ? k.name_zh : `${k.name_en} · ${k.name_zh}`);
    const entries = kind === "reason"
      ? REASONS.map((r, i) => [String(i + 1), config.t[r]])
      : kind === "load" ? loadChoices(current().case).map((ch, i) => [String(i + 1), ch.label])
      : config.kinds.map((k, i) => [String(MANY_KINDS ? i + 1 : (i + 1) % 10), `${kindName(k)} (${k.matter_code})`]);
    menu.replaceChildren(...entries.map(([key, text]) => {
      const row = document.createElement("div");
      row.append(Object.assign(document.createElement("kbd"), { textContent: key }), " " + text);
      return row;
    }));
    menu.hidden = false;
  }

  function closeMenu() { state.menu = null; $("menu").hidden = true; }

  function menuKey(key) {
    if (state.menu === "kind" && MANY_KINDS) { kindDigits(key); return; }
    if (!/^[0-9]$/.test(key)) { closeMenu(); return; }
    const n = key === "0" ? 10 : Number(key);
    if (state.menu === "load") { pickLoad(n); return; }
    if (state.menu === "reason" && n <= REASONS.length) decide({ action: "reject", reason: REASONS[n - 1] });
    else if (state.menu === "kind" && n <= config.kinds.length) decide({ action: "correct", violation: config.kinds[n - 1].id });
    else closeMenu();
  }

  function pickLoad(n) {
    const item = current();
    const choices = item ? loadChoices(item.case) : [];
    if (n <= choices.length) { item.load = choices[n - 1].id; showLoad(item); }
    closeMenu();
  }

  function kindDigits(key) {
    const count = config.kinds.length;
    if (key === "Backspace") { typed = typed.slice(0, -1); markTyped(); return; }
    if (key === "Enter" && typed) { pickKind(Number(typed)); return; }
    if (!/^[0-9]$/.test(key) || (!typed && key === "0")) { closeMenu(); return; }
    typed += key;
    const n = Number(typed);
    if (n > count) { closeMenu(); return; }
    // Decided as soon as no longer number starts with these digits.
    if (n * 10 > count) pickKind(n); else markTyped();
  }

  function markTyped() {
    $("menu").dataset.typed = typed;
    for (const row of $("menu").children) row.classList.toggle("typed", !!typed && row.firstChild.textContent.startsWith(typed));
  }

  function pickKind(n) {
    if (n >= 1 && n <= config.kinds.length) decide({ action: "correct", violation: config.kinds[n - 1].id });
    else closeMenu();
  }

  // -- boxes -----------------------------------------------------------------------------------
  function drawBoxes() {
    const item = current();
    const w = img.naturalWidth || 1, h = img.naturalHeight || 1;
    overlay.setAttribute("viewBox", `0 0 ${w} ${h}`);
    overlay.replaceChildren(...(item ? item.boxes : []).flatMap((b, i) => {
      const selected = state.boxMode && i === state.selected;
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("x", b[0]); rect.setAttribute("y", b[1]);
      rect.setAttribute("width", b[2] - b[0]); rect.setAttribute("height", b[3] - b[1]);
      rect.setAttribute("class", selected ? "box selected" : "box");
      rect.setAttribute("vector-effect", "non-scaling-stroke");
      if (!item.classes) return [rect];
      const label = document.createElementNS(SVG, "text");
      label.setAttribute("font-size", 16 * w / (img.clientWidth || w));
      label.setAttribute("class", selected ? "box-label selected" : "box-label");
      label.dataset.class = item.classes[i];
      label.textContent = className(item.classes[i]);
      return [rect, label];
    }));
    if (item && item.classes) { placeLabels(item); listLabelBoxes(item); }
  }

  // Class labels on a busy frame: each goes above its box, else inside its top, else below,
  // stepping down a line until it clears the labels already placed.
  function placeLabels(item) {
    const w = img.naturalWidth || 1, h = img.naturalHeight || 1;
    const size = 16 * w / (img.clientWidth || w), line = size * 1.25;
    const placed = [];
    const hits = (r) => placed.some((p) => r.x < p.x + p.w && p.x < r.x + r.w && r.y < p.y + p.h && p.y < r.y + r.h);
    [...overlay.querySelectorAll("text")].forEach((label, i) => {
      const b = item.boxes[i];
      let width = size * 0.6 * label.textContent.length;
      try { width = label.getComputedTextLength() || width; } catch (e) { /* not rendered yet */ }
      const x = Math.max(0, Math.min(b[0] + 4, w - width));
      const starts = [b[1] - line, b[1] + 2, b[3] + 2];
      let spot = null;
      for (const top of starts) {
        for (let y = Math.max(0, top), n = 0; n < 40 && y + line <= h; y += line, n++) {
          const r = { x, y, w: width + 4, h: line };
          if (!hits(r)) { spot = r; break; }
        }
        if (spot) break;
      }
      spot = spot || { x, y: Math.max(0, b[1] - line), w: width + 4, h: line };
      placed.push(spot);
      label.setAttribute("x", spot.x);
      label.setAttribute("y", spot.y + size);  // text y is its baseline
    });
  }

  // A box added (A, or drawn): in labelling mode it gets the class last given.
  function addBox(item, box) {
    item.boxes.push(clamp(box));
    if (item.classes) item.classes.push(lab.lastClass || lab.classes[0]);
    state.selected = item.boxes.length - 1;
  }

  function setBoxMode(on) {
    state.boxMode = on;
    $("mode").hidden = !on;
    root.classList.toggle("boxing", on);
    drawBoxes();
  }

  function clamp(b) {
    const w = img.naturalWidth, h = img.naturalHeight, min = 4;
    b[0] = Math.max(0, Math.min(b[0], w - min)); b[1] = Math.max(0, Math.min(b[1], h - min));
    b[2] = Math.max(b[0] + min, Math.min(b[2], w)); b[3] = Math.max(b[1] + min, Math.min(b[3], h));
    return b;
  }

  function boxKey(event) {
    const item = current();
    const step = Math.max(2, Math.round(Math.min(img.naturalWidth, img.naturalHeight) * 0.02));
    const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
    const box = item.boxes[state.selected];
    if (event.key in moves && box) {
      const [dx, dy] = moves[event.key];
      if (event.shiftKey) { box[2] += dx; box[3] += dy; } else { box[0] += dx; box[2] += dx; box[1] += dy; box[3] += dy; }
      clamp(box);
    } else if (event.key === "a" || event.key === "A") {
      const w = img.naturalWidth, h = img.naturalHeight;
      addBox(item, [w * 0.4, h * 0.4, w * 0.6, h * 0.6]);
    } else if (event.key === "Tab") {
      state.selected = item.boxes.length ? (state.selected + 1) % item.boxes.length : 0;
    } else if (event.key === "x" || event.key === "X" || event.key === "Delete" || event.key === "Backspace") {
      item.boxes.splice(state.selected, 1);
      if (item.classes) item.classes.splice(state.selected, 1);
      state.selected = Math.max(0, state.selected - 1);
    } else {
      return false;
    }
    drawBoxes();
    return true;
  }

  function imagePoint(event) {
    const rect = img.getBoundingClientRect();
    return [(event.clientX - rect.left) * img.naturalWidth / rect.width,
            (event.clientY - rect.top) * img.naturalHeight / rect.height];
  }

  overlay.addEventListener("pointerdown", (event) => {
    if (!state.boxMode || !current()) return;
    state.drag = imagePoint(event);
    overlay.setPointerCapture(event.pointerId);
  });
  overlay.addEventListener("pointerup", (event) => {
    if (!state.drag) return;
    const [x0, y0] = state.drag, [x1, y1] = imagePoint(event);
    state.drag = null;
    if (Math.abs(x1 - x0) < 4 || Math.abs(y1 - y0) < 4) return;
    addBox(current(), [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)]);
    drawBoxes();
  });

  // -- keys ------------------------------------------------------------------------------------
  // A key as the maps hold it: letters in lower case, named keys as the browser names them.
  const norm = (key) => (key.length === 1 ? key.toLowerCase() : key);
  function keyMap(actions) {
    const map = {};
    for (const [action, run] of Object.entries(actions)) if (HOTKEYS[action]) map[norm(HOTKEYS[action])] = run;
    return map;
  }
  const VIEW_ACTIONS = {
    zoom_in: () => zoomBy(1.25), zoom_out: () => zoomBy(0.8),
    fit: resetView, reset_zoom: resetView,
  };
  // "=" is + without Shift on most keyboards: zoom in there too while zoom_in is "+", and let a
  // city's own map take "=" for something else (its keys come after, so they win).
  const PLUS_WITHOUT_SHIFT = HOTKEYS.zoom_in === "+" ? { "=": () => zoomBy(1.25) } : {};
  const ACTIONS = {
    ...PLUS_WITHOUT_SHIFT,
    ...keyMap({
      confirm: () => decide({ action: "confirm" }),
      reject: () => openMenu("reason"),
      correct: () => openMenu("kind"),
      next: () => move(1), previous: () => move(-1),
      box: () => setBoxMode(!state.boxMode),
      undo: () => (state.pending ? decisions.undo() : undoSent()),
      note: () => $("note").focus(),
      help: () => { $("help").hidden = !$("help").hidden; },
      labelling: () => setMode("labelling"),
      frame_previous: () => stepFrame(-1), frame_next: () => stepFrame(1),
      duplicates: () => rejectDuplicates(),
      load: () => { const item = current(); if (item && (item.case.load || LOAD_KINDS)) openMenu("load"); },
      ...VIEW_ACTIONS,
    }),
    ArrowDown: () => move(1), ArrowUp: () => move(-1),
    Escape: () => { closeMenu(); setBoxMode(false); $("help").hidden = true; },
  };

  // -- labelling mode ----------------------------------------------------------------------------
  const LABEL_ACTIONS = {
    ...PLUS_WITHOUT_SHIFT,
    s: () => finishLabelling("skip"),
    ...keyMap({
      confirm: () => finishLabelling("save"),
      undo: () => labellings.undo(),
      correct: openClassMenu,
      help: () => { $("help").hidden = !$("help").hidden; },
      labelling: () => setMode("review"),
      ...VIEW_ACTIONS,
    }),
    Enter: () => finishLabelling("save"),
    "[": () => stepClass(-1), "]": () => stepClass(1),
    Escape: () => { closeMenu(); $("help").hidden = true; },
  };

  // D: every other open case of this camera, kind and place rejected as a duplicate of this one.
  function rejectDuplicates() {
    const item = current();
    if (!item) return;
    const number = item.case.case_number;
    post(`/review/cases/${encodeURIComponent(number)}/duplicates`, {}).then((answer) => {
      const gone = new Set(answer.rejected);
      const before = state.queue[state.index];
      state.queue = state.queue.filter((q) => !gone.has(q.case.case_number));
      state.index = Math.max(0, state.queue.indexOf(before));
      window.gwReview.duplicates = (window.gwReview.duplicates || 0) + gone.size;
      toast(`${config.t.duplicates_rejected}: ${gone.size}`);
      fill();
      refreshCounts();
    }).catch((error) => toast(config.t.error + ": " + error.message));
  }

  function setMode(mode) {
    state.mode = mode;
    root.dataset.mode = mode;
    closeMenu();
    const labelling = mode === "labelling";
    $("labelling-toggle").setAttribute("aria-pressed", String(labelling));
    $("case-details").hidden = labelling;
    $("labelling-details").hidden = !labelling;
    $("empty").hidden = true;
    $("labelling-empty").hidden = true;
    if (labelling) showLabelling(); else show();
  }

  $("labelling-toggle").addEventListener("click", (event) => {
    event.currentTarget.blur();
    setMode(state.mode === "labelling" ? "review" : "labelling");
  });

  function labelHeld() {
    return lab.queue.map((item) => item.label.id).concat([...lab.sending], lab.pending ? [lab.pending.item.label.id] : []);
  }

  function fillLabelling() {
    if (lab.fetching || lab.exhausted || lab.queue.length - lab.index >= 2 || away()) return lab.fetching;
    // The queue's camera filter applies here too.
    lab.fetching = post("/review/labelling/next", { skip: labelHeld(), camera: filters().camera }).then((answer) => {
      lab.fetching = null;
      lab.classes = answer.classes;
      if (!answer.item) {
        lab.exhausted = true;
        if (!current()) showLabelling();
        return;
      }
      lab.queue.push(prepareLabelling(answer.item));
      if (givenBackWhileAway()) return;
      if (lab.queue.length - 1 === lab.index) showLabelling();
      return fillLabelling();
    }).catch((error) => { lab.fetching = null; toast(config.t.error + ": " + error.message); });
    return lab.fetching;
  }

  function prepareLabelling(view) {
    // The model's detections are the starting boxes: fixing them is faster than drawing.
    const start = view.boxes || view.detections.map((d) => ({ class_name: d.class_name, box: d.box }));
    const item = { label: view, boxes: start.map((b) => b.box.slice()), classes: start.map((b) => b.class_name) };
    item.image = new Image();
    item.loaded = new Promise((resolve) => {
      item.image.onload = item.image.onerror = resolve;
      item.image.src = view.image_url;
    });
    return item;
  }

  function showLabelling() {
    if (state.mode !== "labelling") return;
    const item = current();
    state.selected = 0;
    closeMenu();
    setBoxMode(true);  // labelling is box work: the box keys and drawing are always on
    if (!item) {
      root.dataset.state = lab.exhausted ? "empty" : "loading";
      $("labelling-empty").hidden = !lab.exhausted;
      $("frame").hidden = true;
      if (!lab.exhausted) fillLabelling();
      else if (!lab.recheck) lab.recheck = setTimeout(() => { lab.recheck = null; lab.exhausted = false; fillLabelling(); }, 15000);
      return;
    }
    const v = item.label;
    root.dataset.state = "labelling";
    $("labelling-empty").hidden = true;
    $("frame").hidden = false;
    $("labelling-id").textContent = "#" + v.id;
    $("labelling-reasons").textContent = v.reasons.map((r) => config.t["reason_" + r] || r).join(" · ");
    $("labelling-camera").textContent = v.camera;
    $("labelling-time").textContent = v.taken_at_local || v.taken_at.replace("T", " ").slice(0, 19);
    $("labelling-model").textContent = v.model_version || "-";
    overlay.removeAttribute("hidden");
    showImage(item, v.image_url, () => { root.dataset.labelShown = String(v.id); });
    fillLabelling();
  }

  function listLabelBoxes(item) {
    const rows = item.boxes.map((b, i) => {
      const row = Object.assign(document.createElement("li"), {
        textContent: `${className(item.classes[i])} · ${b.map((v) => Math.round(v)).join(", ")}` });
      if (i === state.selected) row.className = "selected";
      return row;
    });
    $("labelling-boxes").replaceChildren(...rows);
  }

  function setClass(name) {
    const item = current();
    if (!item || !item.boxes.length || !name) return;
    item.classes[state.selected] = name;
    lab.lastClass = name;
    drawBoxes();
  }

  function stepClass(step) {
    const item = current();
    if (!item || !item.boxes.length) return;
    const at = lab.classes.indexOf(item.classes[state.selected]);
    setClass(lab.classes[(at + step + lab.classes.length) % lab.classes.length]);
  }

  // C, then 1-9 and 0 for the first ten classes, a-z for the next; [ and ] reach them all.
  const CLASS_KEYS = "1234567890abcdefghijklmnopqrstuvwxyz";
  function openClassMenu() {
    if (!current() || !current().boxes.length) return;
    state.menu = "class";
    const menu = $("menu");
    menu.replaceChildren(...lab.classes.slice(0, CLASS_KEYS.length).map((name, i) => {
      const row = document.createElement("div");
      row.append(Object.assign(document.createElement("kbd"), { textContent: CLASS_KEYS[i] }), " " + className(name));
      return row;
    }));
    menu.hidden = false;
  }

  function classMenuKey(key) {
    const at = CLASS_KEYS.indexOf(key.toLowerCase());
    closeMenu();
    if (key.length === 1 && at >= 0 && at < lab.classes.length) setClass(lab.classes[at]);
  }

  function finishLabelling(action) {
    const item = current();
    if (!item) return;
    const id = item.label.id;
    const body = action === "save" ? {
      boxes: item.boxes.map((b, i) => ({ class_name: item.classes[i], box: b.map((v) => Math.round(v * 10) / 10) })),
    } : {};
    lab.queue.splice(lab.index, 1);
    labellings.hold({ item, action, body });
    toast(`${action === "save" ? config.t.saved : config.t.skipped} #${id} · ${config.t.press_z}`);
    showLabelling();
  }

  const labellings = undoWindow(lab, (pending, keepalive) => {
    const id = pending.item.label.id;
    lab.sending.add(id);
    post(`/review/labelling/${id}/${pending.action}`, pending.body, keepalive)
      .then(() => { window.gwReview.labelled += 1; })
      .catch((error) => {
        window.gwReview.failed += 1;
        toast((error.status === 409 ? config.t.labelling_taken : config.t.error) + ` (#${id})`);
      })
      .finally(() => lab.sending.delete(id));
  }, (pending) => {
    lab.queue.splice(lab.index, 0, pending.item);  // back on screen, boxes as they were left
    toast(`${config.t.undone}: #${pending.item.label.id}`);
    showLabelling();
  });

  function move(step) {
    const next = state.index + step;
    if (next < 0 || next > state.queue.length) return;
    state.index = next;
    show();
  }

  document.addEventListener("keydown", (event) => {
    if (event.target === $("note")) {
      if (event.key === "Enter" || event.key === "Escape") { event.preventDefault(); $("note").blur(); }
      return;
    }
    if (event.target.closest && event.target.closest("form")) return;  // typing in the filters
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (state.menu === "class") { event.preventDefault(); classMenuKey(event.key); return; }
    if (state.menu) { event.preventDefault(); menuKey(event.key); return; }
    if (state.boxMode && current() && boxKey(event)) { event.preventDefault(); return; }
    // Shift+arrows pan a zoomed frame (outside box mode, where they resize a box).
    const pans = { ArrowLeft: [60, 0], ArrowRight: [-60, 0], ArrowUp: [0, 60], ArrowDown: [0, -60] };
    if (event.shiftKey && event.key in pans) { event.preventDefault(); pan(...pans[event.key]); return; }
    const keys = state.mode === "labelling" ? LABEL_ACTIONS : ACTIONS;
    const action = keys[event.key] || keys[norm(event.key)];
    if (action) { event.preventDefault(); action(); }
  });

  let toastTimer = null;
  function toast(text) {
    const element = $("toast");
    element.textContent = text;
    element.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { element.hidden = true; }, Math.max(config.undo_ms, 2500));
  }

  window.addEventListener("resize", () => { layout(); drawBoxes(); });
  img.addEventListener("load", layout);

  // A hidden or closed page gives its leases back at once (a beacon survives the page), so
  // other reviewers are not told "no pending cases" while this tab sits on them. Cases with a
  // decision on its way keep theirs: the decision ends it. Back on screen, the queue is leased anew.
  function releaseAll() {
    const busy = new Set([...state.sending].concat(state.pending ? [state.pending.item.case.case_number] : []));
    const cases = state.queue.map((item) => item.case.case_number).filter((n) => !busy.has(n));
    const labBusy = new Set([...lab.sending].concat(lab.pending ? [lab.pending.item.label.id] : []));
    const items = lab.queue.map((item) => item.label.id).filter((id) => !labBusy.has(id));
    if (!cases.length && !items.length) return false;
    const form = new URLSearchParams({ csrf_token: csrf });
    for (const n of cases) form.append("cases", n);
    for (const id of items) form.append("items", String(id));
    return navigator.sendBeacon("/review/leases/release", form);
  }
  let released = false;
  // A hidden page leases nothing: no prefetch, no renewal (which would take back what it just
  // gave), and a case that arrives after the tab went away goes straight back.
  function away() { return document.visibilityState === "hidden"; }
  function giveBack() { released = releaseAll() || released; }
  function givenBackWhileAway() {
    if (!away()) return false;
    giveBack();
    return true;
  }
  window.addEventListener("pagehide", giveBack);
  document.addEventListener("visibilitychange", () => {
    if (givenBackWhileAway()) return;
    const labelling = state.mode === "labelling";
    if (!released) {
      // Nothing was given back: carry on. A page with nothing on screen asks again now, since an
      // empty queue's recheck found the page hidden and leased nothing.
      const onScreen = root.dataset.state === (labelling ? "labelling" : "case");
      if (!onScreen) { if (labelling) showLabelling(); else show(); } else if (labelling) fillLabelling(); else fill();
      return;
    }
    released = false;
    state.queue = []; state.index = 0; state.exhausted = false;
    lab.queue = []; lab.index = 0; lab.exhausted = false;
    if (labelling) showLabelling(); else show();
  });
  // Leases time out (review_lease_s) so a closed tab frees its cases; an open one renews them.
  function renew() {
    if (away()) return;
    const numbers = held();
    if (numbers.length) post("/review/leases", { cases: numbers }).catch(() => null);
    const items = labelHeld();
    if (items.length) post("/review/labelling/leases", { items }).catch(() => null);
  }
  setInterval(renew, Math.max(1000, config.lease_ms / 3));
  // The page this one replaced gave its leases back as it went (a language switch, new
  // filters): take back, soon, those of them this page holds now.
  setTimeout(renew, 1500);
  setInterval(() => { if (state.mode === "review" && document.visibilityState === "visible") refreshCounts(); }, 5000);
  fill();
})();
