"""Structured output: constraints (JSON schema, regex, choice, Lark grammar) enforced by a token mask."""

from rusteeze.structured.params import StructuredOutputsParams

__all__ = ["StructuredOutputsParams"]
