// Uploads: a bounded queue (a few at a time) fed by files, a chosen folder or a dropped folder, with overall
// progress and cancel; each card follows its image live through the event stream (server-sent events relaying
// images.events.*), falling back to polling when the stream cannot be opened.

import { $, api, el, errorText, plainUrlsWork } from "./api.js";

const CONCURRENCY = 3;
const TERMINAL = new Set(["done", "error"]);
const SEARCHABLE = new Set(["indexed", "done"]);
const IMAGE_NAME = /\.(jpe?g|png|webp|gif|bmp|tiff?|heic|heif|avif)$/i;

const hooks = { onDone: () => {}, onUploaded: () => {}, showSimilar: () => {} };
export function onUploadEvents(h) {
  Object.assign(hooks, h);
}

// ---- the queue ----

const queue = { pending: [], running: new Set(), total: 0, finished: 0, failed: 0 };

function updateQueue() {
  const box = $("queue");
  const active = queue.pending.length + queue.running.size;
  box.hidden = queue.total === 0;
  $("queue-progress").max = Math.max(1, queue.total);
  $("queue-progress").value = queue.finished;
  const failed = queue.failed ? `, ${queue.failed} refused or failed` : "";
  $("queue-status").textContent = active
    ? `Uploading: ${queue.finished} of ${queue.total} sent${failed}`
    : `${queue.finished} of ${queue.total} sent${failed}`;
  $("queue-cancel").hidden = active === 0;
}

export function isImageFile(file) {
  return (file.type && file.type.startsWith("image/")) || IMAGE_NAME.test(file.name || "");
}

export function uploadAll(files) {
  const images = files.filter(isImageFile);
  if (!images.length) return;
  if (!queue.pending.length && !queue.running.size) {
    queue.total = queue.finished = queue.failed = 0; // a new batch counts from zero
  }
  queue.pending.push(...images);
  queue.total += images.length;
  updateQueue();
  pump();
}

function pump() {
  while (queue.running.size < CONCURRENCY && queue.pending.length) {
    const file = queue.pending.shift();
    const job = { controller: new AbortController() };
    queue.running.add(job);
    uploadFile(file, job.controller.signal, queue.total === 1).finally(() => {
      queue.running.delete(job);
      queue.finished += 1;
      updateQueue();
      pump();
    });
  }
  updateQueue();
}

export function cancelUploads() {
  const dropped = queue.pending.length;
  queue.pending.length = 0;
  queue.total -= dropped;
  for (const job of queue.running) job.controller.abort();
  updateQueue();
}

// ---- one upload and its card ----

function setStatus(card, status, text) {
  card.dataset.status = status;
  const badge = card.querySelector(".badge");
  badge.textContent = text || status;
  badge.className = `badge badge-${status}`;
}

function uploadCard(file) {
  const card = el("li", { className: "upload" });
  card.dataset.status = "uploading";
  const thumb = el("img", { className: "thumb", alt: "", width: 64, height: 64 });
  if (file.type.startsWith("image/")) {
    // the local file is the stored picture, so it serves as the card's thumbnail without a round trip
    const url = URL.createObjectURL(file);
    thumb.src = url;
    thumb.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
  }
  const similar = el("button", { type: "button", className: "secondary", textContent: "Show similar" });
  similar.hidden = true;
  card.append(
    thumb,
    el(
      "div",
      { className: "upload-body" },
      el(
        "p",
        { className: "upload-title" },
        el("span", { className: "name", textContent: file.webkitRelativePath || file.name || "image" }),
        " ",
        el("span", { className: "badge", textContent: "uploading" }),
      ),
      el("p", { className: "upload-id" }),
      el("ol", { className: "history", "aria-label": "State history" }),
      el("ul", { className: "labels", "aria-label": "Labels" }),
      el("p", { className: "error", role: "alert" }),
      similar,
    ),
  );
  return card;
}

let latestSingle = null; // a lone upload whose neighbours are shown when it finishes

async function uploadFile(file, signal, alone) {
  const card = uploadCard(file);
  $("uploads").prepend(card);
  if (alone) {
    latestSingle = card;
    card.navigationsBefore = hooks.navigations ? hooks.navigations() : 0;
  }
  const form = new FormData();
  form.append("file", file, file.name || "image");
  let response;
  try {
    response = await api("images/upload", { method: "POST", body: form, signal });
  } catch (err) {
    queue.failed += 1;
    setStatus(card, "error", signal.aborted ? "cancelled" : "failed");
    card.querySelector(".error").textContent = signal.aborted ? "Cancelled." : `Upload failed: ${err.message}`;
    return;
  }
  if (!response.ok) {
    queue.failed += 1;
    setStatus(card, "error", "refused");
    card.querySelector(".error").textContent = await errorText(response);
    return;
  }
  const body = await response.json();
  card.dataset.imageId = body.image_id;
  const idLine = card.querySelector(".upload-id");
  idLine.append(el("code", { textContent: body.image_id }));
  if (body.duplicate) idLine.append(" — already uploaded");
  card.querySelector("button").addEventListener("click", () => hooks.showSimilar(body.image_id));
  setStatus(card, body.status);
  hooks.onUploaded(body.image_id);
  follow(card, body.image_id);
}

