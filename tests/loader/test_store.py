"""The local model store: import, list, look up and remove, never half-written."""

import json
import os

import pytest
from fake_hub import tiny_hf_files, write_gguf, write_hf_dir

from rusteeze.errors import ModelLoadError, ModelNotFoundError, RusteezeError
from rusteeze.loader.model_info import describe, human_parameters, human_size
from rusteeze.loader.store import MANIFEST, ModelStore, check_name, close_names, default_name, store_root


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("RUSTEEZE_HOME", str(tmp_path / "store"))
    return ModelStore()


def test_store_root_follows_rusteeze_home(tmp_path, monkeypatch):
    monkeypatch.setenv("RUSTEEZE_HOME", str(tmp_path / "elsewhere"))
    assert store_root() == tmp_path / "elsewhere"
    monkeypatch.delenv("RUSTEEZE_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store_root() == tmp_path / "xdg" / "rusteeze"


def test_import_gguf_records_metadata_and_copies_the_file(store, tmp_path):
    src = write_gguf(tmp_path / "Tiny-Model.Q8_0.gguf")
    entry = store.import_model(src)
    assert (entry.name, entry.format, entry.architecture, entry.parameters, entry.quantization) == (
        "Tiny-Model.Q8_0",
        "gguf",
        "llama",
        48,
        "Q8_0",
    )
    assert entry.model_path == entry.directory / "Tiny-Model.Q8_0.gguf"
    assert entry.model_path.read_bytes() == src.read_bytes()
    assert entry.source == str(src)
    assert entry.size_on_disk() >= src.stat().st_size
    assert [e.name for e in ModelStore().entries()] == ["Tiny-Model.Q8_0"]


def test_gguf_without_file_type_names_the_weight_type(tmp_path):
    info = describe(write_gguf(tmp_path / "x.gguf", file_type=None, arch="qwen2"))
    assert (info.architecture, info.quantization, info.parameters) == ("qwen2", "F32", 48)


def test_import_hf_dir_copies_only_loadable_files(store, tmp_path):
    src = write_hf_dir(tmp_path / "tiny-llama")
    entry = store.import_model(src, name="my/tiny")
    copied = sorted(p.name for p in entry.directory.iterdir())
    assert copied == sorted(
        [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            MANIFEST,
        ]
    )
    assert (entry.name, entry.format, entry.architecture, entry.parameters, entry.quantization) == (
        "my/tiny",
        "hf",
        "llama",
        64 * 16 + 16,
        "F32",
    )
    assert entry.model_path == entry.directory
    assert (entry.directory / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()


def test_quantization_config_names_the_quantization(store, tmp_path):
    files = tiny_hf_files()
    config = json.loads(files["config.json"])
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    files["config.json"] = json.dumps(config).encode()
    entry = store.import_model(write_hf_dir(tmp_path / "q", files))
    assert entry.quantization == "gptq int4 g128"


def test_get_is_exact_then_case_insensitive(store, tmp_path):
    store.import_model(write_gguf(tmp_path / "a.gguf"), name="Tiny")
    assert store.get("Tiny").name == "Tiny"
    assert store.get("tiny").name == "Tiny"
    assert store.get("tin") is None


def test_name_taken_needs_force(store, tmp_path):
    src = write_gguf(tmp_path / "a.gguf")
    store.import_model(src, name="tiny")
    with pytest.raises(RusteezeError, match="'tiny' is already in the store; use --force"):
        store.import_model(src, name="tiny")
    replaced = store.import_model(write_gguf(tmp_path / "b.gguf", file_type=1), name="tiny", force=True)
    assert replaced.quantization == "F16"
    assert [(e.name, e.quantization) for e in store.entries()] == [("tiny", "F16")]
    assert not [p for p in store.models_dir.iterdir() if p.name.startswith(".")]


def test_remove_deletes_the_entry_and_suggests_names_when_unknown(store, tmp_path):
    entry = store.import_model(write_gguf(tmp_path / "smollm.gguf"))
    with pytest.raises(ModelNotFoundError, match=r"no model named 'smolm' in the store .*; did you mean smollm\?"):
        store.remove("smolm")
    store.remove("smollm")
    assert not entry.directory.exists()
    assert store.entries() == []


def test_matches_by_name_then_prefix_then_substring_case_insensitively(store, tmp_path):
    gguf = write_gguf(tmp_path / "a.gguf")
    for name in ("SmolLM2-135M-Instruct.Q4_1", "acme/SmolLM2-360M", "qwen3:q8", "my-qwen3-chat"):
        store.import_model(gguf, name=name)

    def names(ref):
        return [e.name for e in store.matches(ref)]

    assert names("qwen3:Q8") == ["qwen3:q8"]  # the name itself
    assert names("smollm2-135") == ["SmolLM2-135M-Instruct.Q4_1"]  # a unique prefix
    assert names("smollm2") == ["acme/SmolLM2-360M", "SmolLM2-135M-Instruct.Q4_1"]  # the repo part counts: ambiguous
    assert names("qwen3") == ["qwen3:q8"]  # a prefix beats a substring
    assert names("chat") == ["my-qwen3-chat"]  # a unique substring
    assert names("instruct.q4") == ["SmolLM2-135M-Instruct.Q4_1"]
    assert names("llama") == []
    assert store.get("smollm2") is None  # get (imports, rm) stays exact


@pytest.mark.parametrize(
    ("ref", "close"),
    [
        ("smolm2", ["acme/SmolLM2-360M", "SmolLM2-135M-Instruct.Q4_1"]),  # a typo of the start of a name
        ("qwne3:q8", ["qwen3:q8"]),
        ("mistral", []),
    ],
)
def test_close_names_for_did_you_mean(ref, close):
    names = ["SmolLM2-135M-Instruct.Q4_1", "acme/SmolLM2-360M", "qwen3:q8", "tiny"]
    assert close_names(ref, names) == close


def test_failed_copy_leaves_nothing_behind(store, tmp_path, monkeypatch):
    src = write_gguf(tmp_path / "a.gguf")

    def disk_full(done, total):
        raise OSError(28, "No space left on device")

    with pytest.raises(RusteezeError, match=r"cannot write 'a' into the store .*No space left on device"):
        store.import_model(src, on_copy=disk_full)
    assert list(store.models_dir.iterdir()) == []


def test_stale_temporary_folders_of_dead_processes_are_swept(store, tmp_path):
    store.models_dir.mkdir(parents=True)
    dead = store.models_dir / ".tmp-999999999-deadbeef"  # no such pid
    mine = store.models_dir / f".tmp-{os.getpid()}-cafe0000"
    dead.mkdir()
    mine.mkdir()
    store.import_model(write_gguf(tmp_path / "a.gguf"))
    assert not dead.exists() and mine.exists()
    assert [e.name for e in store.entries()] == ["a"]


def test_unreadable_manifest_is_reported_not_fatal(store, tmp_path):
    store.import_model(write_gguf(tmp_path / "good.gguf"))
    broken = store.models_dir / "broken"
    broken.mkdir()
    (broken / MANIFEST).write_text("{not json")
    assert [e.name for e in store.entries()] == ["good"]
    assert len(store.problems) == 1 and str(broken) in store.problems[0]


def test_not_a_model_is_a_typed_error(store, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"empty: not a model \(the directory has no config\.json\)"):
        store.import_model(tmp_path / "empty")
    with pytest.raises(ModelNotFoundError, match="no such file or directory"):
        store.import_model(tmp_path / "missing.gguf")
    files = tiny_hf_files()
    del files["model.safetensors"]
    with pytest.raises(ModelLoadError, match=r"no \.safetensors weights"):
        store.import_model(write_hf_dir(tmp_path / "bin-only", files))
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ModelLoadError, match=r"bad\.gguf is not a valid GGUF file"):
        store.import_model(tmp_path / "bad.gguf")


@pytest.mark.parametrize("name", ["", "a b", "../x", "a/b/c", "-x", "x" * 201])
def test_invalid_names_are_rejected(name):
    with pytest.raises(RusteezeError, match="invalid model name"):
        check_name(name)


def test_default_names(tmp_path):
    snapshot = tmp_path / "models--Org--Repo" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    assert default_name(snapshot) == "Org/Repo"
    assert default_name(write_gguf(tmp_path / "My Model (v2).Q4_K_M.gguf")) == "My-Model-v2.Q4_K_M"


def test_human_units():
    assert [human_parameters(n) for n in (None, 48, 4160, 134_515_008, 999_950_000, 1_711_376_384)] == [
        "-",
        "48",
        "4.16K",
        "135M",
        "1B",
        "1.71B",
    ]
    assert [human_size(n) for n in (512, 98_362_432, 2_500_000_000)] == ["512 B", "98.4 MB", "2.5 GB"]
