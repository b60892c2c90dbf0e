"""The local model store: readable names for models on this machine.

Layout, under `RUSTEEZE_HOME` (default `~/.cache/rusteeze`):

    models/<dir>/rusteeze.json     the manifest: name, format, architecture, parameters,
                                   quantization, source, created (and repo/commit for hub pulls)
    models/<dir>/...               imported files: an HF directory's config, tokenizer and
                                   safetensors, or one .gguf file
    models/.tmp-<pid>-<hex>/       an import in progress

Hub pulls live in the Hugging Face cache (shared with transformers and the `hf` CLI); their
store entry is a manifest only, pointing at the cached commit. The directory name is derived
from the model name, but the manifest is the truth: lookups read manifests, not directory names.

Invariant: a directory under `models/` whose name does not start with "." is complete. Imports
copy into a temporary directory, write the manifest last and publish with one `rename`, so a
crash, a full disk or Ctrl-C never leaves a half-written entry behind; temporary directories of
dead processes are swept by the next import.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from rusteeze.errors import ModelLoadError, ModelNotFoundError, RusteezeError
from rusteeze.loader.hub import Snapshot, delete_cached_revision, snapshot_dir
from rusteeze.loader.model_info import describe, is_gguf_file, is_hf_dir

MANIFEST = "rusteeze.json"
_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?(:[\w.-]+)?$")
# Weights in formats rusteeze does not load, and files no loader reads: never copied on import.
_SKIPPED_SUFFIXES = {".bin", ".pth", ".pt", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".md"}
_COPY_CHUNK = 16 * 1024 * 1024


def store_root() -> Path:
    """The store folder: `RUSTEEZE_HOME`, else `$XDG_CACHE_HOME/rusteeze`, else `~/.cache/rusteeze`."""
    if home := os.environ.get("RUSTEEZE_HOME"):
        return Path(home).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "rusteeze"


@dataclass(frozen=True)
class StoreEntry:
    """One model in the store, as its manifest describes it.

    Attributes:
        name: the readable name users type (`rusteeze chat NAME`).
        format: "hf" or "gguf".
        architecture, parameters, quantization: see `rusteeze.loader.model_info.ModelInfo`.
        source: the path it was imported from, or "hub".
        file: the GGUF file name (relative to the model directory); None for the HF layout.
        repo_id, revision, commit: the hub repository, asked revision and commit (hub pulls only).
        created: ISO-8601 UTC time of the import or pull.
        directory: the entry's folder in the store.
    """

    name: str
    format: str
    architecture: str
    parameters: int | None
    quantization: str
    source: str
    file: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None
    created: str = ""
    directory: Path = Path()

    @property
    def model_dir(self) -> Path:
        """The folder holding the model files: the entry itself, or the HF cache snapshot for a hub pull."""
        if self.repo_id and self.commit:
            return snapshot_dir(self.repo_id, self.commit)
        return self.directory

    @property
    def model_path(self) -> Path:
        """What a loader opens: the model folder (HF layout) or the GGUF file."""
        return self.model_dir / self.file if self.file else self.model_dir

    def size_on_disk(self) -> int:
        """Bytes used by the model files (cache blobs counted once, manifest excluded); 0 when they are gone."""
        if self.file:  # one GGUF file (a hub snapshot may hold other quantizations next to it)
            return self.model_path.stat().st_size if self.model_path.is_file() else 0
        seen: set[Path] = set()
        total = 0
        for path in self.model_dir.rglob("*") if self.model_dir.is_dir() else []:
            real = path.resolve()
            if real not in seen and real.is_file() and real.name != MANIFEST:
                seen.add(real)
                total += real.stat().st_size
        return total

    def to_json(self) -> str:
        """The manifest text."""
        data = {k: v for k, v in asdict(self).items() if k != "directory"}
        return json.dumps(data, indent=2) + "\n"


class ModelStore:
    """The model store rooted at `root` (default: `store_root()`)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else store_root()
        self.models_dir = self.root / "models"
        self.problems: list[str] = []  # entries skipped by the last `entries()`: unreadable manifests

    def entries(self) -> list[StoreEntry]:
        """Every entry, sorted by name. Folders with an unreadable manifest are skipped (see `problems`)."""
        self.problems = []
        found = []
        for directory in sorted(self.models_dir.iterdir()) if self.models_dir.is_dir() else []:
            if directory.name.startswith(".") or not directory.is_dir():
                continue
            try:
                data = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
                found.append(StoreEntry(**data, directory=directory))
            except (OSError, ValueError, TypeError) as e:
                self.problems.append(f"{directory}: unreadable {MANIFEST} ({e})")
        return sorted(found, key=lambda entry: entry.name.lower())

    def get(self, name: str) -> StoreEntry | None:
        """The entry named `name` (exact match first, then a unique case-insensitive match), or None."""
        entries = self.entries()
        exact = [e for e in entries if e.name == name]
        folded = [e for e in entries if e.name.lower() == name.lower()]
        return exact[0] if exact else folded[0] if len(folded) == 1 else None

    def matches(self, ref: str) -> list[StoreEntry]:
        """The entries `ref` names, best tier first: what `rusteeze chat REF` may mean.

        Tiers, case-insensitive; the first tier with a match wins: the name itself (`get`); then
        names that start with `ref`, or whose repository part (after `/`) does; then names that
        contain `ref`. One entry is a match; several are ambiguous (the caller lists them).
        """
        entry = self.get(ref)
        if entry is not None:
            return [entry]
        low = ref.lower()
        entries = self.entries()
        prefix = [e for e in entries if e.name.lower().startswith(low) or _repo_part(e.name).startswith(low)]
        return prefix or [e for e in entries if low in e.name.lower()]

    def closest(self, name: str, n: int = 3) -> list[str]:
        """Up to `n` store names closest to `name`, for "did you mean" messages (see `close_names`)."""
        return close_names(name, [e.name for e in self.entries()], n)

    def require(self, name: str) -> StoreEntry:
        """The entry named `name`.

        Raises:
            ModelNotFoundError: no such entry; the message lists the closest names.
        """
        entry = self.get(name)
        if entry is None:
            close = self.closest(name)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see `rusteeze list`"
            raise ModelNotFoundError(f"no model named '{name}' in the store {self.root}{hint}")
        return entry

    def import_model(
        self,
        source: Path,
        name: str | None = None,
        force: bool = False,
        on_copy: Callable[[int, int], None] | None = None,
    ) -> StoreEntry:
        """Copy a `.gguf` file or an HF directory into the store under `name`.

        Args:
            source: the file or directory to import.
            name: the store name; default: derived from the file or directory name.
            force: replace an existing entry of that name.
            on_copy: called as `on_copy(bytes_done, bytes_total)` while copying.

        Raises:
            ModelNotFoundError: `source` does not exist, or is neither a .gguf file nor an HF directory.
            ModelLoadError: its config or weights cannot be parsed.
            RusteezeError: bad name, name taken (without `force`), or the copy fails (e.g. disk full).
        """
        source = source.expanduser().resolve()
        files = _files_to_import(source)
        name = check_name(name or default_name(source))
        existing = self.get(name)
        if existing is not None and not force:
            raise RusteezeError(f"'{name}' is already in the store; use --force to replace it or --name to rename")
        info = describe(source)
        entry = StoreEntry(
            name=name,
            format=info.format,
            architecture=info.architecture,
            parameters=info.parameters,
            quantization=info.quantization,
            source=str(source),
            file=source.name if info.format == "gguf" else None,
            created=_now(),
        )
        return self._publish(entry, files, existing, on_copy)

    def add_hub(
        self, snapshot: Snapshot, revision: str | None, name: str | None = None, force: bool = False
    ) -> StoreEntry:
        """Record a hub snapshot (already in the HF cache) under `name` (default: the hub reference).

        An existing entry of that name pulled from the same repository is replaced (a newer pull);
        any other entry of that name only with `force`.

        Raises:
            RusteezeError: bad name, or the name is taken by another model (without `force`).
            ModelLoadError: the snapshot's config or weights cannot be parsed.
        """
        name = check_name(name or str(snapshot.ref))
        existing = self.get(name)
        if existing is not None and existing.repo_id != snapshot.ref.repo_id and not force:
            raise RusteezeError(f"'{name}' is already in the store; use --force to replace it or --name to rename")
        info = describe(snapshot.model_path)
        entry = StoreEntry(
            name=name,
            format=info.format,
            architecture=info.architecture,
            parameters=info.parameters,
            quantization=info.quantization,
            source="hub",
            file=str(snapshot.model_path.relative_to(snapshot.directory)) if snapshot.format == "gguf" else None,
            repo_id=snapshot.ref.repo_id,
            revision=revision,
            commit=snapshot.commit,
            created=_now(),
        )
        return self._publish(entry, [], existing, None)

    def remove(self, name: str) -> StoreEntry:
        """Delete the entry `name`; for a hub pull, also its revision in the HF cache unless another entry uses it.

        Raises:
            ModelNotFoundError: no such entry.
        """
        entry = self.require(name)
        shutil.rmtree(entry.directory)
        if entry.repo_id and entry.commit:
            others = [e for e in self.entries() if (e.repo_id, e.commit) == (entry.repo_id, entry.commit)]
            if not others:
                delete_cached_revision(entry.repo_id, entry.commit)
        return entry

    def _publish(
        self,
        entry: StoreEntry,
        files: list[Path],
        existing: StoreEntry | None,
        on_copy: Callable[[int, int], None] | None,
    ) -> StoreEntry:
        """Copy `files` and the manifest into a temporary folder, then rename it into place."""
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._sweep()
        tmp = self.models_dir / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            _copy_files(files, tmp, on_copy)
            (tmp / MANIFEST).write_text(entry.to_json(), encoding="utf-8")
            target = existing.directory if existing is not None else self._free_dir(entry.name)
            if existing is not None:  # swap: the old entry leaves before the new one arrives
                trash = self.models_dir / f".trash-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                existing.directory.rename(trash)
                try:
                    tmp.rename(target)
                except OSError:
                    trash.rename(target)  # put the old entry back
                    raise
                shutil.rmtree(trash, ignore_errors=True)
            else:
                tmp.rename(target)
        except OSError as e:
            raise RusteezeError(f"cannot write '{entry.name}' into the store {self.root}: {e}") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return StoreEntry(**{**asdict(entry), "directory": target})

    def _free_dir(self, name: str) -> Path:
        base = re.sub(r"[/:]", "--", name)
        candidate, n = self.models_dir / base, 1
        while candidate.exists():
            n += 1
            candidate = self.models_dir / f"{base}-{n}"
        return candidate

    def _sweep(self) -> None:
        """Remove temporary folders left by imports whose process is gone (killed, power loss)."""
        for path in self.models_dir.glob(".t*-*-*"):
            pid = path.name.split("-")[1]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)


