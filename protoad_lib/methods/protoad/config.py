"""ProtoAD's settings: how its prototypes are built (`ProtoADConfig`), shared by the recipe and the network."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_VECTORS = 60_000
DEFAULT_MAX_PROTOTYPES = 1_000
#: How FINCH's level is chosen when no `level` is given (`level_choice.choose_level`).
LEVEL_RULES = ("bound", "margin", "budget")


@dataclass
class ProtoADConfig:
    """How the prototypes are built (FINCH by default; the others are ablations).

    FINCH level (unless `level` is given): the finest with at most `max_prototypes` clusters, then, by
    `level_rule`, the coarsest level above it whose held-out normal patches (training patches FINCH did not
    cluster) stay close enough to their nearest prototype (`level_choice`):
    - `bound` (default): on average at most `bound_ratio` (2.0) times as far as from their nearest clustered
      vector (the "every vector a prototype" bound);
    - `margin`: at most `1 + level_margin` (0.5) times as far as at the finest allowed level (the rule before);
    - `budget`: no second step.
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
    level_rule: str = "bound"
    bound_ratio: float = 2.0
    level_margin: float = 0.5

    def __post_init__(self) -> None:
        if self.level_rule not in LEVEL_RULES:
            raise ValueError(f"Unknown FINCH level rule {self.level_rule!r}; choose one of {LEVEL_RULES}.")
