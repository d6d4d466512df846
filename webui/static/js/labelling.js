/* Labelling: one face crop at a time, least confident first.
   Keys: 1–7 pick an emotion, Enter confirms the model's label, S or → skips. */
"use strict";

(() => {
  const BATCH = 30;
  const REFILL_BELOW = 5;
  const RECENT_SHOWN = 8;

  const labeller = document.getElementById("labeller");
  const crop = document.getElementById("crop");
  const message = document.getElementById("queue-message");
  const modelLabel = document.getElementById("model-label");
  const modelConfidence = document.getElementById("model-confidence");
  const bars = document.getElementById("label-bars");
  const faceMeta = document.getElementById("face-meta");
  const resultLink = document.getElementById("face-result");
  const status = document.getElementById("label-status");
  const recent = document.getElementById("recent");
  const deviceSelect = document.getElementById("label-device");
  const choiceButtons = [...document.querySelectorAll(".choice")];
  const confirmButton = document.getElementById("confirm");
  const skipButton = document.getElementById("skip");

  let queue = [];
  let current = null;
  let busy = false;
  let sessionCount = 0;
  const done = new Set(); // labelled or skipped here: never shown again this visit

  EMQ.buildBars(bars);

  async function fetchBatch() {
    const device = deviceSelect.value;
    const query = `limit=${BATCH}${device ? `&device=${encodeURIComponent(device)}` : ""}`;
    const response = await EMQ.getJSON(`/api/labels/queue?${query}`);
    if (!response.ok) throw new Error(response.body.error || `HTTP ${response.status}`);
    showProgress(response.body.progress);
    return response.body.items;
  }

  async function refill() {
    const queued = new Set(queue.map((face) => face.id));
    const items = await fetchBatch();
    for (const face of items) {
      if (!done.has(face.id) && !queued.has(face.id) && face.id !== current?.id) queue.push(face);
    }
  }

  async function restart() {
    queue = [];
    current = null;
    setState("loading", "Loading the queue…");
    try {
      await refill();
    } catch (error) {
      setState("empty", `Cannot load the queue: ${error.message}`);
      return;
    }
    showNext();
  }

  function setState(state, text) {
    labeller.dataset.state = state;
    message.hidden = !text;
    message.textContent = text || "";
    crop.hidden = state !== "ready";
  }

  function showNext() {
    current = queue.shift() || null;
    if (!current) {
      labeller.dataset.faceId = "";
      setState("empty", done.size ? "Nothing left to label here. Well done!" : "Nothing to label yet: crops arrive with results.");
      return;
    }
    labeller.dataset.faceId = String(current.id);
    crop.src = current.crop_url;
    crop.alt = `Face ${current.id} from ${current.device}`;
    modelLabel.textContent = current.label;
    modelLabel.className = `emotion-chip emo-${current.label}`;
    modelConfidence.textContent = EMQ.percent(current.confidence);
    EMQ.setBars(bars, current.probabilities, current.label);
    faceMeta.textContent = `${current.device} · ${new Date(current.captured_at).toLocaleString()} · face ${current.id} · track ${current.track_id}`;
    resultLink.href = `/results/${current.result_id}`;
    for (const button of choiceButtons) button.classList.toggle("model-choice", button.dataset.label === current.label);
    setState("ready", "");
    if (queue.length < REFILL_BELOW) refill().catch(() => {});
  }

  async function submit(label) {
    if (!current || busy) return;
    busy = true;
    const face = current;
    done.add(face.id);
    setBusy(true);
    const response = await EMQ.postJSON("/api/labels", { face_id: face.id, label }).catch((error) => ({ ok: false, body: { error: error.message } }));
    setBusy(false);
    busy = false;
    if (!response.ok) {
      done.delete(face.id);
      status.textContent = `Not saved: ${response.body.error || `HTTP ${response.status}`}`;
      return;
    }
    sessionCount += 1;
    document.getElementById("session-count").textContent = String(sessionCount);
    showProgress(response.body.progress);
    const verdict = label === face.label ? "confirmed" : `corrected from ${face.label}`;
    status.textContent = `Saved face ${face.id} as ${label}.`;
    addRecent(`Face ${face.id}: ${label} (${verdict})`);
    showNext();
  }

  function skip() {
    if (!current || busy) return;
    done.add(current.id);
    status.textContent = `Skipped face ${current.id}.`;
    showNext();
  }

  function setBusy(value) {
    for (const button of [...choiceButtons, confirmButton, skipButton]) button.disabled = value;
  }

  function addRecent(text) {
    const item = document.createElement("li");
    item.textContent = text;
    recent.prepend(item);
    while (recent.children.length > RECENT_SHOWN) recent.lastElementChild.remove();
  }

  function showProgress(progress) {
    if (!progress) return;
    document.getElementById("progress-labelled").textContent = String(progress.labelled);
    document.getElementById("progress-total").textContent = String(progress.with_crop);
    const bar = document.getElementById("progress");
    bar.max = Math.max(progress.with_crop, 1);
    bar.value = progress.labelled;
  }

  // -- input ------------------------------------------------------------------------------------------
  for (const button of choiceButtons) button.addEventListener("click", () => submit(button.dataset.label));
  confirmButton.addEventListener("click", () => current && submit(current.label));
  skipButton.addEventListener("click", skip);
  deviceSelect.addEventListener("change", restart);

  document.addEventListener("keydown", (event) => {
    if (event.altKey || event.ctrlKey || event.metaKey || event.target.closest("input, select, textarea")) return;
    const index = Number(event.key) - 1;
    if (Number.isInteger(index) && index >= 0 && index < EMQ.emotions.length) {
      event.preventDefault();
      submit(EMQ.emotions[index]);
    } else if (event.key === "Enter") {
      event.preventDefault();
      if (current) submit(current.label);
    } else if (event.key === "s" || event.key === "S" || event.key === "ArrowRight") {
      event.preventDefault();
      skip();
    }
  });

  restart();
})();