def close_names(ref: str, names: list[str], n: int = 3) -> list[str]:
    """Up to `n` of `names` closest to `ref`, best first, case-insensitive: for "did you mean" messages.

    A name counts as close when it looks like `ref` as a whole, or when its beginning (or its
    repository part's, after `/`) does: `smolm2` finds `SmolLM2-135M-Instruct.Q4_1`.
    """
    low = ref.lower()
    scores: dict[str, float] = {}
    for name in names:
        score = 0.0
        for part in {name.lower(), _repo_part(name)}:
            whole = difflib.SequenceMatcher(None, low, part).ratio()
            start = difflib.SequenceMatcher(None, low, part[: len(low) + 1]).ratio()
            score = max(score, whole if whole >= 0.5 else 0.0, start if start >= 0.75 else 0.0)
        if score:
            scores[name] = max(score, scores.get(name, 0.0))
    return sorted(scores, key=lambda name: (-scores[name], name.lower()))[:n]


def _repo_part(name: str) -> str:
    """The part of a name after its `/` (`org/repo:tag` → `repo:tag`), lower-cased."""
    return name.rsplit("/", 1)[-1].lower()


def check_name(name: str) -> str:
    """Return `name` if it is a valid store name (letters, digits, `._-`, one optional `/` and `:TAG`).

    Raises:
        RusteezeError: the name is not valid.
    """
    if len(name) > 200 or not _NAME.match(name) or ".." in name:
        raise RusteezeError(f"invalid model name '{name}': use letters, digits, '.', '_', '-', one '/' and ':TAG'")
    return name


