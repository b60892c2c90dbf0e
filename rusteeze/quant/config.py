"""What a quantized checkpoint holds: the ``quantization_config`` block and the per-layer plan.

A rusteeze-quantized HF directory carries, in ``config.json``::

    "quantization_config": {"quant_method": "rusteeze", "method": "int4", "bits": 4,
                            "group_size": 64, "format_version": 1, "embeddings": "int8"}

``embeddings`` is ``"int8"`` when ``--quantize-embeddings`` was given (the token
embedding and the lm_head are then int8 per row, whatever ``method`` is), else
null (they are stored in float16). Format version 2 adds
``"embeddings_group_size": 32``: the int8 embedding and lm_head have one scale
per 32 columns (``weight_scale`` [N, K/32]), which holds a GGUF's Q8_0 blocks
exactly; version 1 files (without it) are still written whenever it is absent.
"""

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rusteeze.errors import QuantizationError, UnsupportedModelError

FORMAT_VERSION = 2  # the newest this rusteeze reads; files without embeddings_group_size are written as 1
METHODS = {"int8": 8, "int4": 4}
GROUP_SIZES = (32, 64, 128)
EMBEDDING_GROUP = 32  # int8 embedding groups: GGUF Q8_0's block
QUANT_METHOD = "rusteeze"


@dataclass(frozen=True)
class LayerQuant:
    """How one layer's weight is stored.

    Attributes:
        method: "int8" (per output channel, symmetric) or "int4" (group-wise, asymmetric).
        group_size: columns per int4 group; None for int8.
    """

    method: str
    group_size: int | None = None


@dataclass(frozen=True)
class QuantConfig:
    """A whole-model quantization request (what ``rusteeze quantize`` takes).

    Attributes:
        method: "int8" or "int4".
        group_size: int4 group size (32, 64 or 128); None picks the source's default
            (:meth:`resolved`); ignored (None) for int8.
        quantize_embeddings: also store the embedding and lm_head as int8 per row; None picks
            the source's default.
        embedding_group_size: columns per int8 embedding / lm_head scale (32: GGUF Q8_0 kept
            exactly); None for one scale per row.
    """

    method: str
    group_size: int | None = None
    quantize_embeddings: bool | None = None
    embedding_group_size: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise QuantizationError(f"unknown quantization method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.method == "int8":
            object.__setattr__(self, "group_size", None)
        elif self.group_size is not None and self.group_size not in GROUP_SIZES:
            sizes = ", ".join(map(str, GROUP_SIZES))
            raise QuantizationError(f"int4 group size must be one of {sizes}, got {self.group_size}")
        if self.embedding_group_size not in (None, EMBEDDING_GROUP):
            raise QuantizationError(
                f"int8 embedding group size must be {EMBEDDING_GROUP} (or per row), got {self.embedding_group_size}"
            )

    def resolved(
        self, group_size: int, quantize_embeddings: bool, embedding_group_size: int | None = None
    ) -> "QuantConfig":
        """This request with the defaults it left open (None) filled in."""
        embeddings = quantize_embeddings if self.quantize_embeddings is None else self.quantize_embeddings
        return replace(
            self,
            group_size=self.group_size or (group_size if self.method == "int4" else None),
            quantize_embeddings=embeddings,
            embedding_group_size=(self.embedding_group_size or embedding_group_size) if embeddings else None,
        )

    @property
    def embeddings(self) -> LayerQuant:
        """The format of the embedding and lm_head when they are quantized."""
        return LayerQuant("int8", self.embedding_group_size)

    @property
    def linear(self) -> LayerQuant:
        """The format of every attention and MLP projection."""
        return LayerQuant(self.method, self.group_size)

    def to_json(self) -> dict[str, Any]:
        """The ``quantization_config`` block written into config.json (of a :meth:`resolved` request)."""
        assert self.method == "int8" or self.group_size is not None, "resolve the group size first"
        block = {
            "quant_method": QUANT_METHOD,
            "method": self.method,
            "bits": METHODS[self.method],
            "group_size": self.group_size,
            "format_version": 1,
            "embeddings": "int8" if self.quantize_embeddings else None,
        }
        if self.quantize_embeddings and self.embedding_group_size is not None:
            block.update(format_version=2, embeddings_group_size=self.embedding_group_size)
        return block

    @classmethod
    def from_json(cls, raw: Any, source: str = "config.json") -> "QuantConfig":
        """Parse a ``quantization_config`` block.

        Raises:
            UnsupportedModelError: the block is another tool's (GPTQ, AWQ, bitsandbytes...)
                or a newer format version.
            ModelLoadError-like QuantizationError: a rusteeze block with bad values.
        """
        if not isinstance(raw, dict) or raw.get("quant_method", QUANT_METHOD) != QUANT_METHOD or "method" not in raw:
            kind = raw.get("quant_method") if isinstance(raw, dict) else raw
            raise UnsupportedModelError(f"{source}: quantization {kind!r} is not supported (only rusteeze int8/int4)")
        if raw.get("format_version") not in range(1, FORMAT_VERSION + 1):
            raise UnsupportedModelError(
                f"{source}: quantization format_version {raw.get('format_version')!r} is not supported "
                f"(this rusteeze reads versions 1 to {FORMAT_VERSION})"
            )
        if raw["method"] == "int4" and raw.get("group_size") is None:
            raise QuantizationError(f"{source}: int4 quantization_config has no group_size")
        embeddings = raw.get("embeddings") == "int8"
        return cls(raw["method"], raw.get("group_size"), embeddings, raw.get("embeddings_group_size"))


def linear_module_names(num_layers: int) -> list[str]:
    """Our module names of every attention and MLP projection (fused q/k/v and gate/up)."""
    leaves = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
    return [f"layers.{i}.{leaf}" for i in range(num_layers) for leaf in leaves]


def plan_for(cfg: QuantConfig, num_layers: int, tied: bool) -> dict[str, LayerQuant]:
    """Module name → LayerQuant for a model quantized with ``cfg``."""
    plan = {name: cfg.linear for name in linear_module_names(num_layers)}
    if cfg.quantize_embeddings:
        plan["embed_tokens"] = cfg.embeddings
        if not tied:
            plan["lm_head"] = cfg.embeddings
    return plan


def check_output(model: str | Path, output: str | Path, force: bool = False) -> None:
    """Refuse an output that exists (unless ``force``) or overlaps the model, before any work.

    Raises:
        QuantizationError: saying which, and what to pass instead.
    """
    src_path, out = Path(model).resolve(), Path(output).resolve()
    if out == src_path or src_path.is_relative_to(out) or (src_path.is_dir() and out.is_relative_to(src_path)):
        raise QuantizationError(f"output {out} overlaps the model {src_path}; choose another -o")
    if out.exists() and not force:
        raise QuantizationError(f"{out} already exists; pass --force to replace it")
