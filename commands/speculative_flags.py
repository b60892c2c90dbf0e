"""The speculative-decoding flags of the engine commands (chat, bench, serve).

`--speculative ngram|draft`, `--draft-model M` and `--num-speculative-tokens K` fill the
`[speculative]` table of the EngineConfig: a flag overrides the same key of the config file's
table, and the rest of the table is kept.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Annotated, Any

import typer

from rusteeze.engine.spec_decode.config import SpeculativeConfig
from rusteeze.errors import ConfigError

ENGINE_PANEL = "Engine options"
_FLAGS = {
    "method": "--speculative",
    "draft_model": "--draft-model",
    "num_speculative_tokens": "--num-speculative-tokens",
}

Speculative = Annotated[
    str | None,
    typer.Option(
        "--speculative",
        metavar="METHOD",
        help="Speculative decoding: ngram (the model verifies continuations of text the prompt or "
        "output already holds; same output, faster on repeated text) or draft.",
        rich_help_panel=ENGINE_PANEL,
        show_default=False,
    ),
]
DraftModel = Annotated[
    str | None,
    typer.Option(
        "--draft-model",
        metavar="MODEL",
        help="The draft model of --speculative draft.",
        rich_help_panel=ENGINE_PANEL,
        show_default=False,
    ),
]
NumSpeculativeTokens = Annotated[
    int | None,
    typer.Option(
        "--num-speculative-tokens",
        metavar="K",
        help="Most tokens proposed per sequence and step with --speculative (default 4).",
        rich_help_panel=ENGINE_PANEL,
        show_default=False,
    ),
]


def speculative_flags(
    base: SpeculativeConfig | None, method: str | None, draft_model: str | None, num_tokens: int | None
) -> SpeculativeConfig | None:
    """The `[speculative]` settings with the flags applied; None when no flag was given.

    Raises:
        ConfigError: a bad value (naming the flag), or `--draft-model` / `--num-speculative-tokens`
            without `--speculative` or a `[speculative]` table.
    """
    flags = {"method": method, "draft_model": draft_model, "num_speculative_tokens": num_tokens}
    given = {key: value for key, value in flags.items() if value is not None}
    if not given:
        return None
    if base is None and method is None:
        named = " and ".join(_FLAGS[key] for key in given)
        raise ConfigError(f"{named} needs --speculative ngram (or draft), or a [speculative] table in --config")
    values: dict[str, Any] = dataclasses.asdict(base) if base is not None else {}
    try:
        return SpeculativeConfig.coerce(values | given)
    except ConfigError as e:
        message = str(e)
        for key, flag in _FLAGS.items():
            message = re.sub(
                rf"speculative\.{key}( = )?", lambda m, flag=flag: flag + (" " if m.group(1) else ""), message
            )
        raise ConfigError(message) from None
