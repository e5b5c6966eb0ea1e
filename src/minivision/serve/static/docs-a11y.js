// Names the controls Swagger UI (5.x) and ReDoc (2.x) render without an accessible name, for screen
// readers and axe-core's rules. Swagger UI: a parameter's <select> (a boolean or an enum: select-name),
// a request body's <input type="file"> (label) and the empty "copy to clipboard" buttons (button-name).
// ReDoc: its content-type <select>s (select-name), and its sidebar entries, whose aria-label leaves out
// the visible HTTP method (label-content-name-mismatch): their name is then their visible text.
// Both draw these late (when an operation is opened, after "Try it out", after Execute), so a
// MutationObserver names each new one. A control that already has a name is left as it is.
// Served by `minivision serve` beside /docs (src/minivision/serve/docs.py); no inline script needed.
(function () {
  "use strict";

  function named(el) {
    if (el.getAttribute("aria-label") || el.getAttribute("aria-labelledby") || el.getAttribute("title")) {
      return true;
    }
    if (el.labels && el.labels.length) return true;
    return el.tagName === "BUTTON" && el.textContent.trim() !== "";
  }

  function label(el, text) {
    if (text && !named(el)) el.setAttribute("aria-label", text);
  }

  function nameControls(root) {
    root.querySelectorAll("tr[data-param-name] select").forEach(function (el) {
      var row = el.closest("tr[data-param-name]");
      label(el, row.getAttribute("data-param-name"));
    });
    root.querySelectorAll("select").forEach(function (el) {
      var row = el.closest("tr[data-property-name]");
      if (row) label(el, row.getAttribute("data-property-name"));
    });
    root.querySelectorAll('input[type="file"]').forEach(function (el) {
      var row = el.closest("tr[data-property-name], tr[data-param-name]");
      var field = row && (row.getAttribute("data-property-name") || row.getAttribute("data-param-name"));
      label(el, field ? "Request body file: " + field : "Request body file");
    });
    root.querySelectorAll(".copy-to-clipboard button, button.copy-to-clipboard").forEach(function (el) {
      label(el, "Copy to clipboard");
    });
    // ReDoc
    root.querySelectorAll("select.dropdown-select").forEach(function (el) {
      label(el, "Content type");
    });
    root.querySelectorAll('li[role="menuitem"][aria-label]').forEach(function (el) {
      if (el.querySelector(".operation-type")) el.removeAttribute("aria-label");
    });
  }

  function start() {
    nameControls(document);
    var pending = false;
    new MutationObserver(function () {
      if (pending) return;
      pending = true;
      // one pass per burst of changes; setting aria-label is an attribute change, which is not observed
      Promise.resolve().then(function () {
        pending = false;
        nameControls(document);
      });
    }).observe(document.documentElement, {childList: true, subtree: true});
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
