"""Feature maps [B, C, h, w] as the rows of their patch vectors [B * h * w, C], image-major."""

from __future__ import annotations

import torch


def patch_rows(features: torch.Tensor) -> torch.Tensor:
    """Feature maps [B, C, h, w] -> patch vectors [B * h * w, C] (image-major, same dtype and device)."""
    return features.detach().permute(0, 2, 3, 1).reshape(-1, features.shape[1])
