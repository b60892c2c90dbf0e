"""Typed errors: every user mistake has one.

Everything rusteeze raises on purpose derives from :class:`RusteezeError`, so the
CLI and the server can catch one type at the edge, print one line (or answer an
OpenAI-style error) and never show a traceback for bad input.
"""


class RusteezeError(Exception):
    """Base class of every error rusteeze raises on purpose."""


class ConfigError(RusteezeError, ValueError):
    """An EngineConfig value, a TOML file or a CLI flag is invalid."""


class ModelNotFoundError(RusteezeError, FileNotFoundError):
    """A model reference names no path, store entry or cached hub repository."""


class ModelLoadError(RusteezeError):
    """A model file exists but cannot be read: truncated, corrupt or inconsistent."""


class UnsupportedModelError(RusteezeError):
    """The model's architecture, tensor type or tokenizer is not supported."""


class InvalidRequestError(RusteezeError, ValueError):
    """A generation request (prompt or sampling parameters) is invalid.

    Attributes:
        param: the name of the offending field, when there is one.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class QuantizationError(RusteezeError):
    """A model cannot be quantized as asked."""


class KernelError(RusteezeError, ValueError):
    """A kernel was called with tensors of the wrong shape, dtype or device."""
