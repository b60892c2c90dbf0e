"""Builders for tiny random models saved in HF layout (transformers is the oracle).

Used by fixtures in conftest.py; nothing here touches the network.
"""

from pathlib import Path

import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! How are you today? I am fine, thank you.",
    "def add(a, b):\n    return a + b\n",
    "Paris is the capital of France. Berlin is the capital of Germany.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000",
    "Unicode: café naïve 日本語 😀 ü ß",
]
ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")


def build_tokenizer(directory: Path, vocab_size: int = 320) -> int:
    """Train a byte-level BPE tokenizer with ChatML specials and save it in HF layout; returns its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(directory)
    return tok.get_vocab_size()


def hf_config(arch: str, vocab_size: int, **overrides):
    """A tiny transformers config of one Llama-family architecture (GQA 4:2, head_dim 16)."""
    import transformers

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    common.update(overrides)
    if arch == "llama":
        scaling = {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
        common.setdefault("rope_scaling", scaling)
        return transformers.LlamaConfig(**common)
    if arch == "mistral":
        return transformers.MistralConfig(sliding_window=8, **common)
    if arch == "qwen2":
        return transformers.Qwen2Config(**common)
    if arch == "qwen3":
        return transformers.Qwen3Config(head_dim=16, **common)
    raise ValueError(arch)


def build_model_dir(directory: Path, arch: str, seed: int = 0, **overrides) -> Path:
    """Save a tiny random ``arch`` model (float32 safetensors) plus tokenizer into ``directory``.

    Every parameter (norm weights and biases included) is drawn at random so a
    wrong mapping of any tensor shows up in the logits.
    """
    import transformers

    directory.mkdir(parents=True, exist_ok=True)
    vocab = build_tokenizer(directory)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(arch, vocab, **overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.15)
    model.float().eval().save_pretrained(directory, safe_serialization=True)
    return directory


def load_hf_model(directory: Path):
    """The transformers model saved in ``directory`` (eager attention, float32)."""
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="eager"
    ).eval()


def kv_caches_for(model, num_blocks: int, block_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Zeroed per-layer paged caches, each [num_blocks, block_size, Hk, D]."""
    cfg = model.config
    shape = (num_blocks, block_size, cfg.num_key_value_heads, cfg.head_dim)
    dtype = model.norm.weight.dtype  # the float dtype (embeddings may be quantized)
    return [(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)) for _ in range(cfg.num_hidden_layers)]


@torch.no_grad()
def paged_greedy(model, prompts: list[list[int]], steps: int, block_size: int = 4) -> list[list[int]]:
    """Greedy-decode ``steps`` tokens for every prompt at once through the paged forward.

    A minimal reference loop (no scheduler): one batched prefill, then one
    batched decode step per token; sequence b owns a contiguous run of blocks.
    """
    from rusteeze.models.attention import AttentionMetadata

    per_seq = [(len(p) + steps + block_size - 1) // block_size for p in prompts]
    tables = torch.zeros(len(prompts), max(per_seq), dtype=torch.int32)
    first = 0
    for b, n in enumerate(per_seq):
        tables[b, :n] = torch.arange(first, first + n)
        first += n
    caches = kv_caches_for(model, first, block_size)
    lens = [len(p) for p in prompts]
    tokens = [list(p) for p in prompts]
    new = [list(p) for p in prompts]  # tokens to feed this step
    for _ in range(steps):
        q_lens = [len(n) for n in new]
        positions = torch.cat([torch.arange(ln - q, ln) for ln, q in zip(lens, q_lens, strict=True)])
        slots = torch.cat(
            [
                tables[b].long()[positions_b // block_size] * block_size + positions_b % block_size
                for b, positions_b in enumerate(torch.arange(ln - q, ln) for ln, q in zip(lens, q_lens, strict=True))
            ]
        )
        cu = torch.zeros(len(prompts) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(q_lens), 0)
        meta = AttentionMetadata(cu, torch.tensor(lens, dtype=torch.int32), slots, tables)
        hidden = model(torch.tensor([t for n in new for t in n]), positions, caches, meta)
        logits = model.compute_logits(hidden[meta.last_token_indices()])
        for b, tok in enumerate(logits.argmax(-1).tolist()):
            tokens[b].append(tok)
            new[b] = [tok]
            lens[b] += 1
    return [t[len(p) :] for t, p in zip(tokens, prompts, strict=True)]
