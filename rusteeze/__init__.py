"""rusteeze: a local LLM inference engine (Triton kernels, paged KV cache, continuous batching).

``from rusteeze import LLM, SamplingParams`` is the Python API. The names are
loaded on first use so that ``import rusteeze`` (and the CLI's start-up) does
not import torch.
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "LLM": "rusteeze.engine.llm",
    "SamplingParams": "rusteeze.sampling",
    "StructuredOutputsParams": "rusteeze.structured",
    "EngineConfig": "rusteeze.config",
    "Engine": "rusteeze.engine.engine",
    "AsyncEngine": "rusteeze.engine.async_engine",
    "RequestOutput": "rusteeze.engine.outputs",
    "CompletionOutput": "rusteeze.engine.outputs",
}
__all__ = [  # noqa: RUF022 - the version first, then the lazy names
    "__version__",
    "LLM",
    "SamplingParams",
    "StructuredOutputsParams",
    "EngineConfig",
    "Engine",
    "AsyncEngine",
    "RequestOutput",
    "CompletionOutput",
]

if TYPE_CHECKING:
    from rusteeze.config import EngineConfig
    from rusteeze.engine.async_engine import AsyncEngine
    from rusteeze.engine.engine import Engine
    from rusteeze.engine.llm import LLM
    from rusteeze.engine.outputs import CompletionOutput, RequestOutput
    from rusteeze.sampling import SamplingParams
    from rusteeze.structured import StructuredOutputsParams


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rusteeze' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
