"""Hub pulls against a local server in the hub's URL layout (see tests/fake_hub.py)."""

import socket

import huggingface_hub.constants
import pytest
from fake_hub import FakeHub, point_at, tiny_hf_files, write_gguf

from rusteeze.errors import ModelNotFoundError, RusteezeError
from rusteeze.loader.hub import HubRef, find_cached, hf_hub_cache, parse_hub_ref, pull

INFERENCE_FILES = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
]


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with FakeHub() as server:
        point_at(server, monkeypatch, tmp_path)
        yield server


def go_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_parse_hub_ref():
    assert parse_hub_ref("HuggingFaceTB/SmolLM2-135M-Instruct") == HubRef("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert parse_hub_ref("org/repo-GGUF:Q4_K_M") == HubRef("org/repo-GGUF", "Q4_K_M")
    assert [parse_hub_ref(r) for r in ("smollm2", "a/b/c", "../x", "org/..", "/abs/path")] == [None] * 5
    assert HubRef("o/r", "q4_k_m").allow_patterns() == ["*q4_k_m*.gguf", "*Q4_K_M*.gguf"]


def test_pull_downloads_only_inference_files(hub):
    files = tiny_hf_files()
    commit = hub.add_repo("acme/tiny", files)
    snapshot = pull(HubRef("acme/tiny"), progress=True)
    assert snapshot.commit == commit
    assert snapshot.directory == hf_hub_cache() / "models--acme--tiny" / "snapshots" / commit
    assert (snapshot.model_path, snapshot.format) == (snapshot.directory, "hf")
    assert sorted(p.name for p in snapshot.directory.iterdir()) == INFERENCE_FILES
    for name in INFERENCE_FILES:
        assert (snapshot.directory / name).read_bytes() == files[name]
    assert hub.gets("pytorch_model.bin") == [] and hub.gets("README.md") == []


def test_second_pull_downloads_nothing_and_offline_finds_the_cache(hub, monkeypatch):
    hub.add_repo("acme/tiny", tiny_hf_files())
    first = pull(HubRef("acme/tiny"), progress=False)
    hub.requests.clear()
    assert pull(HubRef("acme/tiny"), progress=False) == first
    assert [m for m, *_ in hub.requests] == ["GET"]  # only the repo info: files and tree listing are cached
    hub.requests.clear()
    go_offline(monkeypatch)
    assert pull(HubRef("acme/tiny"), progress=False) == first
    assert find_cached(HubRef("acme/tiny")) == first
    assert hub.requests == []


def test_dropped_connection_resumes_with_a_range_request(hub, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    files = tiny_hf_files(weights_shape=(64, 1024))  # a 256 KiB safetensors file
    hub.add_repo("acme/tiny", files)
    hub.drop_once["model.safetensors"] = 200 * 1024
    snapshot = pull(HubRef("acme/tiny"), progress=False)
    ranges = hub.gets("model.safetensors")
    assert ranges[0] is None and len(ranges) == 2
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 200 * 1024
    assert (snapshot.directory / "model.safetensors").read_bytes() == files["model.safetensors"]


def test_failed_pull_keeps_finished_files_and_the_next_pull_completes(hub):
    files = tiny_hf_files()
    hub.add_repo("acme/tiny", files)
    hub.fail["model.safetensors"] = 503
    with pytest.raises(RusteezeError) as info:
        pull(HubRef("acme/tiny"), progress=False)
    assert (
        str(info.value) == f"{hub.url} answered HTTP 503 while pulling 'acme/tiny'; run the same pull again to resume"
    )
    del hub.fail["model.safetensors"]
    hub.requests.clear()
    snapshot = pull(HubRef("acme/tiny"), progress=False)
    assert [path.rsplit("/", 1)[1] for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path] == [
        "model.safetensors"
    ]
    for name in INFERENCE_FILES:
        assert (snapshot.directory / name).read_bytes() == files[name]


def test_missing_repo_and_revision(hub):
    hub.add_repo("acme/tiny", tiny_hf_files())
    with pytest.raises(ModelNotFoundError) as info:
        pull(HubRef("acme/nope"), progress=False)
    assert str(info.value) == f"'acme/nope' not found on {hub.url}: check the repository id"
    with pytest.raises(ModelNotFoundError) as info:
        pull(HubRef("acme/tiny"), revision="v9", progress=False)
    assert str(info.value) == f"revision 'v9' not found in 'acme/tiny' on {hub.url}"


def test_private_repo_needs_the_right_token(hub, monkeypatch):
    hub.add_repo("acme/private", tiny_hf_files(), token="hf_right")
    with pytest.raises(RusteezeError) as info:
        pull(HubRef("acme/private"), progress=False)
    assert str(info.value) == (
        f"{hub.url} refused access to 'acme/private' (HTTP 401): it is private or gated, or does not exist; "
        "set HF_TOKEN to a token that can read it"
    )
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(RusteezeError) as info:
        pull(HubRef("acme/private"), progress=False)
    assert str(info.value) == f"{hub.url} refused HF_TOKEN for 'acme/private' (HTTP 401): check the token"
    monkeypatch.setenv("HF_TOKEN", "hf_right")
    assert (pull(HubRef("acme/private"), progress=False).directory / "config.json").is_file()


def test_gated_repo(hub):
    hub.add_repo("acme/gated", tiny_hf_files(), token="hf_ok", gated=True)
    with pytest.raises(RusteezeError) as info:
        pull(HubRef("acme/gated"), progress=False)
    assert str(info.value) == (
        f"'acme/gated' is gated: accept its terms at {hub.url}/acme/gated (set HF_TOKEN to a token with access)"
    )


def test_network_down(hub, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(RusteezeError) as info:
        pull(HubRef("acme/tiny"), progress=False)
    assert str(info.value) == (
        f"cannot reach http://127.0.0.1:{port} (ConnectError: [Errno 111] Connection refused) while pulling "
        "'acme/tiny'; run the same pull again to resume"
    )


def test_offline_and_not_cached(hub, monkeypatch):
    go_offline(monkeypatch)
    with pytest.raises(ModelNotFoundError) as info:
        pull(HubRef("acme/tiny"), progress=False)
    assert str(info.value) == f"HF_HUB_OFFLINE is set and 'acme/tiny' is not in the Hugging Face cache {hf_hub_cache()}"
    assert find_cached(HubRef("acme/tiny")) is None


def test_gguf_quant_pulls_one_gguf_file(hub, tmp_path):
    gguf_bytes = write_gguf(tmp_path / "x.gguf").read_bytes()
    hub.add_repo("acme/tiny-GGUF", {"tiny.Q8_0.gguf": gguf_bytes, "tiny.F16.gguf": b"big", "README.md": b"#"})
    snapshot = pull(HubRef("acme/tiny-GGUF", "q8_0"), progress=False)
    assert snapshot.format == "gguf"
    assert snapshot.model_path.name == "tiny.Q8_0.gguf" and snapshot.model_path.read_bytes() == gguf_bytes
    assert sorted(p.name for p in snapshot.directory.iterdir()) == ["tiny.Q8_0.gguf"]


def test_repo_without_safetensors_says_so(hub):
    files = {k: v for k, v in tiny_hf_files().items() if k != "model.safetensors"}
    hub.add_repo("acme/old", files)
    with pytest.raises(RusteezeError) as info:
        pull(HubRef("acme/old"), progress=False)
    assert str(info.value) == (
        "acme/old has no safetensors weights (rusteeze does not load .bin/.pth); "
        "for a GGUF repository pull one file with `rusteeze pull acme/old:Q4_K_M`"
    )
    assert hub.gets("pytorch_model.bin") == []


def test_progress_adapter_counts_files_and_bytes(hub):
    import io

    from huggingface_hub import snapshot_download
    from rich.console import Console

    from rusteeze.loader.hub_progress import PullProgress

    files = tiny_hf_files()
    hub.add_repo("acme/tiny", files)
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    with PullProgress("Pulling acme/tiny", console=console) as bar:
        snapshot_download(
            "acme/tiny",
            endpoint=hub.url,
            cache_dir=hf_hub_cache(),
            allow_patterns=HubRef("acme/tiny").allow_patterns(),
            tqdm_class=bar.tqdm_class,
        )
        task = bar.progress.tasks[0]
        assert (bar.files_done, bar.files_total) == (5, 5)
        assert task.description == "Pulling acme/tiny (5/5 files)"
        assert task.completed == task.total == sum(len(files[name]) for name in INFERENCE_FILES)