// ---- following cards: the event stream, or polling when it cannot be used ----

const followed = new Map(); // image id -> card
let stream = null;
let streamFailed = false; // the stream never opened (no /events, or a proxy in the way): poll instead

function ensureStream() {
  if (stream || streamFailed || !plainUrlsWork() || typeof EventSource === "undefined") return Boolean(stream);
  stream = new EventSource("events");
  let opened = false;
  stream.addEventListener("open", () => (opened = true));
  stream.addEventListener("error", () => {
    if (opened) return; // a dropped stream reconnects by itself (and refreshes every card on "open")
    stream.close();
    stream = null;
    streamFailed = true;
    for (const [id, card] of followed) poll(card, id);
  });
  const onEvent = (event) => {
    const data = JSON.parse(event.data);
    const card = followed.get(data.image_id);
    if (card) refresh(card, data.image_id);
  };
  for (const status of ["processing", "embedded", "indexed", "done", "error"]) {
    stream.addEventListener(status, onEvent);
  }
  stream.addEventListener("open", () => {
    for (const [id, card] of followed) refresh(card, id); // whatever happened while it was closed
  });
  return true;
}

function follow(card, imageId) {
  followed.set(imageId, card);
  if (ensureStream()) {
    refresh(card, imageId); // it may have moved on before the stream saw it
    return;
  }
  poll(card, imageId);
}

async function poll(card, imageId) {
  let delay = 300;
  while (followed.has(imageId)) {
    await refresh(card, imageId);
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 1.5, 3000);
  }
}

function formatAt(at, start) {
  if (typeof at !== "number") return "";
  const offset = at - start;
  return offset < 0.0005 ? new Date(at * 1000).toLocaleTimeString() : `+${offset.toFixed(2)} s`;
}

function renderHistory(list, record) {
  const start = record.created_at || (record.history[0] && record.history[0].at) || 0;
  list.replaceChildren(
    ...(record.history || []).map((entry) => {
      const label = entry.status || entry.step || "event";
      return el(
        "li",
        { className: entry.status ? `state state-${entry.status}` : "step" },
        el("span", { className: "label", textContent: label }),
        " ",
        el("time", { textContent: formatAt(entry.at, start) }),
      );
    }),
  );
}

let renderLabelChips = () => {};
export function setLabelRenderer(fn) {
  renderLabelChips = fn;
}

async function refresh(card, imageId) {
  let record = null;
  try {
    const response = await api(`images/${encodeURIComponent(imageId)}`);
    if (response.ok) record = await response.json();
    else {
      card.querySelector(".error").textContent = await errorText(response);
      if (response.status === 404) {
        setStatus(card, "error", "gone");
        followed.delete(imageId);
      }
      return;
    }
  } catch (err) {
    card.querySelector(".error").textContent = `Status unavailable: ${err.message}`;
    return;
  }
  card.querySelector(".error").textContent = record.error ? `${record.error.message} (${record.error.code})` : "";
  setStatus(card, record.status);
  renderHistory(card.querySelector(".history"), record);
  renderLabelChips(card.querySelector(".labels"), record.labels);
  card.querySelector("button").hidden = !SEARCHABLE.has(record.status);
  if (TERMINAL.has(record.status) && followed.has(imageId)) {
    followed.delete(imageId);
    hooks.onDone(record);
    const untouched = latestSingle === card && (!hooks.navigations || hooks.navigations() === card.navigationsBefore);
    if (record.status === "done" && untouched) hooks.showSimilar(imageId);
  }
}

// ---- folders: a chosen folder (webkitdirectory) gives files; a dropped one is walked entry by entry ----

async function filesOfEntry(entry) {
  if (entry.isFile) return [await new Promise((resolve, reject) => entry.file(resolve, reject))];
  if (!entry.isDirectory) return [];
  const reader = entry.createReader();
  const entries = [];
  for (;;) {
    const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
    if (!batch.length) break; // readEntries answers in batches until an empty one
    entries.push(...batch);
  }
  const nested = await Promise.all(entries.map(filesOfEntry));
  return nested.flat();
}

export async function droppedFiles(dataTransfer) {
  if (!dataTransfer) return [];
  const items = [...(dataTransfer.items || [])].filter((i) => i.kind === "file");
  const entries = items.map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null));
  if (entries.length && entries.every(Boolean)) return (await Promise.all(entries.map(filesOfEntry))).flat();
  return [...(dataTransfer.files || [])];
}

export function wireUploads() {
  const zone = $("drop-zone");
  for (const id of ["file-input", "folder-input"]) {
    const input = $(id);
    input.addEventListener("change", () => {
      uploadAll([...input.files]);
      input.value = ""; // the same files can be chosen again
    });
  }
  const over = (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  };
  zone.addEventListener("dragenter", over);
  zone.addEventListener("dragover", over);
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", async (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    uploadAll(await droppedFiles(event.dataTransfer));
  });
  $("queue-cancel").addEventListener("click", cancelUploads);
}
