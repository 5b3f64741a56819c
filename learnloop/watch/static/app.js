/* Dashboard behaviour: live regions, countdowns, charts, buttons, the job stream. No framework. */
(function () {
  "use strict";
  function toast(text, err) {
    var t = document.querySelector(".toast");
    if (!t) { t = document.createElement("div"); t.className = "toast"; document.body.appendChild(t); }
    t.textContent = text; t.className = "toast show" + (err ? " err" : "");
    clearTimeout(t._h); t._h = setTimeout(function () { t.className = "toast"; }, 3500);
  }
  function charts(root) {
    root.querySelectorAll("[data-chart]").forEach(function (c) {
      try { c._spec = JSON.parse(c.getAttribute("data-chart")); window.drawChart(c, c._spec); } catch (e) { c.textContent = "chart error: " + e; }
    });
  }
  function countdowns() {
    document.querySelectorAll("[data-countdown]").forEach(function (c) {
      var s = parseFloat(c.getAttribute("data-countdown"));
      if (isNaN(s)) return;
      s = Math.max(0, s - 1); c.setAttribute("data-countdown", s);
      var h = Math.floor(s / 3600), mn = Math.floor(s % 3600 / 60), sec = Math.floor(s % 60);
      c.textContent = s <= 0 ? "due now" : (h ? h + "h " : "") + (h || mn ? mn + "m " : "") + sec + "s";
    });
  }
  function refresh(region) {
    var url = region.getAttribute("data-live");
    return fetch(url, {credentials: "same-origin", headers: {"Accept": "text/html"}}).then(function (r) {
      if (!r.ok) throw new Error(r.status);
      return r.text();
    }).then(function (html) {
      region.innerHTML = html; charts(region); region.setAttribute("data-refreshed", Date.now());
    }).catch(function () { /* a missed refresh is retried at the next tick */ });
  }
  function refreshAll() { document.querySelectorAll("[data-live]").forEach(refresh); }
  function post(url, body) {
    return fetch(url, {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-Learnloop-Action": "1"}, body: JSON.stringify(body || {})})
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (data) {
          if (r.status === 401) { toast("Log in with the API token first (top right).", true); throw new Error("401"); }
          if (!r.ok) { toast(data.error || ("Failed: HTTP " + r.status), true); throw new Error(r.status); }
          return data;
        });
      });
  }
  document.addEventListener("click", function (ev) {
    var b = ev.target.closest("button[data-post]");
    if (!b) return;
    ev.preventDefault();
    if (b.hasAttribute("data-confirm") && !window.confirm(b.getAttribute("data-confirm"))) return;
    b.disabled = true;
    post(b.getAttribute("data-post")).then(function (data) {
      toast(b.getAttribute("data-done") || "Done");
      refreshAll();
      document.dispatchEvent(new CustomEvent("learnloop:changed", {detail: data}));
    }).catch(function () {}).finally(function () { b.disabled = false; });
  });
  document.addEventListener("submit", function (ev) {
    var f = ev.target.closest("form[data-post-json]");
    if (!f) return;
    ev.preventDefault();
    var body = {}; new FormData(f).forEach(function (v, k) { body[k] = v; });
    post(f.getAttribute("data-post-json"), body).then(function () {
      toast(f.getAttribute("data-done") || "Saved"); if (f.hasAttribute("data-reload")) window.location.reload();
    }).catch(function () {});
  });

  function jobStream(box) {
    var chartLoss = document.getElementById("chart-loss"), chartLr = document.getElementById("chart-lr");
    var last = box.getAttribute("data-last-step");
    var url = box.getAttribute("data-job-stream") + (last !== "" && last !== null ? "?after=" + last : "");
    var es = new EventSource(url);
    es.addEventListener("metrics", function (e) {
      var d = JSON.parse(e.data);
      [[chartLoss, "loss"], [chartLr, "lr"]].forEach(function (pair) {
        var c = pair[0]; if (!c || !c._spec) return;
        var s = c._spec.series[0];
        d.points.forEach(function (p) { s.points.push([p.step, p[pair[1]]]); });
        // Keep the browser's copy bounded too: thin the history when it grows past 2000 points.
        if (s.points.length > 2000) s.points = s.points.filter(function (_, i) { return i % 2 === 0 || i > s.points.length - 200; });
        window.drawChart(c, c._spec);
      });
      box.setAttribute("data-last-step", e.lastEventId);
    });
    es.addEventListener("job", function (e) {
      var d = JSON.parse(e.data);
      Object.keys(d).forEach(function (k) {
        var v = d[k];
        if (typeof v === "number" && !Number.isInteger(v)) v = Math.abs(v) >= 1000 ? Math.round(v).toLocaleString() : Number(v.toPrecision(3));
        document.querySelectorAll('[data-job-field="' + k + '"]').forEach(function (n) {
          n.textContent = v === null || v === undefined ? "–" : v;
          if (n.classList.contains("pill")) n.className = "pill " + v;
        });
      });
      var was = box.getAttribute("data-state") + "/" + box.getAttribute("data-desired");
      box.setAttribute("data-state", d.state);
      box.setAttribute("data-desired", d.desired_state);
      // The worker obeyed (or someone else pressed a button): redraw the buttons at once.
      if (was !== "null/null" && was !== d.state + "/" + d.desired_state) refreshAll();
    });
    es.onerror = function () { box.setAttribute("data-stream", "reconnecting"); };
    es.onopen = function () { box.setAttribute("data-stream", "open"); };
  }

  document.addEventListener("DOMContentLoaded", function () {
    charts(document);
    var every = 0;
    document.querySelectorAll("[data-live]").forEach(function (r) { every = Math.max(every, parseInt(r.getAttribute("data-interval") || "5000", 10)); });
    if (every) setInterval(refreshAll, every);
    setInterval(countdowns, 1000);
    document.querySelectorAll("[data-job-stream]").forEach(jobStream);
    var resize; window.addEventListener("resize", function () { clearTimeout(resize); resize = setTimeout(function () {
      document.querySelectorAll("[data-chart]").forEach(function (c) { if (c._spec) window.drawChart(c, c._spec); }); }, 150); });
  });
  window.learnloop = {refreshAll: refreshAll, toast: toast};
})();
