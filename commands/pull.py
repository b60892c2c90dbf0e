"""`rusteeze pull`: download a hub model, or import a local .gguf file or HF directory into the store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn

from rusteeze.commands.common import Debug, cli_errors, stderr_console
from rusteeze.loader.model_info import human_parameters, human_size
from rusteeze.loader.resolve import pull_model
from rusteeze.loader.store import StoreEntry


def pull(
    model: Annotated[
        str,
        typer.Argument(
            metavar="MODEL",
            help="A hub id (ORG/REPO, or ORG/REPO:QUANT for one GGUF file), an HF directory or a .gguf file.",
        ),
    ],
    revision: Annotated[str | None, typer.Option("--revision", "-r", help="Hub branch, tag or commit.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Download again; replace a store entry of the same name.")
    ] = False,
    name: Annotated[str | None, typer.Option("--name", help="Name in the store (default: from MODEL).")] = None,
    debug: Debug = False,
) -> None:
    """Download a model from the Hugging Face Hub, or import a local .gguf file or HF directory into the store."""
    with cli_errors(debug):
        with _copy_progress() as on_copy:
            entry = pull_model(model, revision=revision, force=force, name=name, on_copy=on_copy)
        typer.echo(summary(entry))
        typer.echo(f"Chat with it: rusteeze chat {entry.name}")


def summary(entry: StoreEntry) -> str:
    """One line about a fresh store entry: what it is and where it came from."""
    what = f"{entry.architecture}, {human_parameters(entry.parameters)} parameters, {entry.quantization}"
    size = human_size(entry.size_on_disk())
    if entry.repo_id:
        commit = f"commit {entry.commit[:7]}" if entry.commit else "commit unknown"
        return f"Pulled {entry.name} ({what}, {size}, {commit})"
    return f"Imported {entry.name} ({what}, {size}) from {entry.source}"


@contextmanager
def _copy_progress() -> Iterator[Callable[[int, int], None]]:
    """A transient progress bar on stderr for the bytes an import copies; it appears with the first byte."""
    console = stderr_console()
    progress = Progress(
        TextColumn("Copying"),
        BarColumn(),
        DownloadColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    task: TaskID | None = None

    def on_copy(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            progress.start()
            task = progress.add_task("copy", total=total)
        progress.update(task, completed=done)

    try:
        yield on_copy
    finally:
        progress.stop()
