// The controls around the chat: the settings panel, the API-key dialog, the model picker and
// the server's status line.

import { ApiError, apiKey, listModels, setApiKey } from "./chat_api.js";
import * as store from "./store.js";

const $ = (id) => document.getElementById(id);
const FIELDS = { system: "system-prompt", temperature: "temperature", top_p: "top-p", max_tokens: "max-tokens" };

/** Fill the settings panel from `settings` and save each change into it (invalid numbers are flagged, not saved). */
export function setupSettings(settings) {
  for (const [name, id] of Object.entries(FIELDS)) {
    const input = $(id);
    input.value = settings[name];
    input.addEventListener("change", () => {
      if (name === "system") {
        settings.system = input.value;
      } else {
        const value = Number(input.value);
        const ok = input.value !== "" && Number.isFinite(value) && input.checkValidity();
        input.classList.toggle("invalid", !ok);
        if (!ok) return;
        settings[name] = name === "max_tokens" ? Math.round(value) : value;
      }
      store.saveSettings(settings);
    });
  }
  const panel = $("settings");
  $("toggle-settings").addEventListener("click", (event) => {
    panel.hidden = !panel.hidden;
    event.currentTarget.setAttribute("aria-expanded", String(!panel.hidden));
  });
  const model = $("model");
  model.addEventListener("change", () => {
    settings.model = model.value;
    store.saveSettings(settings);
    $("empty-model").textContent = model.value;
  });
  $("change-key").addEventListener("click", () =>
    askForKey("The key is kept in this browser only.", () => loadModels(settings)),
  );
}

// --- the API key ----------------------------------------------------------------------------

const dialog = $("key-dialog");
let afterKey = null; // what to retry once a key is entered

/** Ask for the API key (saying `reason`); `then()` runs once it is saved. */
export function askForKey(reason, then) {
  afterKey = then;
  $("key-reason").textContent = reason;
  $("key-input").value = apiKey();
  if (!dialog.open) dialog.showModal();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey($("key-input").value.trim());
  dialog.close();
  const then = afterKey;
  afterKey = null;
  if (then) then();
});
$("key-cancel").addEventListener("click", () => {
  afterKey = null;
  dialog.close();
});

// --- models and status ----------------------------------------------------------------------

/** A one-line description of an error for the page. */
export function describe(error) {
  if (!(error instanceof ApiError)) return `Error: ${error.message}`;
  // >= 400: the HTTP status; 0: no answer at all; else an error event inside a streamed reply.
  const where = error.status >= 400 ? `HTTP ${error.status}` : error.status ? "Server error" : "Network error";
  return `${where}${error.code ? ` (${error.code})` : ""}: ${error.message}`;
}

/** Fill the model picker from /v1/models (choosing `settings.model` when served), then watch /health. */
export async function loadModels(settings) {
  const picker = $("model");
  const status = $("server-status");
  try {
    const ids = await listModels();
    picker.replaceChildren(
      ...ids.map((id) => {
        const option = document.createElement("option");
        option.value = id;
        option.textContent = id;
        return option;
      }),
    );
    if (ids.includes(settings.model)) picker.value = settings.model;
    $("empty-model").textContent = picker.value;
    await watchHealth(status);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      status.textContent = "API key needed";
      const reason = apiKey() ? "The server refused the API key: enter the right one." : "This server needs an API key.";
      askForKey(reason, () => loadModels(settings));
    } else {
      status.textContent = describe(e);
      setTimeout(() => loadModels(settings), 3000);
    }
  }
}

async function watchHealth(status) {
  let ready = false;
  try {
    ready = (await fetch("/health")).ok;
  } catch {
    ready = false;
  }
  status.classList.toggle("ready", ready);
  status.textContent = ready ? "● ready" : "● loading the model…";
  if (!ready) setTimeout(() => watchHealth(status), 2000);
}
