"""`rusteeze serve`: the OpenAI-compatible server (rusteeze.server) on uvicorn.

The model reference is resolved and the port bound before anything else, so a
typo or a busy port is one red line and exit 1 at once; the weights then load
in the background while `/health` answers 503. SIGINT/SIGTERM shut down
gracefully and exit 0.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated

import typer

from rusteeze.commands.common import cli_errors
from rusteeze.commands.options import NO_FLAGS, Debug, EngineOptions, Model, engine_options

SERVER = "Server options"


@engine_options
def serve(
    model: Model = None,
    host: Annotated[
        str | None,
        typer.Option(
            help="Interface to listen on (default 127.0.0.1: this machine only).",
            metavar="HOST",
            show_default=False,
            rich_help_panel=SERVER,
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help="TCP port (default 8000).", metavar="PORT", show_default=False, rich_help_panel=SERVER),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            help="Require `Authorization: Bearer KEY` on /v1/*.",
            envvar="RUSTEEZE_API_KEY",
            metavar="KEY",
            show_default=False,
            rich_help_panel=SERVER,
        ),
    ] = None,
    served_model_name: Annotated[
        list[str] | None,
        typer.Option(
            help="A model id clients may use; repeat for aliases, the first is the default (default: MODEL as given).",
            metavar="NAME",
            show_default=False,
            rich_help_panel=SERVER,
        ),
    ] = None,
    allowed_origins: Annotated[
        list[str] | None,
        typer.Option(
            help="Turn CORS on for these origins (repeat, or comma-separate; * for any).",
            metavar="ORIGIN",
            show_default=False,
            rich_help_panel=SERVER,
        ),
    ] = None,
    max_waiting_requests: Annotated[
        int | None,
        typer.Option(
            help="Requests allowed to wait for a first token before 503 (default 256).",
            metavar="N",
            show_default=False,
            rich_help_panel=SERVER,
        ),
    ] = None,
    shutdown_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds running requests get on SIGINT/SIGTERM (default 30).",
            metavar="SECONDS",
            show_default=False,
            rich_help_panel=SERVER,
        ),
    ] = None,
    trust_request_chat_template: Annotated[
        bool,
        typer.Option(
            "--trust-request-chat-template",
            help="Let requests bring their own chat template (chat_template_kwargs.chat_template); off: 400.",
            rich_help_panel=SERVER,
            show_default=False,
        ),
    ] = False,
    no_web_ui: Annotated[
        bool,
        typer.Option(
            "--no-web-ui",
            help="Do not serve the web chat page at / (the API is unchanged).",
            rich_help_panel=SERVER,
            show_default=False,
        ),
    ] = False,
    options: EngineOptions = NO_FLAGS,
    debug: Debug = False,
) -> None:
    """Serve a model with an OpenAI-compatible API (completions, chat, streaming, metrics)."""
    with cli_errors(debug):
        from rusteeze.commands.loading import load_line
        from rusteeze.engine.engine import Engine
        from rusteeze.loader.resolve import resolve_model
        from rusteeze.server.app import create_app
        from rusteeze.server.settings import ServerSettings
        from rusteeze.server.uvicorn_server import bind_socket, run_server

        cfg, sections = options.engine_config(model)
        origins = [o.strip() for value in allowed_origins or [] for o in value.split(",") if o.strip()]
        flags = {
            "host": host,
            "port": port,
            "api_key": api_key,
            "served_model_name": tuple(served_model_name) if served_model_name else None,
            "allowed_origins": tuple(origins) or None,
            "max_waiting_requests": max_waiting_requests,
            "shutdown_timeout": shutdown_timeout,
            "trust_request_chat_template": trust_request_chat_template or None,
            "web_ui": False if no_web_ui else None,
        }
        given = {key: value for key, value in flags.items() if value is not None}
        for key, value in given.items():
            _check_flag(ServerSettings, key, value)
        settings = ServerSettings.from_table(sections["server"], source=f"{options.config} [server]").replace(**given)
        resolved = resolve_model(cfg.model)
        names = settings.served_model_name or (cfg.model or resolved.name,)
        engine_cfg = cfg.replace(model=str(resolved.path))
        log = logging.getLogger("rusteeze.server")

        def load() -> Engine:
            from rusteeze.commands.options import as_flags
            from rusteeze.engine.kv_budget import check_usable
            from rusteeze.errors import ConfigError

            start = time.perf_counter()
            try:  # the KV budget or the context: say it in flags, as chat and bench do
                engine = Engine(engine_cfg)
                note = check_usable(engine.kv_plan, engine_cfg)
            except ConfigError as e:
                raise ConfigError(as_flags(str(e))) from None
            log.info(load_line(resolved, engine, time.perf_counter() - start))
            if note:
                log.info(as_flags(note))
            return engine

        sock = bind_socket(settings.host, settings.port)
        run_server(create_app(settings, load, names), sock)


def _check_flag(settings_cls: type, key: str, value: object) -> None:
    """Validate one server flag alone, so the error names the flag (``--port 70000 ...``)."""
    from rusteeze.errors import ConfigError

    try:
        settings_cls(**{key: value})
    except ConfigError as e:
        flag = "--" + key.replace("_", "-")
        message = str(e).replace(f"{key} = ", f"{flag} ", 1)
        raise ConfigError(message) from None
