"""ProtoAD's settings: how its prototypes are built (`ProtoADConfig`), shared by the recipe and the network."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_VECTORS = 60_000
DEFAULT_MAX_PROTOTYPES = 1_000


@dataclass
class ProtoADConfig:
    """How the prototypes are built (FINCH by default; the others are ablations).

    FINCH level (unless `level` is given): the finest with at most `max_prototypes` clusters, then, with
    `level_margin` (default 0.5), the coarsest level above it whose held-out normal patches are on average
    at most 1.5x as far from their nearest prototype (`level_choice`; None: the budget rule alone).
    """

    method: str = "finch"
    k: int | None = None
    level: int | None = None
    max_prototypes: int = DEFAULT_MAX_PROTOTYPES
    max_vectors: int = DEFAULT_MAX_VECTORS
    subsampling: str = "stratified"
    knn_index: str = "exact"
    seed: int = 0
    image_score: str = "max"
    level_margin: float | None = 0.5