def default_name(source: Path) -> str:
    """A readable store name for a file or folder: the GGUF file's stem, or the folder's name.

    A snapshot folder of the HF cache (`models--ORG--REPO/snapshots/<sha>`) is named `ORG/REPO`.
    """
    if source.is_file():
        stem = source.stem
    elif source.parent.name == "snapshots" and source.parent.parent.name.startswith("models--"):
        stem = source.parent.parent.name.removeprefix("models--").replace("--", "/", 1)
    else:
        stem = source.name
    name = re.sub(r"-*([./])-*", r"\1", re.sub(r"[^\w./-]+", "-", stem))  # "My Model (v2).Q4" → "My-Model-v2.Q4"
    return name.strip("-.") or "model"


def _files_to_import(source: Path) -> list[Path]:
    if is_gguf_file(source):
        return [source]
    if is_hf_dir(source):
        files = sorted(
            p
            for p in source.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in _SKIPPED_SUFFIXES
        )
        if not any(p.suffix == ".safetensors" for p in files):
            raise ModelLoadError(f"{source}: no .safetensors weights (rusteeze does not load .bin/.pth)")
        return files
    if not source.exists():
        raise ModelNotFoundError(f"{source}: no such file or directory")
    what = "directory has no config.json" if source.is_dir() else "file is not a .gguf file"
    raise ModelNotFoundError(f"{source}: not a model (the {what})")


def _copy_files(files: list[Path], target: Path, on_copy: Callable[[int, int], None] | None) -> None:
    total = sum(p.stat().st_size for p in files)
    done = 0
    for path in files:
        with path.open("rb") as src, (target / path.name).open("wb") as dst:
            while chunk := src.read(_COPY_CHUNK):
                dst.write(chunk)
                done += len(chunk)
                if on_copy is not None:
                    on_copy(done, total)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
