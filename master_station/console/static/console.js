// sealgw master console: live alarm inbox (server-sent events), open-alarm counters, KPI trends.
// No inline scripts anywhere (the CSP forbids them); every DOM update uses textContent.
"use strict";

(function () {
  function el(tag, text, attrs) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }

  function refreshCounts() {
    fetch("/api/summary", { credentials: "same-origin" })
      .then((r) => {
        if (r.status === 401) window.location.assign("/login"); // the session ended
        return r.ok ? r.json() : null;
      })
      .then((body) => {
        if (!body) return;
        const badge = document.getElementById("nav-open-alarms");
        if (badge) {
          badge.textContent = body.open_alarms ? String(body.open_alarms) : "";
          badge.setAttribute("data-value", String(body.open_alarms));
        }
        document.querySelectorAll("[data-testid=kpi-open-alarms]").forEach((tile) => {
          const district = tile.getAttribute("data-district");
          const count = body.open_alarms_by_district[district] || 0;
          tile.setAttribute("data-value", String(count));
          const link = tile.querySelector("[data-live-count]");
          if (link) link.textContent = String(count);
        });
      })
      .catch(() => {});
  }

  function alarmRow(table, alarm) {
    const label = table.getAttribute("data-label-" + alarm.status) || alarm.status;
    const row = el("tr", null, {
      "data-testid": "alarm-row",
      "data-alarm-id": alarm.alarm_id,
      "data-type": alarm.type,
      "data-status": alarm.status,
      "data-open": alarm.open ? "true" : "false",
      "data-district": alarm.district,
      "data-seal": alarm.seal,
      "data-events": String(alarm.events),
      class: "fresh",
    });
    row.appendChild(el("td", alarm.ts));
    const link = el("a", alarm.type, {
      href: "/alarms/" + encodeURIComponent(alarm.alarm_id),
      "data-testid": "alarm-link",
    });
    const typeCell = el("td");
    typeCell.appendChild(link);
    if (alarm.events > 1) {
      const label = (table.getAttribute("data-label-events") || "{count}")
        .replace("{count}", String(alarm.events));
      typeCell.appendChild(document.createTextNode(" "));
      typeCell.appendChild(el("span", label, { class: "count", "data-testid": "alarm-events" }));
    }
    row.appendChild(typeCell);
    const subject = alarm.seal && alarm.seal !== alarm.subject
      ? alarm.subject + " (" + alarm.seal + ")" : alarm.subject;
    row.appendChild(el("td", subject));
    row.appendChild(el("td", alarm.gateway));
    row.appendChild(el("td", alarm.district));
    row.appendChild(el("td", label, { class: "status-" + alarm.status }));
    return row;
  }

  function onAlarm(table, alarm) {
    const body = table.tBodies[0];
    const selector = "tr[data-alarm-id=\"" + CSS.escape(alarm.alarm_id) + "\"]";
    const existing = body.querySelector(selector);
    const wanted = table.getAttribute("data-status") === "closed"
      ? alarm.status === "closed" : alarm.status !== "closed";
    if (existing) existing.remove();
    if (wanted) {
      body.insertBefore(alarmRow(table, alarm), body.firstChild);
      const empty = document.getElementById("alarms-empty");
      if (empty) empty.remove();
    }
  }

  function live() {
    if (!window.EventSource) return;
    const table = document.querySelector("[data-live=alarms]");
    const indicator = document.getElementById("alarms-live");
    // The inbox resumes from the change it was drawn at, so nothing between the page and the
    // stream is lost; a reconnect resumes from the last event's id (Last-Event-ID).
    const drawnAt = table ? table.getAttribute("data-drawn-at") : null;
    const query = drawnAt ? "?after=" + encodeURIComponent(drawnAt) : "";
    const source = new EventSource("/api/alarms/stream" + query);
    source.addEventListener("open", () => indicator && indicator.setAttribute("data-state", "open"));
    source.addEventListener("error", () => {
      if (indicator) indicator.setAttribute("data-state", "retrying");
      refreshCounts(); // a stream ended with its session: back to the sign-in page
    });
    source.addEventListener("alarm", (message) => {
      const alarm = JSON.parse(message.data);
      if (table) onAlarm(table, alarm);
      refreshCounts();
    });
  }

  const PERCENT = new Set(["seal_integrity", "lock_online", "meter_read_success", "line_loss"]);
  const COLOURS = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0550ae"];

  function drawTrends(holder) {
    const metric = document.getElementById("trend-metric");
    let data = null;
    let plot = null;
    function draw() {
      if (!data || !window.uPlot) return;
      if (plot) plot.destroy();
      holder.textContent = "";
      const districts = Object.keys(data.districts);
      if (!districts.length) {
        holder.textContent = holder.getAttribute("data-empty");
        holder.setAttribute("data-state", "empty");
        return;
      }
      const key = metric.value;
      const xs = data.days.map((d) => Date.parse(d + "T00:00:00Z") / 1000);
      const scale = PERCENT.has(key) ? 100 : 1;
      const ys = districts.map((d) => data.districts[d][key].map((v) => (v === null ? null : v * scale)));
      const series = [{}].concat(districts.map((d, i) => ({
        label: d, stroke: COLOURS[i % COLOURS.length], width: 2, spanGaps: true,
        points: { show: true, size: 5 },
      })));
      const width = Math.max(320, holder.clientWidth || 800);
      plot = new window.uPlot({
        width: width, height: 320, series: series,
        axes: [{}, { label: PERCENT.has(key) ? "%" : "" }],
        legend: { show: true },
      }, [xs].concat(ys), holder);
      holder.setAttribute("data-state", "drawn");
      holder.setAttribute("data-series", String(districts.length));
    }
    fetch(holder.getAttribute("data-src"), { credentials: "same-origin" })
      .then((r) => r.json())
      .then((body) => { data = body; draw(); })
      .catch(() => holder.setAttribute("data-state", "failed"));
    metric.addEventListener("change", draw);
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (document.getElementById("current-user")) {
      refreshCounts();
      live();
    }
    const chart = document.getElementById("trend-chart");
    if (chart) drawTrends(chart);
  });
})();
