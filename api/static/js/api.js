// The API key (kept in localStorage under `ioc.key`) and requests to /api/v1 with it.
// A 401 anywhere ends the session: `unauthorized` is dispatched on `bus` and the screen
// goes back to its sign-in form.

const KEY_NAME = 'ioc.key';
const KEY_PATTERN = /^ioc_[A-Za-z0-9_-]{8,200}$/;

export const bus = new EventTarget();

export function validKey(text) {
  return KEY_PATTERN.test(text);
}

// A key given in the address (`#key=ioc_…`, as `ioc demo` prints it) is stored and removed
// from the address at once, so it stays out of the history and of shared screenshots.
export function takeKeyFromAddress() {
  const params = new URLSearchParams(location.hash.slice(1));
  const key = params.get('key');
  if (key === null) return false;
  params.delete('key');
  const rest = params.toString();
  history.replaceState(history.state, '', location.pathname + location.search + (rest ? `#${rest}` : ''));
  if (!validKey(key)) return false;
  localStorage.setItem(KEY_NAME, key);
  return true;
}

export function storedKey() {
  return localStorage.getItem(KEY_NAME);
}

export function storeKey(key) {
  localStorage.setItem(KEY_NAME, key);
}

export function forgetKey() {
  localStorage.removeItem(KEY_NAME);
}

export class ApiError extends Error {
  constructor(status, title, detail) {
    super(detail || title || `HTTP ${status}`);
    this.status = status;
    this.title = title;
    this.detail = detail;
  }
}

export function apiUrl(path) {
  return new URL(`api/v1${path}`, document.baseURI);
}

export function wsUrl(path) {
  const url = new URL(path, document.baseURI);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url;
}

export async function request(path, { method = 'GET', body, signal, key = storedKey(), signOutOn401 = true } = {}) {
  const headers = { Accept: 'application/json' };
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(apiUrl(path), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: 'no-store',
    });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(0, 'network', error.message);
  }
  if (response.status === 401) {
    const problem = await response.json().catch(() => ({}));
    if (signOutOn401) bus.dispatchEvent(new CustomEvent('unauthorized', { detail: problem.detail || '' }));
    throw new ApiError(401, problem.title, problem.detail);
  }
  if (!response.ok) {
    const problem = await response.json().catch(() => ({}));
    throw new ApiError(response.status, problem.title || response.statusText, problem.detail || '');
  }
  return response.status === 204 ? null : response.json();
}

export function get(path, options) {
  return request(path, options);
}

export function post(path, body = {}, options = {}) {
  return request(path, { ...options, method: 'POST', body });
}

// Every item of a keyset-paginated list, at most `maxPages` pages.
export async function all(path, { maxPages = 10, signal } = {}) {
  const items = [];
  let cursor = null;
  for (let page = 0; page < maxPages; page += 1) {
    const sep = path.includes('?') ? '&' : '?';
    const answer = await get(cursor ? `${path}${sep}cursor=${encodeURIComponent(cursor)}` : path, { signal });
    items.push(...answer.items);
    cursor = answer.next_cursor;
    if (!cursor) break;
  }
  return items;
}
