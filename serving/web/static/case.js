// The case page: the case's boxes drawn over its original frame, and ←/→ stepping through the
// event's frames (the strip) in that frame's place (no script inline: CSP).
"use strict";

(function () {
  const img = document.getElementById("case-frame");
  const overlay = document.getElementById("case-overlay");
  if (!img || !overlay) return;
  const SVG = "http://www.w3.org/2000/svg";
  function draw() {
    overlay.setAttribute("viewBox", `0 0 ${img.naturalWidth || 1} ${img.naturalHeight || 1}`);
    overlay.replaceChildren(...JSON.parse(img.dataset.boxes || "[]").map((b) => {
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("x", b[0]); rect.setAttribute("y", b[1]);
      rect.setAttribute("width", b[2] - b[0]); rect.setAttribute("height", b[3] - b[1]);
      rect.setAttribute("class", "box");
      rect.setAttribute("vector-effect", "non-scaling-stroke");
      return rect;
    }));
    document.body.dataset.boxes = String(overlay.children.length);
  }
  if (img.complete && img.naturalWidth) draw(); else img.addEventListener("load", draw);

  const strip = document.getElementById("frames");
  if (!strip) return;
  const frames = Array.from(strip.children);
  const photo = img.getAttribute("src");  // the best frame, the one the boxes belong to
  const now = document.getElementById("frame-now");
  let at = Math.max(0, frames.findIndex((f) => f.dataset.best));
  function show() {
    const frame = frames[at];
    const best = Boolean(frame.dataset.best);
    img.src = best ? photo : frame.dataset.url;
    overlay.toggleAttribute("hidden", !best);
    frames.forEach((f, i) => f.classList.toggle("selected", i === at));
    const caption = frame.querySelector("figcaption").innerText.replace("\n", " · ");
    now.textContent = `${caption} (${now.dataset.of.replace("{i}", at + 1).replace("{n}", frames.length)})`;
    document.body.dataset.frame = String(at);
    document.body.dataset.moment = frame.dataset.moments;
  }
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.altKey || event.metaKey || event.shiftKey) return;
    if (event.target.closest("input, select, textarea")) return;  // the re-decide form keeps its keys
    const step = { ArrowLeft: -1, ArrowRight: 1 }[event.key];
    if (!step) return;
    event.preventDefault();
    at = Math.max(0, Math.min(frames.length - 1, at + step));
    show();
  });
})();
