"""PRN's anomaly synthesis: Perlin-noise masks filled with blended textures, and pasted real ("seen") anomalies.

As `xcyao00/PRNet` does it (docs/peer_methods.md, "PRN", after DRAEM): a Perlin noise map with
random scales 2^a x 2^b (a, b in 0..5) thresholded at 0.5 gives the region; inside it the image
becomes (1 - beta) * texture + beta * image with beta ~ U(0, 0.8); about half of each batch is
anomalous; "seen" anomalies are real defects with their masks pasted onto normal images.

Ours, marked [ours] where they occur: the noise is not rotated; textures are procedural (coloured
noise, stripes, checkerboards, two-colour Perlin; seeded) unless a folder of texture images is given
(PRNet uses DTD, which is not available offline); a seen defect is pasted at its own position without
foreground estimation or augmentation; the returned mask marks exactly the pixels that changed, so a
region where blending left the image as it was is not labelled anomalous.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...data import list_images, load_rgb

PERLIN_MAX_EXPONENT = 6  # scales 2^0 .. 2^5 per axis, as DRAEM / PRNet
MASK_ATTEMPTS = 10  # [ours] redraws of an empty Perlin region before the sample stays normal
PROCEDURAL_TEXTURES = ("noise", "stripes", "checker", "perlin")


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise [H, W] in about [-1, 1] with res[0] x res[1] lattice cells.

    Random unit gradients on the (res + 1) lattice corners, quintic fade, bilinear blend of the four
    corner dot products; any H, W (the lattice cell is ceil(H / res) pixels, the last cell cut)."""
    height, width = shape
    cells_y, cells_x = res
    angles = rng.uniform(0, 2 * math.pi, size=(cells_y + 1, cells_x + 1))
    gradients = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    y = np.arange(height) / math.ceil(height / cells_y)
    x = np.arange(width) / math.ceil(width / cells_x)
    iy, ix = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - iy)[:, None], (x - ix)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = gradients[iy[:, None] + dy, ix[None, :] + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6 - 15) + 10)

    wy, wx = fade(fy), fade(fx)
    top = corner(0, 0) + wx * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + wx * (corner(1, 1) - corner(1, 0))
    return math.sqrt(2) * (top + wy * (bottom - top))


def perlin_region(shape: tuple[int, int], rng: np.random.Generator, threshold: float = 0.5) -> np.ndarray:
    """A boolean region [H, W]: Perlin noise at random scales 2^a x 2^b (a, b in 0..5) above `threshold`."""
    res = tuple(2 ** int(rng.integers(0, PERLIN_MAX_EXPONENT)) for _ in range(2))
    return perlin_noise(shape, res, rng) > threshold


