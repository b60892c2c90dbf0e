// Conversations and settings, kept in the browser's localStorage.
//
// A conversation: {id, title, updated (ms), messages: [{role, content, stats?, error?, stopped?}]}.
// Only "user" and "assistant" messages with content are sent back to the model.

const CONVERSATIONS = "rusteeze.conversations";
const CURRENT = "rusteeze.current";
const SETTINGS = "rusteeze.settings";

export const DEFAULT_SETTINGS = { system: "", temperature: 0.7, top_p: 1, max_tokens: 512, model: "" };

function read(key, fallback) {
  try {
    const value = JSON.parse(localStorage.getItem(key));
    return value === null ? fallback : value;
  } catch {
    return fallback; // corrupt or missing: start afresh rather than break the page
  }
}

function write(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch (e) {
    console.warn("rusteeze: could not save to localStorage", e);
  }
}

export function loadSettings() {
  return { ...DEFAULT_SETTINGS, ...read(SETTINGS, {}) };
}

export function saveSettings(settings) {
  write(SETTINGS, settings);
}

/** Every saved conversation, newest first. */
export function loadConversations() {
  const list = read(CONVERSATIONS, []);
  if (!Array.isArray(list)) return [];
  const conversations = list.filter((c) => c && typeof c.id === "string" && Array.isArray(c.messages));
  for (const c of conversations) {
    for (const m of c.messages) if (m.state === "streaming") m.state = "stopped"; // the page closed mid-reply
  }
  return conversations.sort((a, b) => (b.updated || 0) - (a.updated || 0));
}

export function saveConversations(conversations) {
  write(CONVERSATIONS, conversations);
}

export function currentId() {
  return localStorage.getItem(CURRENT);
}

export function setCurrentId(id) {
  if (id) localStorage.setItem(CURRENT, id);
  else localStorage.removeItem(CURRENT);
}

export function newConversation() {
  const id = `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
  return { id, title: "New chat", updated: Date.now(), messages: [] };
}

/** A title from the first user message: its first line, at most 48 characters. */
export function titleFrom(text) {
  const line = text.trim().split("\n")[0].replace(/\s+/g, " ");
  return line.length > 48 ? `${line.slice(0, 47)}…` : line || "New chat";
}
