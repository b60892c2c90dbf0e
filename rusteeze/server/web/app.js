// The chat page: wires the conversation to the API (chat_api.js), the saved state (store.js),
// the controls (controls.js) and Markdown (markdown.js). Model and user text reach the DOM
// only as text nodes.

import { ApiError, streamChat } from "./chat_api.js";
import { askForKey, describe, loadModels, setupSettings } from "./controls.js";
import { icon, placeIcons } from "./icons.js";
import { copyText, renderMarkdown } from "./markdown.js";
import * as store from "./store.js";
import { setupSidebar } from "./sidebar.js";

const $ = (id) => document.getElementById(id);
const ui = {
  layout: $("layout"),
  messages: $("messages"),
  empty: $("empty"),
  composer: $("composer"),
  prompt: $("prompt"),
  send: $("send"),
  model: $("model"),
};

const state = {
  conversations: store.loadConversations(),
  current: null,
  settings: store.loadSettings(),
  stream: null, // {controller, conversation} while a reply streams
};

// --- conversations -------------------------------------------------------------------------

const sidebar = setupSidebar({
  layout: ui.layout,
  conversations: () => state.conversations,
  current: () => state.current,
  open: (id) => openConversation(id),
  rename: (conversation, title) => {
    conversation.title = title;
    persist();
  },
  remove: (conversation) => {
    if (state.stream && state.stream.conversation === conversation) state.stream.controller.abort();
    state.conversations = state.conversations.filter((c) => c !== conversation);
    if (state.current === conversation) state.current = null;
    persist();
    openConversation(state.current ? state.current.id : null);
  },
});

function persist() {
  store.saveConversations(state.conversations.filter((c) => c.messages.length));
  store.setCurrentId(state.current && state.current.messages.length ? state.current.id : null);
  sidebar.render();
  document.title = state.current && state.current.messages.length ? `${state.current.title} · rusteeze` : "rusteeze";
}

function openConversation(id) {
  state.current = state.conversations.find((c) => c.id === id) || store.newConversation();
  if (!state.conversations.includes(state.current)) state.conversations.unshift(state.current);
  state.conversations = state.conversations.filter((c) => c.messages.length || c === state.current); // no empty leftovers
  persist();
  renderMessages();
  ui.prompt.focus();
}

// --- messages -------------------------------------------------------------------------------

