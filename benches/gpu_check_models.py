"""gpu_check (b) and (c): random-weight Llama checkpoints, greedy parity with transformers, throughput beside it.

The checkpoints are written on the machine that runs the check (no download: the GPU machine has
no network): a transformers ``LlamaForCausalLM`` of the shape asked, weights drawn at random with
scales that keep activations near 1 and spread the logits (standard deviation ~4), so greedy
choices are not near-ties and float32 runs of two engines must agree token for token; saved as
float32 safetensors with a word-level tokenizer of the model's vocabulary size.
"""

from __future__ import annotations

import gc
import math
import random
import time
from pathlib import Path

# name -> LlamaConfig fields. "tiny" is the test suite's shape (tests/tiny_models.py); "1b" is a
# Llama-3.2-1B-like shape with the 32,000-token vocabulary.
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=320, max_position_embeddings=512),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=32000, max_position_embeddings=16384),
}  # fmt: skip
PARITY_PROMPTS, PARITY_TOKENS = 4, 32


def write_checkpoint(directory: Path, shape: str, device: str, seed: int = 0) -> Path:
    """Save a random-weight Llama of ``shape`` (float32 safetensors) and a tokenizer in ``directory`` (reused)."""
    if (directory / "config.json").exists() and (directory / "tokenizer.json").exists():
        return directory
    import torch
    import transformers

    directory.mkdir(parents=True, exist_ok=True)
    fields = SHAPES[shape]
    config = transformers.LlamaConfig(**fields, rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=1,
                                      eos_token_id=2, pad_token_id=0)  # fmt: skip
    torch.manual_seed(seed)
    with torch.device(device):
        model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif "embed_tokens" in name:
                p.normal_(0.0, 1.0)
            elif "lm_head" in name:
                p.normal_(0.0, 4.0 / math.sqrt(p.shape[1]))
            else:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]))
    model.float().save_pretrained(directory, safe_serialization=True)
    write_tokenizer(directory, fields["vocab_size"])
    del model
    return directory


def write_tokenizer(directory: Path, vocab_size: int) -> None:
    """A word-level tokenizer with exactly ``vocab_size`` tokens: ``<unk> <s> </s> w3 w4 ...`` (built offline)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(directory)


def random_prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """``n`` prompts of ``length`` random ordinary token ids."""
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(length)] for _ in range(n)]


def rusteeze_llm(directory: Path, dtype: str, device: str, **overrides):
    """rusteeze's LLM on ``directory`` with the Triton kernels (the interpreter in a dry run)."""
    from rusteeze import LLM

    overrides.setdefault("enable_prefix_caching", False)  # repeated prompts must do the work again
    return LLM(str(directory), dtype=dtype, device=device, kernel_backend="triton", **overrides)


def rusteeze_greedy(llm, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    from rusteeze import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return [out.outputs[0].token_ids for out in llm.generate(prompts, params, use_tqdm=False)]


def hf_model(directory: Path, dtype: str, device: str):
    import torch
    import transformers

    attention = "eager" if device == "cpu" else "sdpa"
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=getattr(torch, dtype), attn_implementation=attention
    )
    return model.to(device).eval()


def hf_generate(model, prompts: list[list[int]], new_tokens: int):
    """transformers' greedy generate on a batch of equal-length prompts, EOS ignored: [B, new_tokens] tokens."""
    import torch

    ids = torch.tensor(prompts, device=model.device)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)  # fmt: skip
    return out[:, ids.shape[1] :]


def free() -> None:
    """Collect dropped engines and models and give their GPU memory back (callers ``del`` their names first)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (or of the shorter end), None when equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def parity(work: Path, dry_run: bool, deadline: float) -> dict:
    """(b) Greedy tokens of rusteeze vs transformers on the same random weights, float32 and 16-bit."""
    device = "cpu" if dry_run else "cuda"
    half = "float16" if dry_run else "bfloat16"  # the interpreter (numpy) has no bf16
    shapes = ("tiny",) if dry_run else ("tiny", "1b")
    cases, ok = [], True
    for shape in shapes:
        directory = write_checkpoint(work / shape, shape, device)
        vocab = SHAPES[shape]["vocab_size"]
        prompts = random_prompts(2 if dry_run else PARITY_PROMPTS, 16, vocab, seed=1)
        tokens = 4 if dry_run else PARITY_TOKENS
        for dtype in ("float32", half):
            if time.perf_counter() > deadline:
                cases.append({"shape": shape, "dtype": dtype, "skipped": "out of the section's time"})
                continue
            llm = rusteeze_llm(
                directory, dtype, device, max_model_len=256, max_num_seqs=PARITY_PROMPTS, kv_cache_memory="256MiB"
            )
            ours = rusteeze_greedy(llm, prompts, tokens)
            del llm
            free()
            model = hf_model(directory, dtype, device)
            theirs = [hf_generate(model, [p], tokens)[0].tolist() for p in prompts]
            del model
            free()
            diverge = [first_divergence(a, b) for a, b in zip(ours, theirs, strict=True)]
            exact = all(d is None for d in diverge)
            case = {"shape": shape, "dtype": dtype, "exact": exact, "first_divergence": diverge, "tokens": tokens}
            if dtype == "float32":
                ok &= exact
                case["expected"] = "exact"
            cases.append(case)
            print(f"   parity {shape} {dtype}: exact={exact} first divergence per prompt {diverge}", flush=True)
    return {"ok": ok, "cases": cases}


def throughput(work: Path, dry_run: bool, deadline: float) -> dict:
    """(c) The ~1B model (tiny in a dry run) in bf16: rusteeze beside transformers on the same GPU."""
    from gpu_check_speed import measure_hf, measure_rusteeze

    device = "cpu" if dry_run else "cuda"
    shape = "tiny" if dry_run else "1b"
    dtype = "float32" if dry_run else "bfloat16"
    directory = write_checkpoint(work / shape, shape, device)
    workloads = [(2, 8, 2)] if dry_run else [(64, 512, 128), (256, 512, 128)]
    prefills = [16] if dry_run else [1024, 8192]
    single = (8, 2) if dry_run else (128, 256)
    vocab = SHAPES[shape]["vocab_size"]
    result = {"shape": shape, "dtype": dtype}
    result["rusteeze"] = measure_rusteeze(directory, dtype, device, vocab, workloads, prefills, single, deadline)
    result["transformers"] = measure_hf(directory, dtype, device, vocab, workloads, prefills, single, deadline)
    ratios = {}
    for key, ours in result["rusteeze"].get("batched", {}).items():
        theirs = result["transformers"].get("batched", {}).get(key)
        if theirs:
            ratios[key] = round(ours["output_tok_s"] / theirs["output_tok_s"], 2)
    result["output_tok_s_ratio_vs_transformers"] = ratios
    result["target"] = "bf16 batch-64 decode >= 3x transformers' generate"
    return result
