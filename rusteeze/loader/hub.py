"""Pull models from the Hugging Face Hub into its standard cache, with huggingface_hub.

Settings are read from the environment at call time, the way huggingface_hub documents them:
`HF_ENDPOINT` (a mirror or a test server), `HF_HOME` / `HF_HUB_CACHE` (where the cache lives),
`HF_TOKEN` (private and gated repositories), `HF_HUB_OFFLINE` (no network: only the cache).

Only what inference needs is downloaded: safetensors weights and their index, the config,
generation defaults, tokenizer files and chat template; `.bin` / `.pth` weights never (rusteeze
reads safetensors), and GGUF files only when asked for with `ORG/REPO:QUANT`
(`rusteeze pull bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M`).

Resuming: files already complete in the cache are not fetched again, and a connection dropped
in the middle of a file is resumed with an HTTP Range request by huggingface_hub. Every failure
becomes one `RusteezeError` line that says what happened and what to do.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rusteeze.errors import ModelNotFoundError, RusteezeError

HF_FILES = [
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
]
_HUB_REF = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?::(?P<quant>[A-Za-z0-9_.-]+))?$")
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class HubRef:
    """A parsed hub reference: `ORG/REPO` (HF weights) or `ORG/REPO:QUANT` (one GGUF file of a GGUF repo)."""

    repo_id: str
    gguf: str | None = None

    def __str__(self) -> str:
        return f"{self.repo_id}:{self.gguf}" if self.gguf else self.repo_id

    def allow_patterns(self) -> list[str]:
        """The file patterns to download: the inference files, or the GGUF files of the asked quantization."""
        if self.gguf is None:
            return list(HF_FILES)
        variants = dict.fromkeys((self.gguf, self.gguf.upper(), self.gguf.lower()))
        return [f"*{q}*.gguf" for q in variants]


@dataclass(frozen=True)
class Snapshot:
    """A repository revision present in the HF cache.

    Attributes:
        ref: what was asked for.
        commit: the resolved commit hash (the snapshot folder's name).
        directory: the snapshot folder in the HF cache.
        model_path: the directory itself (HF layout) or the GGUF file inside it.
    """

    ref: HubRef
    commit: str
    directory: Path
    model_path: Path

    @property
    def format(self) -> str:
        """The model format: "gguf" or "hf"."""
        return "gguf" if self.model_path.suffix == ".gguf" else "hf"


def parse_hub_ref(ref: str) -> HubRef | None:
    """Parse `ORG/REPO` or `ORG/REPO:QUANT`; None when `ref` is not shaped like a hub id."""
    m = _HUB_REF.match(ref)
    if m is None or ".." in ref:
        return None
    return HubRef(m["repo"], m["quant"])


def hf_endpoint() -> str:
    """The Hub URL: `HF_ENDPOINT`, else https://huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hf_hub_cache() -> Path:
    """The HF cache folder: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`."""
    if cache := os.environ.get("HF_HUB_CACHE"):
        return Path(cache).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def hf_offline() -> bool:
    """True when `HF_HUB_OFFLINE` is set to a true value."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def pull(ref: HubRef, revision: str | None = None, force: bool = False, progress: bool = True) -> Snapshot:
    """Download `ref` at `revision` into the HF cache (only inference files) and return the snapshot.

    Args:
        ref: the repository (and GGUF quantization, if any).
        revision: a branch, tag or commit; default: the default branch.
        force: download every file again even when cached.
        progress: draw a rich progress bar on stderr.

    Raises:
        ModelNotFoundError: no such repository or revision, or offline and not cached.
        RusteezeError: access denied, network failure, server error, or no usable weights in the repository.
    """
    from huggingface_hub import snapshot_download

    from rusteeze.loader.hub_progress import PullProgress

    kwargs = dict(
        revision=revision,
        cache_dir=hf_hub_cache(),
        endpoint=hf_endpoint(),
        allow_patterns=ref.allow_patterns(),
        force_download=force,
        local_files_only=hf_offline(),
    )
    with _quiet_hub_logs(), _hub_errors(ref, revision):
        if progress and not hf_offline():
            with PullProgress(f"Pulling {ref}") as bar:
                directory = snapshot_download(ref.repo_id, tqdm_class=bar.tqdm_class, **kwargs)
        else:
            directory = snapshot_download(ref.repo_id, **kwargs)
    return _snapshot(ref, Path(directory), revision)


def find_cached(ref: HubRef, revision: str | None = None) -> Snapshot | None:
    """The cached snapshot of `ref` at `revision` (default branch by default), without any network call.

    Returns None when the repository is not cached, or is cached without usable weights.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        with _quiet_hub_logs():
            directory = snapshot_download(
                ref.repo_id,
                revision=revision,
                cache_dir=hf_hub_cache(),
                allow_patterns=ref.allow_patterns(),
                local_files_only=True,
            )
        return _snapshot(ref, Path(directory), revision)
    except (LocalEntryNotFoundError, RusteezeError, ValueError):  # ValueError: an id the hub would reject
        return None


def snapshot_dir(repo_id: str, commit: str) -> Path:
    """Where the HF cache keeps `repo_id` at `commit` (it may not exist)."""
    return hf_hub_cache() / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit


def delete_cached_revision(repo_id: str, commit: str) -> None:
    """Delete one revision of a repository from the HF cache; blobs shared with other revisions stay.

    Raises:
        RusteezeError: the cache cannot be scanned or written.
    """
    from huggingface_hub import scan_cache_dir

    try:
        info = scan_cache_dir(hf_hub_cache())
    except Exception as e:  # CacheNotFound, CorruptedCacheException, OSError
        raise RusteezeError(f"cannot read the Hugging Face cache {hf_hub_cache()}: {e}") from e
    for repo in info.repos:
        if repo.repo_id == repo_id and repo.repo_type == "model":
            if any(rev.commit_hash == commit for rev in repo.revisions):
                info.delete_revisions(commit).execute()
            return


def _snapshot(ref: HubRef, directory: Path, revision: str | None) -> Snapshot:
    """Check that a downloaded snapshot holds loadable weights and find the model inside it."""
    where = f"{ref.repo_id}" + (f" (revision {revision})" if revision else "")
    if ref.gguf is not None:
        # Only this quantization's files: the snapshot may also hold others pulled before.
        patterns = ref.allow_patterns()
        files = sorted(
            p
            for p in directory.rglob("*.gguf")
            if p.is_file() and any(fnmatch.fnmatchcase(p.relative_to(directory).as_posix(), pat) for pat in patterns)
        )
        if not files:
            raise ModelNotFoundError(f"{where} has no GGUF file matching '{ref.gguf}'")
        if len({re.sub(r"-\d{5}-of-\d{5}$", "", p.stem) for p in files}) > 1:  # shards of one model are fine
            names = ", ".join(p.name for p in files)
            raise RusteezeError(f"'{ref}' matches several GGUF files in {ref.repo_id}: {names}; name one exactly")
        return Snapshot(ref, directory.name, directory, files[0])
    if not (directory / "config.json").is_file():
        raise ModelNotFoundError(f"{where} has no config.json: it is not a transformers model repository")
    if not any(directory.glob("*.safetensors")):
        raise RusteezeError(
            f"{where} has no safetensors weights (rusteeze does not load .bin/.pth); "
            f"for a GGUF repository pull one file with `rusteeze pull {ref.repo_id}:Q4_K_M`"
        )
    return Snapshot(ref, directory.name, directory, directory)


@contextmanager
def _quiet_hub_logs() -> Iterator[None]:
    """Silence huggingface_hub's own warnings (multi-line, with URLs) while we report errors ourselves."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def _hub_errors(ref: HubRef, revision: str | None) -> Iterator[None]:
    """Turn huggingface_hub / HTTP failures into one-line rusteeze errors."""
    try:
        yield
    except RusteezeError:
        raise
    except Exception as e:
        error = _translate(e, ref, revision)
        if error is None:
            raise
        raise error from e


def _translate(error: BaseException, ref: HubRef, revision: str | None) -> RusteezeError | None:
    """Map an exception (looking through its causes) to a RusteezeError; None when it is not a hub failure."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RevisionNotFoundError,
    )

    endpoint = hf_endpoint()
    repo = ref.repo_id
    chain = list(_causes(error))
    http = next((e for e in chain if isinstance(e, HfHubHTTPError) and e.response is not None), None)
    status = http.response.status_code if http is not None else None
    resume = "run the same pull again to resume"

    if isinstance(error, HFValidationError):
        return ModelNotFoundError(f"'{repo}' is not a valid hub id: {error}")
    if any(isinstance(e, RevisionNotFoundError) for e in chain):
        return ModelNotFoundError(f"revision '{revision}' not found in '{repo}' on {endpoint}")
    if any(isinstance(e, GatedRepoError) for e in chain):
        how = "your HF_TOKEN has no access yet" if get_token() else "set HF_TOKEN to a token with access"
        return RusteezeError(f"'{repo}' is gated: accept its terms at {endpoint}/{repo} ({how})")
    if status in (401, 403):
        if get_token():
            return RusteezeError(f"{endpoint} refused HF_TOKEN for '{repo}' (HTTP {status}): check the token")
        return RusteezeError(
            f"{endpoint} refused access to '{repo}' (HTTP {status}): it is private or gated, or does not exist; "
            "set HF_TOKEN to a token that can read it"
        )
    if status == 404:
        return ModelNotFoundError(f"'{repo}' not found on {endpoint}: check the repository id")
    if status is not None:
        return RusteezeError(f"{endpoint} answered HTTP {status} while pulling '{ref}'; {resume}")
    if any(isinstance(e, OfflineModeIsEnabled) for e in chain) or (
        hf_offline() and isinstance(error, LocalEntryNotFoundError)
    ):
        return ModelNotFoundError(
            f"HF_HUB_OFFLINE is set and '{ref}' is not in the Hugging Face cache {hf_hub_cache()}"
        )
    network = next((e for e in chain if _is_network_error(e)), None)
    if network is not None:
        return RusteezeError(
            f"cannot reach {endpoint} ({type(network).__name__}: {network}) while pulling '{ref}'; {resume}"
        )
    if isinstance(error, LocalEntryNotFoundError):
        return RusteezeError(f"cannot pull '{ref}' from {endpoint} and it is not fully cached; {resume}")
    if isinstance(error, OSError):
        return RusteezeError(f"pulling '{ref}' failed: {error}".replace("\n", " "))
    return None


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_network_error(error: BaseException) -> bool:
    """True for the HTTP client's transport errors (httpx2 in huggingface_hub 2, httpx in 1) and socket errors."""
    module = type(error).__module__.split(".")[0]
    return module in ("httpx", "httpx2", "httpcore") or isinstance(error, (ConnectionError, TimeoutError))