def procedural_texture(shape: tuple[int, int], rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """A random texture [3, H, W] in 0..1 [ours]: "noise" (smooth coloured noise plus grain), "stripes",
    "checker" (rotated, random period and two colours) or "perlin" (two colours mixed by Perlin noise)."""
    height, width = shape
    kind = kind or PROCEDURAL_TEXTURES[int(rng.integers(len(PROCEDURAL_TEXTURES)))]
    colours = rng.uniform(0, 1, size=(2, 3, 1, 1))  # two RGB colours, broadcast over [H, W]
    if kind == "noise":
        coarse = torch.from_numpy(rng.uniform(0, 1, size=(1, 3, *rng.integers(2, 33, size=2))))
        smooth = F.interpolate(coarse, size=shape, mode="bilinear", align_corners=False)[0].numpy()
        return np.clip(smooth + rng.normal(0, 0.05, size=(3, height, width)), 0, 1)
    if kind == "perlin":
        res = tuple(2 ** int(rng.integers(0, PERLIN_MAX_EXPONENT)) for _ in range(2))
        weight = np.clip((perlin_noise(shape, res, rng) + 1) / 2, 0, 1)
        return colours[0] * (1 - weight) + colours[1] * weight
    angle, period = rng.uniform(0, math.pi), rng.uniform(4, max(5.0, min(height, width) / 3))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    along = (xx * math.cos(angle) + yy * math.sin(angle)) / period
    if kind == "stripes":
        pattern = np.floor(along) % 2
    elif kind == "checker":
        across = (-xx * math.sin(angle) + yy * math.cos(angle)) / period
        pattern = (np.floor(along) + np.floor(across)) % 2
    else:
        raise ValueError(f"texture kind must be one of {PROCEDURAL_TEXTURES}, got {kind!r}")
    return colours[0] * (1 - pattern) + colours[1] * pattern


def blend_region(image: torch.Tensor, texture: torch.Tensor, region: torch.Tensor,
                 beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(anomalous image, mask [1, H, W]): inside `region` [H, W] the image becomes (1 - beta) * texture +
    beta * image, computed as image + (1 - beta) * (texture - image) so a pixel equal to the texture is
    left bit-identical; the mask marks exactly the pixels where any channel changed."""
    blended = image + (1 - beta) * (texture - image)
    changed = torch.where(region[None], blended, image)
    return changed, (changed != image).any(dim=0, keepdim=True).float()


def paste_seen(image: torch.Tensor, seen_image: torch.Tensor, seen_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, mask [1, H, W]) with the defect pixels of a real anomalous image copied onto a normal image
    at the same position [ours: no foreground estimation, no augmentation]; the mask marks the pixels that changed."""
    if seen_image.shape != image.shape or seen_mask.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"a seen anomaly of shape {tuple(seen_image.shape)} does not fit images of shape "
                         f"{tuple(image.shape)}: load it with the same resize and crop as the training images")
    changed = torch.where(seen_mask.reshape(1, *image.shape[-2:]) > 0, seen_image, image)
    return changed, (changed != image).any(dim=0, keepdim=True).float()


class TextureSource:
    """Textures [3, H, W] in 0..1: images of `texture_dir` (any depth, resized bilinearly to the image size)
    when given, else procedural ones (`procedural_texture`) [ours]."""

    def __init__(self, texture_dir: str | Path | None = None) -> None:
        self.files = list_images(texture_dir, recursive=True) if texture_dir else []
        if texture_dir and not self.files:
            raise ValueError(f"no texture images in {texture_dir}")

    def __call__(self, shape: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
        if not self.files:
            return torch.from_numpy(procedural_texture(shape, rng)).float()
        picture = load_rgb(self.files[int(rng.integers(len(self.files)))]).resize(shape[::-1], Image.BILINEAR)
        return torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255).permute(2, 0, 1).contiguous()


class AnomalySynthesiser:
    """Turns a batch of normal images into a training batch: (images [B, 3, H, W], masks [B, 1, H, W]).

    floor(B * `anomaly_fraction` + u), u ~ U(0, 1), randomly placed samples are made anomalous (about
    half of each batch, as PRNet); each is a pasted seen anomaly with probability `seen_fraction` when
    seen anomalies are given, else a Perlin region filled with a texture blended with beta ~ U(0, `beta_max`).
    Everything random is drawn from the numpy generator passed in, so a seeded run is reproducible.
    """

    def __init__(self, texture_dir: str | Path | None = None, anomaly_fraction: float = 0.5, beta_max: float = 0.8,
                 threshold: float = 0.5, seen: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
                 seen_fraction: float = 0.5) -> None:
        if not 0 <= anomaly_fraction <= 1 or not 0 <= beta_max < 1 or not 0 <= seen_fraction <= 1:
            raise ValueError("need 0 <= anomaly_fraction <= 1, 0 <= beta_max < 1 and 0 <= seen_fraction <= 1")
        self.textures = TextureSource(texture_dir)
        self.anomaly_fraction, self.beta_max, self.threshold = anomaly_fraction, beta_max, threshold
        self.seen = [(image.float(), mask.float()) for image, mask in seen]
        self.seen_fraction = seen_fraction

    def synthesise(self, image: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One anomalous version of `image` [3, H, W] and its exact mask [1, H, W] (empty if nothing changed)."""
        if self.seen and rng.random() < self.seen_fraction:
            return paste_seen(image, *self.seen[int(rng.integers(len(self.seen)))])
        shape = tuple(image.shape[-2:])
        region = perlin_region(shape, rng, self.threshold)
        for _ in range(MASK_ATTEMPTS - 1):
            if region.any():
                break
            region = perlin_region(shape, rng, self.threshold)
        texture = self.textures(shape, rng).to(image.dtype)
        beta = float(rng.uniform(0, self.beta_max))
        return blend_region(image, texture, torch.from_numpy(region), beta)

    def __call__(self, images: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        count = len(images)
        n_anomalous = min(count, int(math.floor(count * self.anomaly_fraction + rng.random())))
        chosen = rng.permutation(count)[:n_anomalous]
        out, masks = images.clone(), images.new_zeros(count, 1, *images.shape[-2:])
        for index in sorted(int(i) for i in chosen):
            out[index], masks[index] = self.synthesise(images[index], rng)
        return out, masks
