"""The slash commands of `rusteeze chat`: /help, /exit and /bye, /clear, /system, /set, /format, /show, /stats.

Each command is a small function of the session and its argument text that returns a
``CommandResult``; nothing here prints, so every command is testable without a terminal.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rusteeze.chat_settings import SETTABLE, UNSET_WORDS
from rusteeze.engine.describe import compute_path, speculation, weight_format
from rusteeze.errors import InvalidRequestError

if TYPE_CHECKING:
    from rusteeze.chat_session import ChatSession


@dataclass(frozen=True)
class CommandResult:
    """What a slash command answered.

    Attributes:
        text: what to show (may span lines; empty for nothing).
        is_error: show it as an error (one line).
        exit: the user asked to leave.
    """

    text: str
    is_error: bool = False
    exit: bool = False


HELP = """\
Commands:
  /set PARAMETER VALUE   set temperature, top_p, top_k, max_tokens or seed ('default' unsets it)
  /system TEXT           set the system prompt (no TEXT: remove it); clears the history
  /format json|FILE|off  constrain replies to JSON, or to the JSON schema in FILE ('off' frees them)
  /show                  show the model and the parameters
  /stats                 TTFT and tokens/s of the last reply
  /clear                 forget the conversation so far
  /help                  show this help
  /exit, /bye            leave (Ctrl-D too)

Type \"\"\" to begin a message of several lines and \"\"\" again to end it.
Ctrl-C stops a reply; at the prompt it clears the line."""


def run_command(session: ChatSession, line: str) -> CommandResult:
    """Run one slash command line (`/set temperature 0.2`) against a session."""
    name, _, arg = line.strip().partition(" ")
    arg = arg.strip()
    handler = _COMMANDS.get(name.lower())
    if handler is None:
        return CommandResult(f"Unknown command '{name}'. Type /help for the commands.", is_error=True)
    return handler(session, arg)


def _help(session: ChatSession, arg: str) -> CommandResult:
    return CommandResult(HELP)


def _exit(session: ChatSession, arg: str) -> CommandResult:
    return CommandResult("", exit=True)


def _clear(session: ChatSession, arg: str) -> CommandResult:
    session.clear()
    return CommandResult("Cleared the conversation.")


def _system(session: ChatSession, arg: str) -> CommandResult:
    session.settings = dataclasses.replace(session.settings, system=arg or None)
    session.clear()  # the old answers were given under another system prompt
    return CommandResult("Set the system prompt." if arg else "Removed the system prompt.")


def _set(session: ChatSession, arg: str) -> CommandResult:
    key, _, value = arg.partition(" ")
    value = value.strip()
    if not key or not value:
        return CommandResult(
            f"Usage: /set PARAMETER VALUE ('{UNSET_WORDS[0]}' unsets it); PARAMETER: {', '.join(SETTABLE)}",
            is_error=True,
        )
    try:
        session.settings = session.settings.set_from_text(key.lower(), value)
    except InvalidRequestError as e:
        return CommandResult(str(e), is_error=True)
    shown = getattr(session.settings, key.lower())
    return CommandResult(f"Set {key.lower()} to {'default' if shown is None else shown}.")


def _format(session: ChatSession, arg: str) -> CommandResult:
    if not arg:
        current = session.settings.format
        return CommandResult(f"Format: {current}." if current else "Format: free text (/format json|FILE|off).")
    if arg.lower() in UNSET_WORDS:
        session.settings = dataclasses.replace(session.settings, format=None)
        return CommandResult("Replies are free text again.")
    try:
        session.settings = dataclasses.replace(session.settings, format=arg)
    except InvalidRequestError as e:
        return CommandResult(str(e), is_error=True)
    what = "JSON" if arg.lower() == "json" else f"the JSON schema in {arg}"
    return CommandResult(f"Replies are constrained to {what}.")


def _show(session: ChatSession, arg: str) -> CommandResult:
    engine, settings, defaults = session.engine, session.settings, session.model_defaults
    loaded = engine.loaded
    params = settings.sampling_params(defaults)
    lines = [
        f"Model       {session.model_name}" + (f" ({session.model_source})" if session.model_source else ""),
        f"Path        {loaded.path}",
        f"Arch        {engine.model_config.architecture}, context {engine.max_model_len} tokens",
        f"Weights     {weight_format(loaded.model)}",
        f"Compute     {compute_path(engine)}",
        f"Speculation {speculation(engine)}",
        "Parameters",
    ]
    for key in ("temperature", "top_p", "top_k"):
        lines.append(f"  {key:<12}{getattr(params, key)} ({settings.origin(key, defaults)})")
    max_tokens = settings.max_tokens if settings.max_tokens is not None else "none (up to the context)"
    seed = settings.seed if settings.seed is not None else "none (random)"
    lines += [f"  {'max_tokens':<12}{max_tokens}", f"  {'seed':<12}{seed}"]
    lines.append(f"Format      {settings.format or 'free text'}")
    lines.append(f"System      {settings.system if settings.system else '(none)'}")
    turns = len(session.history)
    lines.append(f"History     {turns} message{'' if turns == 1 else 's'}")
    return CommandResult("\n".join(lines))


def _stats(session: ChatSession, arg: str) -> CommandResult:
    if session.last_stats is None:
        return CommandResult("No reply yet.")
    return CommandResult(session.last_stats.summary())


_COMMANDS = {
    "/help": _help,
    "/?": _help,
    "/exit": _exit,
    "/bye": _exit,
    "/clear": _clear,
    "/system": _system,
    "/set": _set,
    "/format": _format,
    "/show": _show,
    "/stats": _stats,
}
