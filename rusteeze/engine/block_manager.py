"""BlockManager: the paged KV cache's bookkeeping (free list, ref counts, prefix cache).

Physical blocks hold ``block_size`` tokens of keys and values in every layer.
A sequence's ``block_table`` maps its logical blocks to physical ones.

Prefix caching (as vLLM's block pool). A *full* block whose KV has been
computed is registered under a digest chained over everything before it:
``digest_i = sha256(digest_{i-1} || tokens of block i)`` (token ids as 8-byte
integers), so equal digests mean equal whole prefixes, and a collision cannot
be crafted. A later sequence whose leading blocks have the same digests reuses
those physical blocks instead of computing them. The digest is only the index:
each registered block also keeps its tokens and the *registration* of its parent
(a serial number given to each registration, never reused), and a hit is
accepted only when both match the previous hit. So a hash collision is a miss,
never wrong KV, even with a weak ``hash_fn`` and even after the parent block
was evicted and its physical block reused.

Free list and eviction. A block whose ref count drops to 0 goes on the free
list but keeps its contents and its hash: it stays reusable until it is handed
out again. Allocation takes from the head of the list (least recently freed
first); blocks without a hash are put at the head when freed (nothing to
lose), hashed blocks at the tail, and a sequence frees its blocks last-first so
that the end of a prompt is evicted before its (more shareable) beginning.

Poisoned-KV debug mode (``poison``; see ``rusteeze.engine.kv_cache``): every
block taken from the free list and every block freed without a hash is
recorded; the runner drains the record with :meth:`BlockManager.take_poisoned`
and NaN-fills those blocks before the next forward.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Callable, Hashable
from collections.abc import Sequence as Seq
from itertools import count

from rusteeze.engine.kv_cache import poison_enabled
from rusteeze.engine.sequence import Sequence

HashFn = Callable[[Hashable, tuple[int, ...]], Hashable]
NO_PARENT = b""  # parent digest of block 0
ROOT = -1  # parent registration of block 0
NULL_BLOCK = -1  # block-table entry of a block released by the sliding window


def default_hash(parent: Hashable, tokens: tuple[int, ...]) -> bytes:
    """Chain digest of one block: sha256 of the parent's digest and the token ids as int64."""
    return hashlib.sha256(parent + array("q", tokens).tobytes()).digest()  # type: ignore[operator]


