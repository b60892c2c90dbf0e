// Markdown → DOM nodes, for model replies and user messages.
//
// Safety invariant: text from the model or the user only ever reaches the page through
// document.createTextNode / textContent, never through innerHTML, so "<script>" or
// "<img onerror=...>" in a message is shown as the characters it is. Links keep only
// http(s) and mailto targets and open with rel="noopener noreferrer".
//
// Supported: headings, paragraphs, unordered / ordered (nested) lists, block quotes,
// horizontal rules, tables, fenced code blocks (with a copy button), inline code, bold, italic,
// strikethrough and links. An unclosed fence (a reply still streaming) is a code block.

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const LIST_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const INLINE =
  /(`+)([\s\S]*?[^`])\1(?!`)|\[([^\]\n]+)\]\(\s*([^)\s]+)\s*\)|\*\*(?=\S)([\s\S]*?\S)\*\*|(?<![\w])__(?=\S)([\s\S]*?\S)__(?![\w])|~~(?=\S)([\s\S]*?\S)~~|\*(?=[^\s*])([^*\n]*?[^\s*])\*|(?<![\w])_(?=[^\s_])([^_\n]*?[^\s_])_(?![\w])/;
const TABLE_DIVIDER = /^:?-+:?$/;
const SAFE_SCHEMES = new Set(["http:", "https:", "mailto:"]);

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

/** Render `text` (Markdown) into a new DocumentFragment. */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  renderBlocks(String(text).replace(/\r\n?/g, "\n").split("\n"), fragment);
  return fragment;
}

function isBlockStart(lines, i) {
  const line = lines[i];
  return (
    FENCE.test(line) ||
    HEADING.test(line) ||
    RULE.test(line) ||
    LIST_ITEM.test(line) ||
    QUOTE.test(line) ||
    isTableStart(lines, i)
  );
}

function renderBlocks(lines, parent) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if (!line.trim()) {
      i++;
    } else if ((m = FENCE.exec(line))) {
      i = renderFence(lines, i, m, parent);
    } else if ((m = HEADING.exec(line))) {
      const h = el(`h${m[1].length}`);
      renderInline(m[2], h);
      parent.append(h);
      i++;
    } else if (RULE.test(line)) {
      parent.append(el("hr"));
      i++;
    } else if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) {
        inner.push(m[1]);
        i++;
      }
      const quote = el("blockquote");
      renderBlocks(inner, quote);
      parent.append(quote);
    } else if (isTableStart(lines, i)) {
      i = renderTable(lines, i, parent);
    } else if (LIST_ITEM.test(line)) {
      i = renderList(lines, i, parent);
    } else {
      const para = [];
      while (i < lines.length && lines[i].trim() && !(para.length && isBlockStart(lines, i))) {
        para.push(lines[i].trim());
        i++;
      }
      const p = el("p");
      para.forEach((text, k) => {
        if (k) p.append(el("br"));
        renderInline(text, p);
      });
      parent.append(p);
    }
  }
}

function renderFence(lines, start, match, parent) {
  const [, fence, lang] = match;
  const body = [];
  let i = start + 1;
  while (i < lines.length && !new RegExp(`^ {0,3}${fence[0]}{${fence.length},}\\s*$`).test(lines[i])) {
    body.push(lines[i]);
    i++;
  }
  parent.append(codeBlock(body.join("\n"), lang));
  return i + 1; // past the closing fence (or the end)
}

function codeBlock(code, lang) {
  const box = el("div", "code-block");
  const head = el("div", "code-head");
  const label = el("span", "code-lang");
  label.textContent = lang || "code";
  const copy = el("button", "copy-button");
  copy.type = "button";
  copy.textContent = "Copy";
  copy.addEventListener("click", () => copyText(code, copy));
  head.append(label, copy);
  const pre = el("pre");
  const codeEl = el("code");
  codeEl.textContent = code;
  pre.append(codeEl);
  box.append(head, pre);
  return box;
}

/** Copy `text` to the clipboard; `button` says "Copied" for a moment. */
export async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // No clipboard API (plain http on another host): copy through a hidden text area.
    const area = el("textarea", "offscreen");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  if (button) {
    const before = button.textContent;
    button.textContent = "Copied";
    setTimeout(() => (button.textContent = before), 1200);
  }
}

function tableCells(line) {
  return line
    .trim()
    .replace(/^\|/, "")
    .replace(/\|$/, "")
    .split("|")
    .map((cell) => cell.trim());
}

function isTableStart(lines, i) {
  if (!lines[i].includes("|") || i + 1 >= lines.length || !lines[i + 1].includes("-")) return false;
  const divider = tableCells(lines[i + 1]);
  return divider.every((cell) => TABLE_DIVIDER.test(cell)) && divider.length === tableCells(lines[i]).length;
}

function renderTable(lines, start, parent) {
  const align = tableCells(lines[start + 1]).map((cell) =>
    cell.startsWith(":") && cell.endsWith(":") ? "align-center" : cell.endsWith(":") ? "align-right" : "",
  );
  const row = (line, tag) => {
    const tr = el("tr");
    const cells = tableCells(line);
    align.forEach((className, k) => {
      const cell = el(tag, className);
      renderInline(cells[k] || "", cell);
      tr.append(cell);
    });
    return tr;
  };
  const head = el("thead");
  head.append(row(lines[start], "th"));
  const body = el("tbody");
  let i = start + 2;
  while (i < lines.length && lines[i].includes("|") && lines[i].trim()) {
    body.append(row(lines[i], "td"));
    i++;
  }
  const table = el("table");
  table.append(head, body);
  const wrap = el("div", "table-wrap"); // wide tables scroll instead of widening the page
  wrap.append(table);
  parent.append(wrap);
  return i;
}

function renderList(lines, start, parent) {
  const first = LIST_ITEM.exec(lines[start]);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const list = el(ordered ? "ol" : "ul");
  if (ordered && parseInt(first[2], 10) !== 1) list.start = parseInt(first[2], 10);
  let i = start;
  while (i < lines.length) {
    const m = LIST_ITEM.exec(lines[i]);
    if (!m || m[1].length < indent) break;
    if (m[1].length > indent) {
      i = renderList(lines, i, list.lastElementChild || list); // a nested list, of either kind
      continue;
    }
    if (/\d/.test(m[2]) !== ordered) break; // the other kind of list starts
    const item = el("li");
    const text = [m[3]];
    i++;
    // Continuation lines: indented, not a new item, not blank.
    while (i < lines.length && lines[i].trim() && !LIST_ITEM.test(lines[i]) && /^\s/.test(lines[i])) {
      text.push(lines[i].trim());
      i++;
    }
    text.forEach((t, k) => {
      if (k) item.append(el("br"));
      renderInline(t, item);
    });
    list.append(item);
    if (i < lines.length && !lines[i].trim() && i + 1 < lines.length) {
      const next = LIST_ITEM.exec(lines[i + 1]);
      if (next && next[1].length >= indent) i++; // a blank line between items of one list
    }
  }
  parent.append(list);
  return i;
}

/** Append the inline Markdown of `text` (code, links, emphasis) to `parent`. */
export function renderInline(text, parent) {
  let rest = text;
  while (rest) {
    const m = INLINE.exec(rest);
    if (!m) {
      parent.append(document.createTextNode(rest));
      return;
    }
    if (m.index) parent.append(document.createTextNode(rest.slice(0, m.index)));
    parent.append(inlineNode(m));
    rest = rest.slice(m.index + m[0].length);
  }
}

function inlineNode(m) {
  if (m[1]) {
    const code = el("code");
    code.textContent = m[2].replace(/^ (.*) $/, "$1");
    return code;
  }
  if (m[3] !== undefined) return link(m[3], m[4], m[0]);
  const [tag, inner] =
    m[5] !== undefined
      ? ["strong", m[5]]
      : m[6] !== undefined
        ? ["strong", m[6]]
        : m[7] !== undefined
          ? ["del", m[7]]
          : ["em", m[8] !== undefined ? m[8] : m[9]];
  const node = el(tag);
  renderInline(inner, node);
  return node;
}

function link(label, target, source) {
  let url;
  try {
    url = new URL(target, document.baseURI);
  } catch {
    url = null;
  }
  if (!url || !SAFE_SCHEMES.has(url.protocol)) return document.createTextNode(source);
  const a = el("a");
  a.href = url.href;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  renderInline(label, a);
  return a;
}
