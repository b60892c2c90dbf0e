"""rusteeze: a local LLM inference engine (Triton kernels, paged KV cache, continuous batching)."""

__version__ = "0.1.0"
