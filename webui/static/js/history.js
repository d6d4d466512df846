/* History page: local-time filters, clickable rows, and the emotion-share charts (plotly.js,
   served by the dashboard from the plotly wheel). */
"use strict";

(() => {
  const form = document.getElementById("filters");
  const timezoneInput = document.getElementById("tz");
  const rangeSelect = document.getElementById("filter-range");
  const sinceInput = document.getElementById("filter-since");
  const untilInput = document.getElementById("filter-until");
  const charts = document.getElementById("charts");

  // The server reads datetime-local values in the browser's zone through this offset.
  timezoneInput.value = String(new Date().getTimezoneOffset());
  form.addEventListener("submit", () => {
    timezoneInput.value = String(new Date().getTimezoneOffset());
  });
  rangeSelect.addEventListener("change", () => {
    if (rangeSelect.value) {
      sinceInput.value = "";
      untilInput.value = "";
    }
  });
  for (const input of [sinceInput, untilInput]) {
    input.addEventListener("change", () => {
      if (input.value) rangeSelect.value = "";
    });
  }

  for (const row of document.querySelectorAll(".result-row")) {
    row.addEventListener("click", (event) => {
      if (event.target.closest("a")) return;
      location.assign(row.dataset.href);
    });
    row.addEventListener("keydown", (event) => {
      if (event.key === "Enter") location.assign(row.dataset.href);
    });
  }

  // -- charts --------------------------------------------------------------------------------------
  function chartQuery() {
    const parameters = new URLSearchParams(charts.dataset.query);
    parameters.delete("page");
    parameters.delete("emotion"); // the chart shows every emotion's share
    if (!parameters.get("tz")) parameters.set("tz", String(new Date().getTimezoneOffset()));
    return parameters.toString();
  }

  function cssColour(name, fallback) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
  }

  function traces(series) {
    const times = series.t.map((milliseconds) => new Date(milliseconds));
    return EMQ.emotions.map((emotion) => {
      const colour = cssColour(`--emo-${emotion}`, "#888");
      return {
        x: times,
        y: series.percent[emotion],
        customdata: series.counts[emotion],
        name: emotion,
        type: "scatter",
        mode: "lines",
        stackgroup: "share",
        line: { width: 0.5, color: colour },
        fillcolor: colour,
        hovertemplate: `${emotion}: %{y:.0f}% (%{customdata} faces)<extra></extra>`,
      };
    });
  }

  function layout() {
    const text = cssColour("--muted", "#999");
    const grid = cssColour("--border", "#333");
    return {
      height: 240,
      margin: { l: 44, r: 12, t: 8, b: 56 },
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      font: { color: text, size: 11 },
      hovermode: "x unified",
      xaxis: { type: "date", gridcolor: grid, linecolor: grid },
      yaxis: { range: [0, 100], ticksuffix: "%", gridcolor: grid, fixedrange: true },
      legend: { orientation: "h", y: -0.28, font: { size: 10 }, traceorder: "normal" },
    };
  }

  function addChart(device, series) {
    const block = document.createElement("div");
    block.className = "chart";
    block.dataset.device = device;
    const title = document.createElement("h3");
    title.textContent = device;
    const plot = document.createElement("div");
    plot.className = "chart-plot";
    block.append(title, plot);
    charts.append(block);
    return window.Plotly.newPlot(plot, traces(series), layout(), { displayModeBar: false, responsive: true });
  }

  function setChartMessage(text) {
    const message = document.createElement("p");
    message.className = "muted";
    message.id = "charts-status";
    message.textContent = text;
    charts.replaceChildren(message);
  }

  async function renderCharts() {
    if (!window.Plotly) {
      setChartMessage("The chart library did not load (plotly.min.js).");
      return;
    }
    let response;
    try {
      response = await EMQ.getJSON(`/api/emotion-share?${chartQuery()}`);
    } catch {
      return;
    }
    if (!response.ok) {
      setChartMessage(response.body.error || "Cannot load the chart.");
      return;
    }
    const devices = Object.entries(response.body.devices);
    if (!devices.length) {
      setChartMessage("No faces in this range.");
      charts.dataset.rendered = "0";
      return;
    }
    charts.replaceChildren();
    await Promise.all(devices.map(([device, series]) => addChart(device, series)));
    charts.dataset.rendered = String(devices.length);
    charts.dataset.bucket = String(response.body.bucket_s);
  }

  // plotly.min.js is deferred; it has run by DOMContentLoaded.
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", renderCharts);
  else renderCharts();
})();
