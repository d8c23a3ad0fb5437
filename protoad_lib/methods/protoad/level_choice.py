"""A FINCH level chosen by data: the coarsest partition whose held-out normal patches stay (almost) as close
to a prototype as at the finest allowed level, so the head has fewer prototypes to compare against."""

from __future__ import annotations

import numpy as np
import torch

from .prototypes import FinchHierarchy, cluster_prototypes, gather_vectors

HELD_OUT_VECTORS = 20_000
CHUNK = 4096


def held_out_vectors(features: torch.Tensor, used: np.ndarray, seed: int, count: int = HELD_OUT_VECTORS) -> np.ndarray:
    """Up to `count` L2-normalised patch vectors of the training images that the clustering did not see
    (seeded; empty when it saw them all)."""
    n_images, _, height, width = features.shape
    unused = np.setdiff1d(np.arange(n_images * height * width), used, assume_unique=True)
    if len(unused) > count:
        unused = np.sort(np.random.default_rng(seed + 1).choice(unused, size=count, replace=False))
    return gather_vectors(features, unused) if len(unused) else np.empty((0, features.shape[1]), np.float32)


def mean_distance(vectors: np.ndarray, prototypes: np.ndarray) -> float:
    """Mean over `vectors` (unit rows) of 1 - the largest cosine similarity to a prototype (unit rows)."""
    units = torch.from_numpy(prototypes)
    best = [1.0 - (torch.from_numpy(vectors[i : i + CHUNK]) @ units.T).amax(dim=1)
            for i in range(0, len(vectors), CHUNK)]
    return float(torch.cat(best).double().mean())


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
