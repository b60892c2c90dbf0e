"""Stream tensors out of (sharded) safetensors files, memory-mapped, one at a time."""

from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from rusteeze.errors import ModelLoadError, ModelNotFoundError
from rusteeze.loader.hf_config import read_json

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def safetensors_files(model_dir: Path) -> list[Path]:
    """The checkpoint's shard files, in index order (or the single file).

    Raises:
        ModelNotFoundError: no safetensors checkpoint in the directory.
        ModelLoadError: the index is invalid or names a missing shard.
    """
    index = model_dir / INDEX_FILE
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelLoadError(f"{index} has no 'weight_map'")
        files = [model_dir / name for name in dict.fromkeys(weight_map.values())]
        for f in files:
            if not f.exists():
                raise ModelLoadError(f"{index} names shard {f.name}, which is missing from {model_dir}")
        return files
    if (model_dir / SINGLE_FILE).exists():
        return [model_dir / SINGLE_FILE]
    found = sorted(model_dir.glob("*.safetensors"))
    if found:
        return found
    raise ModelNotFoundError(
        f"no safetensors weights in {model_dir} (expected {SINGLE_FILE} or {INDEX_FILE}); "
        "PyTorch .bin checkpoints are not supported"
    )


def iter_safetensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) for every tensor of every file.

    Tensors are views of the memory-mapped file: nothing is read until a
    tensor is used, and only one is referenced at a time by this generator.

    Raises:
        ModelLoadError: a file is truncated or corrupt (naming the file and tensor).
    """
    for path in files:
        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelLoadError(f"{path} is not a valid safetensors file: {e}") from None
        with handle as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                try:
                    tensor = f.get_tensor(name)
                except (SafetensorError, OSError, ValueError, RuntimeError) as e:
                    raise ModelLoadError(f"{path}: tensor {name!r} cannot be read: {e}") from None
                yield name, tensor
