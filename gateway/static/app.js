// The mesh's web page: upload images, follow their status, browse similar images, search by words (the text
// tower of the active model, or its labels: the reply's `mode` says which) and by an image's label chips.
// Plain JS against the public REST API (DESIGN.md section 3); paths are relative so the page also works behind
// a reverse proxy that mounts the gateway under a prefix.
"use strict";

const KEY_STORAGE = "mesh.apiKey";
const SIMILAR_K = 12;
const TERMINAL = new Set(["done", "error"]);
const SEARCHABLE = new Set(["indexed", "done"]);

const $ = (id) => document.getElementById(id);
// props: DOM properties, except aria-*, role and style, which are set as attributes
const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name.startsWith("aria-") || name === "role" || name === "style") node.setAttribute(name, value);
    else node[name] = value;
  }
  node.append(...children);
  return node;
};
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const shortId = (id) => id.slice(0, 8);

// ---- API keys: asked for once when the gateway answers 401, kept for the tab ----

let keyPrompt = null; // one dialog at a time, however many requests were refused together

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

function askForKey(reason) {
  if (keyPrompt) return keyPrompt;
  const dialog = $("key-dialog");
  const input = $("key-input");
  $("key-reason").textContent = reason;
  input.value = "";
  keyPrompt = new Promise((resolve) => {
    const finish = () => {
      const key = dialog.returnValue === "ok" ? input.value.trim() : "";
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      keyPrompt = null;
      updateKeyButton();
      resolve(Boolean(key));
    };
    dialog.addEventListener("close", finish, { once: true });
  });
  dialog.returnValue = "";
  dialog.showModal();
  input.focus();
  return keyPrompt;
}

function updateKeyButton() {
  $("key-button").hidden = !apiKey();
}

// fetch() with the key; on 401 asks for a key and tries again, until the user cancels.
async function api(path, options = {}) {
  for (;;) {
    const key = apiKey();
    const headers = new Headers(options.headers || {});
    if (key) headers.set("X-API-Key", key);
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401) return response;
    if (key && apiKey() === key) sessionStorage.removeItem(KEY_STORAGE); // refused: do not send it again
    updateKeyButton();
    const reason = key ? "That API key was refused; enter another." : "This gateway asks for an API key.";
    if (!(await askForKey(reason))) return response;
  }
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error) return `${body.error.message} (${response.status})`;
  } catch {
    // not JSON: fall through to the status line
  }
  return `HTTP ${response.status} ${response.statusText}`;
}

// ---- thumbnails: plain <img src> when no key is needed (the browser caches and follows redirects);
// with a key, fetch the bytes with the header, since an <img> cannot send one ----

const blobUrls = new Set();

function releaseThumb(img) {
  if (blobUrls.delete(img.src)) URL.revokeObjectURL(img.src);
}

async function showThumb(img, imageId) {
  releaseThumb(img);
  img.dataset.imageId = imageId;
  const path = `images/${encodeURIComponent(imageId)}/content`;
  if (!apiKey()) {
    img.src = path;
    return;
  }
  // presigned=false: a redirect to the object store would lose the header and need CORS there
  const response = await api(`${path}?presigned=false`);
  if (!response.ok) return;
  const blob = await response.blob();
  if (img.dataset.imageId !== imageId) return; // the img was given another picture meanwhile
  const url = URL.createObjectURL(blob);
  blobUrls.add(url);
  img.src = url;
}

function releaseThumbs(container) {
  for (const img of container.querySelectorAll("img")) releaseThumb(img);
}

// ---- uploads and their live status ----

let latestUpload = null; // the upload whose neighbours are shown when it finishes

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
  const search = el("button", { type: "button", className: "secondary", textContent: "Show similar" });
  search.hidden = true;
  card.append(
    thumb,
    el(
      "div",
      { className: "upload-body" },
      el(
        "p",
        { className: "upload-title" },
        el("span", { className: "name", textContent: file.name || "image" }),
        " ",
        el("span", { className: "badge", textContent: "uploading" }),
      ),
      el("p", { className: "upload-id" }),
      el("ol", { className: "history", "aria-label": "State history" }),
      el("ul", { className: "labels", "aria-label": "Labels" }),
      el("p", { className: "error", role: "alert" }),
      search,
    ),
  );
  return card;
}

