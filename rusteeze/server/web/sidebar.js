// The list of past conversations (open, rename, delete) and the sidebar's show / hide, which
// is a collapsible column on wide screens and a drawer over the chat on narrow ones.

import { icon } from "./icons.js";

const NARROW = window.matchMedia("(max-width: 760px)");

/**
 * Wire the sidebar.
 *
 * @param {object} hooks {layout, conversations(), current(), open(id), rename(conversation, title), remove(conversation)}
 * @returns {{render: () => void, closeIfNarrow: () => void}}
 */
export function setupSidebar(hooks) {
  const list = document.getElementById("conversations");
  const layout = hooks.layout;

  function toggle() {
    layout.classList.toggle(NARROW.matches ? "sidebar-open" : "sidebar-closed");
  }
  function closeIfNarrow() {
    if (NARROW.matches) layout.classList.remove("sidebar-open");
  }
  document.getElementById("toggle-sidebar").addEventListener("click", toggle);
  document.getElementById("close-sidebar").addEventListener("click", closeIfNarrow);
  document.getElementById("backdrop").addEventListener("click", closeIfNarrow);

  function render() {
    const current = hooks.current();
    const items = hooks.conversations().filter((c) => c.messages.length);
    list.replaceChildren(...items.map((c) => item(c, c === current)));
    if (!items.length) {
      const none = document.createElement("p");
      none.className = "no-conversations";
      none.textContent = "No conversations yet.";
      list.append(none);
    }
  }

  function item(conversation, active) {
    const row = document.createElement("div");
    row.className = active ? "conversation active" : "conversation";
    row.dataset.id = conversation.id;
    const open = document.createElement("button");
    open.type = "button";
    open.className = "conversation-title";
    open.textContent = conversation.title;
    open.title = conversation.title;
    open.addEventListener("click", () => {
      hooks.open(conversation.id);
      closeIfNarrow();
    });
    const rename = iconButton("pencil", "Rename", () => startRename(row, conversation));
    const remove = iconButton("trash", "Delete", () => {
      if (window.confirm(`Delete "${conversation.title}"?`)) hooks.remove(conversation);
    });
    row.append(open, rename, remove);
    return row;
  }

  function startRename(row, conversation) {
    const input = document.createElement("input");
    input.className = "rename";
    input.value = conversation.title;
    input.setAttribute("aria-label", "Conversation title");
    let done = false;
    const finish = (save) => {
      if (done) return;
      done = true;
      const title = input.value.trim();
      if (save && title) hooks.rename(conversation, title);
      else render();
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") finish(true);
      if (event.key === "Escape") finish(false);
    });
    input.addEventListener("blur", () => finish(true));
    row.replaceChildren(input);
    input.focus();
    input.select();
  }

  return { render, closeIfNarrow };
}

function iconButton(name, label, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "icon-button small";
  button.append(icon(name));
  button.title = label;
  button.setAttribute("aria-label", label);
  button.addEventListener("click", onClick);
  return button;
}
