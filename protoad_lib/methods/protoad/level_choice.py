"""A FINCH level chosen by data: the coarsest partition whose held-out normal patches stay close enough to a
prototype, so the head has fewer prototypes to compare against where that costs no accuracy.

Plain arrays in, plain numbers out: the held-out vectors themselves are gathered by the recipe
(`prototypes.prototype_inputs`), which imports this module (never the other way round)."""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np
import torch

from ..components import nearest_cosine
from .config import ProtoADConfig
from .hierarchy import FinchHierarchy, cluster_prototypes

HELD_OUT_VECTORS = 20_000
#: Held-out vectors the `bound` rule measures (spread evenly over the held-out set): their nearest clustered vector
#: is a search like FINCH's first level (5,000 x 60,000 products against its 60,000 x 60,000: a twelfth of it).
BOUND_VECTORS = 5_000
CHUNK = 4096


@dataclass
class LevelChoice:
    """The level a rule chose; `distances`: the mean held-out distance of each level it examined; `limit`: the
    largest distance it accepted; `bound`: the mean held-out distance to the nearest clustered vector (`bound`
    rule only)."""

    level: int
    distances: dict[int, float] = field(default_factory=dict)
    limit: float | None = None
    bound: float | None = None


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


def every_vector_distance(held_out: np.ndarray, vectors: np.ndarray) -> float:
    """Mean over `held_out` (unit rows) of 1 - the largest cosine similarity to any of `vectors` (unit rows): the
    distance if every clustered vector were a prototype (faiss exact inner-product search, memory bounded)."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    similarity, _ = index.search(np.ascontiguousarray(held_out, dtype=np.float32), 1)
    return float((1.0 - similarity[:, 0].astype(np.float64)).mean())


def spread_sample(rows: np.ndarray, count: int) -> np.ndarray:
    """At most `count` rows taken evenly over `rows` (the held-out vectors are in image order)."""
    if len(rows) <= count:
        return rows
    return rows[np.linspace(0, len(rows) - 1, count).round().astype(np.int64)]


def choose_level(hierarchy: FinchHierarchy, vectors: np.ndarray, held_out: np.ndarray, finest: int,
                 config: ProtoADConfig) -> LevelChoice:
    """The coarsest level at or above `finest` whose mean held-out distance is within `config`'s rule, examined
    from `finest` up (the first level outside ends the search; `finest` when none is within):
    - `bound`: at most `bound_ratio` times the held-out vectors' distance to their nearest clustered vector
      (`every_vector_distance`, on `BOUND_VECTORS` of them);
    - `margin`: at most `1 + level_margin` times the distance at `finest`;
    - `budget`, or no held-out vectors: `finest`."""
    if config.level_rule == "budget" or len(held_out) == 0:
        return LevelChoice(finest)
    bound = None
    if config.level_rule == "bound":
        held_out = spread_sample(held_out, BOUND_VECTORS)
        bound = every_vector_distance(held_out, vectors)
    distances: dict[int, float] = {}
    limit = None
    for level in range(finest, len(hierarchy.num_clusters)):
        distances[level] = mean_distance(held_out, cluster_prototypes(vectors, hierarchy.level_labels(level)))
        if limit is None:
            limit = config.bound_ratio * bound if bound is not None else distances[finest] * (1 + config.level_margin)
        if distances[level] > limit:
            break
    within = [level for level, distance in distances.items() if distance <= limit]
    return LevelChoice(max(within, default=finest), distances, limit, bound)
