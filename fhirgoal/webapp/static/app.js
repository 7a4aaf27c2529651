// fhirgoal clinician app: progressive enhancement only (every page works without this file).
// Charts: hovering or focusing a point writes its date and value to the chart's readout line;
// the arrow keys, Home and End move between points (a roving tabindex, WAI-ARIA APG).
(function () {
  "use strict";

  function initChart(figure) {
    var points = Array.prototype.slice.call(figure.querySelectorAll(".pt"));
    var readout = figure.querySelector(".readout");
    if (!points.length || !readout) return;
    function show(point) {
      points.forEach(function (p) { p.classList.toggle("current", p === point); });
      readout.textContent = point.getAttribute("aria-label");
    }
    function move(from, to) {
      from.setAttribute("tabindex", "-1");
      to.setAttribute("tabindex", "0");
      to.focus();
    }
    points.forEach(function (point, index) {
      point.addEventListener("focus", function () { show(point); });
      point.addEventListener("mouseenter", function () { show(point); });
      point.addEventListener("keydown", function (event) {
        var next = null;
        if (event.key === "ArrowRight" || event.key === "ArrowDown") next = points[Math.min(index + 1, points.length - 1)];
        else if (event.key === "ArrowLeft" || event.key === "ArrowUp") next = points[Math.max(index - 1, 0)];
        else if (event.key === "Home") next = points[0];
        else if (event.key === "End") next = points[points.length - 1];
        if (next) { event.preventDefault(); move(point, next); }
      });
    });
  }

  // Visual-analogue lines (ORS/SRS as administered): a 10 cm line per item; a mark anywhere on
  // it gives low..high to the item's decimals. A WAI-ARIA slider (APG slider pattern): arrows
  // move by one step (0.1), Page Up/Down by a tenth of the line, Home/End to the ends. The text
  // field beside it stays the form's value (typed, or written by the line) and feeds it back.
  function initScale(field) {
    var input = field.querySelector(".vas-input");
    var label = field.querySelector("label");
    if (!input || !label) return;
    var low = parseFloat(input.getAttribute("data-min"));
    var high = parseFloat(input.getAttribute("data-max"));
    var decimals = parseInt(input.getAttribute("data-decimals"), 10) || 0;
    var step = Math.pow(10, -decimals);
    var line = document.createElement("div");
    line.className = "vas-line";
    line.setAttribute("role", "slider");
    line.setAttribute("tabindex", "0");
    line.setAttribute("aria-labelledby", label.id);
    line.setAttribute("aria-valuemin", String(low));
    line.setAttribute("aria-valuemax", String(high));
    line.setAttribute("aria-orientation", "horizontal");
    var mark = document.createElement("span");
    mark.className = "vas-mark";
    line.appendChild(mark);
    var ends = document.createElement("div");
    ends.className = "vas-ends";
    ends.setAttribute("aria-hidden", "true");
    [low, high].forEach(function (end) {
      var span = document.createElement("span");
      span.textContent = String(end);
      ends.appendChild(span);
    });
    var wrap = document.createElement("div");
    wrap.className = "vas";
    wrap.appendChild(line);
    wrap.appendChild(ends);
    label.parentNode.insertBefore(wrap, label.nextSibling);
    field.classList.add("vas-ready");

    function round(value) {
      var clamped = Math.min(high, Math.max(low, value));
      return Math.round(clamped / step) * step;
    }
    function text(value) { return value.toFixed(decimals); }
    function current() {
      var value = parseFloat(input.value.replace(",", "."));
      return isNaN(value) ? null : value;
    }
    function show() {
      var value = current();
      if (value === null || value < low || value > high) {
        line.setAttribute("aria-valuenow", String(low));
        line.setAttribute("aria-valuetext", value === null ? "not marked yet" : input.value + " (outside " + low + " to " + high + ")");
        mark.hidden = true;
        return;
      }
      line.setAttribute("aria-valuenow", text(value));
      line.setAttribute("aria-valuetext", text(value) + " out of " + high);
      mark.hidden = false;
      mark.style.left = ((value - low) / (high - low) * 100) + "%";
    }
    function set(value) {
      input.value = text(round(value));
      show();
    }
    line.addEventListener("keydown", function (event) {
      var value = current();
      var base = value === null ? low : value;
      var page = (high - low) / 10;
      var keys = {
        ArrowRight: base + step, ArrowUp: base + step, ArrowLeft: base - step, ArrowDown: base - step,
        PageUp: base + page, PageDown: base - page, Home: low, End: high
      };
      if (!(event.key in keys)) return;
      event.preventDefault();
      set(value === null && event.key.indexOf("Arrow") === 0 ? low : keys[event.key]);
    });
    function fromPointer(event) {
      var box = line.getBoundingClientRect();
      set(low + (event.clientX - box.left) / box.width * (high - low));
    }
    line.addEventListener("pointerdown", function (event) {
      event.preventDefault();
      line.focus();
      if (line.setPointerCapture) line.setPointerCapture(event.pointerId);
      fromPointer(event);
    });
    line.addEventListener("pointermove", function (event) {
      if (line.hasPointerCapture && line.hasPointerCapture(event.pointerId)) fromPointer(event);
    });
    input.addEventListener("input", show);
    show();
  }

  function init() {
    document.querySelectorAll("figure.chart").forEach(initChart);
    document.querySelectorAll(".vas-field").forEach(initScale);
    if (window.performance && performance.mark) performance.mark("fhirgoal-charts-ready");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
