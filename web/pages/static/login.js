/* A SameSite=Strict session cookie is not sent when a link from another site (the RIS, an
   e-mail) opens RadDraft, so a signed-in user lands here. Ask from this page (same site, so
   the cookie goes along) whether the session is alive, and if it is, go on at once. */
"use strict";

(async function () {
  const form = document.querySelector('form[action="/login"]');
  if (!form || document.getElementById("login-error")) return;
  try {
    // 200 whether signed in or not: no 401 in the console for a signed-out visitor.
    const response = await fetch("/login/session", { credentials: "same-origin", headers: { "Accept": "application/json" } });
    const state = response.ok ? await response.json() : { signed_in: false };
    if (state.signed_in) {
      const next = form.elements.namedItem("next").value || "/";
      window.location.replace(next.startsWith("/") && !next.startsWith("//") ? next : "/");
    }
  } catch (_error) {
    /* not signed in: stay on the form */
  }
})();
