"""The ProtoAD network: backbone -> L2 norm -> 1x1 prototype convolution -> max -> 1 - x -> map."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...backbones import Backbone
from ..components import nearest_cosine
from .config import DEFAULT_MAX_PROTOTYPES, DEFAULT_MAX_VECTORS, LEVEL_RULES, ProtoADConfig
from .prototypes import PrototypeSet, build_prototypes, unit_patch_rows
from ..base import AnomalyDetector
from ...embeddings import Embeddings, as_embeddings
from ...features import combine_layers


def nearest_indices(coarse: int, fine: int) -> torch.Tensor:
    """The source row of each output row in nearest-neighbour upsampling (as F.interpolate computes it)."""
    scale = torch.tensor(coarse / fine, dtype=torch.float32)
    return (torch.arange(fine, dtype=torch.float32) * scale).floor().long().clamp_max(coarse - 1)


def add_upsampled_(fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """`fine += nearest_upsample(coarse)` in place, for position-major [B, H, W, K] tensors; returns `fine`.

    When the grids nest (56 = 2 x 28 = 4 x 14) the coarse tensor is broadcast over each block
    without being materialised; otherwise its rows and columns are gathered. In place, the sum
    needs no second [B, H, W, K] tensor (the largest one of the head at K ~ 250).
    """
    batch, height, width, depth = fine.shape
    coarse_h, coarse_w = coarse.shape[1:3]
    if height % coarse_h == 0 and width % coarse_w == 0:
        blocks = fine.view(batch, coarse_h, height // coarse_h, coarse_w, width // coarse_w, depth)
        return blocks.add_(coarse.reshape(batch, coarse_h, 1, coarse_w, 1, depth)).view(fine.shape)
    rows = nearest_indices(coarse_h, height).to(coarse.device)
    columns = nearest_indices(coarse_w, width).to(coarse.device)
    return fine.add_(coarse.index_select(1, rows).index_select(2, columns))


def sum_upsampled(parts: list[torch.Tensor]) -> torch.Tensor:
    """Sum of position-major maps, each nearest-upsampled to the first (finest) grid; the parts are
    summed in place (pass tensors of your own, e.g. fresh results of a product).

    When every grid divides the next finer one, coarser parts are folded in coarse-to-fine
    (fewer additions at full size); otherwise each goes straight to the finest grid, which is
    what `combine_layers` does.
    """
    sizes = [part.shape[1:3] for part in parts]
    nested = all(f[0] % c[0] == 0 and f[1] % c[1] == 0 for f, c in zip(sizes, sizes[1:]))
    if nested:
        total = parts[-1]
        for part in reversed(parts[:-1]):
            total = add_upsampled_(part, total)
        return total
    total = parts[0]
    for part in parts[1:]:
        total = add_upsampled_(total, part)
    return total


#: Bytes of one band's [B, rows, w, K] similarity block: about what stays in cache on the CPUs measured (2-core
#: Zen 3: 4 MB beat both one coarse row per band and the whole grid at batch sizes 1 and 8, K 248 and 990).
BAND_BYTES = 4 * 2**20


def row_bands(position_major: list[torch.Tensor], k: int, band_bytes: int = BAND_BYTES) -> list[list[torch.Tensor]]:
    """Split nested position-major maps into bands of whole rows of the coarsest grid, as many rows per
    band as keep its [B, rows, w, K] similarity block near `band_bytes`.

    Scoring band by band keeps each block in cache (about 2x faster at batch 8 than the whole grid at
    once), while small inputs run in one band (no per-band overhead at batch size 1). Grids that do not
    nest stay whole.
    """
    coarse_rows = position_major[-1].shape[1]
    heights = [layer.shape[1] for layer in position_major]
    if any(height % coarse_rows for height in heights):
        return [position_major]
    batch, height, width = position_major[0].shape[:3]
    row_bytes = batch * (height // coarse_rows) * width * k * 4
    rows = max(1, min(coarse_rows, band_bytes // max(row_bytes, 1)))
    return [
        [layer[:, start * (h // coarse_rows):min(coarse_rows, start + rows) * (h // coarse_rows)]
         for layer, h in zip(position_major, heights)]
        for start in range(0, coarse_rows, rows)
    ]


class PrototypeHead(nn.Module):
    """Cosine similarity to K prototypes as a 1x1 convolution, then `1 - max_k`: patch scores [B, h, w].

    `forward` takes the concatenated stride-4 embedding (the network as the paper draws it).
    `forward_maps` computes the very same scores from the backbone's per-layer maps: a 1x1
    convolution over a concatenation of nearest-upsampled maps is the sum of per-layer 1x1
    convolutions, each run on its own coarser grid and then upsampled, and the squared norm
    splits the same way; the max over K commutes with dividing by the (positive) norm. It runs
    position-major ([B, h, w, K], K contiguous) so the additions and the max are vectorised,
    band by band (tested equal to `forward`).
    """

    def __init__(self, prototypes: torch.Tensor) -> None:
        super().__init__()
        k, channels = prototypes.shape
        self.conv = nn.Conv2d(channels, k, kernel_size=1, bias=False)
        self.set_prototypes(prototypes)
        self.requires_grad_(False)

    def set_prototypes(self, prototypes: torch.Tensor) -> None:
        unit = F.normalize(prototypes.float(), dim=1)
        self.conv.weight.data = unit[:, :, None, None].clone()

    @property
    def prototypes(self) -> torch.Tensor:
        return self.conv.weight[:, :, 0, 0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        similarity = self.conv(F.normalize(features, dim=1))
        return 1.0 - similarity.amax(dim=1)

    def forward_maps(self, maps: list[torch.Tensor]) -> torch.Tensor:
        weights = self.prototypes.split([m.shape[1] for m in maps], dim=1)
        position_major = [layer.permute(0, 2, 3, 1) for layer in maps]
        squared_norm = sum_upsampled([layer.square().sum(dim=-1, keepdim=True) for layer in position_major])
        band_bytes = 1 if torch.jit.is_tracing() else BAND_BYTES  # an exported trace: one row per band, any batch
        best = torch.cat([
            sum_upsampled([band @ weight.T for band, weight in zip(bands, weights)]).amax(dim=-1)
            for bands in row_bands(position_major, weights[0].shape[0], band_bytes)
        ], dim=1)
        return 1.0 - best / squared_norm[..., 0].sqrt().clamp_min(1e-12)


class ProtoAD(AnomalyDetector):
    """Training-free prototype network; `s_ij = 1 - max_k cos(x_ij, m_k)`, map smoothed with sigma 4."""

    method = "protoad"

    def __init__(self, backbone: Backbone, sigma: float = 4.0, config: ProtoADConfig | None = None,
                 prototypes: torch.Tensor | None = None) -> None:
        super().__init__(backbone, sigma)
        self.settings = config or ProtoADConfig()
        if self.settings.image_score not in ("max", "mean_top1pct"):
            raise ValueError(f"Unknown image score rule {self.settings.image_score!r}; use 'max' or 'mean_top1pct'.")
        self.head = PrototypeHead(prototypes) if prototypes is not None else None
        self.prototype_set: PrototypeSet | None = None

    @property
    def k(self) -> int:
        return 0 if self.head is None else self.head.prototypes.shape[0]

    # --- declarations (see AnomalyDetector) ------------------------------------------------------------
    @classmethod
    def add_cli_options(cls, parser: Any) -> None:
        parser.add_argument("--level", type=int, default=None, help="ProtoAD: FINCH partition level (default: rule below)")
        parser.add_argument("--max-prototypes", type=int, default=DEFAULT_MAX_PROTOTYPES,
                            help="ProtoAD: default level = the finest FINCH level with at most this many clusters")
        parser.add_argument("--level-rule", choices=LEVEL_RULES, default="bound",
                            help="ProtoAD: how the level moves up from there on held-out patches (bound: within "
                                 "--bound-ratio of their distance to the nearest clustered vector; margin: the rule "
                                 "before; budget: not at all)")
        parser.add_argument("--bound-ratio", type=float, default=ProtoADConfig.bound_ratio,
                            help="ProtoAD: the bound rule's largest held-out distance, as a multiple of the bound")
        parser.add_argument("--max-vectors", type=int, default=DEFAULT_MAX_VECTORS,
                            help="ProtoAD: patch vectors clustered at most")
        parser.add_argument("--subsampling", choices=("stratified", "random", "coreset", "none"), default="stratified",
                            help="ProtoAD: how the clustered patch vectors are drawn")

    @classmethod
    def options_from_cli(cls, args: Any) -> dict:
        return {"config": ProtoADConfig(level=args.level, max_prototypes=args.max_prototypes,
                                        level_rule=args.level_rule, bound_ratio=args.bound_ratio,
                                        max_vectors=args.max_vectors, subsampling=args.subsampling, seed=args.seed)}

    @classmethod
    def run_options(cls, profile: Any, device: str) -> dict:
        """The profile's clustering budget (`Profile.max_vectors`) and seed."""
        return {"config": ProtoADConfig(max_vectors=int(profile.max_vectors), seed=profile.seed)}

    def fitted_size(self) -> int | None:
        return int(self.k)

    def fit_report(self) -> dict:
        """The model's size as `protoad evaluate` reports it: K, the FINCH level chosen and every level's K."""
        chosen = self.prototype_set
        levels = chosen.hierarchy.num_clusters if chosen is not None and chosen.hierarchy else []
        return {"K": int(self.k), "finch_level": None if chosen is None else chosen.level,
                "finch_levels": [int(k) for k in levels]}

    def fit_summary(self) -> str | None:
        chosen = self.prototype_set
        levels = chosen.hierarchy.num_clusters if chosen is not None and chosen.hierarchy else []
        return f"FINCH levels (K): {levels}  level: {None if chosen is None else chosen.level}  K: {self.k}"

    def features_from_maps(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return combine_layers(maps)

    def features_from_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        return embedding

    def method_view(self, embeddings: Embeddings | torch.Tensor) -> Embeddings:
        """ProtoAD's features are the stride-4 embedding itself: read as it is, no mapping."""
        return as_embeddings(embeddings)

    def fit_features(self, features: Embeddings | torch.Tensor) -> "ProtoAD":
        """Prototypes from the training features (`build_prototypes`: it reads the subsample and the held-out
        vectors a few images at a time, never the whole split); the head is on the CPU (move the model)."""
        s = self.settings
        return self.use_prototypes(build_prototypes(
            features, method=s.method, k=s.k, level=s.level, max_prototypes=s.max_prototypes,
            max_vectors=s.max_vectors, subsampling=s.subsampling, knn_index=s.knn_index, seed=s.seed,
            progress=self.progress, level_rule=s.level_rule,
            bound_ratio=s.bound_ratio, level_margin=s.level_margin,
        ))

    def use_prototypes(self, found: PrototypeSet) -> "ProtoAD":
        """Take `found` (a fit's `PrototypeSet`, e.g. one stored and read back) as this network's prototypes."""
        self.prototype_set = found
        self.head = PrototypeHead(torch.from_numpy(found.prototypes))
        return self

    def _fitted_head(self) -> PrototypeHead:
        if self.head is None:
            raise RuntimeError("ProtoAD has no prototypes yet: call fit() or load a checkpoint first.")
        return self.head

    def patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        return self._fitted_head()(features)

    def patch_scores_from_maps(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self._fitted_head().forward_maps(maps)

    def image_scores(self, patch_scores: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        if self.settings.image_score == "max":
            return maps.amax(dim=(1, 2))
        flat = maps.flatten(1)
        top = max(1, flat.shape[1] // 100)
        return flat.topk(top, dim=1).values.mean(dim=1)

    def options(self) -> dict:
        return asdict(self.settings) | {"level": self.prototype_set.level if self.prototype_set else self.settings.level}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"prototypes": self.head.prototypes.detach().cpu().contiguous()}

    @classmethod
    def from_state(cls, backbone: Backbone, config: dict, tensors: dict[str, torch.Tensor]) -> "ProtoAD":
        options = dict(config)
        sigma = options.pop("sigma", 4.0)
        return cls(backbone, sigma=sigma, config=ProtoADConfig(**options), prototypes=tensors["prototypes"])


def nearest_prototype_distance(features: Embeddings | torch.Tensor, prototypes: torch.Tensor,
                               batch_size: int = 4) -> torch.Tensor:
    """Brute-force reference: 1 - max cosine similarity of every patch to every prototype, [B, h, w], in
    float64, `batch_size` images at a time (bounded memory on a paper-sized test set)."""
    units = F.normalize(prototypes.double(), dim=1)
    distances = []
    for chunk in as_embeddings(features).chunks(batch_size):
        batch, _, height, width = chunk.shape
        distances.append(nearest_cosine(unit_patch_rows(chunk.double()), units)[0].view(batch, height, width).float())
    return torch.cat(distances)


def prototype_usage(features: Embeddings | torch.Tensor, prototypes: torch.Tensor, batch_size: int = 8) -> np.ndarray:
    """How many patches of features [N, C, h, w] pick each prototype as their nearest one (length K),
    `batch_size` images at a time (a paper-sized category's whole patch matrix would not fit in memory)."""
    units = F.normalize(prototypes, dim=1)
    counts = np.zeros(prototypes.shape[0], dtype=np.int64)
    for chunk in as_embeddings(features).chunks(batch_size):
        counts += np.bincount(nearest_cosine(unit_patch_rows(chunk), units)[1].numpy(), minlength=prototypes.shape[0])
    return counts
