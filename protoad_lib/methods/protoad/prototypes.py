"""Prototypes from normal patch features: FINCH (faiss 1-NN first level), k-means, coreset, random."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import faiss
import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from ...progress import progress_bar

DEFAULT_MAX_VECTORS = 60_000
DEFAULT_MAX_PROTOTYPES = 1_000
SUBSAMPLING_STRATEGIES = ("none", "random", "stratified", "coreset")
PROTOTYPE_METHODS = ("finch", "kmeans", "coreset", "random")


def patch_vectors(features: torch.Tensor) -> np.ndarray:
    """[N, C, h, w] feature maps -> [N*h*w, C] L2-normalised float32 patch vectors (image-major order)."""
    flat = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    return F.normalize(flat.float(), dim=1).contiguous().numpy()


def training_indices(features: torch.Tensor, max_vectors: int = DEFAULT_MAX_VECTORS,
                     subsampling: str = "stratified", seed: int = 0) -> np.ndarray:
    """Sorted image-major indices of the patch vectors prototypes are built from (see `subsample_indices`)."""
    n_images, channels, height, width = features.shape
    n_vectors = n_images * height * width
    everything = patch_vectors(features) if subsampling == "coreset" and n_vectors > max_vectors else None
    return subsample_indices(n_vectors, n_images, max_vectors, subsampling, seed, everything)


def gather_vectors(features: torch.Tensor, indices: np.ndarray) -> np.ndarray:
    """L2-normalised patch vectors [len(indices), C] gathered straight from [N, C, h, w] feature maps."""
    height, width = features.shape[-2:]
    index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
    gathered = features.flatten(2)[index // (height * width), :, index % (height * width)]
    return F.normalize(gathered.float(), dim=1).contiguous().numpy()


def training_vectors(features: torch.Tensor, max_vectors: int = DEFAULT_MAX_VECTORS,
                     subsampling: str = "stratified", seed: int = 0) -> np.ndarray:
    """The L2-normalised patch vectors prototypes are built from: a subsample of [N, C, h, w] features,
    gathered from the maps, so memory beyond the features is only what is kept."""
    return gather_vectors(features, training_indices(features, max_vectors, subsampling, seed))


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def subsample_indices(
    n_vectors: int, n_images: int, max_vectors: int, strategy: str = "stratified", seed: int = 0,
    vectors: np.ndarray | None = None,
) -> np.ndarray:
    """Indices of at most `max_vectors` patch vectors, sorted.

    - `none`: every vector.
    - `random`: a uniform random subset.
    - `stratified`: the same number of random patches from every image (the default: each
      training image contributes equally, so rare-but-normal appearance of a few images survives).
    - `coreset`: PatchCore's approximate greedy k-center selection (needs `vectors`).
    """
    if strategy not in SUBSAMPLING_STRATEGIES:
        raise ValueError(f"Unknown subsampling {strategy!r}; choose one of {SUBSAMPLING_STRATEGIES}.")
    if strategy == "none" or n_vectors <= max_vectors:
        return np.arange(n_vectors)
    rng = np.random.default_rng(seed)
    if strategy == "random":
        return np.sort(rng.choice(n_vectors, size=max_vectors, replace=False))
    if strategy == "stratified":
        per_image = n_vectors // n_images
        take = max(1, max_vectors // n_images)
        picks = [i * per_image + rng.choice(per_image, size=take, replace=False) for i in range(n_images)]
        return np.sort(np.concatenate(picks))
    if vectors is None:
        raise ValueError("Coreset subsampling needs the vectors themselves.")
    from ..coreset import GreedyCoresetSampler

    sampler = GreedyCoresetSampler(seed=seed)
    return np.sort(sampler.select(torch.from_numpy(vectors), n_samples=max_vectors).numpy())


def first_neighbours(vectors: np.ndarray, index: str = "exact", batch_size: int = 8192,
                     progress: bool = True) -> np.ndarray:
    """Index of each unit vector's most cosine-similar other vector (FINCH's first integer neighbour).

    `exact` is a batched exact inner-product search (faiss IndexFlatIP); `hnsw` an approximate
    graph index for very large inputs.
    """
    n, dim = vectors.shape
    if index == "exact":
        search_index = faiss.IndexFlatIP(dim)
    elif index == "hnsw":
        search_index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        search_index.hnsw.efSearch = 64
    else:
        raise ValueError(f"Unknown 1-NN index {index!r}; choose 'exact' or 'hnsw'.")
    search_index.add(vectors)
    neighbours = np.empty(n, dtype=np.int64)
    for start in progress_bar(range(0, n, batch_size), desc="FINCH 1-NN", enabled=progress, leave=False):
        stop = min(start + batch_size, n)
        _, found = search_index.search(vectors[start:stop], 2)
        own = np.arange(start, stop)
        neighbours[start:stop] = np.where(found[:, 0] == own, found[:, 1], found[:, 0])
    missing = neighbours < 0
    neighbours[missing] = np.flatnonzero(missing)
    return neighbours


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


def _finch_steps():
    """finch-clust's own graph and merge steps (imported quietly: its optional ANN backend is not needed)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pynndescent is not installed")
        from finch.finch import get_clust, get_merge
    return get_clust, get_merge


