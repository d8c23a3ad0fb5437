"""Patch scores to anomaly maps: bilinear upsampling and scipy-compatible Gaussian smoothing in torch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """The same normalised taps as scipy.ndimage.gaussian_filter1d (radius = int(truncate*sigma+0.5))."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (weights / weights.sum()).float()


def symmetric_pad(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Pad by mirroring including the edge sample (scipy's mode='reflect': d c b a | a b c d)."""
    length = x.shape[dim]
    if radius > length:
        return _tile_symmetric(x, radius, dim)
    before = x.narrow(dim, 0, radius).flip(dim)
    after = x.narrow(dim, length - radius, radius).flip(dim)
    return torch.cat([before, x, after], dim=dim)


def _tile_symmetric(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Symmetric padding wider than the signal: tile the mirrored period and cut the window."""
    length = x.shape[dim]
    period = torch.cat([x, x.flip(dim)], dim=dim)
    copies = math.ceil((radius + length + radius) / (2 * length)) + 1
    tiled = torch.cat([period] * (2 * copies), dim=dim)
    start = copies * 2 * length - radius
    return tiled.narrow(dim, start, length + 2 * radius)


class GaussianBlur(nn.Module):
    """Separable Gaussian smoothing of [B, H, W] maps, matching scipy.ndimage.gaussian_filter."""

    def __init__(self, sigma: float = 4.0, truncate: float = 4.0) -> None:
        super().__init__()
        self.sigma = float(sigma)
        self.register_buffer("kernel", gaussian_kernel1d(sigma, truncate) if sigma > 0 else torch.ones(1))

    @property
    def radius(self) -> int:
        return (self.kernel.numel() - 1) // 2

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        if self.sigma <= 0:
            return maps
        x = maps.unsqueeze(1)
        kernel = self.kernel.to(maps.dtype)
        x = symmetric_pad(x, self.radius, dim=3)
        x = F.conv2d(x, kernel.view(1, 1, 1, -1))
        x = symmetric_pad(x, self.radius, dim=2)
        x = F.conv2d(x, kernel.view(1, 1, -1, 1))
        return x.squeeze(1)


def smoothing_operator(source: int, target: int, blur: GaussianBlur) -> torch.Tensor:
    """The [target, source] matrix of 1-D linear upsampling (as bilinear `F.interpolate` with
    align_corners=False computes it along one axis) followed by `blur`'s 1-D Gaussian with its symmetric
    padding: both are linear, so the pair is one matrix, built by applying them to the unit vectors."""
    basis = torch.eye(source, dtype=torch.float64).unsqueeze(1)
    upsampled = F.interpolate(basis, size=target, mode="linear", align_corners=False)
    if blur.sigma > 0:
        padded = symmetric_pad(upsampled, blur.radius, dim=2)
        upsampled = F.conv1d(padded, blur.kernel.double().view(1, 1, -1))
    return upsampled[:, 0].T.contiguous()


class AnomalyMapHead(nn.Module):
    """Patch scores [B, h, w] -> anomaly maps [B, H, W] (bilinear upsampling, then Gaussian smoothing).

    Both steps are separable and linear, so they run as two small matrix products, `A_h @ P @ A_w^T`
    with `A = smoothing_operator(...)` cached per size and device: the same maps as upsampling then
    `GaussianBlur` (tested to float32 rounding), in a fraction of the time at batch size 1.
    """

    def __init__(self, sigma: float = 4.0) -> None:
        super().__init__()
        self.blur = GaussianBlur(sigma)
        self._operators: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def operators(self, source: tuple[int, int], size: tuple[int, int], device: torch.device,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (tuple(source), tuple(size), device, dtype)
        if key not in self._operators:
            self._operators[key] = tuple(smoothing_operator(s, t, self.blur).to(device, dtype)
                                         for s, t in zip(source, size))
        return self._operators[key]

    def forward(self, patch_scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if torch.jit.is_tracing():  # TorchScript / ONNX export: the operators' shapes would be baked in
            upsampled = F.interpolate(patch_scores.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
            return self.blur(upsampled.squeeze(1))
        rows, columns = self.operators(tuple(patch_scores.shape[-2:]), tuple(size), patch_scores.device,
                                       patch_scores.dtype)
        return rows @ patch_scores @ columns.T
