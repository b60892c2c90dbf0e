"""GrammarCompiler: constraints → per-sequence llguidance matchers, compiled once per constraint.

One compiler per loaded tokenizer (:func:`compiler_for`): it builds llguidance's
tokenizer once (~0.2 s for a 50k vocabulary: every token's bytes are indexed)
and keeps an LRU cache of compiled grammars keyed by the constraint's canonical
spelling (:meth:`StructuredOutputsParams.cache_key`). A cached grammar is a
matcher that has consumed nothing; each sequence gets a deep copy of it (a few
microseconds), so a repeated schema costs no compilation.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict

import llguidance

from rusteeze.errors import InvalidRequestError
from rusteeze.structured.params import StructuredOutputsParams
from rusteeze.tokenizer import Tokenizer

DEFAULT_CACHE_SIZE = 128  # distinct constraints kept compiled
logger = logging.getLogger(__name__)


class GrammarMatcher:
    """One sequence's position in its grammar.

    Attributes:
        mask_words: int32 words in one token bitmask (``ceil(vocab / 32)``).
    """

    def __init__(self, matcher: llguidance.LLMatcher, mask_words: int) -> None:
        self.matcher = matcher
        self.mask_words = mask_words

    @property
    def is_finished(self) -> bool:
        """True once the grammar is complete: no token may follow (EOS consumed or nothing can extend it)."""
        return self.matcher.is_stopped()

    def advance(self, token_id: int) -> bool:
        """Consume a sampled token; returns True when the grammar cannot go on: complete, or failed.

        The sampler only picks allowed tokens, so a rejected token means the matcher failed
        (a grammar that hit llguidance's limits mid-way): it is logged, and the sequence ends
        rather than the engine step.
        """
        if not self.matcher.consume_token(token_id):
            logger.error("structured output stopped: grammar rejected token %d: %s", token_id, self.matcher.get_error())
            return True
        return self.matcher.is_stopped()

    def rollback(self, num_tokens: int) -> None:
        """Forget the last ``num_tokens`` consumed tokens (rejected speculative tokens)."""
        if num_tokens and not self.matcher.rollback(num_tokens):
            raise RuntimeError(f"grammar cannot roll back {num_tokens} tokens: {self.matcher.get_error()}")

    def fill_bitmask(self, address: int) -> None:
        """Write the allowed-next-token bitmask (``mask_words`` int32 words) at ``address``."""
        self.matcher.unsafe_compute_mask_ptr(address, self.mask_words * 4)


class GrammarCompiler:
    """Compiles constraints for one tokenizer and caches them (thread-safe).

    Args:
        tokenizer: the model's tokenizer.
        vocab_size: the model's logits width; the bitmask covers
            ``max(vocab_size, tokenizer vocabulary)`` tokens, and ids with no
            text (padding columns) are never allowed.
        eos_token_ids: the tokens that end generation; allowed wherever the grammar may end.
        cache_size: most constraints kept compiled.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        vocab_size: int,
        eos_token_ids: tuple[int, ...],
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        n_vocab = max(vocab_size, tokenizer.vocab_size)
        eos = list(eos_token_ids) or None
        self.ll_tokenizer = llguidance.LLTokenizer(tokenizer.backend.to_str(), n_vocab=n_vocab, eos_token=eos)
        self.mask_words = (self.ll_tokenizer.vocab_size + 31) // 32
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()
        self.num_compiled = 0  # grammars compiled (cache misses)

    def matcher(self, spec: StructuredOutputsParams) -> GrammarMatcher:
        """A fresh matcher for ``spec``; compiled on first use, copied from the cache after.

        Raises:
            InvalidRequestError: the grammar does not compile for this tokenizer
                (too complex, or a construct llguidance rejects).
        """
        key = spec.cache_key()
        with self._lock:
            template = self._cache.get(key)
            if template is not None:
                self._cache.move_to_end(key)
            else:
                template = llguidance.LLMatcher(self.ll_tokenizer, spec.llguidance_grammar(), log_level=0)
                if template.is_error():
                    raise InvalidRequestError(
                        f"structured_outputs.{spec.kind}: {template.get_error()}",
                        param=f"structured_outputs.{spec.kind}",
                    )
                self.num_compiled += 1
                self._cache[key] = template
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            return GrammarMatcher(template.deep_copy(), self.mask_words)


_compilers: weakref.WeakKeyDictionary[Tokenizer, dict[tuple, GrammarCompiler]] = weakref.WeakKeyDictionary()
_compilers_lock = threading.Lock()


def compiler_for(tokenizer: Tokenizer, vocab_size: int, eos_token_ids: tuple[int, ...]) -> GrammarCompiler:
    """The GrammarCompiler of a loaded tokenizer (built on first use, then shared)."""
    with _compilers_lock:
        per_tokenizer = _compilers.setdefault(tokenizer, {})
        key = (vocab_size, tuple(eos_token_ids))
        if key not in per_tokenizer:
            per_tokenizer[key] = GrammarCompiler(tokenizer, vocab_size, eos_token_ids)
        return per_tokenizer[key]
