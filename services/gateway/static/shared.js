// Shared helpers of the playground: element lookup, API requests with the API key, error display.

export const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------------
// HTTP helpers: errors come in OpenAI's shape, {"error": {"message", "type", "param", "code"}}.

async function errorFrom(response) {
  let message = `${response.status} ${response.statusText || "error"}`;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (_) {
    // not JSON: keep the status line
  }
  const error = new Error(message);
  error.status = response.status;
  return error;
}

// Servers started with API keys want `Authorization: Bearer <key>` on /v1 (and perhaps /metrics).
// The key lives in this tab's session storage only.
export const API_KEY_STORAGE = "mmserve.apiKey";

export function withAuth(headers = {}) {
  const key = sessionStorage.getItem(API_KEY_STORAGE);
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

export async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: withAuth(options.headers) });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new Error(`could not reach the server (${err.message})`);
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

export function postJSON(path, body, options = {}) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    ...options,
  });
}

// ---------------------------------------------------------------------------------------------------
// Errors in each section's alert, and busy buttons

export function showError(id, err) {
  const el = $(id);
  el.textContent = err && err.message ? err.message : String(err);
  el.hidden = false;
}

export function clearError(id) {
  const el = $(id);
  el.textContent = "";
  el.hidden = true;
}

// Disables a submit button while `work` runs, and reports its error in the section's alert.
export async function busy(button, errorId, work) {
  clearError(errorId);
  button.disabled = true;
  try {
    await work();
  } catch (err) {
    if (err.name !== "AbortError") showError(errorId, err);
  } finally {
    button.disabled = false;
  }
}

// Replaces a <select>'s options with `values`; none leaves one disabled option saying `emptyText`.
export function fillSelect(select, values, emptyText) {
  select.replaceChildren();
  for (const value of values) select.append(new Option(value, value));
  if (!values.length) select.append(new Option(emptyText, ""));
  select.disabled = !values.length;
}
