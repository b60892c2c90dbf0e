"""The web chat page in a real headless Chromium, against live servers.

The real SmolLM2-135M-Instruct answers the questions and is stopped mid-reply; the tiny
random Llama stands behind the API-key, error and escaping tests, where the words of the
reply do not matter. Screenshots land in tests/artifacts/ (or $RUSTEEZE_TEST_ARTIFACTS).
The page's modules on their own (Markdown, the stream reader) are in test_web_modules.py.
"""

import json
import re

import httpx
import pytest
from browser_helpers import (
    DESKTOP,
    PHONE,
    console_errors,
    metric,
    open_page,
    screenshot,
    set_viewport,
    start_chromium,
)
from server_helpers import MODEL, live_model_server, live_server

pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

SMOLLM2 = "smollm2"
FRANCE = "What is the capital of France?"
# Model (or user) text that would run script if it ever reached the page as HTML.
PAYLOAD = (
    "<script>window.xssRan = 'script'</script> and <img src=x onerror=\"window.xssRan = 'img'\"> "
    "and [a link](javascript:window.xssRan='link') and <b>bold?</b>"
)


@pytest.fixture(scope="module")
def browser():
    driver = start_chromium()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def smollm2_server(smollm2_gguf_path):
    kw = {"kernel_backend": "torch", "max_model_len": 512}
    with live_model_server(smollm2_gguf_path, SMOLLM2, one_torch_thread=True, **kw) as (base, app):
        yield base, app
        assert_all_blocks_free(app)


@pytest.fixture
def smollm2_url(smollm2_server):
    return smollm2_server[0]


def assert_all_blocks_free(app) -> None:
    bm = app.state.engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks, "the page's requests left KV blocks allocated"


def set_field(driver, element_id: str, value: str) -> None:
    """Type ``value`` into a settings field (opening the panel if needed); Tab commits it."""
    if not driver.find_element(By.ID, "settings").is_displayed():
        driver.find_element(By.ID, "toggle-settings").click()
    field = driver.find_element(By.ID, element_id)
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(value, Keys.TAB)


def ask(driver, text: str) -> None:
    prompt = driver.find_element(By.ID, "prompt")
    prompt.send_keys(text)
    prompt.send_keys(Keys.ENTER)


def hover_click(driver, row, selector: str) -> None:
    ActionChains(driver).move_to_element(row).click(row.find_element(By.CSS_SELECTOR, selector)).perform()


