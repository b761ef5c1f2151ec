// Re-decide a decided case from its page, or from a My history row's own button (a dialog):
// the new decision, why (required), and the version shown; a 409 says someone changed it first.
"use strict";

(function () {
  const form = document.getElementById("redecide");
  if (!form) return;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const result = document.getElementById("redecide-result");
  const dialog = document.getElementById("redecide-dialog");
  if (dialog) {
    // Each history row's button opens the one dialog on its case, at the case's version now.
    for (const button of document.querySelectorAll("button.redecide-open")) {
      button.addEventListener("click", () => {
        form.dataset.case = button.dataset.case;
        form.dataset.version = button.dataset.version;
        form.reset();
        result.textContent = "";
        delete result.dataset.status;
        // A truck load case's row: its load field, on the load said now (kept when left as it is).
        const truck = "load" in button.dataset;
        const load = document.getElementById("redecide-load");
        document.getElementById("redecide-load-field").hidden = !truck;
        load.disabled = !truck;
        load.value = truck ? button.dataset.load : "";
        document.getElementById("redecide-case").textContent = button.dataset.case;
        dialog.returnFocus = button;
        dialog.showModal();
        document.getElementById("redecide-action").focus();
      });
    }
    document.getElementById("redecide-cancel").addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => dialog.returnFocus && dialog.returnFocus.focus());
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    if (!String(data.get("why") || "").trim()) {  // the reason is required: said in the page's language
      result.dataset.status = "422";
      result.textContent = result.dataset.whyNeeded;
      document.getElementById("redecide-why").setAttribute("aria-invalid", "true");
      document.getElementById("redecide-why").focus();
      return;
    }
    const body = { action: data.get("action"), why: data.get("why"), version: Number(form.dataset.version) };
    if (body.action === "reject" && data.get("reason")) body.reason = data.get("reason");
    if (body.action === "correct") body.violation = data.get("violation");
    if (data.get("load_label")) {  // a truck load case's form only
      // A correction carries it only to a kind with the load decision (the server refuses it elsewhere).
      const kind = document.getElementById("redecide-violation").selectedOptions[0];
      if (body.action !== "correct" || (kind && kind.dataset.load)) body.load_label = data.get("load_label");
    }
    const response = await fetch(`/review/cases/${encodeURIComponent(form.dataset.case)}/redecide`, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf }, body: JSON.stringify(body),
    });
    const answer = await response.json().catch(() => ({}));
    if (response.ok) {
      result.dataset.status = "200";
      result.textContent = result.dataset.done;
      location.reload();
      return;
    }
    result.dataset.status = String(response.status);
    const detail = typeof answer.detail === "string" ? answer.detail : JSON.stringify(answer.detail || "");
    result.textContent = response.status === 409 ? `${result.dataset.conflict} (${answer.holder || ""})` : detail;
  });
})();
