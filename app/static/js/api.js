// Talking to the API: JSON in and out, errors (application/problem+json) turned into
// sentences, and the API key, when the server asks for one, kept in this tab's session storage.

const KEY_ITEM = "menagerie.apiKey";

export class ApiError extends Error {
  constructor(message, status, problem = null) {
    super(message);
    this.status = status;
    this.problem = problem;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_ITEM);
}

export function rememberKey(key) {
  if (key) sessionStorage.setItem(KEY_ITEM, key);
  else sessionStorage.removeItem(KEY_ITEM);
}

// fetch() a path of this server; resolves to {data, response}, rejects with an ApiError whose
// message is the problem's detail (or says the server cannot be reached).
export async function api(path, { method = "GET", body, headers = {} } = {}) {
  const sent = { Accept: "application/json", ...headers };
  const key = apiKey();
  if (key) sent.Authorization = `Bearer ${key}`;
  if (body !== undefined) sent["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: sent,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError("The server cannot be reached. Is it running?", 0);
  }
  if (!response.ok) {
    let problem = null;
    try {
      problem = await response.json();
    } catch {
      // not JSON: the status line says what happened
    }
    const words = problem?.detail || `${response.status} ${response.statusText}`.trim();
    throw new ApiError(words, response.status, problem);
  }
  return { data: await response.json(), response };
}

// The rel="next" URL of a Link header, as a path of this origin (or null).
export function nextPage(response) {
  const link = response.headers.get("Link");
  const found = link && link.match(/<([^>]+)>\s*;\s*rel="?next"?/);
  if (!found) return null;
  const url = new URL(found[1], location.href);
  return url.pathname + url.search;
}
