"""Heat-map overlays of anomaly maps on their images."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image


def heatmap_rgb(anomaly_map: torch.Tensor | np.ndarray, vmin: float, vmax: float, cmap: str = "jet") -> np.ndarray:
    """An anomaly map [H, W] scaled to vmin..vmax and coloured: uint8 [H, W, 3]."""
    values = np.asarray(anomaly_map, dtype=np.float32)
    scaled = np.clip((values - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    return (colormaps[cmap](scaled)[..., :3] * 255).astype(np.uint8)


def overlay(image01: torch.Tensor | np.ndarray, anomaly_map: torch.Tensor | np.ndarray, vmin: float, vmax: float,
            alpha: float = 0.5) -> Image.Image:
    """Blend the coloured anomaly map over the image ([3, H, W] in 0..1); one colour scale per run."""
    image = np.asarray(image01, dtype=np.float32)
    image = (np.clip(image.transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)
    blended = (1 - alpha) * image + alpha * heatmap_rgb(anomaly_map, vmin, vmax)
    return Image.fromarray(blended.astype(np.uint8))
