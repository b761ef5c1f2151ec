// Re-decide a decided case from its page (reached from the queue, the audit log or My
// history): the new decision, why, and the version shown; a 409 says someone changed it first.
"use strict";

(function () {
  const form = document.getElementById("redecide");
  if (!form) return;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const result = document.getElementById("redecide-result");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const body = { action: data.get("action"), why: data.get("why"), version: Number(form.dataset.version) };
    if (body.action === "reject" && data.get("reason")) body.reason = data.get("reason");
    if (body.action === "correct") body.violation = data.get("violation");
    const response = await fetch(`/review/cases/${encodeURIComponent(form.dataset.case)}/redecide`, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf }, body: JSON.stringify(body),
    });
    const answer = await response.json().catch(() => ({}));
    if (response.ok) {
      result.textContent = result.dataset.done;
      location.reload();
      return;
    }
    result.dataset.status = String(response.status);
    const detail = typeof answer.detail === "string" ? answer.detail : JSON.stringify(answer.detail || "");
    result.textContent = response.status === 409 ? `${result.dataset.conflict} (${answer.holder || ""})` : detail;
  });
})();
