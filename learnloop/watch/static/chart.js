/* learnloop's small SVG chart: lines (numeric or date/category x), bars (grouped or stacked), markers.
   drawChart(element, spec) with spec = {type: "line"|"bars", series: [{name, points: [[x, y], ...], dashed}],
   x: [category labels] (bars), markers: [{x, label, kind}], height, x_label, y_label (axis titles, with units)}.
   Every point and bar has a tooltip (its series, x and value); one y scale per chart. */
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = ["#4f46e5", "#059669", "#d97706", "#db2777", "#0891b2", "#7c3aed", "#65a30d", "#dc2626"];

  function el(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function fmt(v) {
    if (v === null || v === undefined || isNaN(v)) return "";
    var a = Math.abs(v);
    if (a !== 0 && (a < 0.001 || a >= 1e5)) return v.toExponential(1);
    return String(Math.round(v * 1000) / 1000);
  }
  function niceTicks(lo, hi, n) {
    if (lo === hi) { lo -= 1; hi += 1; }
    var step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n)));
    var err = (hi - lo) / n / step;
    step *= err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1;
    var out = [];
    for (var t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(t);
    return out;
  }

  function drawChart(host, spec) {
    host.innerHTML = "";
    var series = (spec.series || []).filter(function (s) { return s.points && s.points.some(function (p) { return p[1] !== null && p[1] !== undefined; }); });
    if (!series.length) {
      var p = document.createElement("div"); p.className = "empty"; p.textContent = spec.empty || "No data yet.";
      host.appendChild(p); return;
    }
    var W = Math.max(host.clientWidth || 600, 260), H = spec.height || 220;
    var m = {l: spec.y_label ? 66 : 52, r: 14, t: 10, b: spec.x_label ? 42 : 28};
    var svg = el("svg", {width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img"}, host);
    var iw = W - m.l - m.r, ih = H - m.t - m.b;
    var categorical = spec.type === "bars" || series.some(function (s) { return typeof s.points[0][0] === "string"; });
    var cats = [];
    if (categorical) {
      var seen = {};
      (spec.x || []).forEach(function (c) { if (!seen[c]) { seen[c] = 1; cats.push(c); } });
      series.forEach(function (s) { s.points.forEach(function (p) { if (!seen[p[0]]) { seen[p[0]] = 1; cats.push(p[0]); } }); });
      (spec.markers || []).forEach(function (mk) { if (!seen[mk.x]) { seen[mk.x] = 1; cats.push(mk.x); } });
      if (!spec.x) cats.sort();
    }
    var xs = [], ys = [];
    series.forEach(function (s) { s.points.forEach(function (p) { if (p[1] !== null) { ys.push(p[1]); xs.push(p[0]); } }); });
    var stacked = spec.type === "bars" && spec.stacked;
    if (stacked) {
      ys = cats.map(function (c) { return series.reduce(function (a, s) { var p = s.points.find(function (q) { return q[0] === c; }); return a + (p && p[1] ? p[1] : 0); }, 0); });
    }
    var ylo = spec.type === "bars" ? 0 : Math.min.apply(null, ys), yhi = Math.max.apply(null, ys);
    if (ylo === yhi) { var half = Math.abs(ylo) * 0.1 || 0.5; ylo -= half; yhi += half; }
    var pad = (yhi - ylo) * 0.06; if (spec.type !== "bars") ylo -= pad; yhi += pad;
    var ticks = niceTicks(ylo, yhi, 4);
    var Y = function (v) { return m.t + ih - (v - ylo) / (yhi - ylo) * ih; };
    var X, band = 0;
    if (categorical) {
      band = iw / Math.max(1, cats.length);
      X = function (c) { return m.l + band * (cats.indexOf(c) + 0.5); };
    } else {
      var xlo = Math.min.apply(null, xs), xhi = Math.max.apply(null, xs); if (xlo === xhi) { xlo -= 1; xhi += 1; }
      X = function (v) { return m.l + (v - xlo) / (xhi - xlo) * iw; };
    }
    var g = el("g", {"font-size": "11", fill: "#6b7280"}, svg);
    ticks.forEach(function (t) {
      el("line", {x1: m.l, x2: W - m.r, y1: Y(t), y2: Y(t), stroke: "#eef0f3"}, g);
      var tx = el("text", {x: m.l - 6, y: Y(t) + 4, "text-anchor": "end"}, g); tx.textContent = fmt(t);
    });
    var xt = categorical ? cats : niceTicks(Math.min.apply(null, xs), Math.max.apply(null, xs), 6);
    var every = Math.max(1, Math.ceil(xt.length / Math.max(2, Math.floor(iw / 80))));
    xt.forEach(function (t, i) {
      if (i % every) return;
      var x = X(t); if (x < m.l - 1 || x > W - m.r + 1) return;
      var tx = el("text", {x: x, y: m.t + ih + 16, "text-anchor": "middle"}, g); tx.textContent = categorical ? String(t).slice(5) || t : fmt(t);
      if (categorical && String(t).length < 6) tx.textContent = t;
    });
    el("line", {x1: m.l, x2: W - m.r, y1: m.t + ih, y2: m.t + ih, stroke: "#cbd5e1"}, svg);
    if (spec.y_label) {
      var yt = el("text", {"class": "axis-title", x: 0, y: 0, "text-anchor": "middle",
        transform: "translate(12," + (m.t + ih / 2) + ") rotate(-90)"}, svg);
      yt.textContent = spec.y_label;
    }
    if (spec.x_label) {
      var xl = el("text", {"class": "axis-title", x: m.l + iw / 2, y: H - 4, "text-anchor": "middle"}, svg);
      xl.textContent = spec.x_label;
    }
    var yname = spec.y_label ? spec.y_label + " " : "";
    if (spec.type === "bars") {
      var base = cats.map(function () { return 0; });
      var bw = Math.min(stacked ? band * 0.7 : band * 0.8 / series.length, 44);
      var groupW = stacked ? bw : bw * series.length;
      series.forEach(function (s, si) {
        var color = COLORS[si % COLORS.length];
        s.points.forEach(function (p) {
          var ci = cats.indexOf(p[0]); if (ci < 0 || !p[1]) return;
          var x = m.l + band * ci + (band - groupW) / 2 + (stacked ? 0 : bw * si);
          var y0 = stacked ? base[ci] : 0, y1 = y0 + p[1];
          var r = el("rect", {x: x, y: Y(y1), width: Math.max(1, bw - 1), height: Math.max(0.5, Y(y0) - Y(y1)), fill: color, rx: 2}, svg);
          el("title", {}, r).textContent = s.name + " · " + p[0] + ": " + yname + fmt(p[1]);
          if (stacked) base[ci] = y1;
        });
      });
    } else {
      series.forEach(function (s, si) {
        var color = s.color || COLORS[si % COLORS.length], d = "", pen = false;
        s.points.forEach(function (p) {
          if (p[1] === null || p[1] === undefined) { pen = false; return; }
          d += (pen ? "L" : "M") + X(p[0]).toFixed(1) + "," + Y(p[1]).toFixed(1); pen = true;
        });
        el("path", {d: d, fill: "none", stroke: color, "stroke-width": 2, "stroke-dasharray": s.dashed ? "5 4" : "none", "stroke-linejoin": "round"}, svg);
        // Every point has a tooltip; past 60 points the dots are invisible hover targets on the line.
        var many = s.points.length > 60;
        s.points.forEach(function (p) {
          if (p[1] === null || p[1] === undefined) return;
          var c = el("circle", {cx: X(p[0]), cy: Y(p[1]), r: many ? 4 : 3, fill: color, "fill-opacity": many ? 0 : 1, "class": "pt"}, svg);
          el("title", {}, c).textContent = s.name + " · " + (spec.x_label ? spec.x_label + " " : "") + p[0] + ": " + yname + fmt(p[1]);
        });
      });
    }
    var stacks = {};
    (spec.markers || []).forEach(function (mk) {
      var x = X(mk.x); if (isNaN(x)) return;
      var row = stacks[mk.x] = (stacks[mk.x] || 0) + 1;  // markers on one day: labels one under another
      var color = mk.kind === "rollback" ? "#dc2626" : "#059669";
      el("line", {x1: x, x2: x, y1: m.t, y2: m.t + ih, stroke: color, "stroke-dasharray": "3 3", "stroke-width": 1.5}, svg);
      var t = el("text", {x: x + 4, y: m.t + 10 + 13 * (row - 1), fill: color, "font-size": "11"}, svg); t.textContent = mk.label;
      el("title", {}, t).textContent = mk.x + ": " + mk.label;
      if (x > W - m.r - 90) { t.setAttribute("x", x - 4); t.setAttribute("text-anchor", "end"); }
    });
    if (series.length > 1 || spec.legend) {
      var lg = document.createElement("div"); lg.className = "legend";
      series.forEach(function (s, si) {
        var span = document.createElement("span"), i = document.createElement("i");
        i.style.background = s.color || COLORS[si % COLORS.length]; span.appendChild(i); span.appendChild(document.createTextNode(s.name));
        lg.appendChild(span);
      });
      host.appendChild(lg);
    }
  }
  window.drawChart = drawChart;
})();
