// Draws the run report's plots from the JSON in #report-data with the inlined uPlot.
// Sets body[data-rendered] to "ok" when every plot is drawn, "error" on any script error.
(function () {
  "use strict";
  var errors = document.getElementById("errors");
  function fail(message) {
    errors.textContent += message + "\n";
    document.body.dataset.rendered = "error";
  }
  window.addEventListener("error", function (e) { fail(e.message || String(e)); });

  var data = JSON.parse(document.getElementById("report-data").textContent);
  var palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];

  // Run-wide pauses shaded red, each leg's start a dashed line with its number.
  function marks(u) {
    var ctx = u.ctx, top = u.bbox.top, height = u.bbox.height;
    var px = window.devicePixelRatio || 1;
    ctx.save();
    ctx.fillStyle = "rgba(214, 39, 40, 0.15)";
    data.pauses.forEach(function (w) {
      var x0 = u.valToPos(w[0], "x", true), x1 = u.valToPos(w[1], "x", true);
      ctx.fillRect(x0, top, Math.max(px, x1 - x0), height);
    });
    ctx.strokeStyle = "#444";
    ctx.fillStyle = "#222";
    ctx.setLineDash([4 * px, 4 * px]);
    ctx.font = 11 * px + "px sans-serif";
    data.legs.forEach(function (leg) {
      var x = u.valToPos(leg.start, "x", true);
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, top + height);
      ctx.stroke();
      ctx.fillText("leg " + leg.number + (leg.killed ? " (killed)" : ""), x + 3 * px, top + height - 4 * px);
    });
    ctx.restore();
  }

  function series(s, i) {
    var color = s.color || palette[i % palette.length];
    var out = { label: s.label, stroke: color, width: 1.5, scale: s.scale || "y",
                spanGaps: false };
    if (s.bars) {
      out.paths = uPlot.paths.bars({ size: [0.9, 8] });
      out.fill = color;
    } else if (s.stepped) {
      out.paths = uPlot.paths.stepped({ align: 1 });
    }
    if (s.dash) { out.dash = [6, 4]; }
    return out;
  }

  function chart(spec) {
    var el = document.getElementById(spec.id);
    var axes = [{}, { label: spec.unit, scale: "y", size: 60 }];
    var scales = { x: { time: true }, y: { range: function (u, lo, hi) { return [0, hi > 0 ? hi * 1.05 : 1]; } } };
    if (spec.right) {
      axes.push({ label: spec.right, scale: "right", side: 1, grid: { show: false }, size: 50 });
      scales.right = { range: function (u, lo, hi) { return [0, hi > 0 ? hi * 1.2 : 1]; } };
    }
    var opts = {
      width: Math.max(480, el.clientWidth || 960), height: 260,
      scales: scales, axes: axes,
      series: [{ label: "time" }].concat(spec.series.map(series)),
      hooks: { draw: [marks] },
    };
    var columns = [data.times].concat(spec.series.map(function (s) { return data.series[s.key]; }));
    new uPlot(opts, columns, el);
    el.dataset.points = String(data.times.length);
  }

  function bars(id, counts) {
    var el = document.getElementById(id);
    var names = Object.keys(counts);
    if (names.length === 0) {
      el.innerHTML = "<p class='none'>No failed attempts.</p>";
    }
    var most = Math.max.apply(null, names.map(function (n) { return counts[n]; }).concat([1]));
    names.forEach(function (name) {
      var row = document.createElement("div");
      row.className = "bar-row";
      var label = document.createElement("span");
      label.className = "bar-label";
      label.textContent = name;
      var bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = (100 * counts[name] / most) + "%";
      var value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = String(counts[name]);
      row.appendChild(label);
      row.appendChild(bar);
      row.appendChild(value);
      el.appendChild(row);
    });
    el.dataset.points = String(names.length);
  }

  try {
    data.charts.forEach(chart);
    bars("plot-failed-attempts", data.failed_attempts);
    bars("plot-failed-rows", data.failed_rows);
    if (document.body.dataset.rendered !== "error") { document.body.dataset.rendered = "ok"; }
  } catch (e) {
    fail(String(e && e.stack || e));
  }
})();
