// The review queue: one keypress per clear case. Cases are leased from the server one
// ahead of the one on screen (its image preloaded), and a decision is held for a few
// seconds before it is sent, so Z can take it back without touching the case system.
// L switches to labelling mode: frames the model was unsure about (active learning), each
// shown with the model's boxes to fix, delete or add and give a detector class; the same
// box keys and drawing as box mode, one save per frame, no case made.
"use strict";

(function () {
  const config = JSON.parse(document.getElementById("review-config").textContent);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (id) => document.getElementById(id);
  const img = $("evidence"), overlay = $("overlay"), root = $("review");
  const SVG = "http://www.w3.org/2000/svg";
  const REASONS = config.reasons;

  const state = {
    queue: [],        // leased cases, in the order shown
    index: 0,         // the one on screen
    pending: null,    // {item, body, timer}: a decision waiting out its undo time
    sending: new Set(), // case numbers whose decision is on its way to the server
    exhausted: false, // the server had no more cases
    menu: null,       // "reason" | "kind" | null
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
    if (params.get("since")) body.since = params.get("since") + "T00:00:00Z";
    if (params.get("until")) body.until = params.get("until") + "T23:59:59Z";
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
    if (fetching || state.exhausted || state.queue.length - state.index >= 2) return fetching;
    fetching = post("/review/next", { ...filters(), skip: held() }).then((answer) => {
      fetching = null;
      if (!answer.case) {
        state.exhausted = true;
        if (!current()) show();  // the queue ran dry while the page waited for this answer
        return;
      }
      state.queue.push(prepare(answer.case));
      if (state.queue.length - 1 === state.index) show();
      return fill();
    }).catch((error) => { fetching = null; toast(config.t.error + ": " + error.message); });
    return fetching;
  }

  function prepare(c) {
    const item = { case: c, boxes: (c.review_boxes || (c.box ? [c.box] : [])).map((b) => b.slice()), note: "" };
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
      if (!state.exhausted) fill();
      else if (!recheck) recheck = setTimeout(() => { recheck = null; state.exhausted = false; fill(); }, 15000);
      return;
    }
    const c = item.case;
    root.dataset.state = "case";
    root.dataset.case = c.case_number;
    $("empty").hidden = true;
    $("frame").hidden = false;
    $("case-number").textContent = c.case_number;
    $("name-zh").textContent = c.name_zh;
    $("name-en").textContent = c.name_en;
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
    list($("timeline"), c.timeline.map((o) => `${o.last_seen.replace("T", " ").slice(0, 19)} · ${o.type} · ${o.score.toFixed(2)}`));
    list($("history"), c.history.map((h) => `${h.at.replace("T", " ").slice(0, 19)} · ${h.actor} · ${h.action}`));
    img.src = c.image_url || "";
    item.loaded.then(() => {
      if (current() !== item) return;
      drawBoxes();
      img.decode().catch(() => null).then(() => requestAnimationFrame(() => {
        if (state.decidedAt !== null && current() === item) {
          window.gwReview.timings.push(performance.now() - state.decidedAt);
          state.decidedAt = null;
        }
        root.dataset.shown = c.case_number;
      }));
    });
    fill();
  }

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

  const decisions = undoWindow(state, (pending, keepalive) => {
    const number = pending.item.case.case_number;
    state.sending.add(number);
    post(`/review/cases/${encodeURIComponent(number)}/decision`, pending.body, keepalive)
      .then(() => { window.gwReview.sent += 1; })
      .catch((error) => {
        window.gwReview.failed += 1;
        toast((error.status === 409 ? config.t.taken : config.t.error) + ` (${number})`);
      })
      .finally(() => state.sending.delete(number));
  }, (pending) => {
    state.decidedAt = null;
    state.queue.splice(state.index, 0, pending.item);
    toast(`${config.t.undone}: ${pending.item.case.case_number}`);
    show();
  });

  function decide(body) {
    const item = current();
    if (!item) return;
    state.decidedAt = performance.now();
    item.note = $("note").value;
    if (JSON.stringify(item.boxes) !== item.original) body.boxes = item.boxes.map((b) => b.map((v) => Math.round(v * 10) / 10));
    if (item.note) body.note = item.note;
    state.queue.splice(state.index, 1);
    decisions.hold({ item, body });
    const label = { confirm: config.t.confirmed, reject: config.t.rejected, correct: config.t.corrected }[body.action];
    toast(`${label} ${item.case.case_number} · ${config.t.press_z}`);
    show();
  }

  // -- menus -----------------------------------------------------------------------------------
  function openMenu(kind) {
    state.menu = kind;
    const menu = $("menu");
    const entries = kind === "reason"
      ? REASONS.map((r, i) => [String(i + 1), config.t[r]])
      : config.kinds.map((k, i) => [String((i + 1) % 10), `${k.name_zh} · ${k.name_en} (${k.matter_code})`]);
    menu.replaceChildren(...entries.map(([key, text]) => {
      const row = document.createElement("div");
      row.append(Object.assign(document.createElement("kbd"), { textContent: key }), " " + text);
      return row;
    }));
    menu.hidden = false;
  }

  function closeMenu() { state.menu = null; $("menu").hidden = true; }

  function menuKey(key) {
    if (!/^[0-9]$/.test(key)) { closeMenu(); return; }
    const n = key === "0" ? 10 : Number(key);
    if (state.menu === "reason" && n <= REASONS.length) decide({ action: "reject", reason: REASONS[n - 1] });
    else if (state.menu === "kind" && n <= config.kinds.length) decide({ action: "correct", violation: config.kinds[n - 1].id });
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
      label.setAttribute("x", b[0] + 4); label.setAttribute("y", Math.max(b[1] - 6, 16 * w / (img.clientWidth || w)));
      label.setAttribute("font-size", 16 * w / (img.clientWidth || w));
      label.setAttribute("class", selected ? "box-label selected" : "box-label");
      label.textContent = item.classes[i];
      return [rect, label];
    }));
    if (item && item.classes) listLabelBoxes(item);
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
  const ACTIONS = {
    y: () => decide({ action: "confirm" }),
    n: () => openMenu("reason"),
    c: () => openMenu("kind"),
    j: () => move(1), ArrowDown: () => move(1),
    k: () => move(-1), ArrowUp: () => move(-1),
    b: () => setBoxMode(!state.boxMode),
    z: () => decisions.undo(),
    m: () => $("note").focus(),
    "?": () => { $("help").hidden = !$("help").hidden; },
    Escape: () => { closeMenu(); setBoxMode(false); $("help").hidden = true; },
    l: () => setMode("labelling"),
  };

  // -- labelling mode ----------------------------------------------------------------------------
  const LABEL_ACTIONS = {
    y: () => finishLabelling("save"), Enter: () => finishLabelling("save"),
    s: () => finishLabelling("skip"),
    z: () => labellings.undo(),
    c: openClassMenu,
    "[": () => stepClass(-1), "]": () => stepClass(1),
    "?": ACTIONS["?"],
    Escape: () => { closeMenu(); $("help").hidden = true; },
    l: () => setMode("review"),
  };

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
    if (lab.fetching || lab.exhausted || lab.queue.length - lab.index >= 2) return lab.fetching;
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
    $("labelling-time").textContent = v.taken_at.replace("T", " ").slice(0, 19);
    $("labelling-model").textContent = v.model_version || "-";
    img.src = v.image_url;
    item.loaded.then(() => {
      if (current() !== item) return;
      drawBoxes();
      img.decode().catch(() => null).then(() => requestAnimationFrame(() => {
        if (current() === item) root.dataset.labelShown = String(v.id);
      }));
    });
    fillLabelling();
  }

  function listLabelBoxes(item) {
    const rows = item.boxes.map((b, i) => {
      const row = Object.assign(document.createElement("li"), {
        textContent: `${item.classes[i]} · ${b.map((v) => Math.round(v)).join(", ")}` });
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
      row.append(Object.assign(document.createElement("kbd"), { textContent: CLASS_KEYS[i] }), " " + name);
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
    const keys = state.mode === "labelling" ? LABEL_ACTIONS : ACTIONS;
    const action = keys[event.key] || keys[event.key.toLowerCase()];
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

  window.addEventListener("resize", drawBoxes);
  // Leases time out (review_lease_s) so a closed tab frees its cases; an open one renews them.
  setInterval(() => {
    const numbers = held();
    if (numbers.length) post("/review/leases", { cases: numbers }).catch(() => null);
    const items = labelHeld();
    if (items.length) post("/review/labelling/leases", { items }).catch(() => null);
  }, Math.max(1000, config.lease_ms / 3));
  fill();
})();
