"""A FINCH level chosen by data: the coarsest partition whose held-out normal patches stay (almost) as close
to a prototype as at the finest allowed level, so the head has fewer prototypes to compare against.

Plain arrays in, plain numbers out: the held-out vectors themselves are gathered by the recipe
(`prototypes.prototype_inputs`), which imports this module (never the other way round)."""

from __future__ import annotations

import numpy as np
import torch

from ..components import nearest_cosine
from .hierarchy import FinchHierarchy, cluster_prototypes

HELD_OUT_VECTORS = 20_000
CHUNK = 4096


def unseen_indices(n_vectors: int, used: np.ndarray, seed: int, count: int = HELD_OUT_VECTORS) -> np.ndarray:
    """Up to `count` sorted indices in [0, n_vectors) that are not in `used` (the vectors the clustering saw),
    drawn seeded (`seed + 1`) when there are more; empty when it saw them all.

    The draw picks positions in the ascending list of unused indices, which is never built: position p is
    index p + (how many used indices lie at or below it), so memory is `used` and the draw, whatever n_vectors."""
    used = np.unique(np.asarray(used, dtype=np.int64))
    n_unused = n_vectors - len(used)
    positions = np.arange(n_unused)
    if n_unused > count:
        positions = np.sort(np.random.default_rng(seed + 1).choice(n_unused, size=count, replace=False))
    return positions + np.searchsorted(used - np.arange(len(used)), positions, side="right")


def mean_distance(vectors: np.ndarray, prototypes: np.ndarray) -> float:
    """Mean over `vectors` (unit rows) of 1 - the largest cosine similarity to a prototype (unit rows)."""
    distances, _ = nearest_cosine(torch.from_numpy(vectors), torch.from_numpy(prototypes), CHUNK)
    return float(distances.double().mean())


def choose_level(hierarchy: FinchHierarchy, vectors: np.ndarray, held_out: np.ndarray, finest: int, margin: float,
                 ) -> tuple[int, dict[int, float]]:
    """The coarsest level at or above `finest` whose mean held-out distance is at most (1 + margin) times
    the finest level's, and every examined level's distance. Without held-out vectors: `finest`."""
    if len(held_out) == 0:
        return finest, {}
    distances: dict[int, float] = {}
    for level in range(finest, len(hierarchy.num_clusters)):
        distances[level] = mean_distance(held_out, cluster_prototypes(vectors, hierarchy.level_labels(level)))
        if distances[level] > distances[finest] * (1 + margin):
            break
    chosen = max(level for level, distance in distances.items() if distance <= distances[finest] * (1 + margin))
    return chosen, distances
