"""Prototypes from normal patch features: FINCH (faiss 1-NN first level), k-means, coreset, random."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Iterable

import faiss
import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from ...embeddings import Embeddings, as_embeddings
from ...measure import stopwatch
from ...progress import progress_bar
from ..components import kmeans, patch_rows
from .config import DEFAULT_MAX_PROTOTYPES, DEFAULT_MAX_VECTORS, ProtoADConfig
from .hierarchy import FinchHierarchy, cluster_prototypes, l2_normalise
from .level_choice import HELD_OUT_VECTORS, LevelChoice, choose_level, unseen_indices

SUBSAMPLING_STRATEGIES = ("none", "random", "stratified", "coreset")
PROTOTYPE_METHODS = ("finch", "kmeans", "coreset", "random")
#: faiss candidates re-ranked exactly for each FINCH first neighbour (`first_neighbours`).
NEIGHBOUR_CANDIDATES = 8


def unit_patch_rows(features: torch.Tensor) -> torch.Tensor:
    """Feature maps [B, C, h, w] -> L2-normalised patch vectors [B*h*w, C] (image-major order, same dtype)."""
    return F.normalize(patch_rows(features), dim=1)


def training_indices(features: Embeddings | torch.Tensor, max_vectors: int = DEFAULT_MAX_VECTORS,
                     subsampling: str = "stratified", seed: int = 0) -> np.ndarray:
    """Sorted image-major indices of the patch vectors prototypes are built from (see `subsample_indices`): they
    depend on the grid (N, h, w) alone, except `coreset`, which reads the features a few images at a time."""
    features = as_embeddings(features)
    n_images, _, height, width = features.shape
    n_vectors = n_images * height * width
    chunks = (unit_patch_rows(chunk) for chunk in features.chunks()) if subsampling == "coreset" else None
    return subsample_indices(n_vectors, n_images, max_vectors, subsampling, seed, chunks)


def gather_vectors(features: Embeddings | torch.Tensor, indices: np.ndarray) -> np.ndarray:
    """L2-normalised patch vectors [len(indices), C] at image-major `indices`, read from the images that hold
    them (`Embeddings.gather`), so memory beyond them is a few images."""
    gathered = as_embeddings(features).gather(np.asarray(indices, dtype=np.int64))
    return F.normalize(gathered, dim=1).contiguous().numpy()


def training_vectors(features: Embeddings | torch.Tensor, max_vectors: int = DEFAULT_MAX_VECTORS,
                     subsampling: str = "stratified", seed: int = 0) -> np.ndarray:
    """The L2-normalised patch vectors prototypes are built from: a subsample of [N, C, h, w] features,
    gathered from the maps, so memory beyond the features is only what is kept."""
    return gather_vectors(features, training_indices(features, max_vectors, subsampling, seed))


def subsample_indices(
    n_vectors: int, n_images: int, max_vectors: int, strategy: str = "stratified", seed: int = 0,
    chunks: Iterable[torch.Tensor] | None = None,
) -> np.ndarray:
    """Indices of at most `max_vectors` patch vectors, sorted.

    - `none`: every vector.
    - `random`: a uniform random subset.
    - `stratified`: the same number of random patches from every image (the default: each
      training image contributes equally, so rare-but-normal appearance of a few images survives).
    - `coreset`: PatchCore's approximate greedy k-center selection (needs `chunks`: the unit patch vectors
      as [n_i, C] tensors in image-major order, projected as they come; it holds the [n_vectors, 128]
      projection).
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
    if chunks is None:
        raise ValueError("Coreset subsampling needs the vectors themselves.")
    from ..coreset import GreedyCoresetSampler

    sampler = GreedyCoresetSampler(seed=seed)
    return np.sort(sampler.select_from_chunks(chunks, n_vectors, n_samples=max_vectors).numpy())


