// alignloop feedback: the admin console's forms. Each form.js-post is sent with fetch, carrying the
// page's CSRF token in the X-CSRF-Token header (what every cookie-authenticated write needs); the
// server's one-line answer goes to the live region, so screen readers announce it.
"use strict";
(function () {
  const main = document.getElementById("console");
  const status = document.getElementById("console-status");
  if (!main || !status) return;

  function say(message, kind) {
    status.textContent = message;
    status.className = kind || "";
  }

  const carried = sessionStorage.getItem("console-message");
  if (carried) { say(carried, "ok"); sessionStorage.removeItem("console-message"); }

  document.querySelectorAll("form.js-post").forEach(function (form) {
    form.addEventListener("submit", async function (ev) {
      ev.preventDefault();
      const button = form.querySelector('button[type="submit"]');
      if (button) button.disabled = true;
      say("Working…", "");
      try {
        const resp = await fetch(form.getAttribute("action"), {
          method: "POST",
          credentials: "same-origin",
          headers: { "X-CSRF-Token": main.dataset.csrf },
          body: new FormData(form),
        });
        let data = {};
        try { data = await resp.json(); } catch (e) { data = {}; }
        if (resp.ok) {
          if (data.location) {
            sessionStorage.setItem("console-message", data.message);
            window.location.assign(data.location);
          } else {
            say(data.message, "ok");
          }
          return;
        }
        say(typeof data.detail === "string" ? data.detail : "The server answered " + resp.status + ".", "error");
        status.focus();
      } catch (e) {
        say("Could not reach the server; try again.", "error");
      } finally {
        if (button) button.disabled = false;
      }
    });
  });
  status.setAttribute("tabindex", "-1");
  main.dataset.ready = "1";
})();
