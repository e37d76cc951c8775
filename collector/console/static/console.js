// LienWatch console: live updates over the risk stream (server-sent events) and small helpers.
// Our own code, no library. The session cookie authenticates the EventSource (same origin).
"use strict";

(function () {
  function names(templateId, attr) {
    const out = {};
    const tpl = document.getElementById(templateId);
    if (!tpl) return out;
    tpl.content.querySelectorAll("[" + attr + "]").forEach(function (el) {
      out[el.getAttribute(attr)] = el.textContent;
    });
    return out;
  }

  function bump(counter) {
    if (!counter) return;
    counter.hidden = false;
    const n = counter.querySelector("span");
    n.textContent = String(Number(n.textContent) + 1);
  }

  function onRisk(event, levelNames, stepNames, counter) {
    const change = JSON.parse(event.data);
    const row = document.querySelector('tr[data-loan="' + CSS.escape(change.loan_id) + '"]');
    bump(counter);
    if (!row) return;
    const badge = row.querySelector(".level .badge");
    badge.className = "badge level-" + change.new_level;
    badge.dataset.level = change.new_level;
    badge.textContent = levelNames[change.new_level] || change.new_level;
    row.querySelector(".next-step").textContent = stepNames[change.next_step] || change.next_step;
    row.querySelector(".codes").textContent = (change.reasons || []).map(function (r) { return r.code; }).join(", ");
    row.querySelector(".changed").textContent = new Date(change.time_ms).toISOString() + " (UTC)";
    row.classList.add("flash");
    row.dataset.liveUpdated = String(Date.now());
    const body = row.parentElement;
    body.insertBefore(row, body.firstElementChild);
  }

  function onAlert(event) {
    const alert = JSON.parse(event.data);
    const body = document.querySelector("#alert-feed tbody");
    if (!body) return;
    const empty = body.querySelector("tr.empty");
    if (empty) empty.remove();
    const row = document.createElement("tr");
    row.dataset.alert = String(alert.id);
    row.classList.add("flash");
    const cells = [new Date(alert.time_ms).toISOString() + " (UTC)", alert.loan_id || "", alert.device_id,
                   alert.rule, alert.severity, alert.state, ""];
    cells.forEach(function (text, i) {
      const td = document.createElement("td");
      if (i === 1 && alert.loan_id) {
        const a = document.createElement("a");
        a.href = "/console/loans/" + encodeURIComponent(alert.loan_id);
        a.textContent = text;
        td.appendChild(a);
      } else {
        td.textContent = text;
      }
      row.appendChild(td);
    });
    body.insertBefore(row, body.firstElementChild);
  }

  function connect() {
    const live = document.getElementById("live");
    if (!live || !window.EventSource) return;
    const levelNames = names("level-names", "data-level");
    const stepNames = names("step-names", "data-step");
    const counter = document.getElementById("live-count");
    const source = new EventSource(live.dataset.stream);
    source.addEventListener("open", function () { live.classList.add("on"); });
    source.addEventListener("error", function () { live.classList.remove("on"); });
    source.addEventListener("risk", function (e) { onRisk(e, levelNames, stepNames, counter); });
    source.addEventListener("alert", onAlert);
  }

  document.addEventListener("DOMContentLoaded", connect);
})();
