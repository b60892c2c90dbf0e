"""A Hugging Face Hub look-alike on 127.0.0.1, and tiny model files to serve or import.

huggingface_hub's `snapshot_download` (2.x) makes these calls, which `FakeHub` answers:

    GET  /api/models/{repo}/revision/{rev}      repo info: {"id", "sha": <commit>}
    GET  /api/models/{repo}/tree/{commit}       file listing: [{"type", "path", "size", "oid", "lfs"?}]
    HEAD /{repo}/resolve/{commit}/{file}        X-Repo-Commit, ETag, Content-Length
    GET  /{repo}/resolve/{commit}/{file}        the bytes; `Range: bytes=N-` answers 206

Errors are shaped like the real hub's: 404 + `X-Error-Code: RepoNotFound`, 401 for a private
repository without (or with a wrong) token, 403 + `X-Error-Code: GatedRepo`. Knobs for failure
tests: `drop_once[file] = n` closes the connection after n bytes of the first GET of `file`;
`fail[file] = status` answers every GET of `file` with that status. Every request is logged in
`requests` as (method, path, Range header).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np


@dataclass
class FakeRepo:
    """One repository: its files, commit, and access rules."""

    files: dict[str, bytes]
    commit: str
    token: str | None = None  # private: this bearer token is required
    gated: bool = False  # gated: 403 GatedRepo unless `token` is sent


@dataclass
class FakeHub:
    """The server state; `url` is the HF_ENDPOINT to use once started."""

    repos: dict[str, FakeRepo] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    drop_once: dict[str, int] = field(default_factory=dict)
    fail: dict[str, int] = field(default_factory=dict)
    url: str = ""

    def add_repo(self, repo_id: str, files: dict[str, bytes], token: str | None = None, gated: bool = False) -> str:
        """Serve `files` as `repo_id`; returns the commit hash."""
        commit = hashlib.sha1(repo_id.encode()).hexdigest()
        self.repos[repo_id] = FakeRepo(files, commit, token, gated)
        return commit

    def gets(self, filename: str) -> list[str | None]:
        """The Range headers of every GET of `filename` so far (None: a full GET)."""
        return [rng for method, path, rng in self.requests if method == "GET" and path.endswith("/" + filename)]

    def start(self) -> FakeHub:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((self.command, path, self.headers.get("Range")))
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 6:
                repo_id, action, rev = "/".join(parts[2:4]), parts[4], parts[5]
                if (repo := self._repo(repo_id)) and self._revision(repo, rev):
                    self._api(repo_id, repo, action)
            elif len(parts) >= 5 and parts[2] == "resolve":
                repo_id, rev, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                if (repo := self._repo(repo_id)) and self._revision(repo, rev):
                    self._file(repo, filename, body)
            else:
                self._error(404, "EntryNotFound", "not a hub route")

        def _repo(self, repo_id: str) -> FakeRepo | None:
            repo = hub.repos.get(repo_id)
            sent = self.headers.get("Authorization", "")
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
            elif repo.gated and sent != f"Bearer {repo.token}":
                self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted")
            elif repo.token and not sent:
                self._error(401, None, "Unauthorized")
            elif repo.token and sent != f"Bearer {repo.token}":
                self._error(401, None, "Invalid credentials in Authorization header")
            else:
                return repo
            return None

        def _revision(self, repo: FakeRepo, rev: str) -> bool:
            if rev in ("main", repo.commit):
                return True
            self._error(404, "RevisionNotFound", "Invalid rev id")
            return False

        def _api(self, repo_id: str, repo: FakeRepo, action: str) -> None:
            if action == "revision":
                data: object = {"id": repo_id, "sha": repo.commit, "siblings": [{"rfilename": f} for f in repo.files]}
            elif action == "tree":
                data = [_tree_entry(name, content) for name, content in repo.files.items()]
            else:
                return self._error(404, None, "unknown api")
            payload = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _file(self, repo: FakeRepo, filename: str, body: bool) -> None:
            content = repo.files.get(filename)
            if content is None:
                return self._error(404, "EntryNotFound", "Entry not found", commit=repo.commit)
            if body and filename in hub.fail:
                return self._error(hub.fail[filename], None, "Service unavailable")
            start = 0
            if body and (rng := self.headers.get("Range")):
                start = int(rng.removeprefix("bytes=").split("-")[0])
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(content) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
            self.end_headers()
            if not body:
                return
            if filename in hub.drop_once and not start:
                self.wfile.write(content[: hub.drop_once.pop(filename)])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # the peer sees the body end early
                return
            self.wfile.write(content[start:])

        def _error(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
            payload = json.dumps({"error": message}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

    return Handler


def _tree_entry(name: str, content: bytes) -> dict:
    git_oid = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
    entry = {"type": "file", "path": name, "size": len(content), "oid": git_oid}
    if name.endswith((".safetensors", ".bin", ".gguf")):
        entry["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 134}
    return entry


# --- tiny model files ----------------------------------------------------------------------------

TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "vocab_size": 64,
    "torch_dtype": "float32",
}


def safetensors_bytes(tensors: dict[str, tuple[int, ...]], seed: int = 0) -> bytes:
    """A safetensors file (as bytes) with random float32 tensors of the given shapes."""
    import torch
    from safetensors.torch import save

    gen = torch.Generator().manual_seed(seed)
    return save({name: torch.randn(shape, generator=gen) for name, shape in tensors.items()})


def tiny_hf_files(weights_shape: tuple[int, ...] = (64, 16)) -> dict[str, bytes]:
    """The files of a tiny HF repository (weights: embed `weights_shape` + norm [16]), plus files a pull must skip."""
    return {
        "config.json": json.dumps(TINY_CONFIG).encode(),
        "generation_config.json": b'{"eos_token_id": 2}',
        "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}',
        "tokenizer_config.json": b'{"chat_template": "{{ messages }}"}',
        "model.safetensors": safetensors_bytes(
            {"model.embed_tokens.weight": weights_shape, "model.norm.weight": (16,)}
        ),
        "pytorch_model.bin": b"pickled weights rusteeze must never download",
        "README.md": b"# tiny\n",
        "model.Q4_K_M.gguf": b"GGUF only with :QUANT",
    }


def write_hf_dir(path: Path, files: dict[str, bytes] | None = None) -> Path:
    """Write a tiny HF model directory at `path`."""
    path.mkdir(parents=True, exist_ok=True)
    for name, content in (files or tiny_hf_files()).items():
        (path / name).write_bytes(content)
    return path


def write_gguf(path: Path, file_type: int | None = 7, arch: str = "llama") -> Path:
    """Write a tiny GGUF file: `arch`, `general.file_type` (7 = Q8_0; None: absent), two F32 tensors (48 params)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones((16,), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def point_at(hub: FakeHub, monkeypatch, tmp_path: Path) -> dict[str, str]:
    """Point this process (and returns the env for subprocesses) at `hub`, with caches under `tmp_path`.

    HF_ENDPOINT → the fake hub, HF_HOME and RUSTEEZE_HOME → tmp_path, online, no token. huggingface_hub
    reads HF_HUB_OFFLINE and the token path at import time, so those constants are patched too.
    """
    import huggingface_hub.constants as constants

    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf"),
        "RUSTEEZE_HOME": str(tmp_path / "store"),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "NO_COLOR": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "XDG_CACHE_HOME", "RUSTEEZE_DEBUG"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf" / "stored_tokens"))
    return env
