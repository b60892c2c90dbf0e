"""The `rusteeze` Typer application: one file per subcommand, registered here and imported on demand.

Start-up stays light: `rusteeze --version`, `rusteeze --help` and usage errors import typer and
rich only. A subcommand's module (and with it torch, for the commands that load a model) is
imported when that subcommand runs or shows its own help (`LazyCommands`).

Ctrl-C at any moment is one line, `Interrupted.`, and exit status 130: while this module imports,
while a command module imports, and inside a command (`cli_errors`). The console script then
leaves at once (`os._exit`), so a second Ctrl-C cannot land in the interpreter's shutdown (joining
download threads, tearing down torch) and print a traceback from there.
"""

from __future__ import annotations

import contextlib
import os
import sys

try:
    import importlib
    from typing import Any

    import click
    import typer
    import typer.main
    from typer.core import TyperGroup
    from typer.models import CommandInfo

    from rusteeze import __version__
    from rusteeze.commands import common
except KeyboardInterrupt:  # Ctrl-C while Python imports the CLI itself
    sys.stderr.write("Interrupted.\n")
    sys.exit(130)

# name: ("module:function" under rusteeze.commands, the one-line help `rusteeze --help` lists);
# tests/commands/test_main.py checks each line against the command's docstring.
COMMANDS: dict[str, tuple[str, str]] = {
    "pull": (
        "pull:pull",
        "Download a model from the Hugging Face Hub, or import a local .gguf file or HF directory into the store.",
    ),
    "list": (
        "list_models:list_models",
        "List the models in the store: name, format, architecture, parameters, quantization and size on disk.",
    ),
    "rm": ("rm:rm", "Delete a model from the store (a pulled hub model: its files in the Hugging Face cache too)."),
    "quantize": ("quantize:quantize", "Quantize MODEL's linear layers to int8 or int4 and save the result under OUT."),
    "chat": (
        "chat:chat",
        "Chat with a model: a >>> prompt on a terminal; -p PROMPT, or a prompt on stdin, prints one reply.",
    ),
    "bench": (
        "bench:bench",
        "Benchmark throughput and latency: TTFT, TPOT and ITL percentiles, prefill speed, peak memory.",
    ),
    "serve": ("serve:serve", "Serve a model with an OpenAI-compatible API (completions, chat, streaming, metrics)."),
}


def load_command(name: str) -> Any:
    """The function of subcommand `name` (imports its module)."""
    module, function = COMMANDS[name][0].split(":")
    return getattr(importlib.import_module(f"rusteeze.commands.{module}"), function)


class LazyCommands(TyperGroup):
    """A group whose subcommands are imported when used; `--help` lists them from `COMMANDS` alone."""

    _listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        if self._listing:  # the group's own help: name and summary, nothing imported
            return click.Command(cmd_name, short_help=COMMANDS[cmd_name][1], help=COMMANDS[cmd_name][1])
        return typer.main.get_command_from_info(
            CommandInfo(name=cmd_name, callback=load_command(cmd_name)),
            pretty_exceptions_short=app.pretty_exceptions_short,
            rich_markup_mode=app.rich_markup_mode,
        )

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


class Rusteeze(typer.Typer):
    """The Typer app, plus the console script's Ctrl-C rule (see the module doc)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except KeyboardInterrupt:
            _leave_interrupted()
        except SystemExit as e:
            if e.code == 130:  # Ctrl-C inside a command or while Typer ran
                _leave_interrupted()
            raise


def _leave_interrupted() -> None:
    """Say `Interrupted.` once (unless a command already did), then exit 130 at once."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not common.interrupted_reported():
        common.stderr_console().print("Interrupted.", style="dim")
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe
            stream.flush()
    os._exit(130)


app = Rusteeze(
    name="rusteeze",
    cls=LazyCommands,
    help="Run LLMs locally: pull, quantize, chat, bench and serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rusteeze {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Run LLMs locally: pull, quantize, chat, bench and serve."""
