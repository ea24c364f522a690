/* Tandem dashboard: live metric charts on a run page (uPlot, vendored in static/vendor/uplot).
 *
 * One chart per metric name, steps on x. The page asks metrics.json for the points
 * written since its cursor every 2 s while the run is active, appends them, and stops
 * after the first answer that says the run has ended (that answer holds the last points).
 */
(function () {
  "use strict";

  var root = document.getElementById("charts");
  if (!root || typeof uPlot === "undefined") return;

  var url = root.dataset.metricsUrl;
  var POLL_MS = 2000;
  var COLORS = ["#2f5bd3", "#1f7a4a", "#b42318", "#9a5b00", "#6b3fa0", "#0e7490", "#be185d", "#4d7c0f"];
  // Most telling metrics first; anything else follows alphabetically.
  var PREFERRED = ["loss", "accuracy", "margin", "eval/loss", "eval/accuracy", "eval/mean_margin",
    "objective/scores", "objective/rlhf_reward", "objective/kl", "policy/entropy", "policy/clipfrac",
    "policy/approxkl", "loss/policy", "loss/value", "response_length"];

  var charts = {}; // name -> {plot, xs, ys, figure}
  window.tandemCharts = charts; // for the browser tests and the curious
  var cursor = 0;
  var stopped = false;

  function rank(name) {
    var i = PREFERRED.indexOf(name);
    return i === -1 ? PREFERRED.length : i;
  }

  function slug(name) {
    return "metric-" + name.replace(/[^a-zA-Z0-9_-]+/g, "-");
  }

  function width(figure) {
    return Math.max(260, Math.floor(figure.clientWidth) - 2);
  }

  function makeChart(name) {
    var figure = document.createElement("figure");
    figure.className = "dash-chart";
    figure.id = slug(name);
    figure.dataset.metric = name;
    figure.setAttribute("aria-label", "Chart of " + name + " by step");
    // Keep charts in a stable, meaningful order as new metric names appear.
    var before = null;
    Array.prototype.some.call(root.querySelectorAll("figure.dash-chart"), function (f) {
      var other = f.dataset.metric;
      if (rank(name) < rank(other) || (rank(name) === rank(other) && name < other)) {
        before = f;
        return true;
      }
      return false;
    });
    root.insertBefore(figure, before);
    var color = COLORS[Object.keys(charts).length % COLORS.length];
    var entry = { xs: [], ys: [], figure: figure };
    entry.plot = new uPlot(
      {
        title: name,
        width: width(figure),
        height: 220,
        scales: { x: { time: false } },
        axes: [
          { label: "step", stroke: "#5b6777", grid: { stroke: "#eef0f4" } },
          { label: name, stroke: "#5b6777", grid: { stroke: "#eef0f4" }, size: 60 },
        ],
        series: [
          { label: "step" },
          { label: name, stroke: color, width: 2, fill: color + "14", points: { size: 5 } },
        ],
        cursor: { drag: { x: false, y: false } },
      },
      [[], []],
      figure
    );
    charts[name] = entry;
    return entry;
  }

  function append(series) {
    Object.keys(series).forEach(function (name) {
      var entry = charts[name] || makeChart(name);
      series[name].forEach(function (point) {
        // Steps arrive in write order; a step logged again (a resumed run) replaces its value.
        var i = entry.xs.lastIndexOf(point[0]);
        if (i !== -1) {
          entry.ys[i] = point[1];
        } else if (!entry.xs.length || point[0] > entry.xs[entry.xs.length - 1]) {
          entry.xs.push(point[0]);
          entry.ys.push(point[1]);
        } else {
          var at = entry.xs.findIndex(function (x) { return x > point[0]; });
          entry.xs.splice(at, 0, point[0]);
          entry.ys.splice(at, 0, point[1]);
        }
      });
      entry.plot.setData([entry.xs.slice(), entry.ys.slice()]);
    });
    var empty = root.querySelector(".dash-charts-empty");
    if (empty) empty.hidden = Object.keys(charts).length > 0;
    root.dataset.chartCount = String(Object.keys(charts).length);
  }

  function fetchOnce() {
    return fetch(url + "?after=" + cursor, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) throw new Error("metrics " + response.status);
        return response.json();
      })
      .then(function (data) {
        cursor = data.cursor;
        append(data.series);
        return data;
      });
  }

  function loop() {
    if (stopped) return;
    fetchOnce()
      .then(function (data) {
        if (data.more) return loop(); // a long run's backlog: keep reading at once
        if (!data.active) {
          stopped = true;
          root.dataset.active = "false";
          return;
        }
        window.setTimeout(loop, POLL_MS);
      })
      .catch(function () {
        window.setTimeout(loop, POLL_MS * 2); // the server restarts, a network blip: try again later
      });
  }

  window.addEventListener("resize", function () {
    Object.keys(charts).forEach(function (name) {
      var entry = charts[name];
      entry.plot.setSize({ width: width(entry.figure), height: 220 });
    });
  });

  loop();
})();
