"""A FINCH hierarchy (every partition level) and the unit prototypes of a partition: the types the recipe
(`prototypes`) and the level rule (`level_choice`) share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import DEFAULT_MAX_PROTOTYPES


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


@dataclass
class FinchHierarchy:
    """Every FINCH partition level: labels [N, L] and the number of clusters per level."""

    labels: np.ndarray
    num_clusters: list[int]

    def level_labels(self, level: int) -> np.ndarray:
        return self.labels[:, level]

    def default_level(self, max_prototypes: int = DEFAULT_MAX_PROTOTYPES) -> int:
        """The finest level with at most `max_prototypes` clusters (the coarsest level if none is)."""
        for level, k in enumerate(self.num_clusters):
            if k <= max_prototypes:
                return level
        return len(self.num_clusters) - 1


def cluster_prototypes(vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """L2-normalised mean of the (unit) vectors of each cluster, in label order."""
    _, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((inverse.max() + 1, vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, vectors)
    return l2_normalise(sums)
