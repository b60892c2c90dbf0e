"""The web chat page over plain HTTP: content types, CSP, caching, --no-web-ui, the key, CORS."""

import re
from importlib import resources

import pytest

from rusteeze.errors import ConfigError
from rusteeze.server.settings import ServerSettings
from rusteeze.server.web_ui import PAGES

WEB = resources.files("rusteeze.server").joinpath("web")


def test_the_page_and_every_asset_are_served_with_their_types_and_a_strict_csp(call):
    async def fn(c):
        for path, (name, content_type) in PAGES.items():
            r = await c.get(path)
            assert r.status_code == 200, path
            assert r.headers["content-type"] == content_type
            assert r.content == WEB.joinpath(name).read_bytes()
            assert r.headers["cache-control"] == "no-cache"
            assert r.headers["x-content-type-options"] == "nosniff"
            csp = r.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "script-src 'self'" in csp
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "*" not in csp
            assert "frame-ancestors 'none'" in csp
        html = (await c.get("/")).text
        assert "<title>rusteeze</title>" in html
        return html

    html = call(fn)
    # Every script and stylesheet the page loads is one of ours (nothing from a CDN).
    for src in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert src in PAGES, src


def test_the_page_needs_no_inline_script_or_style():
    html = WEB.joinpath("index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", html) == ['<script type="module" src="/web/app.js">']
    assert "<style" not in html and " style=" not in html, "inline styles are blocked by the CSP"
    assert not re.search(r"\son[a-z]+=", html), "inline event handlers are blocked by the CSP"


def test_every_module_the_page_imports_is_served():
    for name, _ in PAGES.values():
        if name.endswith(".js"):
            for imported in re.findall(r'from "\./([\w.]+)"', WEB.joinpath(name).read_text()):
                assert f"/web/{imported}" in PAGES, f"{name} imports {imported}, which is not served"
    shipped = {p.name for p in WEB.iterdir()}
    assert shipped == {name for name, _ in PAGES.values()}, "a file in web/ is not served, or a served one is missing"


def test_an_unchanged_file_is_a_304(call):
    async def fn(c):
        first = await c.get("/web/app.js")
        etag = first.headers["etag"]
        again = await c.get("/web/app.js", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        stale = await c.get("/web/app.js", headers={"If-None-Match": '"something-else"'})
        assert stale.status_code == 200 and stale.content == first.content

    call(fn)


def test_no_web_ui_makes_the_page_a_json_404(call):
    async def fn(c):
        for path in PAGES:
            r = await c.get(path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path
        assert (await c.get("/v1/models")).status_code == 200

    call(fn, web_ui=False)


def test_the_page_is_not_behind_the_api_key_but_the_api_is(call):
    async def fn(c):
        assert (await c.get("/")).status_code == 200
        assert (await c.get("/web/app.js")).status_code == 200
        assert (await c.get("/v1/models")).status_code == 401
        ok = await c.get("/v1/models", headers={"Authorization": "Bearer sekrit"})
        assert ok.status_code == 200

    call(fn, api_key="sekrit")


def test_the_page_gets_no_cors_headers_even_with_a_wildcard(call):
    async def fn(c):
        page = await c.get("/", headers={"Origin": "http://elsewhere.example"})
        assert page.status_code == 200
        assert not any(h.startswith("access-control-") for h in page.headers)
        api = await c.get("/v1/models", headers={"Origin": "http://elsewhere.example"})
        assert api.headers["access-control-allow-origin"] == "*"  # the API keeps what was asked for

    call(fn, allowed_origins=("*",))


def test_web_ui_setting_must_be_a_bool():
    assert ServerSettings().web_ui is True
    assert ServerSettings.from_table({"web_ui": False}).web_ui is False
    with pytest.raises(ConfigError, match="web_ui = 'no' must be true or false"):
        ServerSettings(web_ui="no")
