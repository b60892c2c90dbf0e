"""`rusteeze quantize`: write an int8 / int4 copy of a model as an HF directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rusteeze.commands.common import Debug, cli_errors, stderr_console
from rusteeze.quant.config import QuantConfig, check_output


def quantize(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="An HF directory, a .gguf file, or a store name.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The directory to write (HF layout).")],
    method: Annotated[str, typer.Option("--method", "-m", help="int8 (per channel) or int4 (per group).")] = "int4",
    group_size: Annotated[
        int | None,
        typer.Option(
            "--group-size",
            "-g",
            help="int4 group size: 32, 64 or 128. Default: 32 for a Q4_0/Q4_1 GGUF (kept bit-exact), else 64.",
            show_default=False,
        ),
    ] = None,
    quantize_embeddings: Annotated[
        bool | None,
        typer.Option(
            "--quantize-embeddings/--no-quantize-embeddings",
            help="Also store the embedding and lm_head as int8. Default: on for a GGUF whose embedding is quantized.",
            show_default=False,
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT when it exists.")] = False,
    debug: Debug = False,
) -> None:
    """Quantize MODEL's linear layers to int8 or int4 and save the result under OUT."""
    console = stderr_console()
    with cli_errors(debug):
        quant = QuantConfig(method, group_size, quantize_embeddings)
        from rusteeze.loader.resolve import resolve_model

        path = Path(model) if Path(model).exists() else resolve_model(model).path
        check_output(path, output, force)  # an existing OUT is refused before anything is printed
        seen: set[str] = set()

        def progress(name: str) -> None:
            layer = name.split(".")[2] if name.startswith("model.layers.") else None
            if layer is not None and layer not in seen:
                seen.add(layer)
                console.print(f"  layer {layer}", style="dim", highlight=False)

        console.print(
            f"Quantizing {path} → {output} ({quant.method}"
            + (f", group {quant.group_size})" if quant.group_size else ")"),
            highlight=False,
            soft_wrap=True,
        )

        def warn(message: str) -> None:
            typer.echo(f"Warning: {message}", err=True)  # one line, never wrapped

        from rusteeze.quant.convert import quantize_model  # torch: imported only when a command runs

        result = quantize_model(path, output, quant, force=force, on_module=progress, on_warning=warn)
        typer.echo(f"Wrote {result.output}")
        typer.echo(result.summary())
        typer.echo(f"Chat with it: rusteeze chat {result.output}")
