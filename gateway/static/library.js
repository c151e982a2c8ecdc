// The library: every image, newest first, in pages as the user scrolls (GET images with a cursor), narrowed by
// filter chips (metadata key:value, label:NAME); an image's view (preview, labels, metadata, similar, delete);
// and the groups of copies with a way to delete the extra ones.

import { $, api, el, errorText, releaseImgs, shortId, showImg, showThumb } from "./api.js";

const PAGE = 48;

const hooks = { showSimilar: () => {}, navigate: () => {} };
export function onLibraryEvents(h) {
  Object.assign(hooks, h);
}

// ---- filters: chips above the views; the URL's filter parameters ----

export const filters = [];

export function setFilters(list) {
  filters.splice(0, filters.length, ...list);
  renderFilters();
}

function renderFilters() {
  $("filters").replaceChildren(
    ...filters.map((f) => {
      const remove = el("button", {
        type: "button",
        className: "chip active",
        textContent: `${f} ×`,
        title: `Stop filtering on ${f}`,
      });
      remove.dataset.filter = f;
      remove.addEventListener("click", () => hooks.navigate({ filters: filters.filter((x) => x !== f) }));
      return el("li", {}, remove);
    }),
  );
}

export function chip(text, filter, title) {
  const button = el("button", { type: "button", className: "chip", textContent: text, title });
  button.dataset.filter = filter;
  if (filter.startsWith("label:")) button.dataset.label = filter.slice(6);
  button.addEventListener("click", () => {
    $("viewer").close();
    hooks.navigate({ filters: [...new Set([...filters, filter])] });
  });
  return el("li", {}, button);
}

export function labelChips(list, labels) {
  list.replaceChildren(
    ...(labels || []).map((label) =>
      chip(label.name, `label:${label.name}`, `probability ${label.score.toFixed(2)}: show the images labelled so`),
    ),
  );
}

// ---- the grid, page by page ----

const grid = { cursor: "", loading: false, done: false, generation: 0, shown: new Set() };

function tile(item) {
  const img = el("img", { alt: "", loading: "lazy", width: 160, height: 160 });
  // no thumbnail yet (the pipeline makes it): the original meanwhile, swapped when the image is done
  showImg(img, item.thumbnail_url || `images/${encodeURIComponent(item.image_id)}/content`);
  const button = el(
    "button",
    {
      type: "button",
      className: "tile",
      title: item.filename || item.image_id,
      "aria-label": `${item.filename || shortId(item.image_id)}, ${item.status}: open`,
    },
    img,
    el(
      "span",
      { className: "caption" },
      el("span", { className: "name", textContent: item.filename || shortId(item.image_id) }),
      el("span", { className: `badge badge-${item.status}`, textContent: item.status }),
    ),
  );
  button.dataset.imageId = item.image_id;
  button.dataset.status = item.status;
  button.addEventListener("click", () => openViewer(item.image_id));
  return el("li", {}, button);
}

export async function loadLibrary(reset = false) {
  if (reset) {
    grid.generation += 1;
    grid.cursor = "";
    grid.done = false;
    grid.loading = false;
    grid.shown.clear();
    releaseImgs($("library-grid"));
    $("library-grid").replaceChildren();
  }
  if (grid.loading || grid.done) return;
  grid.loading = true;
  const generation = grid.generation;
  const params = new URLSearchParams({ limit: String(PAGE) });
  if (grid.cursor) params.set("cursor", grid.cursor);
  for (const f of filters) params.append("filter", f);
  $("library-status").textContent = "Loading…";
  let response;
  try {
    response = await api(`images?${params}`);
  } catch (err) {
    response = null;
    $("library-status").textContent = `Listing failed: ${err.message}`;
  }
  if (generation !== grid.generation) return; // filters changed meanwhile: a newer load owns the grid
  grid.loading = false;
  if (!response) return;
  if (!response.ok) {
    $("library-status").textContent = await errorText(response);
    return;
  }
  const body = await response.json();
  const fresh = body.images.filter((item) => !grid.shown.has(item.image_id));
  for (const item of fresh) grid.shown.add(item.image_id);
  $("library-grid").append(...fresh.map(tile));
  grid.cursor = body.next_cursor || "";
  grid.done = !body.next_cursor;
  const n = grid.shown.size;
  const narrowed = filters.length ? ` matching ${filters.join(", ")}` : "";
  $("library-status").textContent = n
    ? `${n} image${n === 1 ? "" : "s"}${narrowed}${grid.done ? "" : " so far: scroll for more"}`
    : `No images${narrowed} yet: drop some on the left, or run \`mesh demo\`.`;
  $("library-grid").dataset.complete = String(grid.done);
  // the page is not full yet (asked of the layout now: the observer's last answer may predate this page)
  if (!grid.done && $("library-sentinel").getBoundingClientRect().top < window.innerHeight) loadLibrary();
}

