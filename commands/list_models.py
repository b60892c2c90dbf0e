"""`rusteeze list`: the models in the local store."""

from __future__ import annotations

import typer

from rusteeze.commands.common import Debug, cli_errors, stderr_console
from rusteeze.loader.model_info import human_parameters, human_size
from rusteeze.loader.store import ModelStore

HEADER = ("NAME", "FORMAT", "ARCH", "PARAMS", "QUANT", "SIZE")


def list_models(debug: Debug = False) -> None:
    """List the models in the store: name, format, architecture, parameters, quantization and size on disk."""
    with cli_errors(debug):
        store = ModelStore()
        entries = store.entries()
        for problem in store.problems:
            stderr_console().print(f"skipped {problem}", style="yellow", markup=False, soft_wrap=True)
        if not entries:
            typer.echo(f"No models in {store.root}. Pull one: rusteeze pull HuggingFaceTB/SmolLM2-135M-Instruct")
            return
        rows = [HEADER]
        for e in entries:
            size = e.size_on_disk()
            rows.append(
                (
                    e.name,
                    e.format,
                    e.architecture,
                    human_parameters(e.parameters),
                    e.quantization,
                    human_size(size) if size else "missing",
                )
            )
        for line in format_table(rows):
            typer.echo(line)


def format_table(rows: list[tuple[str, ...]]) -> list[str]:
    """Left-aligned columns separated by two spaces, trailing spaces trimmed (like `ollama list`)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