async function uploadFile(file) {
  const card = uploadCard(file);
  $("uploads").prepend(card);
  latestUpload = card;
  card.searchesBefore = searchSeq;
  const form = new FormData();
  form.append("file", file, file.name || "image");
  let response;
  try {
    response = await api("images/upload", { method: "POST", body: form });
  } catch (err) {
    setStatus(card, "error", "failed");
    card.querySelector(".error").textContent = `Upload failed: ${err.message}`;
    return;
  }
  if (!response.ok) {
    setStatus(card, "error", "refused");
    card.querySelector(".error").textContent = await errorText(response);
    return;
  }
  const body = await response.json();
  card.dataset.imageId = body.image_id;
  const idLine = card.querySelector(".upload-id");
  idLine.append(el("code", { textContent: body.image_id }));
  if (body.duplicate) idLine.append(" — already uploaded");
  card.querySelector("button").addEventListener("click", () => showSimilar(body.image_id));
  setStatus(card, body.status);
  await follow(card, body.image_id);
}

// Poll the record until it is done or failed, slowing down while it waits.
async function follow(card, imageId) {
  let delay = 300;
  for (;;) {
    let record = null;
    try {
      const response = await api(`images/${encodeURIComponent(imageId)}`);
      if (response.ok) record = await response.json();
      else {
        card.querySelector(".error").textContent = await errorText(response);
        if (response.status === 404) {
          setStatus(card, "error", "gone");
          return;
        }
      }
    } catch (err) {
      card.querySelector(".error").textContent = `Status unavailable: ${err.message}`;
    }
    if (record) {
      card.querySelector(".error").textContent = record.error
        ? `${record.error.message} (${record.error.code})`
        : "";
      setStatus(card, record.status);
      renderHistory(card.querySelector(".history"), record);
      renderLabels(card.querySelector(".labels"), record.labels);
      card.querySelector("button").hidden = !SEARCHABLE.has(record.status);
      if (TERMINAL.has(record.status)) {
        // show the newest upload's neighbours, unless the user has searched since it was dropped
        const untouched = latestUpload === card && searchSeq === card.searchesBefore;
        if (record.status === "done" && untouched) showSimilar(imageId);
        return;
      }
    }
    await sleep(delay);
    delay = Math.min(delay * 1.5, 3000);
  }
}

function uploadAll(files) {
  for (const file of files) uploadFile(file);
}

// An image's labels as chips; choosing one shows the images with that label.
function renderLabels(list, labels) {
  list.replaceChildren(
    ...(labels || []).map((label) => {
      const chip = el("button", {
        type: "button",
        className: "chip",
        textContent: label.name,
        title: `probability ${label.score.toFixed(2)}: show the images labelled ${label.name}`,
      });
      chip.dataset.label = label.name;
      chip.addEventListener("click", () => showText(label.name, { label: label.name }));
      return el("li", {}, chip);
    }),
  );
}

// ---- similar images ----

let searchSeq = 0; // a slow answer for an older query must not overwrite a newer one

async function showSimilar(imageId, { push = true } = {}) {
  const seq = ++searchSeq;
  const section = $("results");
  const grid = $("grid");
  const status = $("results-status");
  section.hidden = false;
  section.setAttribute("aria-busy", "true");
  $("results-heading").textContent = "Similar images";
  $("query").hidden = false;
  $("query-id").textContent = imageId;
  section.dataset.queryId = imageId;
  delete section.dataset.text;
  delete section.dataset.mode;
  const queryThumb = $("query-thumb");
  releaseThumb(queryThumb);
  queryThumb.removeAttribute("src");
  status.textContent = "Searching…";
  if (push) {
    const url = new URL(location.href);
    url.searchParams.set("image", imageId);
    history.pushState({ image: imageId }, "", url);
  }

  let response;
  try {
    response = await api(`images/${encodeURIComponent(imageId)}/similar?k=${SIMILAR_K}`);
  } catch (err) {
    response = null;
    if (seq === searchSeq) status.textContent = `Search failed: ${err.message}`;
  }
  if (seq !== searchSeq) return;
  section.removeAttribute("aria-busy");
  releaseThumbs(grid);
  grid.replaceChildren();
  if (!response) return;
  // only now: the search has settled whether a key is needed, and an <img> could not ask for one
  showThumb(queryThumb, imageId);
  if (!response.ok) {
    status.textContent =
      response.status === 409 ? "This image is not indexed yet." : await errorText(response);
    return;
  }
  const body = await response.json();
  status.textContent = body.results.length
    ? `${body.results.length} similar images (model ${body.model}). Choose one to search from it.`
    : "No other images yet.";
  for (const hit of body.results) grid.append(resultItem(hit));
}

