"""The web chat page at ``GET /``: static files shipped in the package (``rusteeze/server/web/``).

The page is plain HTML, CSS and ES modules, with no build step and nothing fetched from
elsewhere, so it works offline. It is same-origin with the API it calls, so it needs (and
gets) no CORS headers, and a strict Content-Security-Policy: scripts, styles and requests
from this origin only, no inline script, no framing. It is not behind ``--api-key``; the
API calls it makes are (the page asks for the key).
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

from rusteeze.server.http import HTTPRequest, Response

# URL path → (file in rusteeze/server/web/, Content-Type)
PAGES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/web/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/web/markdown.js": ("markdown.js", "text/javascript; charset=utf-8"),
    "/web/chat_api.js": ("chat_api.js", "text/javascript; charset=utf-8"),
    "/web/store.js": ("store.js", "text/javascript; charset=utf-8"),
    "/web/sidebar.js": ("sidebar.js", "text/javascript; charset=utf-8"),
    "/web/icons.js": ("icons.js", "text/javascript; charset=utf-8"),
    "/web/controls.js": ("controls.js", "text/javascript; charset=utf-8"),
    "/web/style.css": ("style.css", "text/css; charset=utf-8"),
    "/web/icon.svg": ("icon.svg", "image/svg+xml"),
}

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

# Revalidate every time (an ETag makes that a 304): an upgraded server never serves a stale page.
_HEADERS = [
    ("cache-control", "no-cache"),
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
]


def serves(path: str) -> bool:
    """True when ``path`` is one of the page's own URLs (answered without CORS headers)."""
    return (path.rstrip("/") or "/") in PAGES


@cache
def _load(name: str) -> tuple[bytes, str]:
    """The bytes of ``web/<name>`` and their ETag (read once)."""
    body = resources.files("rusteeze.server").joinpath("web", name).read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


async def serve_page(request: HTTPRequest) -> Response:
    """``GET /`` and ``GET /web/*``: one of the page's files, or 304 when the client's copy is current."""
    name, content_type = PAGES[request.path.rstrip("/") or "/"]
    body, etag = _load(name)
    headers = [*_HEADERS, ("etag", etag)]
    if request.headers.get("if-none-match") == etag:
        return Response(304, b"", content_type=content_type, headers=headers)
    return Response(200, body, content_type=content_type, headers=headers)
