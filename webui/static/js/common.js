/* Shared helpers: CSRF-protected JSON requests, local time display, probability bars.
   Loaded on every page before the page's own script. */
"use strict";

const EMQ = (() => {
  const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content ?? "";
  const emotions = meta("emotions").split(",").filter(Boolean);

  /** POST JSON with the session's CSRF token; resolves to {ok, status, body}. */
  async function postJSON(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": meta("csrf-token") },
      body: JSON.stringify(body),
    });
    return { ok: response.ok, status: response.status, body: await readJSON(response) };
  }

  async function getJSON(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (response.status === 401) {
      goToLogin();
      throw new Error("logged out");
    }
    return { ok: response.ok, status: response.status, body: await readJSON(response) };
  }

  async function readJSON(response) {
    try {
      return await response.json();
    } catch {
      return {};
    }
  }

  function goToLogin() {
    const next = encodeURIComponent(location.pathname + location.search);
    location.assign(`/login?next=${next}`);
  }

  const timeFormat = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });

  /** Show every <time datetime="…Z"> in the reader's local time zone. */
  function localiseTimes(root = document) {
    for (const element of root.querySelectorAll("time[datetime]")) {
      const moment = new Date(element.dateTime);
      if (!Number.isNaN(moment.getTime())) {
        element.textContent = timeFormat.format(moment);
        element.title = element.dateTime;
      }
    }
  }

  /** "3 s ago", "4 min ago", … */
  function ago(milliseconds) {
    const seconds = Math.max(0, Math.round(milliseconds / 1000));
    if (seconds < 60) return `${seconds} s ago`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
    return `${Math.floor(seconds / 86400)} d ago`;
  }

  const percent = (value) => `${Math.round(value * 100)}%`;

  /** Build the 7 probability rows for a face (once), to be filled by setBars. */
  function buildBars(list) {
    list.replaceChildren();
    for (const name of emotions) {
      const item = document.createElement("li");
      item.className = `bar emo-${name}`;
      item.dataset.emotion = name;
      const label = document.createElement("span");
      label.className = "bar-name";
      label.textContent = name;
      const track = document.createElement("span");
      track.className = "bar-track";
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      track.append(fill);
      const value = document.createElement("span");
      value.className = "bar-value";
      item.append(label, track, value);
      list.append(item);
    }
  }

  /** Probabilities in class order → bar widths (CSSOM, allowed by the CSP) and numbers. */
  function setBars(list, probabilities, topLabel) {
    list.querySelectorAll(".bar").forEach((item, index) => {
      const value = probabilities[index] ?? 0;
      item.querySelector(".bar-fill").style.width = `${(value * 100).toFixed(1)}%`;
      item.querySelector(".bar-value").textContent = percent(value);
      item.classList.toggle("top", item.dataset.emotion === topLabel);
    });
  }

  /** Server-rendered bars carry data-value; give them their width. */
  function fillStaticBars(root = document) {
    for (const fill of root.querySelectorAll(".bar-fill[data-value]")) {
      fill.style.width = `${(Number(fill.dataset.value) * 100).toFixed(1)}%`;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    localiseTimes();
    fillStaticBars();
  });

  return { emotions, postJSON, getJSON, goToLogin, localiseTimes, ago, percent, buildBars, setBars };
})();
