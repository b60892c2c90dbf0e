"""`rusteeze bench`: measure a model offline (the engine in this process) or a server online (--url)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from rusteeze.commands.common import cli_errors, stderr_console, stdout_console
from rusteeze.commands.options import NO_FLAGS, Debug, EngineOptions, Model, engine_options
from rusteeze.errors import ConfigError

WORKLOAD = "Workload"
ONLINE = "Online (a running server)"


@engine_options
def bench(
    model: Model = None,
    num_prompts: Annotated[int, typer.Option(help="Requests per run.", rich_help_panel=WORKLOAD)] = 32,
    input_len: Annotated[int, typer.Option(help="Prompt tokens per request.", rich_help_panel=WORKLOAD)] = 256,
    output_len: Annotated[int, typer.Option(help="Tokens generated per request.", rich_help_panel=WORKLOAD)] = 128,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Seed of the prompts and of sampling (default 0).", show_default=False, rich_help_panel=WORKLOAD
        ),
    ] = None,
    json_file: Annotated[
        Path | None,
        typer.Option("--json", metavar="FILE", help="Also write the figures as JSON.", show_default=False),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="Benchmark the OpenAI-compatible server at URL instead (MODEL: the model id to send).",
            show_default=False,
            rich_help_panel=ONLINE,
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(help="Most requests in flight (default: no limit).", show_default=False, rich_help_panel=ONLINE),
    ] = None,
    request_rate: Annotated[
        float,
        typer.Option(help="Mean requests per second, Poisson arrivals (inf: all at once).", rich_help_panel=ONLINE),
    ] = math.inf,
    api_key: Annotated[
        str | None,
        typer.Option(
            metavar="KEY",
            envvar="OPENAI_API_KEY",
            help="Bearer token for the server.",
            show_default=False,
            rich_help_panel=ONLINE,
        ),
    ] = None,
    options: EngineOptions = NO_FLAGS,
    debug: Debug = False,
) -> None:
    """Benchmark throughput and latency: TTFT, TPOT and ITL percentiles, prefill speed, peak memory."""
    with cli_errors(debug):
        if json_file is not None and not json_file.resolve().parent.is_dir():  # say so before a long run
            raise ConfigError(f"--json {json_file}: the folder {json_file.parent} does not exist")
        if url is not None:
            from rusteeze.bench.online import run_online

            with _progress() as on_progress:
                result = run_online(
                    url,
                    model,
                    num_prompts,
                    input_len,
                    output_len,
                    concurrency=concurrency,
                    request_rate=request_rate,
                    seed=seed or 0,
                    api_key=api_key,
                    on_progress=on_progress,
                )
        else:
            from rusteeze.bench.offline import check_sizes, run_offline
            from rusteeze.commands.loading import load_engine

            cfg, _ = options.engine_config(model, seed=seed)
            check_sizes(num_prompts, input_len, output_len)  # before the model loads
            engine, resolved = load_engine(cfg)
            with _progress() as on_progress:
                result = run_offline(
                    engine, resolved.name, num_prompts, input_len, output_len, seed=cfg.seed, on_progress=on_progress
                )
        from rusteeze.bench.report import render

        stdout_console().print(render(result))
        if json_file is not None:
            from rusteeze.bench.metrics import write_json

            write_json(json_file, result)
            stderr_console().print(Text(f"Wrote {json_file}", style="dim"))


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    """A transient progress bar on stderr (terminals only): one line per phase, finished requests of all."""
    console = stderr_console()
    progress = Progress(
        TextColumn("{task.description:<8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    tasks: dict[str, TaskID] = {}

    def on_progress(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = progress.add_task(phase.capitalize(), total=total)
        progress.update(tasks[phase], completed=done)

    with progress:
        yield on_progress