function renderMessages() {
  ui.messages.replaceChildren(ui.empty);
  ui.empty.hidden = state.current.messages.length > 0;
  state.current.messages.forEach((message) => ui.messages.append(messageNode(message)));
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

function messageNode(message) {
  const node = document.createElement("article");
  node.className = `message ${message.role}`;
  node.dataset.role = message.role;
  const bubble = document.createElement("div");
  bubble.className = "bubble markdown";
  bubble.append(renderMarkdown(message.content));
  node.append(bubble);
  if (message.role === "assistant") {
    node.dataset.state = message.state || "done";
    if (message.state === "streaming" && !message.content) bubble.append(typingDots());
    if (message.error) node.append(errorNode(message.error));
    node.append(metaNode(message));
  }
  return node;
}

function typingDots() {
  const dots = document.createElement("span");
  dots.className = "typing";
  dots.append(document.createElement("i"), document.createElement("i"), document.createElement("i"));
  return dots;
}

function errorNode(text) {
  const box = document.createElement("div");
  box.className = "error";
  box.setAttribute("role", "alert");
  box.textContent = text;
  return box;
}

function metaNode(message) {
  const meta = document.createElement("div");
  meta.className = "meta";
  const stats = document.createElement("span");
  stats.className = "stats";
  stats.textContent = statsText(message);
  meta.append(stats);
  if (message.content && message.state !== "streaming") {
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "text-button small";
    copy.textContent = "Copy";
    copy.addEventListener("click", () => copyText(message.content, copy));
    meta.append(copy);
  }
  const conversation = state.current;
  if (message.state !== "streaming" && conversation && conversation.messages.at(-1) === message) {
    const again = document.createElement("button");
    again.type = "button";
    again.className = "text-button small retry";
    again.textContent = message.state === "error" ? "Retry" : "Regenerate";
    again.addEventListener("click", () => {
      if (state.stream || conversation.messages.at(-1) !== message) return;
      conversation.messages.pop(); // the new reply takes its place
      reply(conversation);
    });
    meta.append(again);
  }
  return meta;
}

function statsText(message) {
  const s = message.stats;
  if (!s) return message.state === "streaming" ? "…" : "";
  const parts = [];
  if (s.completion_tokens !== undefined) parts.push(`${s.completion_tokens} tokens`);
  else if (s.chunks) parts.push(`≈${s.chunks} tokens`);
  if (s.tokens_per_s) parts.push(`${s.tokens_per_s.toFixed(1)} tok/s`);
  if (s.ttft_s !== undefined) parts.push(`first token ${s.ttft_s.toFixed(2)} s`);
  if (s.prompt_tokens !== undefined) parts.push(`prompt ${s.prompt_tokens} tokens`);
  if (message.state === "stopped") parts.push("stopped");
  return parts.join(" · ");
}

function liveNode() {
  const nodes = ui.messages.querySelectorAll("article.message");
  return nodes[nodes.length - 1];
}

// --- sending --------------------------------------------------------------------------------

function requestBody(conversation) {
  const s = state.settings;
  const messages = [];
  if (s.system.trim()) messages.push({ role: "system", content: s.system });
  for (const m of conversation.messages) {
    if (m.content && (m.role === "user" || m.role === "assistant")) messages.push({ role: m.role, content: m.content });
  }
  const body = { messages, temperature: s.temperature, top_p: s.top_p, max_tokens: s.max_tokens };
  if (ui.model.value) body.model = ui.model.value;
  return body;
}

async function send(text) {
  if (state.stream || !text.trim()) return;
  const conversation = state.current;
  if (!conversation.messages.length) conversation.title = store.titleFrom(text);
  conversation.messages.push({ role: "user", content: text });
  await reply(conversation);
}

async function reply(conversation) {
  const body = requestBody(conversation);
  const message = { role: "assistant", content: "", state: "streaming", stats: null };
  conversation.messages.push(message);
  conversation.updated = Date.now();
  const controller = new AbortController();
  state.stream = { controller, conversation };
  setStreaming(true);
  persist();
  renderMessages();

  const start = performance.now();
  let first = null;
  let chunks = 0;
  let frame = 0;
  const redraw = () => {
    frame = 0;
    if (state.current !== conversation) return;
    const stick = ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 80;
    const node = messageNode(message);
    node.dataset.chunks = String(chunks);
    liveNode().replaceWith(node);
    if (stick) ui.messages.scrollTop = ui.messages.scrollHeight;
  };
  try {
    const result = await streamChat(body, controller.signal, (delta) => {
      if (first === null) first = performance.now();
      chunks++;
      message.content += delta;
      if (!frame) frame = requestAnimationFrame(redraw);
    });
    message.state = "done";
    message.stats = timing(result.usage, start, first, chunks);
  } catch (e) {
    message.stats = timing(null, start, first, chunks);
    if (e.name === "AbortError") {
      message.state = "stopped";
    } else {
      message.state = "error";
      message.error = describe(e);
      if (e instanceof ApiError && e.status === 401) {
        askForKey("The server refused the API key: enter the right one.", () => {
          conversation.messages.splice(conversation.messages.indexOf(message), 1);
          reply(conversation);
        });
      }
    }
  } finally {
    if (frame) cancelAnimationFrame(frame);
    state.stream = null;
    setStreaming(false);
    conversation.updated = Date.now();
    persist();
    if (state.current === conversation) {
      const node = messageNode(message);
      node.dataset.chunks = String(chunks);
      liveNode().replaceWith(node);
      ui.messages.scrollTop = ui.messages.scrollHeight;
    }
  }
}

function timing(usage, start, first, chunks) {
  const end = performance.now();
  const stats = { chunks };
  if (first !== null) stats.ttft_s = (first - start) / 1000;
  if (usage) {
    stats.completion_tokens = usage.completion_tokens;
    stats.prompt_tokens = usage.prompt_tokens;
  }
  const tokens = usage ? usage.completion_tokens : chunks;
  // Decode speed: the tokens after the first over the time after it.
  if (first !== null && tokens > 1 && end > first) stats.tokens_per_s = ((tokens - 1) * 1000) / (end - first);
  return stats;
}

function setStreaming(on) {
  ui.send.classList.toggle("stop", on);
  ui.send.replaceChildren(icon(on ? "stop" : "send"));
  ui.send.setAttribute("aria-label", on ? "Stop" : "Send");
  ui.send.type = on ? "button" : "submit";
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.prompt.value;
  if (!text.trim() || state.stream) return;
  ui.prompt.value = "";
  growPrompt();
  send(text);
});
ui.send.addEventListener("click", () => {
  if (state.stream) state.stream.controller.abort();
});
ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});
function growPrompt() {
  ui.prompt.style.height = "auto";
  ui.prompt.style.height = `${Math.min(ui.prompt.scrollHeight, 220)}px`;
}
ui.prompt.addEventListener("input", growPrompt);
$("new-chat").addEventListener("click", () => {
  openConversation(null);
  sidebar.closeIfNarrow();
});

placeIcons(document);
setStreaming(false);
openConversation(store.currentId());
setupSettings(state.settings);
loadModels(state.settings);