class BlockManager:
    """Allocates KV blocks to sequences; shares full blocks through the prefix cache.

    Args:
        num_blocks: physical blocks in the cache.
        block_size: tokens per block.
        enable_prefix_caching: register full blocks and reuse them across sequences.
        sliding_window: the model's attention window in tokens; blocks that no
            future query can see are released. None: full attention.
        hash_fn: block digest ``hash_fn(parent digest, tokens)`` (tests inject collisions with it).
        poison: the poisoned-KV debug mode (None: from ``RUSTEEZE_DEBUG_POISON_KV``).
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool = True,
        sliding_window: int | None = None,
        hash_fn: HashFn = default_hash,
        poison: bool | None = None,
    ) -> None:
        assert num_blocks > 0 and block_size > 0
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.sliding_window = sliding_window
        self.hash_fn = hash_fn
        self.poison = poison_enabled() if poison is None else poison
        self.ref_counts = [0] * num_blocks
        self._hash: list[Hashable | None] = [None] * num_blocks
        self._key: list[tuple[int, tuple[int, ...]] | None] = [None] * num_blocks  # (parent serial, tokens)
        self._serial: list[int] = [ROOT] * num_blocks  # registration id of each cached block
        self._serials = count()
        self._live: dict[int, int] = {}  # serial -> block, for every current registration
        self._cached: dict[Hashable, int] = {}  # digest -> physical block
        self._chain: dict[int, int | None] = {}  # seq_id -> registration of its last registered block
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._poisoned: list[int] = []

    @property
    def num_free_blocks(self) -> int:
        """Blocks with ref count 0 (cached-but-unused ones included)."""
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks in use, in [0, 1]."""
        return 1.0 - len(self._free) / self.num_blocks

    def is_cached(self, block_id: int) -> bool:
        """True when the block is registered in the prefix cache."""
        return self._hash[block_id] is not None

    def free_block_ids(self) -> list[int]:
        """The free list, next-to-be-allocated first (for tests and debugging)."""
        return list(self._free)

    def take_poisoned(self) -> list[int]:
        """Blocks to NaN-fill before the next forward (debug mode; empty otherwise), and forget them."""
        ids, self._poisoned = self._poisoned, []
        return ids

    # -- prefix cache -------------------------------------------------------

    def _update_hashes(self, seq: Sequence) -> None:
        """Extend ``seq.block_hashes`` to every full block of its tokens."""
        bs, hashes, toks = self.block_size, seq.block_hashes, seq.token_ids
        for i in range(len(hashes), len(toks) // bs):
            parent = hashes[i - 1] if i else NO_PARENT
            hashes.append(self.hash_fn(parent, tuple(toks[i * bs : (i + 1) * bs])))

    def find_cached_prefix(self, seq: Sequence) -> list[int]:
        """Physical blocks holding the longest cached prefix of ``seq`` (not yet referenced).

        At least one token is always left to compute (its logits are needed),
        so a fully cached prompt reuses all but its last block's worth.
        """
        if not self.enable_prefix_caching:
            return []
        self._update_hashes(seq)
        bs, toks, hits, parent = self.block_size, seq.token_ids, [], ROOT
        for i in range((seq.num_tokens - 1) // bs):
            block = self._cached.get(seq.block_hashes[i])
            if block is None or self._key[block] != (parent, tuple(toks[i * bs : (i + 1) * bs])):
                break
            hits.append(block)
            parent = self._serial[block]
        return hits

    def register_full_blocks(self, seq: Sequence) -> None:
        """Offer the blocks that are now full and computed to the prefix cache.

        Each block is registered under its parent's registration: the sequence's
        own previous block, the cached block it hit, or the equal block already
        cached (then this one is not registered twice).
        """
        if not self.enable_prefix_caching:
            return
        self._update_hashes(seq)
        full = min(seq.num_computed_tokens // self.block_size, len(seq.block_table))
        bs, first = self.block_size, seq.num_registered_blocks
        parent: int | None = self._chain.get(seq.seq_id) if first else ROOT
        for i in range(first, full):
            block, h = seq.block_table[i], seq.block_hashes[i]
            if block != NULL_BLOCK and self._hash[block] is not None:
                parent = self._serial[block]  # a prefix-cache hit (verified on admission)
                continue
            key = (parent, tuple(seq.token_ids[i * bs : (i + 1) * bs]))
            other = self._cached.get(h)
            if other is not None and self._key[other] == key:
                parent = self._serial[other]  # an equal block is cached already
                continue
            if block == NULL_BLOCK or parent is None:
                parent = None  # released before registration: the chain stops here
                continue
            if other is not None:
                if self._is_live(other):
                    parent = None  # a true collision: the first registration keeps the digest
                    continue
                self._unregister(other)  # an orphan (its parent was evicted): unreachable anyway
            self._hash[block], self._key[block] = h, key
            self._serial[block] = parent = next(self._serials)
            self._live[parent] = block
            self._cached[h] = block
        seq.num_registered_blocks = max(seq.num_registered_blocks, full)
        self._chain[seq.seq_id] = parent

    # -- allocation ---------------------------------------------------------

    def _is_live(self, block: int) -> bool:
        """True when ``block``'s whole chain of registrations is still cached (it can be hit)."""
        parent = self._key[block][0]  # type: ignore[index]
        while parent != ROOT:
            if parent not in self._live:
                return False
            parent = self._key[self._live[parent]][0]  # type: ignore[index]
        return True

    def _unregister(self, block: int) -> None:
        """Drop ``block`` from the prefix cache (its registration's children become unreachable)."""
        h = self._hash[block]
        if h is None:
            return
        if self._cached.get(h) == block:
            del self._cached[h]
        del self._live[self._serial[block]]
        self._hash[block] = self._key[block] = None
        self._serial[block] = ROOT
        if self.ref_counts[block] == 0:  # nothing to keep: allocate it first
            self._free.move_to_end(block, last=False)
            if self.poison:
                self._poisoned.append(block)

    def _take_free(self) -> int:
        """Pop the head of the free list, evicting its cached contents."""
        block, _ = self._free.popitem(last=False)
        self.ref_counts[block] = 1
        self._unregister(block)
        if self.poison:
            self._poisoned.append(block)
        return block

    def _ref(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            del self._free[block]
        self.ref_counts[block] += 1

    def _unref(self, block: int) -> None:
        assert self.ref_counts[block] > 0, f"block {block} freed twice"
        self.ref_counts[block] -= 1
        if self.ref_counts[block] == 0:
            self._free[block] = None
            if self._hash[block] is None:
                self._free.move_to_end(block, last=False)
                if self.poison:
                    self._poisoned.append(block)

    def allocate_slots(self, seq: Sequence, num_new_tokens: int, computed_blocks: Seq[int] = ()) -> bool:
        """Make room for ``num_new_tokens`` more tokens of ``seq``; all or nothing.

        Args:
            seq: the sequence; its ``num_computed_tokens`` is not changed here.
            num_new_tokens: tokens to be computed this step.
            computed_blocks: on admission only (empty block table), blocks that
                already hold its first ``len(computed_blocks)`` full blocks of KV
                (prefix-cache hits or a parent's prompt blocks); they are
                referenced, not copied. The caller then advances
                ``num_computed_tokens`` by ``len(computed_blocks) * block_size``.

        Returns:
            False (and nothing changed) when there are not enough free blocks.
        """
        assert not computed_blocks or not seq.block_table, "computed blocks are only taken on admission"
        total = seq.num_computed_tokens + len(computed_blocks) * self.block_size + num_new_tokens
        num_needed = -(-total // self.block_size) - len(seq.block_table) - len(computed_blocks)
        num_revived = sum(1 for b in computed_blocks if self.ref_counts[b] == 0)
        if max(num_needed, 0) + num_revived > len(self._free):
            return False
        for block in computed_blocks:
            self._ref(block)
        seq.block_table.extend(computed_blocks)
        seq.block_table.extend(self._take_free() for _ in range(num_needed))
        return True

    def release_out_of_window(self, seq: Sequence) -> None:
        """Free the leading blocks that no future query of ``seq`` can attend to.

        A query at position ``p`` sees keys ``j > p - window``; the next query
        is at ``p = num_computed_tokens``, so keys ``j <= num_computed - window``
        are dead, and so is every block that holds only dead keys.
        """
        if self.sliding_window is None:
            return
        num_dead = max(0, seq.num_computed_tokens - self.sliding_window + 1) // self.block_size
        for i in range(seq.num_released_blocks, min(num_dead, len(seq.block_table))):
            if seq.block_table[i] != NULL_BLOCK:
                self._unref(seq.block_table[i])
                seq.block_table[i] = NULL_BLOCK
        seq.num_released_blocks = max(seq.num_released_blocks, num_dead)

    def free_trailing(self, seq: Sequence, num_tokens: int) -> None:
        """Free the blocks of ``seq`` past the first ``num_tokens`` tokens (rejected speculative drafts).

        Such blocks hold no computed token, so they are not in the prefix cache.
        """
        keep = -(-num_tokens // self.block_size)
        while len(seq.block_table) > keep:
            block = seq.block_table.pop()
            assert block != NULL_BLOCK and self._hash[block] is None, "a trailing block is never cached"
            self._unref(block)

    def free(self, seq: Sequence) -> None:
        """Drop all of ``seq``'s blocks (last block first) and reset its table."""
        for block in reversed(seq.block_table):
            if block != NULL_BLOCK:
                self._unref(block)
        seq.block_table.clear()
        seq.num_registered_blocks = seq.num_released_blocks = 0
        self._chain.pop(seq.seq_id, None)
