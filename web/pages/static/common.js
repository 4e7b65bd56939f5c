/* RadDraft pages: the API helper every page uses (session cookie + CSRF header), and a toast. */
"use strict";

window.RadDraft = (function () {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.getAttribute("content") : "";

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  /** POST JSON to the API as the signed-in user; throws ApiError with the server's reason. */
  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf, "Accept": "application/json" },
      body: JSON.stringify(body || {}),
    });
    let data = null;
    try { data = await response.json(); } catch (_e) { data = null; }
    if (!response.ok) {
      let detail = data && data.detail ? data.detail : response.statusText;
      if (Array.isArray(detail)) detail = detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
      throw new ApiError(response.status, String(detail));
    }
    return data;
  }

  async function getJson(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } });
    if (response.redirected && new URL(response.url).pathname === "/login") {
      throw new ApiError(401, "Your session ended; sign in again.");
    }
    if (!response.ok) throw new ApiError(response.status, response.statusText);
    return response.json();
  }

  let toastTimer = null;
  function toast(message, kind) {
    const box = document.getElementById("toast");
    if (!box) return;
    box.textContent = message;
    box.className = "toast show" + (kind ? " toast-" + kind : "");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { box.className = "toast"; }, 4000);
  }

  /** Explain an API refusal in words a radiologist can act on. */
  function explain(error) {
    if (error.status === 409) return "The report changed since this page was loaded: " + error.message + " Reload the page.";
    if (error.status === 403) return "Not allowed: " + error.message;
    if (error.status === 401) return "Your session ended; sign in again.";
    return error.message || "Something went wrong.";
  }

  /** Whether a key event comes from a place where typing must not trigger shortcuts. */
  function typing(event) {
    const t = event.target;
    return t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName));
  }

  return { post, getJson, toast, explain, typing, ApiError };
})();
