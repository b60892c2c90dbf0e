"""The web page's modules in a real headless Chromium: Markdown, the stream reader, copying.

Each test loads the page from a live tiny-model server (for its origin and its modules) and
calls a module directly (a fake ``fetch`` stands in for the server where the test needs
exact bytes), so the results are exact.
"""

import json

import pytest
from browser_helpers import open_page, start_chromium
from server_helpers import live_server

pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


@pytest.fixture(scope="module")
def browser():
    driver = start_chromium()
    yield driver
    driver.quit()


@pytest.fixture
def tiny_url(make_app):
    with live_server(make_app()) as base:
        yield base


def test_markdown_renders_to_the_expected_elements(browser, tiny_url):
    open_page(browser, tiny_url)
    source = (
        "# Title\n\nSome **bold**, *italic*, ~~gone~~ and `a < b`.\n\n- one\n- two\n  - nested\n\n"
        "1. first\n2. second\n   - sub\n\n> quoted\n\n```python\nprint('<b>hi</b>')\n```\n\n"
        "[docs](https://example.com/x?a=1&b=2) [bad](javascript:alert(1))\n---\n"
        "| a | b |\n|:-|--:|\n| 1 | **2** |\nplain"
    )
    html = browser.execute_async_script(
        "const [text, done] = arguments;"
        "import('/web/markdown.js').then((md) => {"
        "  const box = document.createElement('div'); box.append(md.renderMarkdown(text)); done(box.innerHTML);"
        "});",
        source,
    )
    expected = (
        "<h1>Title</h1>"
        "<p>Some <strong>bold</strong>, <em>italic</em>, <del>gone</del> and <code>a &lt; b</code>.</p>"
        "<ul><li>one</li><li>two<ul><li>nested</li></ul></li></ul>"
        "<ol><li>first</li><li>second<ul><li>sub</li></ul></li></ol>"
        "<blockquote><p>quoted</p></blockquote>"
        '<div class="code-block"><div class="code-head"><span class="code-lang">python</span>'
        '<button class="copy-button" type="button">Copy</button></div>'
        "<pre><code>print('&lt;b&gt;hi&lt;/b&gt;')</code></pre></div>"
        '<p><a href="https://example.com/x?a=1&amp;b=2" target="_blank" rel="noopener noreferrer">docs</a>'
        " [bad](javascript:alert(1))</p><hr>"
        '<div class="table-wrap"><table><thead><tr><th>a</th><th class="align-right">b</th></tr></thead>'
        '<tbody><tr><td>1</td><td class="align-right"><strong>2</strong></td></tr></tbody></table></div>'
        "<p>plain</p>"
    )
    assert html == expected


def test_a_code_blocks_copy_button_copies_the_code(browser, tiny_url):
    open_page(browser, tiny_url)
    browser.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": tiny_url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    code = "for i in range(3):\n    print('<i>', i)"
    saved = {
        "id": "c1",
        "title": "code",
        "updated": 1,
        "messages": [
            {"role": "user", "content": "loop?"},
            {"role": "assistant", "content": f"Here:\n\n```python\n{code}\n```\n", "state": "done"},
        ],
    }
    browser.execute_script(
        "localStorage.setItem('rusteeze.conversations', arguments[0]); localStorage.setItem('rusteeze.current', 'c1');",
        json.dumps([saved]),
    )
    browser.refresh()
    button = WebDriverWait(browser, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, ".code-block .copy-button"))
    button.click()
    WebDriverWait(browser, 10).until(lambda d: button.text == "Copied")
    assert browser.execute_async_script("navigator.clipboard.readText().then(arguments[0])") == code


def test_the_stream_reader_reassembles_events_split_anywhere(browser, tiny_url):
    """Events cut mid-line, mid-character and with CRLF endings read as if whole (a fake fetch)."""
    open_page(browser, tiny_url)
    result = browser.execute_async_script(
        r"""
        const done = arguments[0];
        const events = [
          {choices: [{index: 0, delta: {role: "assistant", content: "Z\u00fcrich "}}], usage: null},
          {choices: [{index: 0, delta: {content: "\u2014 \u{1F680}"}, finish_reason: "stop"}], usage: null},
          {choices: [], usage: {prompt_tokens: 5, completion_tokens: 2, total_tokens: 7}},
        ];
        const text = events.map((e) => "data: " + JSON.stringify(e) + "\r\n\r\n").join("") + "data: [DONE]\n\n";
        const bytes = new TextEncoder().encode(text);
        const pieces = [];
        for (let i = 0; i < bytes.length; i += 7) pieces.push(bytes.slice(i, i + 7));  // cuts characters
        window.fetch = async () => new Response(new ReadableStream({
          start(controller) { pieces.forEach((p) => controller.enqueue(p)); controller.close(); },
        }), {status: 200, headers: {"content-type": "text/event-stream"}});
        import("/web/chat_api.js").then(async (api) => {
          const deltas = [];
          const r = await api.streamChat({messages: []}, new AbortController().signal, (d) => deltas.push(d));
          done({deltas, usage: r.usage, finish: r.finishReason});
        }).catch((e) => done({error: String(e)}));
        """
    )
    assert result == {
        "deltas": ["Zürich ", "— 🚀"],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        "finish": "stop",
    }


def test_an_error_event_inside_the_stream_is_raised(browser, tiny_url):
    open_page(browser, tiny_url)
    result = browser.execute_async_script(
        r"""
        const done = arguments[0];
        const error = {error: {message: "the server is shutting down", type: "x", param: null, code: "shutting_down"}};
        const body = "data: " + JSON.stringify({choices: [{index: 0, delta: {content: "Hi"}}]}) + "\n\n"
          + "data: " + JSON.stringify(error) + "\n\ndata: [DONE]\n\n";
        window.fetch = async () => new Response(body, {status: 200});
        Promise.all([import("/web/chat_api.js"), import("/web/controls.js")]).then(async ([api, controls]) => {
          const deltas = [];
          try {
            await api.streamChat({messages: []}, new AbortController().signal, (d) => deltas.push(d));
            done({deltas});
          } catch (e) {
            done({deltas, shown: controls.describe(e)});
          }
        });
        """
    )
    assert result == {"deltas": ["Hi"], "shown": "Server error (shutting_down): the server is shutting down"}
