// The mesh's web page: a library of the uploaded images (grid, infinite scroll, filter chips, an image's view with
// delete), uploads of files and folders in a bounded queue with live status, search by words and by a dropped
// image, similar images, and the groups of copies. Plain ES modules against the public REST API (DESIGN.md
// section 3), no build step. The page's state is in its URL:
//   (nothing)            the library          ?filter=k:v (repeatable)  the library, narrowed
//   ?image=ID            images similar to ID ?q=TEXT[&label=NAME]      a search by words (or a label chip)
//   ?view=duplicates     the groups of copies

import { $, forgetKey, updateKeyButton } from "./api.js";
import {
  filters,
  labelChips,
  loadLibrary,
  onLibraryEvents,
  openViewer,
  prependImage,
  setFilters,
  showDuplicates,
  updateTile,
  wireInfiniteScroll,
  wireViewer,
} from "./library.js";
import { onResultChosen, probeTextSearch, showSimilar, showText, wireImageSearch } from "./search.js";
import { onUploadEvents, setLabelRenderer, wireUploads } from "./uploads.js";

let navigations = 0; // a finished upload shows its neighbours only if the user has not gone elsewhere since

function show(view) {
  for (const id of ["library", "results", "duplicates"]) $(id).hidden = id !== view;
  document.body.dataset.view = view;
}

function render() {
  const params = new URL(location.href).searchParams;
  setFilters(params.getAll("filter"));
  if (params.get("image")) {
    show("results");
    showSimilar(params.get("image"));
  } else if (params.get("q")) {
    show("results");
    $("search-input").value = params.get("q");
    showText(params.get("q"), { label: params.get("label"), filters });
  } else if (params.get("view") === "duplicates") {
    show("duplicates");
    showDuplicates();
  } else {
    show("library");
    loadLibrary(true);
  }
}

// Go somewhere: a new history entry, then render it.
function navigate({ image = null, q = null, label = null, view = null, filters: fs = null } = {}) {
  navigations += 1;
  const url = new URL(location.href);
  url.search = "";
  if (image) url.searchParams.set("image", image);
  if (q) url.searchParams.set("q", q);
  if (label) url.searchParams.set("label", label);
  if (view) url.searchParams.set("view", view);
  for (const f of fs || []) url.searchParams.append("filter", f);
  history.pushState(null, "", url);
  render();
}

function init() {
  const similar = (id) => navigate({ image: id });
  onLibraryEvents({ showSimilar: similar, navigate });
  onResultChosen(similar);
  setLabelRenderer(labelChips);
  onUploadEvents({
    showSimilar: similar,
    navigations: () => navigations,
    onUploaded: (id) => prependImage(id),
    onDone: (record) => updateTile(record),
  });
  wireUploads();
  wireImageSearch();
  wireViewer();
  wireInfiniteScroll();

  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const q = $("search-input").value.trim();
    if (q) navigate({ q, filters });
  });
  $("library-link").addEventListener("click", () => navigate({ filters }));
  $("duplicates-link").addEventListener("click", () => navigate({ view: "duplicates" }));
  $("home-link").addEventListener("click", (event) => {
    event.preventDefault();
    navigate();
  });
  $("key-cancel").addEventListener("click", () => $("key-dialog").close(""));
  $("key-button").addEventListener("click", async () => {
    await forgetKey();
    render();
  });
  // a file dropped beside the drop zones would otherwise replace the page with the image
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (e) => e.preventDefault());
  window.addEventListener("popstate", render);
  updateKeyButton();
  render();
  probeTextSearch();
  window.meshOpenViewer = openViewer; // for people poking at the page from the console
}

init();
