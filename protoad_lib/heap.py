"""Give the C heap's free pages back to the kernel between the chunks of a stream (glibc's `malloc_trim`)."""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`, or None where the C library has none (macOS, Windows)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (AttributeError, OSError, TypeError):
        return None


MALLOC_TRIM = _malloc_trim()


def release_free_heap() -> None:
    """Return the heap's free pages to the kernel (a no-op without glibc).

    After a large block is freed glibc raises its mmap threshold (up to 32 MB), so the transient tensors of a
    chunk's work then come from the heap, whose free pages stay resident and fragment: streaming PatchCore's
    features of 20 / 60 `wide_resnet50_2` images, keeping nothing, peaked at 1.27 / 1.41 GiB, and at 1.24 / 1.24
    GiB with this called between chunks (about 1 ms a call)."""
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)
