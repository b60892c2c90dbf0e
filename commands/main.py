"""The `rusteeze` Typer application: one file per subcommand, registered here."""

import typer

from rusteeze import __version__
from rusteeze.commands.bench import bench
from rusteeze.commands.chat import chat
from rusteeze.commands.list_models import list_models
from rusteeze.commands.pull import pull
from rusteeze.commands.quantize import quantize
from rusteeze.commands.rm import rm
from rusteeze.commands.serve import serve

app = typer.Typer(
    name="rusteeze",
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


app.command("pull")(pull)
app.command("list")(list_models)
app.command("rm")(rm)
app.command("quantize")(quantize)
app.command("chat")(chat)
app.command("bench")(bench)
app.command("serve")(serve)
