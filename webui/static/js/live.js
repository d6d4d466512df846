/* Live page: one tile per device, updated from the server's event stream (no polling, no reloads).
   Frames arrive as the base64 JPEG the device published and are shown through a data: URL.
   After a frame or result is on screen, "emq:frame-shown" / "emq:result-shown" events are
   dispatched on document (the benchmark measures publish → screen latency with them). */
"use strict";

(() => {
  const MAX_FACES_SHOWN = 3;
  const REPLY_TIMEOUT_MS = 10000;
  const RECONNECT_DELAY_MS = 3000;
  const MAX_EARLY_REPLIES = 50;
  const FRAMES_FLOWING_MS = 2000;

  const tilesElement = document.getElementById("tiles");
  const noDevices = document.getElementById("no-devices");
  const summary = document.getElementById("summary");
  const streamState = document.getElementById("stream-state");
  const brokerState = document.getElementById("broker-state");
  const hubCounters = document.getElementById("hub-counters");
  const tileTemplate = document.getElementById("tile-template");
  const faceTemplate = document.getElementById("face-template");
  const canCommand = tilesElement.dataset.canCommand === "1";
  let staleAfterMs = Number(tilesElement.dataset.staleAfter || 30) * 1000;
  let clockOffsetMs = 0; // browser clock minus server clock
  const tiles = new Map();
  const earlyReplies = new Map();

  const serverNow = () => Date.now() - clockOffsetMs;

  // -- tiles ----------------------------------------------------------------------------------
  function tileFor(device) {
    let tile = tiles.get(device);
    if (!tile) {
      tile = createTile(device);
      tiles.set(device, tile);
      insertSorted(tile);
      updateSummary();
    }
    return tile;
  }

  function createTile(device) {
    const element = tileTemplate.content.firstElementChild.cloneNode(true);
    element.dataset.device = device;
    element.querySelector(".device-name").textContent = device;
    const tile = {
      device,
      element,
      image: element.querySelector(".frame-img"),
      faces: element.querySelector(".faces"),
      status: null,
      lastSeen: null,
      shownFrame: null,
      pendingFrame: null,
      frameShownAt: 0,
      pendingCommand: null,
    };
    tile.faces.classList.add("no-result");
    tile.image.alt = `Latest frame from ${device}`;
    tile.image.addEventListener("load", () => frameShown(tile));
    if (canCommand) setUpControls(tile);
    return tile;
  }

  function insertSorted(tile) {
    const after = [...tiles.values()]
      .filter((other) => other !== tile && other.device > tile.device)
      .sort((a, b) => (a.device < b.device ? -1 : 1))[0];
    tilesElement.insertBefore(tile.element, after ? after.element : null);
  }

  function removeTile(device) {
    const tile = tiles.get(device);
    if (!tile) return;
    tile.element.remove();
    tiles.delete(device);
    updateSummary();
  }

  function seen(tile, milliseconds) {
    if (milliseconds && (!tile.lastSeen || milliseconds > tile.lastSeen)) tile.lastSeen = milliseconds;
    renderStatus(tile);
    renderSeen(tile);
  }

  function renderStatus(tile) {
    let shown = tile.status || "unknown";
    if (shown === "online" && tile.lastSeen && serverNow() - tile.lastSeen > staleAfterMs) shown = "stale";
    if (tile.element.dataset.status !== shown) {
      tile.element.dataset.status = shown;
      tile.element.querySelector(".status").textContent = shown;
      updateSummary();
    }
  }

  function renderSeen(tile) {
    tile.element.querySelector(".seen").textContent = tile.lastSeen ? EMQ.ago(serverNow() - tile.lastSeen) : "–";
  }

  function updateSummary() {
    const all = [...tiles.values()];
    const online = all.filter((tile) => tile.element.dataset.status === "online").length;
    noDevices.hidden = all.length > 0;
    summary.textContent = `${all.length} device${all.length === 1 ? "" : "s"} · ${online} online`;
  }

  // -- stream events ----------------------------------------------------------------------------
  function onFrame(data) {
    const tile = tileFor(data.device);
    const { jpeg, ...meta } = data;
    tile.pendingFrame = meta;
    tile.image.src = `data:image/jpeg;base64,${jpeg}`;
    seen(tile, data.received_at);
  }

  function frameShown(tile) {
    const frame = tile.pendingFrame;
    tile.image.hidden = false;
    tile.shownFrame = frame;
    tile.frameShownAt = Date.now();
    // Bars follow the picture: this frame's own result if the server had it, none if the frame had no face.
    // A frame can overtake its result (frames go straight out, results through the device's outbox):
    // until that result arrives the bars on screen belong to an earlier frame, and are shown dimmed.
    if (frame.result) renderResult(tile, frame.result);
    else if (frame.frame_number !== null && !frame.result_msg_id) renderResult(tile, { faces: [] });
    else if (frame.result_msg_id) tile.faces.classList.add("awaiting-result");
    const { result, ...detail } = frame;
    document.dispatchEvent(new CustomEvent("emq:frame-shown", { detail: { device: tile.device, ...detail, shown_at: Date.now() } }));
  }

  function onResult(data) {
    const tile = tileFor(data.device);
    seen(tile, data.seen);
    document.dispatchEvent(new CustomEvent("emq:result-received", {
      detail: { device: data.device, seq: data.seq, captured_at: data.captured_at, received_at: Date.now() },
    }));
    const framesFlowing = tile.frameShownAt && Date.now() - tile.frameShownAt < FRAMES_FLOWING_MS;
    // While frames flow, a result is shown with its frame; a result for the frame on screen (it came late) or
    // from a device that sends no frames is shown at once.
    if (framesFlowing && data.msg_id !== tile.shownFrame?.result_msg_id) return;
    renderResult(tile, data);
    document.dispatchEvent(new CustomEvent("emq:result-shown", {
      detail: { device: data.device, seq: data.seq, captured_at: data.captured_at, shown_at: Date.now() },
    }));
  }

  function renderResult(tile, result) {
    tile.faces.classList.remove("no-result", "awaiting-result");
    renderFaces(tile, result.faces);
    tile.element.querySelector(".face-count").textContent = String(result.faces.length);
    if (result.model) showModel(tile, result.model);
  }

  function renderFaces(tile, faces) {
    const shown = faces.slice(0, MAX_FACES_SHOWN);
    while (tile.faces.children.length > shown.length) tile.faces.lastElementChild.remove();
    while (tile.faces.children.length < shown.length) {
      const block = faceTemplate.content.firstElementChild.cloneNode(true);
      EMQ.buildBars(block.querySelector(".bars"));
      tile.faces.append(block);
    }
    shown.forEach((face, index) => {
      const block = tile.faces.children[index];
      const more = index === shown.length - 1 && faces.length > shown.length ? ` (+${faces.length - shown.length} more)` : "";
      const smoothed = face.smoothed_label && face.smoothed_label !== face.label ? ` · smoothed ${face.smoothed_label}` : "";
      block.querySelector(".face-name").textContent = `Face ${index + 1} · track ${face.track_id}${smoothed}${more}`;
      const labelElement = block.querySelector(".face-label");
      labelElement.textContent = `${face.label} ${EMQ.percent(face.confidence)}`;
      labelElement.className = `face-label emotion-chip emo-${face.label}`;
      EMQ.setBars(block.querySelector(".bars"), face.probabilities, face.label);
    });
  }

  function onStatus(data) {
    const tile = tileFor(data.device);
    tile.status = data.status;
    seen(tile, data.seen);
  }

  function onStats(data) {
    const tile = tileFor(data.device);
    tile.element.querySelector(".fps").textContent = data.fps.toFixed(1);
    showModel(tile, data.model);
    tile.element.querySelector(".paused-badge").hidden = !data.paused;
    tile.element.querySelector(".frame").title = data.source;
    seen(tile, data.seen);
  }

  function showModel(tile, model) {
    const element = tile.element.querySelector(".model");
    element.textContent = `v${model.version}`;
    element.title = `${model.name} ${model.version}`;
  }

  function onClock(data) {
    clockOffsetMs = Date.now() - data.now;
    if (data.stale_after_s) staleAfterMs = data.stale_after_s * 1000;
    const invalid = Object.values(data.invalid || {}).reduce((sum, count) => sum + count, 0);
    hubCounters.textContent = invalid ? `${invalid} invalid message${invalid === 1 ? "" : "s"} ignored` : "";
    setPill(brokerState, data.broker_connected ? "connected" : "disconnected", `broker ${data.broker_connected ? "connected" : "disconnected"}`);
  }

  function onBroker(data) {
    setPill(brokerState, data.connected ? "connected" : "disconnected", `broker ${data.connected ? "connected" : "disconnected"}`);
  }

  function onReply(record) {
    // A fast device can answer before our POST has returned: keep the reply until it is claimed.
    earlyReplies.set(record.id, record);
    if (earlyReplies.size > MAX_EARLY_REPLIES) earlyReplies.delete(earlyReplies.keys().next().value);
    const tile = tiles.get(record.device);
    if (!tile || !tile.pendingCommand || tile.pendingCommand.id !== record.id) return;
    earlyReplies.delete(record.id);
    clearTimeout(tile.pendingCommand.timer);
    tile.pendingCommand = null;
    const reply = record.reply;
    const detail = reply.ok ? JSON.stringify(reply.result ?? {}) : reply.error;
    showReply(tile, `${record.command}: ${reply.ok ? "ok" : "failed"} ${detail || ""}`, reply.ok ? "ok" : "error");
  }

  function setPill(element, state, text) {
    element.dataset.state = state;
    element.textContent = text;
  }

  // -- device control (admins) -----------------------------------------------------------------------
  function setUpControls(tile) {
    const controls = tile.element.querySelector(".controls");
    controls.hidden = false;
    for (const button of controls.querySelectorAll("button[data-command]")) {
      button.addEventListener("click", () => sendCommand(tile, button.dataset.command, {}));
    }
    const form = controls.querySelector(".fps-form");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      sendCommand(tile, "set_fps", { fps: Number(form.querySelector(".fps-input").value) });
    });
  }

  async function sendCommand(tile, command, args) {
    showReply(tile, `${command}: sending…`, "");
    let response;
    try {
      response = await EMQ.postJSON(`/api/devices/${encodeURIComponent(tile.device)}/commands`, { command, args });
    } catch (error) {
      showReply(tile, `${command}: ${error.message}`, "error");
      return;
    }
    if (!response.ok) {
      showReply(tile, `${command}: ${response.body.error || `HTTP ${response.status}`}`, "error");
      return;
    }
    if (tile.pendingCommand) clearTimeout(tile.pendingCommand.timer);
    const timer = setTimeout(() => {
      tile.pendingCommand = null;
      showReply(tile, `${command}: sent, no reply within ${REPLY_TIMEOUT_MS / 1000} s`, "error");
    }, REPLY_TIMEOUT_MS);
    tile.pendingCommand = { id: response.body.id, timer };
    showReply(tile, `${command}: sent, waiting for the device…`, "");
    const early = earlyReplies.get(response.body.id);
    if (early) onReply(early);
  }

  function showReply(tile, text, kind) {
    const output = tile.element.querySelector(".reply");
    output.textContent = text;
    output.className = `reply ${kind}`;
  }

  // -- connection ---------------------------------------------------------------------------------------
  function onHello(data) {
    // device_ids: the devices the hub still holds (data.devices is the hub's count, as in tick).
    const current = new Set(Array.isArray(data.device_ids) ? data.device_ids : []);
    for (const device of [...tiles.keys()]) if (!current.has(device)) removeTile(device);
    onClock(data);
  }

  const handlers = {
    hello: onHello, tick: onClock, frame: onFrame, result: onResult, status: onStatus, stats: onStats,
    reply: onReply, removed: (data) => removeTile(data.device), broker: onBroker,
  };

  function connect() {
    const source = new EventSource("/api/stream");
    setPill(streamState, "connecting", "stream connecting");
    source.addEventListener("open", () => setPill(streamState, "open", "live"));
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        setPill(streamState, "closed", "stream closed");
        reconnectLater();
      } else {
        setPill(streamState, "connecting", "reconnecting…");
      }
    });
    for (const [name, handler] of Object.entries(handlers)) {
      source.addEventListener(name, (event) => handler(JSON.parse(event.data)));
    }
  }

  /** The browser gives up on a refused stream (401, 503): check the login, then try again. */
  async function reconnectLater() {
    try {
      await EMQ.getJSON("/api/me");
    } catch {
      return; // logged out: getJSON went to the login page
    }
    setTimeout(connect, RECONNECT_DELAY_MS);
  }

  setInterval(() => {
    for (const tile of tiles.values()) {
      renderStatus(tile);
      renderSeen(tile);
    }
  }, 1000);

  updateSummary();
  connect();
})();
