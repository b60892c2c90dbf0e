"""A small router: exact (method, path) routes, 404 for unknown paths, 405 for wrong methods."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from rusteeze.server.http import APIError, HTTPRequest

Handler = Callable[[HTTPRequest], Awaitable[Any]]


class Router:
    """Maps ``(method, path)`` to handlers; a trailing slash is ignored."""

    def __init__(self) -> None:
        self._routes: dict[str, dict[str, Handler]] = {}

    def add(self, method: str, path: str, handler: Handler) -> None:
        """Register ``handler`` for ``method path`` (e.g. ``"POST", "/v1/completions"``)."""
        self._routes.setdefault(path.rstrip("/") or "/", {})[method.upper()] = handler

    def route(self, method: str, path: str) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`add`."""

        def register(handler: Handler) -> Handler:
            self.add(method, path, handler)
            return handler

        return register

    def allowed_methods(self, path: str) -> list[str]:
        """The methods registered for ``path`` (empty when the path is unknown)."""
        return sorted(self._routes.get(path.rstrip("/") or "/", {}))

    def match(self, method: str, path: str) -> Handler:
        """The handler of ``method path``.

        Raises:
            APIError: 404 for an unknown path, 405 when the path exists with other methods.
        """
        methods = self._routes.get(path.rstrip("/") or "/")
        if methods is None:
            raise APIError(404, f"no route for {path}", code="not_found")
        handler = methods.get(method.upper())
        if handler is None:
            allowed = ", ".join(sorted(methods))
            raise APIError(405, f"{method} is not allowed on {path}; use {allowed}", code="method_not_allowed")
        return handler
