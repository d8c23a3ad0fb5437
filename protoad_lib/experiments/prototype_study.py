"""Measurements behind notebook 03: FINCH's hierarchy with its time and memory (tables and figures: `report.model_views`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..measure import PeakMemory
from ..methods.protoad.prototypes import DEFAULT_MAX_PROTOTYPES, FinchHierarchy, finch_hierarchy


@dataclass
class TimedHierarchy:
    """A FINCH hierarchy with its cost: wall time and peak extra resident memory."""

    hierarchy: FinchHierarchy
    seconds: float
    peak_mb: float
    n_vectors: int
    dim: int

    @property
    def level(self) -> int:
        """The level ProtoAD uses by default (finest with at most DEFAULT_MAX_PROTOTYPES clusters)."""
        return self.hierarchy.default_level(DEFAULT_MAX_PROTOTYPES)


def timed_finch(vectors: np.ndarray) -> TimedHierarchy:
    """Run FINCH (no progress bar) and measure its time and peak memory."""
    with PeakMemory("cpu") as memory:
        start = time.perf_counter()
        hierarchy = finch_hierarchy(vectors, progress=False)
        seconds = time.perf_counter() - start
    return TimedHierarchy(hierarchy, seconds, memory.peak_mb, int(vectors.shape[0]), int(vectors.shape[1]))
