"""Heat-map overlays of anomaly maps on their images: the notebooks' figures and `protoad predict`'s files draw them the one way."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image, ImageDraw


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


def region_outline(region: np.ndarray, thickness: int) -> np.ndarray:
    """The boundary pixels of a boolean region [H, W], `thickness` pixels wide."""
    mask = torch.from_numpy(region.astype(np.float32))[None, None]
    eroded = -F.max_pool2d(-mask, 3, stride=1, padding=1)
    boundary = mask - eroded
    if thickness > 1:
        boundary = F.max_pool2d(boundary, 2 * (thickness // 2) + 1, stride=1, padding=thickness // 2)
    return boundary[0, 0].numpy() > 0


def colour_bar(height: int, scale: tuple[float, float], cmap: str = "jet") -> Image.Image:
    """A vertical colour bar (high at the top) with its two end values written on it."""
    width = max(40, height // 10)
    values = np.linspace(scale[1], scale[0], height, dtype=np.float32)[:, None].repeat(width, axis=1)
    bar = Image.fromarray(heatmap_rgb(values, *scale, cmap=cmap))
    draw = ImageDraw.Draw(bar)
    draw.text((2, 2), f"{scale[1]:.3g}", fill=(255, 255, 255))
    draw.text((2, height - 14), f"{scale[0]:.3g}", fill=(255, 255, 255))
    return bar


def decision_overlay(image: np.ndarray, anomaly_map: np.ndarray, scale: tuple[float, float],
                     region_threshold: float | None = None, alpha: float = 0.5) -> Image.Image:
    """An RGB image (uint8 [H, W, 3]) with its anomaly map [H, W] blended over it on a fixed colour `scale`,
    the region above `region_threshold` outlined in white (none when None) and a colour bar on the right."""
    blended = ((1 - alpha) * image.astype(np.float32) + alpha * heatmap_rgb(anomaly_map, *scale)).astype(np.uint8)
    if region_threshold is not None:
        outline = region_outline(anomaly_map > region_threshold, max(1, min(image.shape[:2]) // 150))
        blended[outline] = 255
    height, width = image.shape[:2]
    bar = colour_bar(height, scale)
    canvas = Image.new("RGB", (width + bar.width + 4, height), (255, 255, 255))
    canvas.paste(Image.fromarray(blended), (0, 0))
    canvas.paste(bar, (width + 4, 0))
    return canvas
