"""`rusteeze rm`: delete a model from the store."""

from __future__ import annotations

from typing import Annotated

import typer

from rusteeze.commands.common import Debug, cli_errors
from rusteeze.loader.model_info import human_size
from rusteeze.loader.store import ModelStore


def rm(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The model's name, as `rusteeze list` shows it.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    debug: Debug = False,
) -> None:
    """Delete a model from the store (a pulled hub model: its files in the Hugging Face cache too)."""
    with cli_errors(debug):
        store = ModelStore()
        entry = store.require(name)
        where = "the Hugging Face cache" if entry.repo_id else "the store"
        if not yes:
            try:
                typer.confirm(f"Delete {entry.name} ({human_size(entry.size_on_disk())}) from {where}?", abort=True)
            except typer.Abort as e:
                if isinstance(e.__context__, KeyboardInterrupt):  # Ctrl-C at the question: 130, like anywhere
                    raise KeyboardInterrupt from None
                raise
        store.remove(entry.name)
        typer.echo(f"Deleted {entry.name}")
