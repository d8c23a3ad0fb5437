"""Giving the C heap's free pages back to the kernel (heap.py): the resident memory a fragmented heap keeps."""

import pytest
import torch

from protoad_lib.heap import MALLOC_TRIM, release_free_heap
from protoad_lib.measure import current_rss_mb


@pytest.mark.skipif(MALLOC_TRIM is None, reason="no glibc malloc_trim on this platform")
def test_freed_heap_pages_pinned_by_small_survivors_go_back_to_the_kernel():
    release_free_heap()
    blocks, survivors = [], []
    for _ in range(2000):  # 100 KB blocks, under glibc's 128 KB mmap threshold so from the heap, each pinned by a survivor
        blocks.append(torch.ones(25_000))
        survivors.append(torch.ones(64))
    held = current_rss_mb()
    del blocks
    freed_but_resident = current_rss_mb()
    release_free_heap()
    assert freed_but_resident > held - 50  # the survivors pin the heap: freeing alone returns (almost) nothing
    assert current_rss_mb() < freed_but_resident - 100  # about 200 MB of free pages go back
    assert all(survivor.sum() == 64 for survivor in survivors)
