"""PatchCore (Roth et al., CVPR 2022) as amazon-science/patchcore-inspection computes it.

Locally aware patch features from the stride-8 and stride-16 maps, a greedy-coreset memory bank,
exact nearest-neighbour search with faiss; patch score = distance to the nearest memory vector.
"""

from __future__ import annotations

import ctypes
from typing import Any, Iterable

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from ..backbones import Backbone
from ..embeddings import Embeddings, as_embeddings
from .base import AnomalyDetector
from .components import patch_rows
from .coreset import GreedyCoresetSampler

DISTANCES = ("l2", "squared_l2")


def index_vectors(index: faiss.IndexFlat) -> torch.Tensor:
    """The vectors a flat faiss index stores, as a [ntotal, d] float32 tensor sharing the index's memory (no copy).

    The tensor, and any view of it, keeps the index alive; nothing may be added to the index afterwards (an
    addition may move its storage)."""
    flat = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d)
    storage = (ctypes.c_float * flat.size).from_address(flat.ctypes.data)
    storage.owner = index
    return torch.from_numpy(np.frombuffer(storage, dtype=np.float32).reshape(index.ntotal, index.d))


def patchcore_embedding(
    maps: list[torch.Tensor],
    pretrain_embed_dimension: int = 1024,
    target_embed_dimension: int = 1024,
    patch_size: int = 3,
) -> torch.Tensor:
    """PatchCore's locally aware patch features [B, target_embed_dimension, h, w] on the first map's grid.

    The reference (`PatchCore._embed` with `PatchMaker`, `Preprocessing`/`MeanMapper`, `Aggregator`):

    1. per layer, `nn.Unfold(patch_size, stride=1, padding=(patch_size-1)//2)` - zero padding - gives
       each location a patch vector of C*p*p values in (channel, row, column) order;
    2. the patch vectors of deeper layers are resized bilinearly (align_corners=False) to the first
       layer's grid, each of the C*p*p components as its own image;
    3. per layer, `MeanMapper`: `F.adaptive_avg_pool1d` of the flattened C*p*p vector to
       `pretrain_embed_dimension` values;
    4. the per-layer vectors are stacked (layer-major) and `Aggregator` adaptive-average-pools the
       flattened n_layers*pretrain vector to `target_embed_dimension`.

    Here steps 2 and 3 are swapped: adaptive pooling is the same linear map over the channel axis at
    every location and bilinear resizing is a linear map over the spatial axes applied per channel,
    so they commute, and pooling first is cheaper. `F.unfold` produces the reference's exact
    (channel, row, column) order. The 1-D adaptive pooling along the channel axis is computed as
    `F.adaptive_avg_pool2d(..., (out, L))` on a [B, 1, C*p*p, L] view; with the second output size
    equal to the input size it pools along the channel axis alone (bins [floor(i*n/out),
    ceil((i+1)*n/out)) - identical bins to the 1-D version). Tested against a literal reimplementation.

    What the pooling amounts to:
    - if C*p*p == k * out for an integer k, each output averages k consecutive entries; for
      wide_resnet50_2 layer3 (1024 * 9 = 9 * 1024) this is exactly a 3x3 average pooling with zero
      padding and count_include_pad=True (`F.avg_pool2d(x, 3, 1, 1)`) of every channel;
    - otherwise (wide_resnet50_2 layer2: 4608 -> 1024, 4.5 per bin; resnet18 layer2/layer3:
      1152 / 2304 -> 1024) bins mix neighbouring taps of the same patch and, at bin edges, of
      adjacent channels; when C*p*p < out, entries are repeated (bins of width 1 or 2);
    - the aggregator over 2 layers x 1024 -> 1024 averages adjacent pairs: the first 512 outputs
      come from the first layer, the last 512 from the second.
    """
    if patch_size % 2 != 1:
        raise ValueError(f"patch_size must be odd, got {patch_size}")
    height, width = maps[0].shape[-2:]
    per_layer = []
    for feature_map in maps:
        batch, channels, h, w = feature_map.shape
        patches = F.unfold(feature_map, kernel_size=patch_size, padding=(patch_size - 1) // 2)
        pooled = F.adaptive_avg_pool2d(patches.unsqueeze(1), (pretrain_embed_dimension, h * w))
        pooled = pooled.view(batch, pretrain_embed_dimension, h, w)
        if (h, w) != (height, width):
            pooled = F.interpolate(pooled, size=(height, width), mode="bilinear", align_corners=False)
        per_layer.append(pooled)
    stacked = torch.cat(per_layer, dim=1).flatten(2).unsqueeze(1)
    aggregated = F.adaptive_avg_pool2d(stacked, (target_embed_dimension, height * width))
    return aggregated.view(maps[0].shape[0], target_embed_dimension, height, width)


def gather_rows(chunks: Iterable[torch.Tensor], indices: torch.Tensor, dim: int) -> torch.Tensor:
    """Rows [len(indices), dim] of the row-wise concatenation of `chunks`, in the order of `indices`, without
    holding more than one chunk besides the result."""
    order = torch.argsort(indices)
    wanted = indices[order]
    gathered = torch.empty(len(indices), dim)
    offset = 0
    for chunk in chunks:
        first, last = torch.searchsorted(wanted, torch.tensor([offset, offset + len(chunk)]))
        gathered[order[first:last]] = chunk[wanted[first:last] - offset]
        offset += len(chunk)
    return gathered


class PatchCore(AnomalyDetector):
    """PatchCore with a greedy-coreset memory bank and exact faiss nearest-neighbour search.

    Options (all in `config()`):
    - `coreset_fraction` 0.1 (paper's PatchCore-10%; 0.01 for PatchCore-1%); 1.0 keeps every patch;
    - `strides` (8, 16): the backbone maps used, chosen by stride (layer2 + layer3 of a ResNet);
    - `pretrain_embed_dimension` 1024, `target_embed_dimension` 1024, `patch_size` 3: see
      `patchcore_embedding`;
    - `n_neighbors` 1: patch score = mean distance to the k nearest memory vectors;
    - `distance` "squared_l2": the reference code scores with faiss' raw output, the *squared*
      Euclidean distance, so that is the default; "l2" is the paper's plain Euclidean distance.
      Image scores rank identically either way, smoothed anomaly maps differ slightly;
    - `projection_dim` 128, `n_starting_points` 10, `seed` 0: the coreset sampler's.

    Patch score: faiss `IndexFlatL2` (exact) finds the neighbours, then their distances are
    recomputed directly as ||q - m|| in float32, which avoids the cancellation error of faiss'
    ||q||^2 - 2 q.m + ||m||^2 for near-duplicates. Image score: maximum patch score over the
    feature grid before upsampling and smoothing (as the reference). Anomaly map: bilinear upsampling
    then Gaussian smoothing with `sigma` (base class).

    Runtime setting outside the config: `coreset_device` (e.g. "cuda" to run the coreset
    selection on a GPU; default: where the features are).
    """

    method = "patchcore"

    def __init__(
        self,
        backbone: Backbone,
        sigma: float = 4.0,
        coreset_fraction: float = 0.1,
        strides: tuple[int, ...] | list[int] = (8, 16),
        pretrain_embed_dimension: int = 1024,
        target_embed_dimension: int = 1024,
        patch_size: int = 3,
        n_neighbors: int = 1,
        distance: str = "squared_l2",
        projection_dim: int = 128,
        n_starting_points: int = 10,
        seed: int = 0,
    ) -> None:
        super().__init__(backbone, sigma)
        missing = [s for s in strides if s not in backbone.strides]
        if missing:
            raise ValueError(
                f"PatchCore needs backbone maps at strides {list(strides)}; {backbone.name} taps {backbone.strides}."
            )
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        if not 0 < coreset_fraction <= 1:
            raise ValueError(f"coreset_fraction must be in (0, 1], got {coreset_fraction}")
        self.coreset_fraction = float(coreset_fraction)
        self.strides = [int(s) for s in strides]
        self.map_indices = [backbone.strides.index(s) for s in self.strides]
        self.pretrain_embed_dimension = int(pretrain_embed_dimension)
        self.target_embed_dimension = int(target_embed_dimension)
        self.patch_size = int(patch_size)
        self.n_neighbors = int(n_neighbors)
        self.distance = distance
        self.projection_dim = int(projection_dim)
        self.n_starting_points = int(n_starting_points)
        self.seed = int(seed)
        self.coreset_device: str | torch.device | None = None
        self.memory_bank: torch.Tensor | None = None
        self._index: faiss.Index | None = None

    # --- features -------------------------------------------------------------------------------
    def features_from_maps(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return patchcore_embedding(
            [maps[i] for i in self.map_indices],
            self.pretrain_embed_dimension,
            self.target_embed_dimension,
            self.patch_size,
        )

    # --- memory bank ----------------------------------------------------------------------------
    def sampler(self) -> GreedyCoresetSampler:
        return GreedyCoresetSampler(
            fraction=self.coreset_fraction, projection_dim=self.projection_dim, seed=self.seed,
            n_starting_points=self.n_starting_points, device=self.coreset_device, progress=self.progress,
        )

    def fit_features(self, features: Embeddings | torch.Tensor) -> "PatchCore":
        """Memory bank = greedy coreset of all training patch vectors (features [N, C, h, w], an `Embeddings`
        read twice, a few images at a time: once to project every patch for the coreset, once to gather the
        chosen ones). Held besides the bank: the [N * h * w, projection_dim] float32 projection."""
        features = as_embeddings(features)
        if self.coreset_fraction == 1:
            self.set_memory_bank(torch.cat([patch_rows(chunk) for chunk in features.chunks()]))
            return self
        n_rows = features.shape[0] * features.shape[2] * features.shape[3]
        chosen = self.sampler().select_from_chunks((patch_rows(chunk) for chunk in features.chunks()), n_rows)
        self.set_memory_bank(gather_rows(map(patch_rows, features.chunks()), chosen.cpu(), features.shape[1]))
        return self

    def set_memory_bank(self, bank: torch.Tensor) -> None:
        """Install a memory bank [M, D] (float32, on the CPU) as a faiss index; `memory_bank` is the index's own copy,
        so the bank is held once (at 1,000 WRN50 images, 78,400 x 1024 floats: 321 MB)."""
        if bank.ndim != 2 or bank.shape[0] == 0:
            raise ValueError(f"memory bank must be a non-empty [M, D] matrix, got {tuple(bank.shape)}")
        index = faiss.IndexFlatL2(bank.shape[1])
        index.add(bank.detach().to("cpu", torch.float32).contiguous().numpy())
        self._index = index
        self.memory_bank = index_vectors(index)

    def fitted_size(self) -> int | None:
        """Rows of the memory bank (None before the fit)."""
        return None if self.memory_bank is None else int(self.memory_bank.shape[0])

    @classmethod
    def run_options(cls, profile: Any, device: str) -> dict:
        """The profile's seed (the coreset sampler's)."""
        return {"seed": profile.seed}

    def _require_fitted(self) -> None:
        if self.memory_bank is None or self._index is None:
            raise RuntimeError("PatchCore is not fitted: call fit() / fit_features() or load a state first.")

    # --- scoring --------------------------------------------------------------------------------
    def nearest(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Euclidean distances [Q, k] and indices [Q, k] of the k nearest memory vectors of queries [Q, D]."""
        self._require_fitted()
        queries = queries.detach().to("cpu", torch.float32).contiguous()
        k = min(self.n_neighbors, self.memory_bank.shape[0])
        _, indices = self._index.search(queries.numpy(), k)
        indices = torch.from_numpy(indices).long()
        distances = (queries.unsqueeze(1) - self.memory_bank[indices]).norm(dim=-1)
        return distances, indices

    def patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = features.shape
        queries = features.permute(0, 2, 3, 1).reshape(-1, channels)
        distances, _ = self.nearest(queries)
        if self.distance == "squared_l2":
            distances = distances.square()
        return distances.mean(dim=1).view(batch, height, width).to(features.device)

    def image_scores(self, patch_scores: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """Maximum patch score over the (unsmoothed) feature grid, as the reference."""
        return patch_scores.amax(dim=(1, 2))

    # --- persistence ----------------------------------------------------------------------------
    def options(self) -> dict:
        return {
            "coreset_fraction": self.coreset_fraction,
            "strides": list(self.strides),
            "pretrain_embed_dimension": self.pretrain_embed_dimension,
            "target_embed_dimension": self.target_embed_dimension,
            "patch_size": self.patch_size,
            "n_neighbors": self.n_neighbors,
            "distance": self.distance,
            "projection_dim": self.projection_dim,
            "n_starting_points": self.n_starting_points,
            "seed": self.seed,
        }

    def state_tensors(self) -> dict[str, torch.Tensor]:
        self._require_fitted()
        return {"memory_bank": self.memory_bank.contiguous()}

    @classmethod
    def from_state(cls, backbone: Backbone, config: dict, tensors: dict[str, torch.Tensor]) -> "PatchCore":
        """Rebuild a fitted PatchCore from `config()` (options and sigma) and `state_tensors()`."""
        detector = cls(backbone, **config)
        detector.set_memory_bank(tensors["memory_bank"])
        return detector
