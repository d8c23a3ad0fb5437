"""faiss k-means, seeded: N-pad's centroids, PRN's prototypes and ProtoAD's spherical k-means ablation."""

from __future__ import annotations

import faiss
import numpy as np
import torch

KMEANS_ITERATIONS = 25


def kmeans(vectors: torch.Tensor | np.ndarray, k: int, seed: int, iterations: int = KMEANS_ITERATIONS,
           spherical: bool = False, every_vector: bool = True) -> faiss.Kmeans:
    """faiss k-means trained on vectors [M, d] (as float32, on the CPU) with min(k, M) centroids (at least 1),
    seeded; `spherical`: unit centroids (cosine), `every_vector`: faiss trains on all M vectors (else it
    subsamples to its default 256 per centroid). Read `.centroids` [k, d] and `.index` of the result."""
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().to("cpu", torch.float32).contiguous().numpy()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    count = len(vectors)
    limits = {"max_points_per_centroid": max(1, count)} if every_vector else {}
    clustering = faiss.Kmeans(vectors.shape[1], max(1, min(int(k), count)), niter=iterations, seed=int(seed),
                              spherical=spherical, verbose=False, min_points_per_centroid=1, **limits)
    clustering.train(vectors)
    return clustering
