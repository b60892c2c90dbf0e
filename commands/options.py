"""The engine options every engine command shares (chat, bench, serve), declared once.

The twelve flags (`--config`, `--dtype`, … `--gpu-memory-utilization`) are the fields of
:class:`EngineOptions`. A command takes them all as one parameter and decorates itself with
:func:`engine_options`, which shows them to Typer as ordinary options and hands the command
one filled-in `EngineOptions`:

    from rusteeze.commands.options import NO_FLAGS, Debug, EngineOptions, Model, engine_options

    @engine_options
    def chat(model: Model = None, options: EngineOptions = NO_FLAGS, debug: Debug = False) -> None:
        with cli_errors(debug):
            cfg, sections = options.engine_config(model)

Every option defaults to "not given" (None, or False for `--no-prefix-caching` and
`--no-gguf-direct`), so :meth:`EngineOptions.engine_config` can apply the precedence
flag > config file > defaults: a flag overrides the file only when the user typed it. A
value of the wrong type (`--max-num-seqs abc`) is a usage error (exit 2, Typer's
convention); a value of the right type that the engine rejects (`--dtype float8`,
`--max-num-seqs 0`) is a ConfigError naming the flag, which `cli_errors` prints as one red
line (exit 1).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_type_hints

import typer

from rusteeze.commands.common import Debug
from rusteeze.commands.speculative_flags import DraftModel, NumSpeculativeTokens, Speculative, speculative_flags
from rusteeze.config import DTYPES, KERNEL_BACKENDS, EngineConfig, load_config_file
from rusteeze.errors import ConfigError

__all__ = [
    "NO_FLAGS",
    "ConfigFile",
    "Debug",
    "Device",
    "Dtype",
    "EngineOptions",
    "KernelBackend",
    "KvCacheMemory",
    "MaxModelLen",
    "MaxNumBatchedTokens",
    "MaxNumSeqs",
    "Model",
    "NoGgufDirect",
    "NoPrefixCaching",
    "as_flags",
    "engine_config",
    "engine_options",
]

ENGINE_PANEL = "Engine options"

Model = Annotated[
    str | None,
    typer.Argument(
        metavar="MODEL",
        help="A store name, hub id, HF directory or .gguf file (default: SmolLM2-135M-Instruct).",
        show_default=False,
    ),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        help="A rusteeze TOML file; flags override it, it overrides the defaults.",
        rich_help_panel=ENGINE_PANEL,
        show_default=False,
    ),
]
Dtype = Annotated[
    str | None,
    typer.Option(
        "--dtype",
        metavar="TYPE",
        help=f"{', '.join(DTYPES)} (auto: float32 on CPU, the checkpoint's 16-bit type on CUDA).",
        rich_help_panel=ENGINE_PANEL,
        show_default=False,
    ),
]
Device = Annotated[
    str | None,
    typer.Option(
        "--device",
        metavar="DEVICE",
        help="auto, cpu, cuda or cuda:N (auto: CUDA when available).",
        rich_help_panel=ENGINE_PANEL,
        show_default=False,
    ),
]
MaxModelLen = Annotated[
    int | None,
    typer.Option(
        "--max-model-len",
        metavar="N",
        help="Longest context, prompt plus output (default: the model's).",
        rich_help_panel=ENGINE_PANEL,
        show_default=False,
    ),
]
KvCacheMemory = Annotated[
    str | None,
    typer.Option(
        "--kv-cache-memory",
        metavar="SIZE",
        help="Memory for the KV cache, in bytes or like 2GiB, 512MB (default: 1GiB on the CPU; on CUDA, what "
        "--gpu-memory-utilization leaves after the weights and a profiled step).",
        rich_help_panel=ENGINE_PANEL,
        show_default=False,
    ),
]
MaxNumSeqs = Annotated[
    int | None,
    typer.Option(
        "--max-num-seqs",
        metavar="N",
        help="Most sequences in one engine step (default 64).",
        rich_help_panel=ENGINE_PANEL,
        show_default=False,
    ),
]
MaxNumBatchedTokens = Annotated[
    int | None,
    typer.Option(
        "--max-num-batched-tokens",
        metavar="N",
        help="Most tokens (prefill and decode) in one engine step (default 2048).",
        rich_help_panel=ENGINE_PANEL,
        show_default=False,
    ),
]
NoPrefixCaching = Annotated[
    bool,
    typer.Option(
        "--no-prefix-caching",
        help="Do not reuse the KV blocks of identical prompt prefixes.",
        rich_help_panel=ENGINE_PANEL,
        show_default=False,
    ),
]
NoGgufDirect = Annotated[
    bool,
    typer.Option(
        "--no-gguf-direct",
        help="Dequantize a GGUF's Q8_0/Q4_0/Q4_1 tensors to the engine dtype instead of loading them "
        "into int8/int4 layers (no effect on other models).",
        rich_help_panel=ENGINE_PANEL,
        show_default=False,
    ),
]
EnforceEager = Annotated[
    bool,
    typer.Option(
        "--enforce-eager",
        help="Run every step eagerly: no CUDA graphs for decode steps (CUDA only).",
        rich_help_panel=ENGINE_PANEL,
        show_default=False,
    ),
]
GpuMemoryUtilization = Annotated[
    float | None,
    typer.Option(
        "--gpu-memory-utilization",
        metavar="FRACTION",
        help="Share of the GPU's memory the engine may use when --kv-cache-memory is not given (default 0.9).",
        rich_help_panel=ENGINE_PANEL,
        show_default=False,
    ),
]
KernelBackend = Annotated[
    str | None,
    typer.Option(
        "--kernel-backend",
        metavar="NAME",
        help=f"{', '.join(KERNEL_BACKENDS)} (auto: Triton on CUDA, Numba on CPU).",
        rich_help_panel=ENGINE_PANEL,
        show_default=False,
    ),
]


@dataclass(frozen=True)
class EngineOptions:
    """The shared engine flags as the user typed them (None / False: not given)."""

    config: ConfigFile = None
    dtype: Dtype = None
    device: Device = None
    max_model_len: MaxModelLen = None
    kv_cache_memory: KvCacheMemory = None
    max_num_seqs: MaxNumSeqs = None
    max_num_batched_tokens: MaxNumBatchedTokens = None
    no_prefix_caching: NoPrefixCaching = False
    kernel_backend: KernelBackend = None
    no_gguf_direct: NoGgufDirect = False
    enforce_eager: EnforceEager = False
    gpu_memory_utilization: GpuMemoryUtilization = None
    speculative: Speculative = None
    draft_model: DraftModel = None
    num_speculative_tokens: NumSpeculativeTokens = None

    def engine_config(self, model: str | None, **extra: Any) -> tuple[EngineConfig, dict[str, dict[str, Any]]]:
        """The command's EngineConfig and the config file's tables: see :func:`engine_config`."""
        flags = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "config"}
        return engine_config(model, self.config, **flags, **extra)


NO_FLAGS = EngineOptions()  # the default of a command's `options` parameter: no flag typed
F = TypeVar("F", bound=Callable[..., Any])


def engine_options(command: F) -> F:
    """Give `command` the shared engine flags, collected into its `options: EngineOptions` parameter.

    Typer sees the command's own parameters with the twelve `EngineOptions` fields in place of
    `options` (so `--help` lists them there, under "Engine options"); the command is called
    with one `EngineOptions` built from them.
    """
    signature = inspect.signature(command, eval_str=True)
    if "options" not in signature.parameters:
        raise TypeError(f"{command.__name__} needs an `options: EngineOptions` parameter")
    hints = get_type_hints(EngineOptions, include_extras=True)
    shared = [
        inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=f.default, annotation=hints[f.name])
        for f in dataclasses.fields(EngineOptions)
    ]
    names = [p.name for p in shared]
    params: list[inspect.Parameter] = []
    for param in signature.parameters.values():
        params += shared if param.name == "options" else [param]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        options = EngineOptions(**{name: kwargs.pop(name) for name in names if name in kwargs})
        return command(**kwargs, options=options)

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params} | {"return": signature.return_annotation}
    return wrapper  # type: ignore[return-value]


def engine_config(
    model: str | None,
    config_file: Path | None = None,
    *,
    dtype: str | None = None,
    device: str | None = None,
    max_model_len: int | None = None,
    kv_cache_memory: str | None = None,
    max_num_seqs: int | None = None,
    max_num_batched_tokens: int | None = None,
    no_prefix_caching: bool = False,
    kernel_backend: str | None = None,
    no_gguf_direct: bool = False,
    enforce_eager: bool = False,
    gpu_memory_utilization: float | None = None,
    speculative: str | None = None,
    draft_model: str | None = None,
    num_speculative_tokens: int | None = None,
    **extra: Any,
) -> tuple[EngineConfig, dict[str, dict[str, Any]]]:
    """Build the EngineConfig of a command: flags given > the config file > the defaults.

    Args:
        model: the MODEL argument (None: the file's `model`, else the default model).
        config_file: the `--config` file, if any.
        dtype ... num_speculative_tokens: the shared flags, None (False) when not given.
        **extra: more EngineConfig fields a command sets itself (e.g. bench's `seed`); None means not given.

    Returns:
        The config, and the file's `[server]` and `[chat]` tables (empty dicts without a file).

    Raises:
        ConfigError: the file is missing or invalid, or a flag's value is invalid (the message names the flag).
    """
    if config_file is not None:
        base, sections = load_config_file(config_file)
    else:
        base, sections = EngineConfig(), {"server": {}, "chat": {}}
    flags: dict[str, Any] = {
        "model": model,
        "dtype": dtype,
        "device": device,
        "max_model_len": max_model_len,
        "kv_cache_memory": kv_cache_memory,
        "max_num_seqs": max_num_seqs,
        "max_num_batched_tokens": max_num_batched_tokens,
        "enable_prefix_caching": False if no_prefix_caching else None,
        "kernel_backend": kernel_backend,
        "gguf_direct": False if no_gguf_direct else None,
        "enforce_eager": True if enforce_eager else None,
        "gpu_memory_utilization": gpu_memory_utilization,
        **extra,
    }
    given = {key: value for key, value in flags.items() if value is not None}
    for key, value in given.items():
        _check_flag(key, value)
    spec = speculative_flags(base.speculative, speculative, draft_model, num_speculative_tokens)
    if spec is not None:
        given["speculative"] = spec
    return base.replace(**given), sections


def flag_name(key: str) -> str:
    """The command-line flag of an EngineConfig field (`max_num_seqs` → `--max-num-seqs`)."""
    negated = {"enable_prefix_caching": "--no-prefix-caching", "gguf_direct": "--no-gguf-direct"}
    return negated.get(key, "--" + key.replace("_", "-"))


_KEYS_AS_FLAGS = ("max_model_len", "kv_cache_memory", "max_num_seqs", "max_num_batched_tokens", "kernel_backend")


def as_flags(message: str) -> str:
    """An engine message in flag terms: `kv_cache_memory = 1MiB` → `--kv-cache-memory 1MiB`, `max_model_len` →
    `--max-model-len` (for the errors the engine raises after the flags were checked, e.g. about the KV budget)."""
    for key in _KEYS_AS_FLAGS:
        message = re.sub(rf"\b{key}( = |\b)", lambda m, key=key: flag_name(key) + (" " if m.group(1) else ""), message)
    return re.sub(r"\b(dtype|device) = ", lambda m: f"--{m.group(1)} ", message)


def _check_flag(key: str, value: Any) -> None:
    """Validate one flag on its own, so the error names the flag rather than a config key."""
    if key == "model":
        return  # resolved (and reported) when the model loads
    try:
        EngineConfig(**{key: value})
    except ConfigError as e:
        message = str(e)
        # EngineConfig says "key = 'value' reason"; say "--flag 'value' reason" instead.
        prefix = f"{key} = {value!r} "
        reason = message[len(prefix) :] if message.startswith(prefix) else message
        raise ConfigError(f"{flag_name(key)} {value!r} {reason}") from None
