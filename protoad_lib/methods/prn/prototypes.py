"""PRN's multi-scale prototypes of normal feature maps and the residuals of an image to its nearest prototype.

As `xcyao00/PRNet` (docs/peer_methods.md, "PRN"): per backbone layer, k-means over the *whole-image*
feature maps of the N normal training images (each map flattened to one vector), K = max(1,
floor(0.1 * N)) prototypes per layer (PRNet: floor(0.1 * N), 6 to 39 on MVTec AD; the max(1, .) [ours]
keeps tiny training sets working); an image's residual at a layer is the element-wise squared
difference between its map and the prototype map nearest to it (Euclidean distance over the whole map).
We cluster with faiss (seeded, 25 iterations) instead of scikit-learn [ours].

Ablation [ours]: `level="patch"` clusters the layer's patch vectors (C channels per position, at most
`PATCH_VECTORS` drawn at random, seeded) into a fixed number of prototypes, and the residual at each
position is to the patch prototype nearest to that position's vector.
"""

from __future__ import annotations

import math

import torch

from ..components import kmeans as faiss_kmeans

PROTOTYPE_LEVELS = ("image", "patch")
PATCH_VECTORS = 100_000


def prototype_count(n_images: int, ratio: float = 0.1) -> int:
    """K = max(1, floor(ratio * N)) image prototypes per layer (ratio 0.1 as PRNet)."""
    return max(1, math.floor(ratio * n_images))


def kmeans(vectors: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """faiss k-means centroids [min(k, M), D] of vectors [M, D] (`components.kmeans`: seeded, 25 iterations,
    every vector used)."""
    return torch.from_numpy(faiss_kmeans(vectors, k, seed).centroids).clone()


def image_prototypes(maps: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Prototype maps [K, C, h, w]: k-means over the N normal feature maps [N, C, h, w], each one vector."""
    return kmeans(maps.flatten(1), k, seed).view(-1, *maps.shape[1:])


def patch_prototypes(maps: torch.Tensor, k: int, seed: int, max_vectors: int = PATCH_VECTORS) -> torch.Tensor:
    """Patch prototypes [K, C]: k-means over (at most `max_vectors`, a seeded random subset) patch vectors."""
    vectors = maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])
    if len(vectors) > max_vectors:
        chosen = torch.randperm(len(vectors), generator=torch.Generator().manual_seed(int(seed)))[:max_vectors]
        vectors = vectors[chosen.sort().values]
    return kmeans(vectors, k, seed)


def nearest_image_prototype(maps: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """For each map of [B, C, h, w], the prototype map [C, h, w] of [K, C, h, w] nearest in Euclidean distance."""
    if maps.shape[1:] != prototypes.shape[1:]:
        raise ValueError(f"feature maps of shape {tuple(maps.shape[1:])} do not match the prototypes' "
                         f"{tuple(prototypes.shape[1:])}: use the image size PRN was fitted at")
    distances = torch.cdist(maps.flatten(1), prototypes.flatten(1).to(maps))
    return prototypes.to(maps)[distances.argmin(dim=1)]


def nearest_patch_prototype(maps: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """For each position of [B, C, h, w], the patch prototype [C] of [K, C] nearest to its vector, as a map."""
    batch, channels, height, width = maps.shape
    vectors = maps.permute(0, 2, 3, 1).reshape(-1, channels)
    nearest = prototypes.to(maps)[torch.cdist(vectors, prototypes.to(maps)).argmin(dim=1)]
    return nearest.view(batch, height, width, channels).permute(0, 3, 1, 2)


def fit_prototypes(maps: list[torch.Tensor], level: str, ratio: float, patch_count: int,
                   seed: int) -> list[torch.Tensor]:
    """One prototype tensor per layer from the normal images' maps (list of [N, C_l, h_l, w_l])."""
    if level == "image":
        k = prototype_count(len(maps[0]), ratio)
        return [image_prototypes(layer, k, seed) for layer in maps]
    if level == "patch":
        return [patch_prototypes(layer, patch_count, seed) for layer in maps]
    raise ValueError(f"prototype_level must be one of {PROTOTYPE_LEVELS}, got {level!r}")


def residuals(maps: list[torch.Tensor], prototypes: list[torch.Tensor], level: str) -> list[torch.Tensor]:
    """Per layer, (map - nearest prototype)^2 element-wise (the residual features of PRN)."""
    nearest = nearest_image_prototype if level == "image" else nearest_patch_prototype
    return [(layer - nearest(layer, protos)).square() for layer, protos in zip(maps, prototypes)]