def first_neighbours(vectors: np.ndarray, index: str = "exact", batch_size: int = 8192,
                     progress: bool = True) -> np.ndarray:
    """Index of each unit vector's most cosine-similar other vector (FINCH's first integer neighbour).

    `exact` is a batched exact inner-product search (faiss IndexFlatIP); `hnsw` an approximate
    graph index for very large inputs. Either proposes each vector's `NEIGHBOUR_CANDIDATES` best in float32,
    whose sums depend on BLAS's blocking and so on the number of threads; they are re-ranked by their cosine in
    float64, summed one way whatever the threads, ties going to the lowest index, so the neighbours (and FINCH's
    K) are the same on a one-thread worker as in a many-thread process [ours].
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
    candidates = min(NEIGHBOUR_CANDIDATES + 1, n)
    neighbours = np.empty(n, dtype=np.int64)
    for start in progress_bar(range(0, n, batch_size), desc="FINCH 1-NN", enabled=progress, leave=False):
        stop = min(start + batch_size, n)
        _, found = search_index.search(vectors[start:stop], candidates)
        neighbours[start:stop] = rerank_exactly(vectors, np.arange(start, stop), found)
    return neighbours


def rerank_exactly(vectors: np.ndarray, rows: np.ndarray, found: np.ndarray, block: int = 512) -> np.ndarray:
    """For each row, the candidate in `found` (indices, -1 for none) other than itself with the largest float64
    inner product, the lowest index among equals; a row with no other candidate is its own neighbour."""
    order = np.argsort(found, axis=1, kind="stable")  # index order: argmax below keeps the lowest of equals
    found = np.take_along_axis(found, order, axis=1)
    chosen = np.empty(len(rows), dtype=np.int64)
    for first in range(0, len(rows), block):
        part, candidates = rows[first : first + block], found[first : first + block]
        valid = (candidates >= 0) & (candidates != part[:, None])
        exact = np.einsum("bd,bkd->bk", vectors[part].astype(np.float64),
                          vectors[np.where(valid, candidates, 0)].astype(np.float64))
        exact[~valid] = -np.inf
        best = exact.argmax(axis=1)
        picked = candidates[np.arange(len(part)), best]
        chosen[first : first + block] = np.where(valid.any(axis=1), picked, part)
    return chosen


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


def held_out_vectors(features: Embeddings | torch.Tensor, used: np.ndarray, seed: int,
                     count: int = HELD_OUT_VECTORS) -> np.ndarray:
    """Up to `count` L2-normalised patch vectors of the training images [N, C, h, w] that the clustering did not
    see (`used`; seeded, `level_choice.unseen_indices`; empty when it saw them all)."""
    features = as_embeddings(features)
    n_images, _, height, width = features.shape
    return gather_vectors(features, unseen_indices(n_images * height * width, used, seed, count))


def kmeans_prototypes(vectors: np.ndarray, k: int, seed: int = 0, iterations: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (faiss, its default subsampling to 256 vectors per centroid); returns unit centroids and
    each vector's label."""
    clustering = kmeans(vectors, k, seed, iterations, spherical=True, every_vector=False)
    _, labels = clustering.index.search(vectors, 1)
    return l2_normalise(clustering.centroids), labels[:, 0]


@dataclass
class PrototypeInputs:
    """What ProtoAD's prototypes are built from for one configuration (`prototype_inputs`).

    `used`: sorted image-major indices of the subsampled patch vectors; `vectors` [len(used), C]: those
    vectors, L2-normalised (what every prototype method clusters or picks from); `hierarchy`: FINCH on
    `vectors` (None unless asked for); `held_out` [<= 20,000, C]: unit patch vectors the subsample left
    out, which the level rule measures (None unless asked for)."""

    used: np.ndarray
    vectors: np.ndarray
    hierarchy: FinchHierarchy | None = None
    held_out: np.ndarray | None = None

    def level_for(self, config: ProtoADConfig) -> LevelChoice:
        """The FINCH level `config` gives and how it was found: its `level`, else the finest within
        `max_prototypes`, moved up by `config.level_rule` (`level_choice.choose_level`) when held-out vectors
        were gathered."""
        if config.level is not None:
            return LevelChoice(config.level)
        level = self.hierarchy.default_level(config.max_prototypes)
        if self.held_out is None:
            return LevelChoice(level)
        return choose_level(self.hierarchy, self.vectors, self.held_out, level, config)


