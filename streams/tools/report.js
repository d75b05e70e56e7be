// gridstream report: draws the fleet figures on load and one entity's figure on demand.
// Data: #fleet-figures (plotly figures made in Python), #entity-index ([key, kind, id, readings,
// events] per entity) and one JSON script element per entity (id e-N), parsed only when that
// entity is shown. The entity shown is the one named in the URL (#entity=KEY).
(function () {
  "use strict";
  var SEVERITIES = ["info", "warning", "critical"];
  var COLOURS = { info: "#e3b505", warning: "#f07b05", critical: "#d62728" };
  var BANDS = ["31,119,180", "148,103,189", "44,160,44", "140,86,75"];
  var CONFIG = { responsive: true, displaylogo: false };
  var index = JSON.parse(document.getElementById("entity-index").textContent);
  var byKey = new Map(index.map(function (row, i) { return [row[0], i]; }));

  function horizonLabel(h) {
    return h < 3600 ? h / 60 + " min" : h / 3600 + " h";
  }

  function forecastTraces(d, type, times) {
    var out = [];
    d.f.forEach(function (f, j) {
      var x = times(f.t), rgb = BANDS[j % BANDS.length], group = "h" + f.h;
      var visible = j === 0 ? true : "legendonly", name = horizonLabel(f.h) + " ahead";
      out.push({ type: type, x: x, y: f.p10, mode: "lines", line: { width: 0 },
        legendgroup: group, showlegend: false, hoverinfo: "skip", visible: visible,
        name: "p10 " + name });
      out.push({ type: type, x: x, y: f.p90, mode: "lines", line: { width: 0 },
        fill: "tonexty", fillcolor: "rgba(" + rgb + ",0.22)", legendgroup: group,
        visible: visible, name: "p10-p90 " + name, customdata: f.p10,
        hovertemplate: "p10 %{customdata} - p90 %{y}<extra>" + name + "</extra>" });
      out.push({ type: type, x: x, y: f.p50, mode: "lines", legendgroup: group,
        line: { color: "rgb(" + rgb + ")", width: 1.2, dash: "dot" }, visible: visible,
        name: "p50 " + name, hovertemplate: "p50 %{y}<extra>" + name + "</extra>" });
    });
    return out;
  }

  function eventTraces(d, times) {
    if (!d.ev) return [];
    return SEVERITIES.map(function (sev, rank) {
      var pick = [];
      d.ev.sev.forEach(function (r, i) { if (r === rank) pick.push(i); });
      var take = function (a) { return pick.map(function (i) { return a[i]; }); };
      return { type: "scatter", mode: "markers", name: sev + " (" + pick.length + ")",
        x: times(take(d.ev.t)), y: take(d.ev.y), text: take(d.ev.txt),
        marker: { color: COLOURS[sev], size: 6 + 3 * rank, line: { color: "#000", width: 0.6 } },
        hovertemplate: "%{text}<extra>%{x}</extra>" };
    }).filter(function (t) { return t.x.length > 0; });
  }

  function labelShapes(d) {
    var shapes = [], notes = [];
    // a window of one reading is drawn at least 1/250 of the time axis wide, so it shows
    var least = d.t.length ? 4 * (d.t[d.t.length - 1] - d.t[0]) : 0;
    d.lab.forEach(function (w, i) {
      var hit = w[3] === 1, pad = Math.max(0, (least - (w[1] - w[0])) / 2);
      shapes.push({ type: "rect", xref: "x", yref: "paper", x0: w[0] - pad, x1: w[1] + pad,
        y0: 0, y1: 1,
        layer: "below", line: { width: 0 },
        fillcolor: hit ? "rgba(44,160,44,0.16)" : "rgba(214,39,40,0.13)" });
      notes.push({ xref: "x", yref: "paper", x: (w[0] + w[1]) / 2, y: 1 + 0.045 * (i % 2),
        yanchor: "bottom",
        showarrow: false, font: { size: 10, color: hit ? "#2c7a2c" : "#b21f1f" },
        text: (hit ? "hit: " : "missed: ") + w[2] });
    });
    return { shapes: shapes, annotations: notes };
  }

  function cumulative(deltas) {  // times are stored as differences: back to seconds from t0
    var out = new Array(deltas.length), sum = 0;
    for (var i = 0; i < deltas.length; i++) { sum += deltas[i]; out[i] = sum; }
    return out;
  }

  function entity(i) {
    var d = JSON.parse(document.getElementById("e-" + i).textContent);
    d.t = cumulative(d.t);
    d.f.forEach(function (f) { f.t = cumulative(f.t); });
    if (d.ev) d.ev.t = cumulative(d.ev.t);
    return d;
  }

  function show(key) {
    var i = byKey.get(key);
    if (i === undefined) return Promise.resolve();
    var d = entity(i);
    var type = d.t.length > 5000 ? "scattergl" : "scatter";
    var times = function (a) { return a.map(function (s) { return d.t0 + 1000 * s; }); };
    var actual = { type: type, x: times(d.t), y: d.y, mode: "lines", name: "actual",
      line: { color: "#222", width: 1.1 }, hovertemplate: "actual %{y}<extra>%{x}</extra>" };
    var traces = forecastTraces(d, type, times).concat([actual], eventTraces(d, times));
    var marks = labelShapes(d);
    var layout = { height: 480, margin: { t: 56, b: 40, l: 60, r: 20 }, hovermode: "closest",
      title: { text: d.kind + " " + d.id, x: 0.01, font: { size: 15 } },
      xaxis: { type: "date", title: "time (UTC)", rangeslider: { thickness: 0.08 } },
      yaxis: { title: d.kind === "meter" ? "kW" : "MW" }, legend: { orientation: "h", y: -0.35 },
      shapes: marks.shapes, annotations: marks.annotations };
    var select = document.getElementById("entity-select");
    select.value = key;
    var el = document.getElementById("entity-plot");
    return Plotly.react(el, traces, layout, CONFIG).then(function () {
      el.dataset.entity = key;
      el.dataset.traces = String(traces.length);
    });
  }

  function keyFromHash() {
    var m = /^#entity=(.+)$/.exec(window.location.hash);
    return m ? decodeURIComponent(m[1]) : null;
  }

  function drawFleet() {
    var figures = JSON.parse(document.getElementById("fleet-figures").textContent);
    return Promise.all(Object.keys(figures).map(function (id) {
      var fig = figures[id];
      return Plotly.newPlot(id, fig.data, fig.layout, CONFIG).then(function (el) {
        if (id === "fig-timeline") {
          el.on("plotly_click", function (ev) {
            window.location.hash = "entity=" + encodeURIComponent(ev.points[0].customdata);
          });
        }
      });
    }));
  }

  document.getElementById("entity-select").addEventListener("change", function (ev) {
    window.location.hash = "entity=" + encodeURIComponent(ev.target.value);
  });
  window.addEventListener("hashchange", function () {
    var key = keyFromHash();
    if (key) show(key).then(function () {
      document.getElementById("entity").scrollIntoView();
    });
  });
  var first = keyFromHash() || document.body.dataset.firstEntity || (index[0] || [])[0];
  Promise.all([drawFleet(), first ? show(first) : Promise.resolve()]).then(function () {
    document.body.dataset.rendered = "true";
  }, function (err) {
    document.body.dataset.rendered = "error";
    throw err;
  });
})();
