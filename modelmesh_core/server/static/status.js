// The ModelMesh status page. Plain script, no build step, no dependencies.
//
// Safety: every value from the proxy is put in the page with textContent or as an attribute
// value (never as HTML). The admin key is read from the form, or from the address fragment
// (#key=...) which is removed from the address bar at once; it lives in sessionStorage and is
// sent only to this origin, as an Authorization header on fetch().
(function () {
  "use strict";

  var STORAGE = "modelmesh.adminKey";
  var ENDPOINT = "admin/status";
  var HEALTH = {
    "healthy": "health-ok", "degraded": "health-warn", "cooling down": "health-bad",
    "standby": "health-bad", "provider down": "health-bad"
  };
  var ASK_AGAIN = {"missing_api_key": 1, "invalid_api_key": 1, "admin_key_required": 1};
  var params = new URLSearchParams(location.search);
  var every = Math.min(Math.max(Number(params.get("refresh")) || 5, 1), 300) * 1000;
  var timer = null;
  var busy = false;

  function $(id) { return document.getElementById(id); }

  function storedKey() {
    try { return sessionStorage.getItem(STORAGE); } catch (e) { return null; }
  }

  function storeKey(key) {
    try {
      if (key) { sessionStorage.setItem(STORAGE, key); } else { sessionStorage.removeItem(STORAGE); }
    } catch (e) { /* storage refused: the key lives for this page only */ }
  }

  function takeKeyFromFragment() {
    var hash = location.hash;
    if (hash.indexOf("#key=") !== 0) { return; }
    var key = "";
    try { key = decodeURIComponent(hash.slice(5)); } catch (e) { key = ""; }
    history.replaceState(null, "", location.pathname + location.search);
    if (key) { storeKey(key); }
  }

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    if (cls) { node.className = cls; }
    return node;
  }

  function money(value) {
    if (typeof value !== "number") { return "\u2014"; }
    return "$" + value.toFixed(value !== 0 && Math.abs(value) < 0.01 ? 6 : 2);
  }

  function limitText(value) { return typeof value === "number" ? money(value) : "none"; }

  function percent(fraction) {
    return typeof fraction === "number" ? Math.round(fraction * 100) + "%" : "\u2014";
  }

  function fill(tbody, rows) {
    while (tbody.firstChild) { tbody.removeChild(tbody.firstChild); }
    rows.forEach(function (row) { tbody.appendChild(row); });
  }

  function headroomCell(headroom, limits) {
    var td = el("td", null, "headroom");
    if (typeof headroom !== "number") {
      td.textContent = "no limit known";
      td.classList.add("muted");
      return td;
    }
    td.appendChild(el("strong", percent(headroom)));
    var parts = (limits || []).map(function (l) {
      var text = l.name + (l.source === "upstream" ? " (upstream)" : "");
      if (typeof l.used === "number" && typeof l.limit === "number") {
        text += " " + l.used + "/" + l.limit;
      }
      if (typeof l.resets_in_s === "number") { text += ", resets in " + l.resets_in_s + "s"; }
      return text;
    });
    td.appendChild(el("span", " " + parts.join("; "), "detail"));
    if (headroom < 0.2) { td.classList.add("low"); }
    return td;
  }

  function spark(series) {
    var svgNs = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(svgNs, "svg");
    var n = series.length || 1;
    var max = Math.max.apply(null, series.concat([1]));
    svg.setAttribute("viewBox", "0 0 " + (n * 2) + " 20");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("class", "spark");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "requests per minute over the last hour");
    series.forEach(function (v, i) {
      if (!v) { return; }
      var h = Math.max(1, Math.round(v / max * 20));
      var r = document.createElementNS(svgNs, "rect");
      r.setAttribute("x", String(i * 2));
      r.setAttribute("y", String(20 - h));
      r.setAttribute("width", "1.6");
      r.setAttribute("height", String(h));
      svg.appendChild(r);
    });
    return svg;
  }

  function renderBudgets(data) {
    $("cost-total").textContent = money(data.cost_today);
    var rows = (data.budgets || []).map(function (b) {
      var tr = el("tr");
      tr.setAttribute("data-scope", b.scope);
      tr.appendChild(el("td", b.scope, "scope"));
      tr.appendChild(el("td", money(b.spent_today), "spent-today"));
      tr.appendChild(el("td", limitText(b.daily), "daily"));
      var used = typeof b.daily === "number" && b.daily > 0 ? b.spent_today / b.daily : null;
      var usedCell = el("td", used === null ? "\u2014" : percent(used), "used");
      if (used !== null && used >= 0.8) { usedCell.classList.add("low"); }
      tr.appendChild(usedCell);
      tr.appendChild(el("td", money(b.spent_month), "spent-month"));
      tr.appendChild(el("td", limitText(b.monthly), "monthly"));
      tr.appendChild(el("td", b.enforce ? "yes" : "no", "enforce"));
      return tr;
    });
    fill($("budgets").tBodies[0], rows);
    $("budgets").hidden = rows.length === 0;
    $("no-budgets").hidden = rows.length !== 0;
  }

  function renderPools(data) {
    fill($("pools").tBodies[0], (data.pools || []).map(function (p) {
      var tr = el("tr");
      tr.setAttribute("data-pool", p.name);
      tr.appendChild(el("td", p.name, "name"));
      tr.appendChild(el("td", p.capability, "capability"));
      tr.appendChild(el("td", p.strategy, "strategy"));
      var healthy = el("td", p.healthy + " of " + p.models.length, "healthy");
      healthy.classList.add(p.healthy === p.models.length ? "health-ok" :
                            p.healthy ? "health-warn" : "health-bad");
      tr.appendChild(healthy);
      tr.appendChild(el("td", p.models.join(", "), "members"));
      return tr;
    }));
  }

  function renderModels(data) {
    $("window").textContent = "(last " + data.window_minutes + " minutes)";
    fill($("models").tBodies[0], (data.models || []).map(function (m) {
      var tr = el("tr");
      tr.setAttribute("data-model", m.id);
      tr.appendChild(el("td", m.id, "name"));
      tr.appendChild(el("td", m.provider, "provider"));
      var health = el("td", m.health, "health");
      health.classList.add(HEALTH[m.health] || "health-warn");
      if (m.reason) {
        var why = m.reason + (typeof m.cooldown_remaining_s === "number" ?
                              " (back in " + m.cooldown_remaining_s + "s)" : "");
        health.appendChild(el("span", " " + why, "detail"));
      }
      tr.appendChild(health);
      var h = m.last_hour || {};
      tr.appendChild(el("td", h.served, "served"));
      tr.appendChild(el("td", h.failed, "failed"));
      tr.appendChild(el("td", h.failovers, "failovers"));
      tr.appendChild(el("td", h.continued, "continued"));
      var sparkCell = el("td", null, "per-minute");
      sparkCell.appendChild(spark(m.per_minute || []));
      tr.appendChild(sparkCell);
      tr.appendChild(el("td", money(m.cost_today), "cost"));
      tr.appendChild(headroomCell(m.headroom, m.limits));
      return tr;
    }));
  }

  function renderProviders(data) {
    fill($("providers").tBodies[0], (data.providers || []).map(function (p) {
      var tr = el("tr");
      tr.setAttribute("data-provider", p.name);
      tr.appendChild(el("td", p.name, "name"));
      tr.appendChild(el("td", p.connector, "connector"));
      var up = el("td", p.available ? "yes" : "no" + (p.reason ? " (" + p.reason + ")" : ""),
                  "available");
      up.classList.add(p.available ? "health-ok" : "health-bad");
      tr.appendChild(up);
      tr.appendChild(el("td", money(p.cost_today), "cost"));
      tr.appendChild(headroomCell(p.headroom, p.limits));
      return tr;
    }));
  }

  function render(data) {
    renderBudgets(data);
    renderPools(data);
    renderModels(data);
    renderProviders(data);
    $("updated").textContent = "Updated " + new Date(data.generated_at * 1000).toLocaleTimeString()
      + ", every " + every / 1000 + "s";
    $("error").hidden = true;
    $("login").hidden = true;
    $("content").hidden = false;
    $("forget").hidden = !storedKey();
    document.body.setAttribute("data-state", "ready");
    document.body.setAttribute("data-generated", String(data.generated_at));
  }

  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = false;
    document.body.setAttribute("data-state", "error");
  }

  function askForKey(message) {
    storeKey(null);
    $("content").hidden = true;
    $("error").hidden = true;
    $("forget").hidden = true;
    $("login").hidden = false;
    $("login-message").textContent = message || "";
    document.body.setAttribute("data-state", "login");
    $("key-input").focus();
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(refresh, every);
  }

  function refresh() {
    if (busy) { return; }
    if (document.hidden) { schedule(); return; }
    busy = true;
    var headers = {"Accept": "application/json"};
    var key = storedKey();
    if (key) { headers["Authorization"] = "Bearer " + key; }
    fetch(ENDPOINT, {headers: headers, cache: "no-store", credentials: "omit",
                     redirect: "error", referrerPolicy: "no-referrer"})
      .then(function (response) {
        return response.json().then(
          function (body) { return {status: response.status, body: body}; },
          function () { return {status: response.status, body: null}; });
      })
      .then(function (r) {
        busy = false;
        var err = r.body && r.body.error ? r.body.error : null;
        if (r.status === 200 && r.body) { render(r.body); schedule(); return; }
        if ((r.status === 401 || r.status === 403) && err && ASK_AGAIN[err.code]) {
          askForKey(key ? err.message : "");
          return;
        }
        showError("The proxy answered " + r.status + (err ? ": " + err.message : "."));
        schedule();
      }, function (e) {
        busy = false;
        showError("The proxy did not answer (" + e.message + "); retrying.");
        schedule();
      });
  }

  function start() {
    takeKeyFromFragment();
    $("key-form").addEventListener("submit", function (event) {
      event.preventDefault();
      var key = $("key-input").value.trim();
      $("key-input").value = "";
      if (key) { storeKey(key); refresh(); }
    });
    $("forget").addEventListener("click", function () {
      clearTimeout(timer);
      askForKey("The key was forgotten.");
    });
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) { refresh(); }
    });
    refresh();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
}());
