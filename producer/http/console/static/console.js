// The console's only script (served from /console/static: the page's CSP allows no other).
// Elements with data-live="URL" are refreshed from URL every few seconds while the page is
// visible: the jobs list's rows and a job's status and timeline. Everything else is plain
// HTML forms, so every action works from the keyboard, and without this file.
"use strict";
(function () {
  var PERIOD_MS = 3000;
  function refresh(el) {
    if (document.hidden) return;
    // A person typing or reading a focused control inside it keeps what they see.
    if (el.contains(document.activeElement) && document.activeElement !== document.body) return;
    fetch(el.getAttribute("data-live"), { credentials: "same-origin", headers: { "X-Console-Live": "1" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) el.innerHTML = html; })
      .catch(function () { /* the next tick tries again */ });
  }
  document.addEventListener("DOMContentLoaded", function () {
    var live = document.querySelectorAll("[data-live]");
    if (!live.length) return;
    setInterval(function () { live.forEach(refresh); }, PERIOD_MS);
  });
})();
