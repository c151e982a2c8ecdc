// Searches: images like a stored one (similar), by words (the active model's text tower, or its labels: the
// reply's `mode` says which), and by an image dropped on the page (not stored). All show in #results.

import { $, api, el, errorText, releaseImg, releaseImgs, shortId, showThumb } from "./api.js";

const K = 12;
let seq = 0; // a slow answer for an older query must not overwrite a newer one

function begin(heading, { queryId = null, text = null } = {}) {
  const section = $("results");
  for (const id of ["library", "duplicates"]) $(id).hidden = true; // a search shows its results, wherever from
  section.hidden = false;
  document.body.dataset.view = "results";
  section.setAttribute("aria-busy", "true");
  $("results-heading").textContent = heading;
  $("query").hidden = !queryId;
  if (queryId) {
    $("query-id").textContent = queryId;
    section.dataset.queryId = queryId;
    const thumb = $("query-thumb");
    releaseImg(thumb);
    thumb.removeAttribute("src");
  } else delete section.dataset.queryId;
  if (text !== null) section.dataset.text = text;
  else delete section.dataset.text;
  delete section.dataset.mode;
  $("results-status").textContent = "Searching…";
  return ++seq;
}

async function finish(mySeq, response) {
  if (mySeq !== seq) return null;
  $("results").removeAttribute("aria-busy");
  releaseImgs($("grid"));
  $("grid").replaceChildren();
  if (!response) return null;
  if (!response.ok) {
    $("results-status").textContent =
      response.status === 409 ? "This image is not indexed yet." : await errorText(response);
    return null;
  }
  const body = await response.json();
  if (mySeq !== seq) return null;
  for (const hit of body.results) $("grid").append(resultItem(hit));
  return body;
}

async function request(mySeq, path, options) {
  try {
    return await api(path, options);
  } catch (err) {
    if (mySeq === seq) $("results-status").textContent = `Search failed: ${err.message}`;
    return null;
  }
}

export async function showSimilar(imageId) {
  const mySeq = begin("Similar images", { queryId: imageId });
  const response = await request(mySeq, `images/${encodeURIComponent(imageId)}/similar?k=${K}`);
  if (mySeq === seq && response) showThumb($("query-thumb"), imageId); // the key question is settled by now
  const body = await finish(mySeq, response);
  if (!body) return;
  $("results-status").textContent = body.results.length
    ? `${body.results.length} similar images (model ${body.model}). Choose one to search from it.`
    : "No other images yet.";
}

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

export async function showText(q, { label = null, filters = [] } = {}) {
  const heading = label ? `Images labelled “${label}”` : `Images matching “${q}”`;
  const mySeq = begin(heading, { text: q });
  const params = new URLSearchParams({ q, k: String(K) });
  if (label) params.append("filter", `label:${label}`);
  for (const f of filters) params.append("filter", f);
  const body = await finish(mySeq, await request(mySeq, `search?${params}`));
  if (!body) return;
  $("results").dataset.mode = body.mode;
  $("results-status").textContent = describeText(body);
}

export async function showImageSearch(file) {
  const mySeq = begin(`Images like ${file.name || "the dropped image"}`);
  const form = new FormData();
  form.append("file", file, file.name || "image");
  const response = await request(mySeq, `search/image?k=${K}`, { method: "POST", body: form });
  const body = await finish(mySeq, response);
  if (!body) return;
  $("results").dataset.mode = "image";
  $("results-status").textContent = body.results.length
    ? `${body.results.length} stored images like it (model ${body.model}); it was not stored.`
    : "No stored images yet.";
}

let onResult = () => {};
export function onResultChosen(fn) {
  onResult = fn;
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
      "aria-label": `Image ${shortId(hit.image_id)}, score ${hit.score.toFixed(3)}: search from it`,
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
  button.addEventListener("click", () => onResult(hit.image_id));
  return el("li", {}, button);
}

// The search box is useful only when the active model has a text tower or labels: ask once, say why not.
export async function probeTextSearch() {
  let response;
  try {
    response = await api("search?q=probe&k=1");
  } catch {
    return;
  }
  if (response.status !== 400) return;
  const why = await errorText(response);
  $("search-input").disabled = true;
  $("search-button").disabled = true;
  $("search-input").placeholder = "Search by words is off";
  const banner = $("search-disabled");
  banner.textContent = `Search by words is off: ${why}`;
  banner.hidden = false;
}

export function wireImageSearch() {
  const zone = $("image-search-zone");
  const input = $("image-search-input");
  input.addEventListener("change", () => {
    if (input.files[0]) showImageSearch(input.files[0]);
    input.value = "";
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
    event.stopPropagation();
    zone.classList.remove("dragging");
    const file = [...(event.dataTransfer ? event.dataTransfer.files : [])][0];
    if (file) showImageSearch(file);
  });
}
