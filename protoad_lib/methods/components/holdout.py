"""The seeded split of a method's good training images into a fit part and a held-out part."""

from __future__ import annotations

import torch


def holdout_split(count: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, held-out) image indices, sorted: a seeded random `fraction` held out (at least 1, leaving 2
    to fit); with fewer than 3 images both are all images (statistics taken on them are then in-sample)."""
    everything = torch.arange(count)
    if count < 3:
        return everything, everything
    n_held = min(count - 2, max(1, round(fraction * count)))
    order = torch.randperm(count, generator=torch.Generator().manual_seed(int(seed)))
    return order[n_held:].sort().values, order[:n_held].sort().values
