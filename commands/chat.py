"""`rusteeze chat`: talk to a model in the terminal, or get one reply for a prompt.

A thin front end over `rusteeze.chat_session.ChatSession`: this file reads lines
(prompt_toolkit), prints streamed text, and turns Ctrl-C / Ctrl-D into what a user expects.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.status import Status
from rich.text import Text

from rusteeze.chat_session import ChatSession, MultilineInput
from rusteeze.chat_settings import ChatSettings
from rusteeze.commands.common import cli_errors, print_error, stderr_console
from rusteeze.commands.options import NO_FLAGS, Debug, EngineOptions, Model, engine_options
from rusteeze.errors import ConfigError, InvalidRequestError, RusteezeError, UnsupportedModelError

SAMPLING = "Sampling options"
PLACEHOLDER = "Send a message (/? for help)"


@engine_options
def chat(
    model: Model = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="Print one reply to this prompt and exit.", show_default=False)
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="The system prompt.", show_default=False)] = None,
    temperature: Annotated[
        float | None, typer.Option(help="0 is greedy (default: the model's, else 0.8).", rich_help_panel=SAMPLING)
    ] = None,
    top_p: Annotated[
        float | None, typer.Option(help="Nucleus sampling mass in (0, 1].", rich_help_panel=SAMPLING)
    ] = None,
    top_k: Annotated[
        int | None, typer.Option(help="Sample from the K most likely tokens.", rich_help_panel=SAMPLING)
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="Most tokens per reply (default: up to the context).", rich_help_panel=SAMPLING)
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible replies.", rich_help_panel=SAMPLING)] = None,
    output_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="Constrain replies: 'json' (any JSON object) or a JSON schema file.",
            rich_help_panel=SAMPLING,
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Print TTFT and tokens/s after each reply.")] = False,
    options: EngineOptions = NO_FLAGS,
    debug: Debug = False,
) -> None:
    """Chat with a model: a >>> prompt on a terminal; -p PROMPT, or a prompt on stdin, prints one reply."""
    with cli_errors(debug):
        cfg, sections = options.engine_config(model)
        flags = dict(system=system, temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens)
        flags["format"] = output_format
        settings = chat_settings(
            sections["chat"], str(options.config or "[chat]"), seed=seed, verbose=verbose or None, **flags
        )
        interactive = prompt is None and sys.stdin.isatty() and sys.stdout.isatty()
        if prompt is None and not interactive:
            if sys.stdin.isatty():  # stdout is redirected: the prompt is typed, then Ctrl-D
                stderr_console().print("(reading the prompt from stdin; end it with Ctrl-D)", style="dim")
            prompt = sys.stdin.read().strip()
            if not prompt:
                raise RusteezeError("no prompt: stdin is empty; pass one with -p TEXT or on stdin")
        from rusteeze.commands.loading import load_engine  # torch: imported only when a model is needed

        engine, resolved = load_engine(cfg)
        if engine.tokenizer.chat_template is None:
            raise UnsupportedModelError(
                f"{resolved.name} has no chat template (a base model?): chat needs an instruct model; "
                "`rusteeze serve` completes plain prompts on /v1/completions"
            )
        session = ChatSession(engine, settings, resolved.name, resolved.source)
        if interactive:
            repl(session)
        else:
            assert prompt is not None
            print_reply(session, prompt)


def chat_settings(table: dict, source: str, **flags: object) -> ChatSettings:
    """The `[chat]` table of the config file, overridden by the flags given (None: not given).

    Raises:
        ConfigError: an invalid table, or a flag value out of range (the message names the flag).
    """
    settings = ChatSettings.from_table(table, source)
    for key, value in flags.items():
        try:
            settings = settings.replace(**{key: value})
        except InvalidRequestError as e:
            raise ConfigError(f"--{key.replace('_', '-')} {str(e).removeprefix(key + ': ')}") from None
    return settings


def print_reply(session: ChatSession, text: str, stop: threading.Event | None = None) -> None:
    """Stream the reply to `text` on stdout (plain text), then the notes on stderr.

    A prompt that takes more than a second to read shows a transient progress line on stderr (on a
    terminal) until the reply's first text.
    """
    out = sys.stdout
    last = "\n"
    with PrefillLine(stderr_console()) as prefill:
        for delta in session.reply(text, should_stop=stop.is_set if stop else None, on_prefill=prefill.update):
            prefill.stop()
            out.write(delta)
            out.flush()
            last = delta[-1]
    if last != "\n":
        out.write("\n")
        out.flush()
    stats, notes = session.last_stats, stderr_console()
    if session.dropped_messages:
        notes.print(f"(dropped the {session.dropped_messages} oldest messages to fit the context)", style="dim")
    if stats is not None and stats.finish_reason == "abort":
        notes.print("Reply stopped.", style="dim")
    elif stats is not None and stats.finish_reason == "length" and session.settings.max_tokens is None:
        notes.print("(the reply filled the context; /clear starts afresh)", style="dim")
    if stats is not None and session.settings.verbose:
        notes.print(Text(stats.summary(), style="dim"), soft_wrap=True)


class PrefillLine:
    """`⠋ Reading the prompt: 2,048 of 8,000 tokens · 12 s`: a transient line on stderr while a long prompt is read.

    It appears `delay` seconds after the first `update` (a timer, so it shows even while the first
    chunk is computed), only on a terminal, and goes at `stop` (the first text) or on leaving the block.
    """

    def __init__(self, console: Console, delay: float = 1.0) -> None:
        self.console, self.delay = console, delay
        self.done, self.total, self.start = 0, 0, 0.0
        self.status: Status | None = None
        self.timer: threading.Timer | None = None
        self.stopped = False
        self.lock = threading.Lock()

    def __enter__(self) -> PrefillLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def update(self, done: int, total: int) -> None:
        """`done` of `total` prompt tokens are read (ChatSession.reply's on_prefill)."""
        with self.lock:
            self.done, self.total = done, total
            if self.stopped or not self.console.is_terminal:
                return
            if self.timer is None:
                self.start = time.perf_counter()
                self.timer = threading.Timer(self.delay, self._show)
                self.timer.daemon = True
                self.timer.start()

    def stop(self) -> None:
        """Remove the line (idempotent); later updates show nothing."""
        with self.lock:
            self.stopped = True
            if self.timer is not None:
                self.timer.cancel()
            if self.status is not None:
                self.status.stop()
                self.status = None

    def _show(self) -> None:
        with self.lock:
            if not self.stopped:
                self.status = self.console.status(self)  # re-rendered on each refresh: the seconds tick
                self.status.start()

    def __rich__(self) -> Text:
        seconds = time.perf_counter() - self.start
        return Text(f"Reading the prompt: {self.done:,} of {self.total:,} tokens · {seconds:.0f} s", style="dim")


def repl(session: ChatSession) -> None:
    """The interactive loop: `>>> ` prompt, slash commands, multi-line input, Ctrl-C and Ctrl-D."""
    from prompt_toolkit import PromptSession

    prompt_session: PromptSession[str] = PromptSession(history=_history())
    multiline = MultilineInput()
    while True:
        try:
            line = prompt_session.prompt(
                "... " if multiline.active else ">>> ",
                placeholder="" if multiline.active else [("fg:ansibrightblack", PLACEHOLDER)],
            )
        except KeyboardInterrupt:  # Ctrl-C at the prompt: drop the line (and any open """ block)
            multiline.reset()
            continue
        except EOFError:  # Ctrl-D on an empty line
            return
        if not multiline.active and session.is_command(line):
            result = session.command(line)
            if result.exit:
                return
            if result.is_error:
                print_error(result.text)
            elif result.text:
                typer.echo(result.text)
            continue
        text = multiline.feed(line)
        if text is None or not text.strip():
            continue
        try:
            with _sigint_stops() as stop:
                print_reply(session, text, stop)
        except RusteezeError as e:  # e.g. a message longer than the context: say so, keep the session
            print_error(str(e))
        except KeyboardInterrupt:  # Ctrl-C just before the handler was in place: the reply was aborted
            stderr_console().print("\nReply stopped.", style="dim")


@contextmanager
def _sigint_stops() -> Iterator[threading.Event]:
    """While inside, Ctrl-C sets the event instead of raising: the reply stops between two engine steps."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _history():  # -> prompt_toolkit History
    """Input history in RUSTEEZE_HOME/chat_history, kept across runs (in memory if it cannot be written)."""
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    from rusteeze.loader.store import store_root

    path = store_root() / "chat_history"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError as e:
        stderr_console().print(f"(input history not saved: {e})", style="dim", markup=False)
        return InMemoryHistory()
    return FileHistory(str(path))