def assistant_messages(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#messages article.message.assistant")


def wait_for_reply(driver, timeout: float = 180):
    """The last assistant message, once it is no longer streaming."""
    WebDriverWait(driver, timeout, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: assistant_messages(d) and assistant_messages(d)[-1].get_attribute("data-state") != "streaming"
    )
    return assistant_messages(driver)[-1]


@pytest.mark.slow
def test_a_streamed_answer_knows_paris_and_survives_a_reload(browser, smollm2_url):
    open_page(browser, smollm2_url)
    assert browser.find_element(By.ID, "model").get_attribute("value") == SMOLLM2
    set_field(browser, "temperature", "0")
    set_field(browser, "max-tokens", "32")
    browser.find_element(By.ID, "toggle-settings").click()
    ask(browser, FRANCE)
    reply = wait_for_reply(browser)
    assert reply.get_attribute("data-state") == "done"
    assert "Paris" in reply.find_element(By.CSS_SELECTOR, ".bubble").text
    assert int(reply.get_attribute("data-chunks")) > 1, "the reply did not arrive as a stream"
    stats = reply.find_element(By.CSS_SELECTOR, ".stats").text
    assert re.fullmatch(r"\d+ tokens · [\d.]+ tok/s · first token [\d.]+ s · prompt \d+ tokens", stats), stats
    titles = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#conversations .conversation-title")]
    assert titles == [FRANCE] and browser.title == f"{FRANCE} · rusteeze"
    screenshot(browser, "web-desktop")
    set_viewport(browser, *DESKTOP, dark=True)
    screenshot(browser, "web-desktop-dark")

    answer = reply.find_element(By.CSS_SELECTOR, ".bubble").text
    browser.refresh()
    WebDriverWait(browser, 30).until(lambda d: assistant_messages(d))
    kept = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#messages article.message .bubble")]
    assert kept == [FRANCE, answer]
    assert assistant_messages(browser)[0].find_element(By.CSS_SELECTOR, ".stats").text == stats

    set_viewport(browser, *PHONE)  # the sidebar becomes a drawer, closed until asked for
    WebDriverWait(browser, 5).until(lambda d: _sidebar_box(d)[1] <= 0)
    screenshot(browser, "web-phone")
    browser.find_element(By.ID, "toggle-sidebar").click()
    WebDriverWait(browser, 5).until(lambda d: _sidebar_box(d)[0] == 0)
    screenshot(browser, "web-phone-sidebar")
    assert console_errors(browser) == []


def _sidebar_box(driver) -> tuple[float, float]:
    """The sidebar's left and right edges in CSS pixels (off screen: right <= 0)."""
    return tuple(
        driver.execute_script(
            "const r = document.getElementById('sidebar').getBoundingClientRect(); return [r.left, r.right];"
        )
    )


@pytest.mark.slow
def test_stop_aborts_the_request_and_the_server_frees_it(browser, smollm2_server):
    smollm2_url, app = smollm2_server
    open_page(browser, smollm2_url)
    set_field(browser, "temperature", "0")  # greedy: the same long story every run
    set_field(browser, "max-tokens", "400")
    ask(browser, "Write a long story about a brave knight, a dragon and a lost city.")
    WebDriverWait(browser, 120, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: len(assistant_messages(d)[-1].find_element(By.CSS_SELECTOR, ".bubble").text) > 40
    )
    assert metric(httpx.get(smollm2_url + "/metrics").text, "rusteeze:num_requests_running") == 1
    browser.find_element(By.ID, "send").click()  # the send button is the Stop button while streaming
    reply = wait_for_reply(browser, timeout=10)
    assert reply.get_attribute("data-state") == "stopped"
    assert reply.find_element(By.CSS_SELECTOR, ".stats").text.endswith("stopped")

    def idle(_):
        text = httpx.get(smollm2_url + "/metrics").text
        return metric(text, "rusteeze:num_requests_running") == 0 and metric(text, "rusteeze:num_requests_waiting") == 0

    WebDriverWait(browser, 30, poll_frequency=0.1).until(idle)
    assert_all_blocks_free(app)
    stopped_text = reply.find_element(By.CSS_SELECTOR, ".bubble").text
    assert stopped_text and len(stopped_text.split()) < 400
    assert browser.find_element(By.ID, "send").get_attribute("aria-label") == "Send"
    assert console_errors(browser) == []


@pytest.fixture
def tiny_url(make_app, request):
    """A live server over the tiny random Llama; ``@pytest.mark.parametrize('tiny_url', [settings], indirect=True)``."""
    with live_server(make_app({"max_model_len": 512}, **getattr(request, "param", {}))) as base:
        yield base


def _no_markup_ran(driver) -> None:
    injected = "article script, article img, article b, article a[href^='javascript']"
    assert driver.find_element(By.ID, "messages").find_elements(By.CSS_SELECTOR, injected) == []
    assert driver.execute_script("return window.xssRan === undefined")


def test_html_in_messages_is_shown_as_text(browser, tiny_url):
    open_page(browser, tiny_url)
    saved = {
        "id": "c-saved",
        "title": "saved",
        "updated": 1,
        # saved while streaming: the page was closed mid-reply
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": PAYLOAD, "state": "streaming"},
        ],
    }
    browser.execute_script(
        "localStorage.setItem('rusteeze.conversations', arguments[0]);"
        "localStorage.setItem('rusteeze.current', 'c-saved');",
        json.dumps([saved]),
    )
    browser.refresh()
    WebDriverWait(browser, 30).until(lambda d: assistant_messages(d))
    assert assistant_messages(browser)[0].get_attribute("data-state") == "stopped"
    shown = assistant_messages(browser)[0].find_element(By.CSS_SELECTOR, ".bubble").text
    assert "<script>window.xssRan = 'script'</script>" in shown and "<img src=x onerror=" in shown
    assert "[a link](javascript:window.xssRan='link')" in shown and "<b>bold?</b>" in shown
    _no_markup_ran(browser)

    browser.find_element(By.ID, "new-chat").click()
    set_field(browser, "max-tokens", "3")
    ask(browser, PAYLOAD)
    wait_for_reply(browser, timeout=60)
    user = browser.find_element(By.CSS_SELECTOR, "#messages article.message.user .bubble").text
    assert user == PAYLOAD
    _no_markup_ran(browser)
    assert console_errors(browser) == []


