"""`rusteeze chat --format json|SCHEMA.json` and `/format`: constrained replies, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from rusteeze.chat_commands import run_command
from rusteeze.chat_settings import ChatSettings
from rusteeze.commands.main import app
from rusteeze.errors import ConfigError, InvalidRequestError
from rusteeze.structured import StructuredOutputsParams

RUSTEEZE = str(Path(sys.executable).with_name("rusteeze"))
SMOLLM2 = ["--temperature", "0", "--max-tokens", "200", "--kv-cache-memory", "64MiB", "--device", "cpu"]
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30}, "country": {"type": "string", "maxLength": 30}},
    "required": ["city", "country"],
    "additionalProperties": False,
}


@pytest.fixture
def schema_file(tmp_path) -> Path:
    path = tmp_path / "city.json"
    path.write_text(json.dumps(CITY))
    return path


def test_format_values_stand_for_their_constraint(schema_file):
    assert ChatSettings(format="json").structured_outputs == StructuredOutputsParams(json_object=True)
    assert ChatSettings(format=str(schema_file)).structured_outputs == StructuredOutputsParams(json=CITY)
    inline = ChatSettings(format=json.dumps(CITY))
    assert inline.structured_outputs == StructuredOutputsParams(json=CITY)
    assert inline.sampling_params({}).structured_outputs == StructuredOutputsParams(json=CITY)
    assert ChatSettings().sampling_params({}).structured_outputs is None
    assert ChatSettings.from_table({"format": "json"}).structured_outputs.json_object


@pytest.mark.parametrize(
    ("write", "needle"),
    [
        (None, "cannot read the schema file"),
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON schema object, got list"),
        ('{"type": "nope"}', "is not a usable JSON schema: Invalid type: nope"),
    ],
)
def test_bad_formats_are_one_line_naming_the_file(tmp_path, write, needle):
    path = tmp_path / "schema.json"
    if write is not None:
        path.write_text(write)
    with pytest.raises(InvalidRequestError) as info:
        ChatSettings(format=str(path))
    assert needle in str(info.value) and "\n" not in str(info.value) and info.value.param == "format"
    with pytest.raises(ConfigError, match=r"\[chat\] format: "):
        ChatSettings.from_table({"format": str(path)})


def test_cli_format_errors_exit_1_before_loading_a_model(tmp_path):
    result = CliRunner().invoke(app, ["chat", "no-such-model", "-p", "Hi", "--format", str(tmp_path / "x.json")])
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: --format cannot read the schema file") and "x.json" in line


class FakeSession:
    """What the /format command touches: settings (the command replaces them)."""

    def __init__(self) -> None:
        self.settings = ChatSettings()


def test_format_slash_command_sets_shows_and_unsets(schema_file):
    session = FakeSession()
    assert run_command(session, "/format").text.startswith("Format: free text")
    assert run_command(session, "/format json").text == "Replies are constrained to JSON."
    assert session.settings.structured_outputs == StructuredOutputsParams(json_object=True)
    assert run_command(session, "/format").text == "Format: json."
    result = run_command(session, f"/format {schema_file}")
    assert result.text == f"Replies are constrained to the JSON schema in {schema_file}."
    assert session.settings.structured_outputs == StructuredOutputsParams(json=CITY)
    bad = run_command(session, "/format /no/such/schema.json")
    assert bad.is_error and "cannot read the schema file" in bad.text
    assert session.settings.structured_outputs == StructuredOutputsParams(json=CITY)  # unchanged
    assert run_command(session, "/format off").text == "Replies are free text again."
    assert session.settings.structured_outputs is None and session.settings.format is None


# --- the real default model ---------------------------------------------------------------------


@pytest.mark.slow
def test_console_script_format_json_prints_a_json_object(smollm2_gguf_path):
    done = subprocess.run(
        [RUSTEEZE, "chat", "-p", "What is the capital of France? Answer in JSON.", "--format", "json", *SMOLLM2],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), dict)


@pytest.mark.slow
def test_format_schema_file_gives_schema_valid_replies(smollm2_gguf_path, schema_file):
    result = CliRunner().invoke(
        app, ["chat", "-p", "Where is the Eiffel Tower?", "--format", str(schema_file), *SMOLLM2]
    )
    assert result.exit_code == 0, result.output
    jsonschema.validate(json.loads(result.stdout), CITY)