def finch_hierarchy(vectors: np.ndarray, index: str = "exact", progress: bool = True) -> FinchHierarchy:
    """FINCH on unit vectors with cosine distance, every level's first neighbours from faiss.

    Each level links every cluster to its most cosine-similar other cluster (faiss on the
    L2-normalised cluster means), takes the connected components with finch-clust's `get_clust`,
    and merges with its `get_merge` (means of the original vectors), stopping by FINCH's rule
    (one cluster left, or a level that merges at most one cluster is dropped). This is what
    finch-clust's `FINCH(initial_rank=...)` computes (tested equal on small inputs), but its later
    levels use a dense pairwise matrix, which overflows OpenBLAS for ~20,000 1792-d means.
    """
    get_clust, get_merge = _finch_steps()
    labels: list[np.ndarray] = []
    counts: list[int] = []
    merged: np.ndarray | list = []
    means = vectors
    while True:
        neighbours = first_neighbours(l2_normalise(np.asarray(means)), index=index, progress=progress)
        n = len(neighbours)
        adjacency = sp.csr_matrix((np.ones(n, dtype=np.float32), (np.arange(n), neighbours)), shape=(n, n))
        groups, k = get_clust(adjacency, [], None)
        if counts and (k == 1 or counts[-1] - k <= 1):
            break
        merged, means = get_merge(merged, groups, vectors)
        labels.append(np.asarray(merged))
        counts.append(int(k))
        if k == 1:
            break
    return FinchHierarchy(labels=np.stack(labels, axis=1), num_clusters=counts)


def cluster_prototypes(vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """L2-normalised mean of the (unit) vectors of each cluster, in label order."""
    _, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((inverse.max() + 1, vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, vectors)
    return l2_normalise(sums)


def kmeans_prototypes(vectors: np.ndarray, k: int, seed: int = 0, iterations: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (faiss); returns unit centroids and each vector's label."""
    kmeans = faiss.Kmeans(vectors.shape[1], k, niter=iterations, seed=seed, spherical=True, verbose=False,
                          min_points_per_centroid=1)
    kmeans.train(vectors)
    _, labels = kmeans.index.search(vectors, 1)
    return l2_normalise(kmeans.centroids), labels[:, 0]


@dataclass
class PrototypeSet:
    """Prototypes [K, C] (unit rows) and how they were obtained (`info`: subsampling, budget, seed, seconds)."""

    prototypes: np.ndarray
    method: str
    level: int | None = None
    hierarchy: FinchHierarchy | None = None
    n_vectors: int = 0
    info: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.prototypes.shape[0])


def build_prototypes(
    features: torch.Tensor,
    method: str = "finch",
    k: int | None = None,
    level: int | None = None,
    max_prototypes: int = DEFAULT_MAX_PROTOTYPES,
    max_vectors: int = DEFAULT_MAX_VECTORS,
    subsampling: str = "stratified",
    knn_index: str = "exact",
    seed: int = 0,
    progress: bool = True,
    level_margin: float | None = None,
) -> PrototypeSet:
    """Prototypes from training features [N, C, h, w].

    FINCH: `level` picks a partition; by default the finest with at most `max_prototypes` clusters,
    or, with `level_margin`, the coarsest of those whose held-out patches stay within that margin of
    the finest one's distance (`level_choice.choose_level`). k-means, coreset and random need `k`
    (they are the ablation alternatives).
    """
    if method not in PROTOTYPE_METHODS:
        raise ValueError(f"Unknown prototype method {method!r}; choose one of {PROTOTYPE_METHODS}.")
    if method != "finch" and not k:
        raise ValueError(f"Prototype method {method!r} needs k (the number of prototypes).")
    start = time.perf_counter()
    used = training_indices(features, max_vectors, subsampling, seed)
    vectors = gather_vectors(features, used)
    info = {"subsampling": subsampling, "max_vectors": max_vectors, "seed": seed}
    if method == "finch":
        hierarchy = finch_hierarchy(vectors, index=knn_index, progress=progress)
        if level is None:
            level = hierarchy.default_level(max_prototypes)
            if level_margin is not None:
                from .level_choice import choose_level, held_out_vectors

                level, info["held_out_distance"] = choose_level(
                    hierarchy, vectors, held_out_vectors(features, used, seed), level, level_margin)
        if not 0 <= level < len(hierarchy.num_clusters):
            raise ValueError(f"FINCH level {level} does not exist; levels: {hierarchy.num_clusters}.")
        prototypes = cluster_prototypes(vectors, hierarchy.level_labels(level))
        info["seconds"] = time.perf_counter() - start
        return PrototypeSet(prototypes, method, level, hierarchy, len(vectors), info)
    if method == "kmeans":
        prototypes, _ = kmeans_prototypes(vectors, k, seed)
    elif method == "coreset":
        from ..coreset import GreedyCoresetSampler

        sampler = GreedyCoresetSampler(seed=seed, progress=progress)
        picked = sampler.select(torch.from_numpy(vectors), n_samples=k)
        prototypes = vectors[picked.numpy()]
    else:
        prototypes = vectors[np.random.default_rng(seed).choice(len(vectors), size=k, replace=False)]
    info["seconds"] = time.perf_counter() - start
    return PrototypeSet(l2_normalise(prototypes), method, None, None, len(vectors), info)