@pytest.mark.parametrize("tiny_url", [{"api_key": "sekrit"}], indirect=True)
def test_the_page_asks_for_the_api_key_and_asks_again_after_a_401(browser, tiny_url):
    set_viewport(browser, *DESKTOP)
    browser.get(tiny_url)
    browser.execute_script("localStorage.clear()")
    browser.get(tiny_url)
    dialog = browser.find_element(By.ID, "key-dialog")
    WebDriverWait(browser, 30).until(lambda d: dialog.get_attribute("open") is not None)
    assert "needs an API key" in browser.find_element(By.ID, "key-reason").text
    browser.find_element(By.ID, "key-input").send_keys("wrong", Keys.ENTER)
    WebDriverWait(browser, 30).until(lambda d: "refused" in d.find_element(By.ID, "key-reason").text)
    assert dialog.get_attribute("open") is not None
    screenshot(browser, "web-api-key")
    key = browser.find_element(By.ID, "key-input")
    key.send_keys(Keys.CONTROL, "a")
    key.send_keys("sekrit", Keys.ENTER)
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "model").get_attribute("value") == MODEL)
    assert browser.execute_script("return localStorage.getItem('rusteeze.apiKey')") == "sekrit"
    set_field(browser, "max-tokens", "3")
    ask(browser, "hello")
    assert wait_for_reply(browser, timeout=60).get_attribute("data-state") == "done"

    # The key changes on the server: the next message gets a 401, the page asks again, then retries.
    browser.execute_script("localStorage.setItem('rusteeze.apiKey', 'old')")
    ask(browser, "hello again")
    WebDriverWait(browser, 30).until(lambda d: dialog.get_attribute("open") is not None)
    key = browser.find_element(By.ID, "key-input")
    key.send_keys(Keys.CONTROL, "a")
    key.send_keys("sekrit", Keys.ENTER)
    WebDriverWait(browser, 60, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: [m.get_attribute("data-state") for m in assistant_messages(d)] == ["done", "done"]
    )
    console_errors(browser)  # the 401s of the test are logged by the browser


def test_server_errors_are_shown_in_the_conversation(browser, tiny_url):
    open_page(browser, tiny_url)
    prompt = browser.find_element(By.ID, "prompt")  # pasted, not typed: 5,000 key presses are slow
    browser.execute_script("arguments[0].value = arguments[1]", prompt, "word " * 1000)
    prompt.send_keys(Keys.ENTER)  # the tiny model's context is 512 tokens
    reply = wait_for_reply(browser, timeout=60)
    assert reply.get_attribute("data-state") == "error"
    error = reply.find_element(By.CSS_SELECTOR, ".error").text
    assert error.startswith("HTTP 400") and "max_model_len" in error
    assert [e for e in console_errors(browser) if "400" in e]  # the browser logs the failed request
    reply.find_element(By.CSS_SELECTOR, "button.retry").click()  # sends the conversation again
    reply = wait_for_reply(browser, timeout=60)
    assert reply.get_attribute("data-state") == "error" and len(assistant_messages(browser)) == 1
    assert len([e for e in console_errors(browser) if "400" in e]) == 1


def test_a_server_that_went_away_is_a_network_error_in_the_conversation(browser, make_app):
    with live_server(make_app()) as url:
        open_page(browser, url)
    ask(browser, "anyone there?")  # the server has stopped
    reply = wait_for_reply(browser, timeout=60)
    assert reply.get_attribute("data-state") == "error"
    assert reply.find_element(By.CSS_SELECTOR, ".error").text.startswith("Network error (network_error): ")
    console_errors(browser)  # the refused connection is logged by the browser


def test_conversations_can_be_renamed_and_deleted(browser, tiny_url):
    open_page(browser, tiny_url)
    set_field(browser, "max-tokens", "2")
    for text in ("first question", "second question"):
        browser.find_element(By.ID, "new-chat").click()
        ask(browser, text)
        wait_for_reply(browser, timeout=60)

    def rows(d):
        return d.find_elements(By.CSS_SELECTOR, "#conversations .conversation")

    assert [r.text.splitlines()[0] for r in rows(browser)] == ["second question", "first question"]
    hover_click(browser, rows(browser)[1], "[aria-label=Rename]")  # the row's buttons show on hover
    title = browser.find_element(By.CSS_SELECTOR, "#conversations input.rename")
    title.send_keys(Keys.CONTROL, "a")
    title.send_keys("renamed", Keys.ENTER)
    browser.refresh()
    WebDriverWait(browser, 30).until(lambda d: len(rows(d)) == 2)
    assert [r.find_element(By.CSS_SELECTOR, ".conversation-title").text for r in rows(browser)] == [
        "second question",
        "renamed",
    ]
    hover_click(browser, rows(browser)[0], "[aria-label=Delete]")
    browser.switch_to.alert.accept()
    WebDriverWait(browser, 10).until(lambda d: len(rows(d)) == 1)
    saved = json.loads(browser.execute_script("return localStorage.getItem('rusteeze.conversations')"))
    assert [c["title"] for c in saved] == ["renamed"]
    assert console_errors(browser) == []