def prototype_inputs(features: Embeddings | torch.Tensor, config: ProtoADConfig, hierarchy: FinchHierarchy | None = None,
                     held_out: bool | None = None, progress: bool = True) -> PrototypeInputs:
    """ProtoAD's prototype recipe up to the clustering, for training features [N, C, h, w] and `config`: the
    subsample (`max_vectors`, `subsampling`, `seed`) gathered as unit vectors, FINCH's hierarchy of them
    (`knn_index`) and the held-out vectors of the level rule.

    `hierarchy`: one already computed for the same features and config (e.g. a fit's `PrototypeSet.hierarchy`)
    is reused; None (default) runs FINCH when `config.method` is "finch".
    `held_out`: None (default) gathers them when `config` applies a held-out level rule (FINCH, no fixed `level`,
    `level_rule` other than "budget"); True / False always / never. `build_prototypes` runs exactly this, so an
    ablation that calls it sees what the fit saw. The subsample and the held-out vectors are gathered in one pass
    over the images that hold them."""
    features = as_embeddings(features)
    n_images, _, height, width = features.shape
    used = training_indices(features, config.max_vectors, config.subsampling, config.seed)
    finch = config.method == "finch"
    if held_out is None:
        held_out = finch and config.level is None and config.level_rule != "budget"
    unseen = unseen_indices(n_images * height * width, used, config.seed) if held_out else used[:0]
    vectors, unseen_vectors = np.split(gather_vectors(features, np.concatenate([used, unseen])), [len(used)])
    if hierarchy is None and finch:
        hierarchy = finch_hierarchy(vectors, index=config.knn_index, progress=progress)
    return PrototypeInputs(used, vectors, hierarchy, unseen_vectors if held_out else None)


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
    features: Embeddings | torch.Tensor,
    method: str = "finch",
    k: int | None = None,
    level: int | None = None,
    max_prototypes: int = DEFAULT_MAX_PROTOTYPES,
    max_vectors: int = DEFAULT_MAX_VECTORS,
    subsampling: str = "stratified",
    knn_index: str = "exact",
    seed: int = 0,
    progress: bool = True,
    level_rule: str = "budget",
    bound_ratio: float = ProtoADConfig.bound_ratio,
    level_margin: float = ProtoADConfig.level_margin,
) -> PrototypeSet:
    """Prototypes from training features [N, C, h, w] (`prototype_inputs`, then the method).

    FINCH: `level` picks a partition; by default the finest with at most `max_prototypes` clusters
    (`level_rule="budget"`), or the coarsest level above it whose held-out patches stay within `level_rule`'s
    limit (`bound`: `bound_ratio`; `margin`: `level_margin`; `level_choice.choose_level`). k-means, coreset and
    random need `k` (they are the ablation alternatives).
    """
    if method not in PROTOTYPE_METHODS:
        raise ValueError(f"Unknown prototype method {method!r}; choose one of {PROTOTYPE_METHODS}.")
    if method != "finch" and not k:
        raise ValueError(f"Prototype method {method!r} needs k (the number of prototypes).")
    config = ProtoADConfig(method=method, k=k, level=level, max_prototypes=max_prototypes, max_vectors=max_vectors,
                           subsampling=subsampling, knn_index=knn_index, seed=seed, level_rule=level_rule,
                           bound_ratio=bound_ratio, level_margin=level_margin)
    with stopwatch() as watch:
        found = prototypes_from(prototype_inputs(features, config, progress=progress), config, progress)
    found.info["seconds"] = watch.seconds
    return found


def prototypes_from(inputs: PrototypeInputs, config: ProtoADConfig, progress: bool = True) -> PrototypeSet:
    """The prototypes `config` builds from its inputs (`prototype_inputs`): the cluster means of the FINCH level
    its rule chooses (the rule's measurements in `info`), or k-means / coreset / random's `config.k`."""
    info = {"subsampling": config.subsampling, "max_vectors": config.max_vectors, "seed": config.seed}
    vectors, method, k = inputs.vectors, config.method, config.k
    if method == "finch":
        hierarchy = inputs.hierarchy
        choice = inputs.level_for(config)
        if choice.distances:
            info |= {"level_rule": config.level_rule, "held_out_distance": choice.distances, "level_limit": choice.limit}
        if choice.bound is not None:
            info["every_vector_distance"] = choice.bound
        if not 0 <= choice.level < len(hierarchy.num_clusters):
            raise ValueError(f"FINCH level {choice.level} does not exist; levels: {hierarchy.num_clusters}.")
        prototypes = cluster_prototypes(vectors, hierarchy.level_labels(choice.level))
        return PrototypeSet(prototypes, method, choice.level, hierarchy, len(vectors), info)
    if method == "kmeans":
        prototypes, _ = kmeans_prototypes(vectors, k, config.seed)
    elif method == "coreset":
        from ..coreset import GreedyCoresetSampler

        sampler = GreedyCoresetSampler(seed=config.seed, progress=progress)
        prototypes = vectors[sampler.select(torch.from_numpy(vectors), n_samples=k).numpy()]
    else:
        prototypes = vectors[np.random.default_rng(config.seed).choice(len(vectors), size=k, replace=False)]
    return PrototypeSet(l2_normalise(prototypes), method, None, None, len(vectors), info)
