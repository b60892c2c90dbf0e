"""ServerSettings: what `rusteeze serve` adds to the EngineConfig (the ``[server]`` TOML table)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields, replace
from typing import Any

from rusteeze.config import parse_size
from rusteeze.errors import ConfigError


@dataclass(frozen=True)
class ServerSettings:
    """Server settings, validated on construction.

    Attributes:
        host: interface to bind (127.0.0.1: this machine only).
        port: TCP port (0 picks a free one).
        served_model_name: the model ids (aliases) clients may send, all listed by
            ``/v1/models``; the first is the one reported when a request names
            none. A string is one alias. None means the model reference given
            to ``serve`` (the default model's name when none is given).
        api_key: when set, ``/v1/*`` requires ``Authorization: Bearer <api_key>``.
        allowed_origins: origins allowed by CORS ("*" for any); empty turns CORS off.
        max_body_bytes: larger request bodies get 413 (bytes, or a string like "4MiB").
        max_waiting_requests: requests admitted but without a first token yet;
            beyond this many, new requests get 503 instead of queueing without bound.
        shutdown_timeout: seconds streams may run on after SIGINT/SIGTERM before
            they end with an error event.
        trust_request_chat_template: let requests replace the model's chat template
            (``chat_template_kwargs.chat_template``); off, that is a 400 (as in vLLM).
            Any template renders in a sandbox with a bound on its output.
        web_ui: serve the web chat page at ``GET /`` (off: ``GET /`` is a 404).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: tuple[str, ...] | str | None = None
    api_key: str | None = None
    allowed_origins: tuple[str, ...] = ()
    max_body_bytes: int | str = "4MiB"
    max_waiting_requests: int = 256
    shutdown_timeout: float = 30.0
    trust_request_chat_template: bool = False
    web_ui: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"host = {self.host!r} must be a non-empty string")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port = {self.port!r} must be an integer in [0, 65535]")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ConfigError(f"api_key = {self.api_key!r} must be a non-empty string")
        if self.served_model_name is not None:
            object.__setattr__(self, "served_model_name", _model_names(self.served_model_name))
        origins = self.allowed_origins
        if isinstance(origins, str):
            origins = (origins,)
        if not isinstance(origins, (list, tuple)) or not all(isinstance(o, str) and o for o in origins):
            raise ConfigError(f"allowed_origins = {self.allowed_origins!r} must be a list of origins")
        object.__setattr__(self, "allowed_origins", tuple(origins))
        object.__setattr__(self, "max_body_bytes", parse_size(self.max_body_bytes, "max_body_bytes"))
        n = self.max_waiting_requests
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"max_waiting_requests = {n!r} must be an integer >= 1")
        t = self.shutdown_timeout
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0:
            raise ConfigError(f"shutdown_timeout = {t!r} must be a number of seconds >= 0")
        trust = self.trust_request_chat_template
        if not isinstance(trust, bool):
            raise ConfigError(f"trust_request_chat_template = {trust!r} must be true or false")
        if not isinstance(self.web_ui, bool):
            raise ConfigError(f"web_ui = {self.web_ui!r} must be true or false")

    @classmethod
    def from_table(cls, table: dict[str, Any], source: str = "[server]") -> ServerSettings:
        """Settings from a ``[server]`` table; unknown keys are rejected with a did-you-mean hint.

        Raises:
            ConfigError: an unknown key or an invalid value.
        """
        names = [f.name for f in fields(cls)]
        for key in table:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(names)}"
                raise ConfigError(f"unknown key {key!r} in {source}{hint}")
        return cls(**table)

    def replace(self, **overrides: Any) -> ServerSettings:
        """A copy with the given fields changed; ``None`` values are skipped (flag not given)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _model_names(value: object) -> tuple[str, ...]:
    """``served_model_name`` as a tuple of distinct names (a string is one name), blanks trimmed.

    Raises:
        ConfigError: not a string or a non-empty list, or a name that is empty or not a string.
    """
    names = (value,) if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names:
        raise ConfigError(f"served_model_name = {value!r} must be a model name or a non-empty list of names")
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"served_model_name = {name!r} must be a non-empty model name")
    return tuple(dict.fromkeys(n.strip() for n in names))
