"""`1 - max cos`: each unit vector's distance to its most cosine-similar unit prototype, and which one it is."""

from __future__ import annotations

import torch


def nearest_cosine(units: torch.Tensor, prototypes: torch.Tensor, chunk: int | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """For unit rows [M, C] and unit prototypes [K, C] (same dtype, which the result keeps): (1 - the largest
    cosine similarity [M], the index [M] of the first prototype reaching it), `chunk` rows at a time (None:
    all at once). The chunking bounds memory; in float32 it can move a distance by a rounding step (the
    matrix product's kernel depends on the rows it gets), so each caller keeps its own for exact results."""
    parts = [units] if chunk is None else units.split(chunk)
    best = [(part @ prototypes.T).max(dim=1) for part in parts]
    if not best:
        return units.new_empty(0), torch.empty(0, dtype=torch.long, device=units.device)
    return 1.0 - torch.cat([b.values for b in best]), torch.cat([b.indices for b in best])
