// The case page: the case's boxes drawn over its original frame (no script inline: CSP).
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
})();