// ---- search by words ----

function describeText(body) {
  const n = body.results.length;
  const found = n ? `${n} image${n === 1 ? "" : "s"}` : "No images";
  if (body.mode === "labels") {
    if (!body.labels.length) return `No label matches: ${body.reason}`;
    const shown = body.labels.slice(0, 8).join(", ") + (body.labels.length > 8 ? ", …" : "");
    return `${found}. Searched by labels (this model has no text tower): ${shown}.`;
  }
  return `${found}. Searched by the text tower of ${body.model}.`;
}

async function showText(q, { label = null, push = true } = {}) {
  const seq = ++searchSeq;
  const section = $("results");
  const grid = $("grid");
  const status = $("results-status");
  section.hidden = false;
  section.setAttribute("aria-busy", "true");
  $("results-heading").textContent = label ? `Images labelled “${label}”` : `Images matching “${q}”`;
  $("query").hidden = true;
  delete section.dataset.queryId;
  section.dataset.text = q;
  status.textContent = "Searching…";
  const params = new URLSearchParams({ q, k: String(SIMILAR_K) });
  if (label) params.append("filter", `label:${label}`);
  if (push) {
    const url = new URL(location.href);
    url.search = "";
    url.searchParams.set("q", q);
    if (label) url.searchParams.set("label", label);
    history.pushState({ q, label }, "", url);
  }
  let response;
  try {
    response = await api(`search?${params}`);
  } catch (err) {
    response = null;
    if (seq === searchSeq) status.textContent = `Search failed: ${err.message}`;
  }
  if (seq !== searchSeq) return;
  section.removeAttribute("aria-busy");
  releaseThumbs(grid);
  grid.replaceChildren();
  if (!response) return;
  if (!response.ok) {
    status.textContent = await errorText(response);
    return;
  }
  const body = await response.json();
  section.dataset.mode = body.mode;
  status.textContent = describeText(body);
  for (const hit of body.results) grid.append(resultItem(hit));
}

function resultItem(hit) {
  const img = el("img", { alt: "", loading: "lazy", width: 160, height: 160 });
  showThumb(img, hit.image_id);
  const score = Math.max(0, Math.min(1, hit.score));
  const button = el(
    "button",
    {
      type: "button",
      className: "result",
      title: hit.image_id,
      "aria-label": `Image ${shortId(hit.image_id)}, similarity ${hit.score.toFixed(3)}: search from it`,
    },
    img,
    el(
      "span",
      { className: "caption" },
      el("span", { className: "score", textContent: hit.score.toFixed(3) }),
      el("code", { textContent: shortId(hit.image_id) }),
    ),
    el("span", { className: "score-bar", style: `--score: ${score}` }),
  );
  button.dataset.imageId = hit.image_id;
  button.dataset.score = String(hit.score);
  button.addEventListener("click", () => showSimilar(hit.image_id));
  return el("li", {}, button);
}

// ---- wiring ----

function wireDropZone() {
  const zone = $("drop-zone");
  const input = $("file-input");
  input.addEventListener("change", () => {
    uploadAll([...input.files]);
    input.value = ""; // the same file can be chosen again
  });
  const over = (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  };
  zone.addEventListener("dragenter", over);
  zone.addEventListener("dragover", over);
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const files = [...(event.dataTransfer ? event.dataTransfer.files : [])];
    uploadAll(files.filter((f) => !f.type || f.type.startsWith("image/")));
  });
  // a file dropped beside the zone would otherwise replace the page with the image
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (e) => e.preventDefault());
}

function init() {
  wireDropZone();
  $("key-cancel").addEventListener("click", () => $("key-dialog").close(""));
  $("key-button").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    updateKeyButton();
  });
  updateKeyButton();
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const q = $("search-input").value.trim();
    if (q) showText(q);
  });
  // the page's state is in its URL: ?image=ID (similar to it) or ?q=TEXT[&label=NAME] (a search)
  const fromUrl = () => {
    const params = new URL(location.href).searchParams;
    if (params.get("image")) showSimilar(params.get("image"), { push: false });
    else if (params.get("q")) showText(params.get("q"), { label: params.get("label"), push: false });
    else $("results").hidden = true;
  };
  window.addEventListener("popstate", fromUrl);
  fromUrl();
}

init();
