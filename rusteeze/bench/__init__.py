"""Benchmarks: offline (the engine in this process) and online (any OpenAI-compatible server)."""
