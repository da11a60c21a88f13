"""VllmBlockPoolView against a stand-in of vLLM 0.26's BlockPool: a doubly linked free queue
with sentinel ends, membership read from ``prev_free_block`` (as the view reads it)."""

from fineserve.runtime.kvslab.blockpool import VllmBlockPoolView


class Block:
    def __init__(self, block_id):
        self.block_id, self.ref_cnt, self.is_null = block_id, 0, False
        self.prev_free_block = self.next_free_block = None


class FreeQueue:
    """The shape of vLLM's FreeKVCacheBlockQueue (popleft / remove / append_n)."""

    def __init__(self, blocks):
        self.head, self.tail = Block(-1), Block(-2)
        self.head.next_free_block, self.tail.prev_free_block = self.tail, self.head
        self.num_free_blocks = 0
        self.append_n(blocks)

    def append_n(self, blocks):
        for b in blocks:
            last = self.tail.prev_free_block
            last.next_free_block, b.prev_free_block = b, last
            b.next_free_block, self.tail.prev_free_block = self.tail, b
            self.num_free_blocks += 1

    def remove(self, b):
        b.prev_free_block.next_free_block = b.next_free_block
        b.next_free_block.prev_free_block = b.prev_free_block
        b.prev_free_block = b.next_free_block = None
        self.num_free_blocks -= 1

    def popleft(self):
        b = self.head.next_free_block
        self.remove(b)
        return b

    def ids(self):
        out, b = [], self.head.next_free_block
        while b is not self.tail:
            out.append(b.block_id)
            b = b.next_free_block
        return out


class Pool:
    def __init__(self, n):
        self.blocks = [Block(i) for i in range(n)]
        self.null_block = self.blocks[0]
        self.null_block.is_null = True
        self.free_block_queue = FreeQueue(self.blocks[1:])
        self.evicted = []

    def _maybe_evict_cached_block(self, blk):
        self.evicted.append(blk.block_id)


def test_sort_free_requeues_only_queued_blocks_in_id_order():
    pool = Pool(12)
    view = VllmBlockPoolView(pool)
    used = [pool.free_block_queue.popleft() for _ in range(11)]  # 1..10 allocated
    for b in used:
        b.ref_cnt = 1
    for b in reversed(used[2:]):  # freed highest first: 11, 10, ..., 3 at the head
        b.ref_cnt = 0
        pool.free_block_queue.append_n([b])
    assert view.take_free([5, 6]) == [5, 6] and pool.evicted == [5, 6]  # parked
    assert pool.free_block_queue.ids() == [11, 10, 9, 8, 7, 4, 3]
    view.sort_free(12)
    assert pool.free_block_queue.ids() == [3, 4, 7, 8, 9, 10, 11]
    assert view.num_free() == 7  # parked 5, 6 and the running 1, 2 stay out
    view.unpark(range(4, 8))
    assert pool.free_block_queue.ids() == [3, 4, 7, 8, 9, 10, 11, 5, 6]
