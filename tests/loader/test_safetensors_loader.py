"""HF directories: sharded checkpoints, generation defaults, and every bad-input case."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import kv_caches_for, load_hf_model

from rusteeze.errors import ModelLoadError, ModelNotFoundError, UnsupportedModelError
from rusteeze.loader.hf_config import generation_defaults
from rusteeze.loader.model_loader import load_model_from_path
from rusteeze.models.attention import contiguous_metadata


@pytest.fixture
def model_copy(tiny_llama_dir, tmp_path):
    """A private copy of the tiny Llama directory that a test may damage."""
    return shutil.copytree(tiny_llama_dir, tmp_path / "model")


def _shard(directory, parts: int = 3) -> None:
    """Rewrite model.safetensors as ``parts`` shards plus an index, as HF does for big models."""
    tensors = load_file(directory / "model.safetensors")
    names = sorted(tensors)
    weight_map = {}
    for i in range(parts):
        shard = f"model-{i + 1:05d}-of-{parts:05d}.safetensors"
        chunk = {n: tensors[n].contiguous() for n in names[i::parts]}
        save_file(chunk, directory / shard)
        weight_map.update(dict.fromkeys(chunk, shard))
    (directory / "model.safetensors").unlink()
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_sharded_checkpoint_loads_identically(model_copy, tiny_llama_dir):
    _shard(model_copy)
    loaded = load_model_from_path(model_copy, kernel_backend="torch")
    hf = load_hf_model(tiny_llama_dir)
    ids = [4, 8, 15, 16, 23, 42]
    meta, blocks = contiguous_metadata([len(ids)], 4)
    model = loaded.model
    with torch.no_grad():
        ours = model.compute_logits(model(torch.tensor(ids), torch.arange(6), kv_caches_for(model, blocks, 4), meta))
        torch.testing.assert_close(ours, hf(torch.tensor([ids])).logits[0], rtol=1e-4, atol=1e-4)


def test_generation_defaults(tmp_path):
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"temperature": 0.6, "top_p": 0.9, "eos_token_id": [2, 7], "do_sample": True, "bos_token_id": 1})
    )
    assert generation_defaults(tmp_path / "generation_config.json") == {
        "temperature": 0.6,
        "top_p": 0.9,
        "eos_token_ids": (2, 7),
    }
    assert generation_defaults(tmp_path / "absent.json") == {}


def test_float16_checkpoint_cast_to_requested_dtype(model_copy):
    tensors = load_file(model_copy / "model.safetensors")
    save_file({k: v.half() for k, v in tensors.items()}, model_copy / "model.safetensors")
    loaded = load_model_from_path(model_copy, dtype="float32", kernel_backend="torch")
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())


def test_missing_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match="nothing-here"):
        load_model_from_path(tmp_path / "nothing-here")


def test_truncated_safetensors_names_the_file(model_copy):
    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=r"model\.safetensors"):
        load_model_from_path(model_copy)


def test_missing_shard_is_named(model_copy):
    _shard(model_copy)
    (model_copy / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"model-00002-of-00003\.safetensors"):
        load_model_from_path(model_copy)


def test_no_weights_at_all(model_copy):
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="no safetensors weights"):
        load_model_from_path(model_copy)


def test_missing_tensor_is_reported(model_copy):
    tensors = load_file(model_copy / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, model_copy / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"missing 1 tensor.*layers\.1\.mlp\.down_proj"):
        load_model_from_path(model_copy)


def test_wrong_shape_names_tensor_and_shapes(model_copy):
    tensors = load_file(model_copy / "model.safetensors")
    tensors["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(8, 64)
    save_file(tensors, model_copy / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"k_proj\.weight.*\[8, 64\].*expected \[32, 64\]"):
        load_model_from_path(model_copy)


def test_unsupported_architecture(model_copy):
    config = json.loads((model_copy / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        load_model_from_path(model_copy)


def test_corrupt_config_json(model_copy):
    (model_copy / "config.json").write_text("{ not json")
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_model_from_path(model_copy)


def test_config_missing_required_key(model_copy):
    config = json.loads((model_copy / "config.json").read_text())
    del config["hidden_size"]
    (model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="'hidden_size'"):
        load_model_from_path(model_copy)
