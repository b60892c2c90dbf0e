"""What every command shares: the `--debug` option and error handling at the edge.

Usage, in each command file:

    from rusteeze.commands.common import Debug, cli_errors

    @app.command()
    def chat(model: str | None = None, debug: Debug = False) -> None:
        with cli_errors(debug):
            ...  # library calls; raise RusteezeError (or subclasses) for user mistakes

Inside `cli_errors`:

- a `RusteezeError` (every user mistake: unknown model, bad value, access denied…) prints one
  red line, `Error: <message>`, on stderr and exits with status 1;
- an `OSError` (disk full, permission denied, port in use) prints one line the same way;
- Ctrl-C prints `Interrupted.` and exits with 130 (the shell's convention for SIGINT);
- any other exception is a bug: one line naming it and `--debug`, exit 1.

With `--debug` (or `RUSTEEZE_DEBUG=1`) the exception propagates with its full traceback.
`typer.Exit` / `typer.Abort` and usage errors (exit 2) pass through untouched.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.text import Text

from rusteeze.errors import RusteezeError

Debug = Annotated[
    bool, typer.Option("--debug", help="Show full tracebacks (also RUSTEEZE_DEBUG=1).", envvar="RUSTEEZE_DEBUG")
]

# soft_wrap: a line is never broken at the console's width (80 columns in a pipe or a log), so
# paths, model names and model text stay whole; terminals wrap long lines themselves.
_stderr = Console(stderr=True, highlight=False, soft_wrap=True)
_interrupted = False


def stderr_console() -> Console:
    """The console for messages on stderr (errors, progress, dim status lines); it never wraps lines."""
    return _stderr


def stdout_console() -> Console:
    """A console for results on stdout (tables, text) that never wraps lines (see `_stderr`)."""
    return Console(highlight=False, soft_wrap=True)


def print_error(message: str) -> None:
    """Print `Error: message` as one red line on stderr (never wrapped, no markup interpretation)."""
    line = " ".join(message.split())  # one line, whatever the message holds
    Console(stderr=True, highlight=False, soft_wrap=True).print(Text(f"Error: {line}", style="red"))


@contextmanager
def cli_errors(debug: bool = False) -> Iterator[None]:
    """Turn exceptions raised inside the block into one line on stderr and an exit status (see module doc)."""
    try:
        yield
    except (typer.Exit, typer.Abort, click.exceptions.ClickException):
        raise
    except Exception as e:
        if debug or _debug_env():
            raise
        if isinstance(e, (RusteezeError, OSError)):
            print_error(str(e) or type(e).__name__)
        else:
            print_error(f"unexpected {type(e).__name__}: {e} (this is a bug; rerun with --debug for the traceback)")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        if debug or _debug_env():
            raise
        global _interrupted
        with contextlib.suppress(ValueError):  # (only the main thread may set handlers)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second press must not cut the line short
        _stderr.print("Interrupted.", style="dim")
        _interrupted = True  # after the line: a press before it leaves through main, which says it
        raise typer.Exit(130) from None


def interrupted_reported() -> bool:
    """Whether `cli_errors` has printed `Interrupted.` in this process (the console script says it once)."""
    return _interrupted


def _debug_env() -> bool:
    return os.environ.get("RUSTEEZE_DEBUG", "").lower() in ("1", "true", "yes", "on")
