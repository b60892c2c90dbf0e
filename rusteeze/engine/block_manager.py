"""BlockManager: the paged KV cache's bookkeeping (free list, ref counts, prefix cache).

Physical blocks hold ``block_size`` tokens of keys and values in every layer.
A sequence's ``block_table`` maps its logical blocks to physical ones.

Prefix caching (as vLLM's block pool). A *full* block whose KV has been
computed is registered under a hash chained over everything before it:
``hash_i = hash_fn(hash_{i-1}, tokens of block i)``. A later sequence whose
leading blocks have the same hashes reuses those physical blocks instead of
computing them. Each registered block keeps its parent hash and token ids, and
a hit is accepted only when both match, so a hash collision is a miss, never
wrong KV.

Free list and eviction. A block whose ref count drops to 0 goes on the free
list but keeps its contents and its hash: it stays reusable until it is handed
out again. Allocation takes from the head of the list (least recently freed
first); blocks without a hash are put at the head when freed (nothing to
lose), hashed blocks at the tail, and a sequence frees its blocks last-first so
that the end of a prompt is evicted before its (more shareable) beginning.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from collections.abc import Sequence as Seq

from rusteeze.engine.sequence import Sequence

HashFn = Callable[[int, tuple[int, ...]], int]
NO_PARENT = -1  # parent hash of block 0
NULL_BLOCK = -1  # block-table entry of a block released by the sliding window


def default_hash(parent: int, tokens: tuple[int, ...]) -> int:
    """Chain hash of one block: Python's tuple hash (stable within a process)."""
    return hash((parent, tokens))


class BlockManager:
    """Allocates KV blocks to sequences; shares full blocks through the prefix cache.

    Args:
        num_blocks: physical blocks in the cache.
        block_size: tokens per block.
        enable_prefix_caching: register full blocks and reuse them across sequences.
        sliding_window: the model's attention window in tokens; blocks that no
            future query can see are released. None: full attention.
        hash_fn: block hash (tests inject collisions with it).
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool = True,
        sliding_window: int | None = None,
        hash_fn: HashFn = default_hash,
    ) -> None:
        assert num_blocks > 0 and block_size > 0
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.sliding_window = sliding_window
        self.hash_fn = hash_fn
        self.ref_counts = [0] * num_blocks
        self._hash: list[int | None] = [None] * num_blocks
        self._key: list[tuple[int, tuple[int, ...]] | None] = [None] * num_blocks
        self._cached: dict[int, int] = {}  # hash -> physical block
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))

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
        bs, toks, hits = self.block_size, seq.token_ids, []
        for i in range((seq.num_tokens - 1) // bs):
            h = seq.block_hashes[i]
            block = self._cached.get(h)
            parent = seq.block_hashes[i - 1] if i else NO_PARENT
            if block is None or self._key[block] != (parent, tuple(toks[i * bs : (i + 1) * bs])):
                break
            hits.append(block)
        return hits

    def register_full_blocks(self, seq: Sequence) -> None:
        """Offer the blocks that are now full and computed to the prefix cache."""
        if not self.enable_prefix_caching:
            return
        self._update_hashes(seq)
        full = min(seq.num_computed_tokens // self.block_size, len(seq.block_table))
        bs = self.block_size
        for i in range(seq.num_registered_blocks, full):
            block, h = seq.block_table[i], seq.block_hashes[i]
            if block == NULL_BLOCK or self._hash[block] is not None or h in self._cached:
                continue  # released, already registered (a hit), or an equal block is cached
            self._hash[block] = h
            parent = seq.block_hashes[i - 1] if i else NO_PARENT
            self._key[block] = (parent, tuple(seq.token_ids[i * bs : (i + 1) * bs]))
            self._cached[h] = block
        seq.num_registered_blocks = max(seq.num_registered_blocks, full)

    # -- allocation ---------------------------------------------------------

    def _take_free(self) -> int:
        """Pop the head of the free list, evicting its cached contents."""
        block, _ = self._free.popitem(last=False)
        h = self._hash[block]
        if h is not None:
            if self._cached.get(h) == block:
                del self._cached[h]
            self._hash[block] = self._key[block] = None
        self.ref_counts[block] = 1
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

    def free(self, seq: Sequence) -> None:
        """Drop all of ``seq``'s blocks (last block first) and reset its table."""
        for block in reversed(seq.block_table):
            if block != NULL_BLOCK:
                self._unref(block)
        seq.block_table.clear()
        seq.num_registered_blocks = seq.num_released_blocks = 0
