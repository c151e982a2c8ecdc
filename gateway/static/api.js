// The public REST API as the page uses it: requests with the API key when the gateway asks for one, images
// for <img> elements, error texts. Paths are relative so the page also works behind a reverse proxy that mounts
// the gateway under a prefix.
//
// Authentication: without API keys nothing is sent. When the gateway answers 401 the page asks for a key once
// and exchanges it for an HttpOnly session cookie (POST session): from then on <img src>, the event stream
// and every request carry the cookie. A gateway without sessions keeps the key in session storage and sends
// it as X-API-Key; <img> elements then get their bytes through fetch (blob URLs), since they cannot send it.

const KEY_STORAGE = "mesh.apiKey";
const SESSION_STORAGE = "mesh.session";

export const $ = (id) => document.getElementById(id);

// props: DOM properties, except aria-*, role, style and data-*, which are set as attributes
export const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (/^(aria-|data-)/.test(name) || name === "role" || name === "style") node.setAttribute(name, value);
    else node[name] = value;
  }
  node.append(...children);
  return node;
};

export const shortId = (id) => id.slice(0, 8);

let keyPrompt = null; // one dialog at a time, however many requests were refused together

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function hasSession() {
  return sessionStorage.getItem(SESSION_STORAGE) === "1";
}

// Whether <img src> and EventSource can reach the API as they are (no key, or a session cookie).
export function plainUrlsWork() {
  return !apiKey() || hasSession();
}

export function updateKeyButton() {
  $("key-button").hidden = !apiKey() && !hasSession();
}

export async function forgetKey() {
  if (hasSession()) await fetch("session", { method: "DELETE" }).catch(() => null);
  sessionStorage.removeItem(KEY_STORAGE);
  sessionStorage.removeItem(SESSION_STORAGE);
  updateKeyButton();
}

function askForKey(reason) {
  if (keyPrompt) return keyPrompt;
  const dialog = $("key-dialog");
  const input = $("key-input");
  $("key-reason").textContent = reason;
  input.value = "";
  keyPrompt = new Promise((resolve) => {
    const finish = async () => {
      const key = dialog.returnValue === "ok" ? input.value.trim() : "";
      if (key) await useKey(key);
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

// A key: a session cookie when the gateway offers one, else the key itself for this tab.
async function useKey(key) {
  sessionStorage.removeItem(SESSION_STORAGE);
  let response = null;
  try {
    response = await fetch("session", { method: "POST", headers: { "X-API-Key": key } });
  } catch {
    response = null;
  }
  if (response && response.ok) {
    sessionStorage.setItem(SESSION_STORAGE, "1");
    sessionStorage.removeItem(KEY_STORAGE);
  } else {
    sessionStorage.setItem(KEY_STORAGE, key); // no sessions here (or the key was refused: asked again)
  }
}

// fetch() with the key when there is one; on 401 asks for a key and tries again, until the user cancels.
export async function api(path, options = {}) {
  for (;;) {
    const key = apiKey();
    const headers = new Headers(options.headers || {});
    if (key) headers.set("X-API-Key", key);
    headers.set("X-Requested-With", "mesh-web"); // the gateway's CSRF check for cookie-authenticated writes
    const response = await fetch(path, { ...options, headers });
    if (response.status !== 401) return response;
    const hadCredentials = Boolean(key) || hasSession();
    sessionStorage.removeItem(KEY_STORAGE); // refused: do not send it again
    sessionStorage.removeItem(SESSION_STORAGE);
    updateKeyButton();
    const reason = hadCredentials
      ? "That API key was refused (or the session expired); enter a key."
      : "This gateway asks for an API key.";
    if (!(await askForKey(reason))) return response;
  }
}

export async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error) return `${body.error.message} (${response.status})`;
  } catch {
    // not JSON: fall through to the status line
  }
  return `HTTP ${response.status} ${response.statusText}`;
}

// ---- pictures for <img>: the URL itself when it works as it is, else the bytes fetched with the key ----

const blobUrls = new Set();

export function releaseImg(img) {
  if (blobUrls.delete(img.src)) URL.revokeObjectURL(img.src);
}

export function releaseImgs(container) {
  for (const img of container.querySelectorAll("img")) releaseImg(img);
}

export async function showImg(img, path, fallback = null) {
  releaseImg(img);
  img.dataset.path = path;
  if (plainUrlsWork()) {
    if (fallback) img.addEventListener("error", () => (img.src = fallback), { once: true });
    img.src = path;
    return;
  }
  // a redirect to the object store would lose the header and need CORS there
  const sep = path.includes("?") ? "&" : "?";
  let response = await api(path.includes("/content") ? `${path}${sep}presigned=false` : path);
  if (!response.ok && fallback) response = await api(`${fallback}?presigned=false`);
  if (!response.ok) return;
  const blob = await response.blob();
  if (img.dataset.path !== path) return; // the img was given another picture meanwhile
  const url = URL.createObjectURL(blob);
  blobUrls.add(url);
  img.src = url;
}

// An image's small picture: its thumbnail, or the original while the pipeline has not made the thumbnail.
export function showThumb(img, imageId) {
  const id = encodeURIComponent(imageId);
  return showImg(img, `images/${id}/thumbnail`, `images/${id}/content`);
}
