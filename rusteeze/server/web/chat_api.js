// The page's side of the OpenAI-compatible API: the key, /v1/models, and streamed chat
// completions read as server-sent events through fetch + ReadableStream.

const KEY_STORAGE = "rusteeze.apiKey";

/** An error the conversation shows: `status` is the HTTP status (0 for a network failure). */
export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code || null;
  }
}

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = apiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function errorFrom(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message, code);
}

async function request(path, init) {
  let response;
  try {
    response = await fetch(path, { ...init, headers: headers() });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, `cannot reach the server (${e.message})`, "network_error");
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

/** The ids of the served models (GET /v1/models). */
export async function listModels() {
  const response = await request("/v1/models", { method: "GET" });
  const body = await response.json();
  return body.data.map((m) => m.id);
}

/**
 * Stream one chat completion.
 *
 * @param {object} body the request (model, messages, sampling); stream options are added here.
 * @param {AbortSignal} signal aborts the request (the server frees its blocks on disconnect).
 * @param {(text: string) => void} onDelta called with each piece of reply text.
 * @returns {Promise<{usage: object|null, finishReason: string|null}>}
 * @throws {ApiError} an HTTP error, an error event in the stream, or a network failure.
 */
export async function streamChat(body, signal, onDelta) {
  const payload = { ...body, stream: true, stream_options: { include_usage: true } };
  const response = await request("/v1/chat/completions", {
    method: "POST",
    body: JSON.stringify(payload),
    signal,
  });
  const result = { usage: null, finishReason: null };
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, `the connection broke mid-reply (${e.message})`, "network_error");
    }
    if (chunk.done) break;
    buffer += chunk.value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (handleEvent(event, result, onDelta)) return result;
    }
  }
  return result;
}

/** Apply one SSE event; true at `[DONE]`. */
function handleEvent(event, result, onDelta) {
  const data = event
    .split("\n")
    .filter((line) => line.startsWith("data:"))
    .map((line) => line.slice(5).replace(/^ /, ""))
    .join("\n");
  if (!data) return false;
  if (data === "[DONE]") return true;
  const message = JSON.parse(data);
  if (message.error) throw new ApiError(200, message.error.message, message.error.code);
  if (message.usage) result.usage = message.usage;
  for (const choice of message.choices || []) {
    if (choice.delta && choice.delta.content) onDelta(choice.delta.content);
    if (choice.finish_reason) result.finishReason = choice.finish_reason;
  }
  return false;
}
