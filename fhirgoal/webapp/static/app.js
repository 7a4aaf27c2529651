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

  function init() {
    document.querySelectorAll("figure.chart").forEach(initChart);
    if (window.performance && performance.mark) performance.mark("fhirgoal-charts-ready");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
