"""The pool of KV blocks: ref counts, the free queue (LRU eviction order) and the prefix-cache map.

A block is in exactly one of three states:

    in use         ref_count > 0                 (not in the free queue)
    free, cached   ref_count == 0, hash set      (in the free queue AND in the hash map)
    free, empty    ref_count == 0, no hash       (in the free queue only)

Allocation takes blocks from the front of the free queue; a cached block taken that way is
evicted (its hash forgotten). Freed blocks go to the back, so the least recently freed cached
block is evicted first. The pool makes no policy decisions; the KV cache manager calls it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(eq=False)
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: bytes | None = None
    token_ids: tuple[int, ...] = ()  # the tokens whose KV the block holds, kept to verify hits
    parent_hash: bytes | None = None


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        assert num_blocks > 0
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, Block] = OrderedDict((b.block_id, b) for b in self.blocks)
        self._cached: dict[bytes, Block] = {}
        self.num_shared_blocks = 0  # blocks with ref_count >= 2 (held by several sequences)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        """Blocks that can be allocated now (empty ones plus evictable cached ones)."""
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return len(self.blocks) - len(self._free)

    def free_block_ids(self) -> list[int]:
        """The free queue in eviction order (front first); for tests and debugging."""
        return list(self._free)

    def lookup(
        self, block_hash: bytes, parent_hash: bytes | None, token_ids: tuple[int, ...]
    ) -> Block | None:
        """Return the cached block for this hash if it really holds these tokens after this parent."""
        block = self._cached.get(block_hash)
        if block is None or block.token_ids != token_ids or block.parent_hash != parent_hash:
            return None
        return block

    def allocate(self, num_blocks: int) -> list[Block]:
        """Take num_blocks from the front of the free queue (evicting cached ones); ref_count 1."""
        assert num_blocks <= len(self._free), "caller must check num_free_blocks first"
        taken = []
        for _ in range(num_blocks):
            _, block = self._free.popitem(last=False)
            self._evict(block)
            block.ref_count = 1
            taken.append(block)
        return taken

    def touch(self, blocks: Iterable[Block]) -> None:
        """Take another reference on blocks found in the prefix cache."""
        for block in blocks:
            if block.ref_count == 0:
                del self._free[block.block_id]
            block.ref_count += 1
            if block.ref_count == 2:
                self.num_shared_blocks += 1

    def free(self, blocks: Iterable[Block]) -> None:
        """Drop a reference; blocks reaching zero join the back of the free queue in the given
        order (pass a sequence's blocks tail first, so its prefix is evicted last)."""
        for block in blocks:
            assert block.ref_count > 0, f"block {block.block_id} freed twice"
            if block.ref_count == 2:
                self.num_shared_blocks -= 1
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block.block_id] = block

    def cache(
        self, block: Block, block_hash: bytes, parent_hash: bytes | None, token_ids: tuple[int, ...]
    ) -> None:
        """Register a full block under its hash. A hash already cached keeps its first block
        (the duplicate simply stays uncached and is freed normally)."""
        if block.block_hash is not None or block_hash in self._cached:
            return
        block.block_hash = block_hash
        block.parent_hash = parent_hash
        block.token_ids = token_ids
        self._cached[block_hash] = block

    def _evict(self, block: Block) -> None:
        if block.block_hash is not None:
            del self._cached[block.block_hash]
            block.block_hash = None
            block.parent_hash = None
            block.token_ids = ()