// A new upload: shown first in the grid as soon as it is recorded (when no filter hides it).
export async function prependImage(imageId) {
  if (filters.length || grid.shown.has(imageId)) return;
  const response = await api(`images/${encodeURIComponent(imageId)}`);
  if (!response.ok) return;
  const rec = await response.json();
  grid.shown.add(imageId);
  $("library-grid").prepend(tile({ ...rec, thumbnail_url: rec.thumbnail_url }));
}

export function updateTile(record) {
  const button = document.querySelector(`#library-grid .tile[data-image-id="${CSS.escape(record.image_id)}"]`);
  if (!button) return;
  button.dataset.status = record.status;
  const badge = button.querySelector(".badge");
  badge.textContent = record.status;
  badge.className = `badge badge-${record.status}`;
  if (record.thumbnail_url) showImg(button.querySelector("img"), record.thumbnail_url);
}

let sentinelVisible = false;
export function wireInfiniteScroll() {
  const observer = new IntersectionObserver((entries) => {
    sentinelVisible = entries.some((e) => e.isIntersecting);
    if (sentinelVisible && !$("library").hidden) loadLibrary();
  });
  observer.observe($("library-sentinel"));
}

// ---- one image's view ----

function formatSize(bytes) {
  return bytes >= 1 << 20 ? `${(bytes / (1 << 20)).toFixed(1)} MB` : `${Math.ceil(bytes / 1024)} KB`;
}

export async function openViewer(imageId) {
  const dialog = $("viewer");
  dialog.dataset.imageId = imageId;
  $("viewer-error").textContent = "";
  const response = await api(`images/${encodeURIComponent(imageId)}`);
  if (!response.ok) {
    $("viewer-title").textContent = shortId(imageId);
    $("viewer-error").textContent = await errorText(response);
    if (!dialog.open) dialog.showModal();
    return;
  }
  const rec = await response.json();
  $("viewer-title").textContent = rec.filename || imageId;
  const when = rec.created_at ? new Date(rec.created_at * 1000).toLocaleString() : "";
  $("viewer-meta").textContent = `${rec.width} × ${rec.height}, ${formatSize(rec.size_bytes)}, ${rec.status}, ${when}`;
  const id = encodeURIComponent(imageId);
  showImg($("viewer-image"), `images/${id}/thumbnail?size=1024`, `images/${id}/content`);
  labelChips($("viewer-labels"), rec.labels);
  $("viewer-metadata").replaceChildren(
    ...Object.entries(rec.metadata || {}).map(([k, v]) => chip(`${k}: ${v}`, `${k}:${v}`, "show the images with this")),
  );
  $("viewer-similar").disabled = !["indexed", "done"].includes(rec.status);
  if (!dialog.open) dialog.showModal();
}

async function deleteImage(imageId) {
  const response = await api(`images/${encodeURIComponent(imageId)}`, { method: "DELETE" });
  if (!response.ok && response.status !== 404) throw new Error(await errorText(response));
  for (const node of document.querySelectorAll(`[data-image-id="${CSS.escape(imageId)}"]`)) {
    if (node.matches(".tile, .result, .member")) node.closest("li").remove();
  }
  grid.shown.delete(imageId);
}

export function wireViewer() {
  const dialog = $("viewer");
  $("viewer-similar").addEventListener("click", () => {
    dialog.close();
    hooks.showSimilar(dialog.dataset.imageId);
  });
  $("viewer-delete").addEventListener("click", async () => {
    const id = dialog.dataset.imageId;
    if (!confirm(`Delete ${$("viewer-title").textContent} everywhere?`)) return;
    try {
      await deleteImage(id);
      dialog.close();
    } catch (err) {
      $("viewer-error").textContent = err.message;
    }
  });
}

// ---- duplicates: groups of verified copies; keep the largest of each, delete the others ----

async function records(ids) {
  const out = await Promise.all(
    ids.map(async (id) => {
      const r = await api(`images/${encodeURIComponent(id)}`);
      return r.ok ? r.json() : null;
    }),
  );
  return out.filter(Boolean);
}

function keeper(recs) {
  // the copy to keep: the most pixels, then the most bytes (the least re-encoded), then the oldest
  return [...recs].sort(
    (a, b) => b.width * b.height - a.width * a.height || b.size_bytes - a.size_bytes || a.created_at - b.created_at,
  )[0];
}

function groupItem(group, recs) {
  const keep = keeper(recs);
  const extra = recs.filter((r) => r.image_id !== keep.image_id);
  const members = recs.map((r) => {
    const img = el("img", { alt: "", loading: "lazy", width: 120, height: 120 });
    showThumb(img, r.image_id);
    const button = el(
      "button",
      { type: "button", className: "member", title: r.filename || r.image_id },
      img,
      el("span", {
        className: "caption",
        textContent: `${r.image_id === keep.image_id ? "keep · " : ""}${r.width}×${r.height}`,
      }),
    );
    button.dataset.imageId = r.image_id;
    button.addEventListener("click", () => openViewer(r.image_id));
    return el("li", {}, button);
  });
  const remove = el("button", {
    type: "button",
    className: "secondary",
    textContent: `Delete the ${extra.length} other cop${extra.length === 1 ? "y" : "ies"}`,
  });
  const item = el(
    "li",
    { className: "group" },
    el("p", { className: "group-title" }, el("span", { className: `badge tier-${group.tier}`, textContent: group.tier }), ` ${group.size} images`),
    el("ul", { className: "members" }, ...members),
    remove,
  );
  item.dataset.tier = group.tier;
  item.dataset.imageIds = group.image_ids.join(" ");
  remove.addEventListener("click", async () => {
    if (!confirm(`Delete ${extra.length} copies, keeping ${keep.filename || shortId(keep.image_id)}?`)) return;
    remove.disabled = true;
    try {
      for (const r of extra) await deleteImage(r.image_id);
      item.remove();
    } catch (err) {
      remove.disabled = false;
      $("duplicates-status").textContent = err.message;
    }
  });
  return item;
}

export async function showDuplicates() {
  const status = $("duplicates-status");
  const list = $("duplicate-groups");
  status.textContent = "Looking for copies…";
  releaseImgs(list);
  list.replaceChildren();
  const groups = [];
  let cursor = "";
  let body = null;
  do {
    const response = await api(`duplicates?limit=200&cursor=${encodeURIComponent(cursor)}`);
    if (!response.ok) {
      status.textContent = await errorText(response);
      return;
    }
    body = await response.json();
    groups.push(...body.groups);
    cursor = body.next_cursor || "";
  } while (cursor);
  const all = await Promise.all(groups.map((group) => records(group.image_ids)));
  groups.forEach((group, i) => {
    if (all[i].length > 1) list.append(groupItem(group, all[i]));
  });
  const pending = body.pending ? ` (${body.pending} image${body.pending === 1 ? "" : "s"} still being checked)` : "";
  status.textContent = groups.length
    ? `${groups.length} group${groups.length === 1 ? "" : "s"} of copies of the same picture${pending}. Pictures that only look alike are not grouped here.`
    : `No copies found${pending}.`;
}
