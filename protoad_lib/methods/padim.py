"""PaDiM (Defard et al., ICPR 2021) as xiahaifeng1995/PaDiM-Anomaly-Detection-Localization-master computes it.

Stride-4 multi-layer embedding, a random subset of its channels, one Gaussian per feature-grid
position; patch score = Mahalanobis distance to that position's Gaussian.
"""

from __future__ import annotations

import torch

from ..backbones import Backbone
from ..embeddings import Embeddings, as_embeddings
from ..features import combine_layers
from ..progress import progress_bar
from .base import AnomalyDetector

# (backbone name, total channels) -> channels kept, the settings of the PaDiM paper / official code.
PAPER_N_FEATURES = {("resnet18", 448): 100, ("wide_resnet50_2", 1792): 550}


def default_n_features(backbone_name: str, total_channels: int) -> int:
    """Channels PaDiM keeps: 100 of resnet18's 448 and 550 of wide_resnet50_2's 1792 (the paper's
    settings); for any other backbone or layer choice `min(total, round(total * 550 / 1792))`,
    the wide_resnet50_2 ratio (Python `round`, half to even), and at least 1."""
    if (backbone_name, total_channels) in PAPER_N_FEATURES:
        return PAPER_N_FEATURES[(backbone_name, total_channels)]
    return max(1, min(total_channels, round(total_channels * 550 / 1792)))


def random_channel_subset(total_channels: int, n_features: int, seed: int) -> torch.Tensor:
    """`n_features` distinct channel indices drawn with `torch.randperm` from a generator seeded with
    `seed`, then sorted ascending (the Mahalanobis distance does not depend on the channel order;
    sorting only makes the subset easier to read). The official code draws with Python's
    `random.sample` under `random.seed(1024)`, so its exact subset is not reproduced."""
    if not 1 <= n_features <= total_channels:
        raise ValueError(f"n_features must be in [1, {total_channels}], got {n_features}")
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randperm(total_channels, generator=generator)[:n_features].sort().values


def grid_blocks(height: int, width: int, positions: int) -> list[tuple[slice, slice]]:
    """Windows (rows, cols) covering an h x w grid with at most `positions` positions each: bands of whole
    rows when a row fits, else pieces of one row."""
    if positions >= width:
        band = positions // width
        return [(slice(top, min(top + band, height)), slice(0, width)) for top in range(0, height, band)]
    return [(slice(row, row + 1), slice(left, min(left + positions, width)))
            for row in range(height) for left in range(0, width, positions)]


class PaDiM(AnomalyDetector):
    """PaDiM: per-position multivariate Gaussians over a random channel subset of the stride-4 embedding.

    Options (in `config()`):
    - `n_features`: channels kept (None: `default_n_features`, 100 for resnet18, 550 for
      wide_resnet50_2); the resolved number is what `config()` reports;
    - `seed` 1024: seed of the channel subset (`random_channel_subset`);
    - `epsilon` 0.01: the covariance regulariser (Sigma + epsilon * I);
    - `chunk_size`: positions processed together when fitting and scoring (memory bound).

    Features: all tapped backbone maps (layer1, layer2, layer3 by default) combined on the stride-4
    grid with `combine_layers` (the official `embedding_concat`), then the channel subset.
    Fit: for every grid position the mean and the unbiased covariance (divided by N - 1, as
    `np.cov(rowvar=False)`) over the N training images, plus epsilon * I; covariances are formed and
    inverted in float64 per chunk of positions with `torch.linalg.inv`, and stored in float32.
    Patch score: sqrt((x - mu)^T Sigma^-1 (x - mu)) (as scipy's `mahalanobis`), batched over positions.
    Anomaly map: bilinear upsampling + Gaussian smoothing (base class); image score: maximum of the
    smoothed map (base-class default, as the official code).

    Memory: the model, h * w * d^2 * 4 bytes of inverse covariances (wide_resnet50_2 at 224 px:
    3136 * 550^2 * 4 = 3.8 GB), is the floor; the fit reads its features block by block of grid positions
    (`positions_per_block`: about 256 MB of working memory, whatever the number of training images).
    """

    method = "padim"

    def __init__(
        self,
        backbone: Backbone,
        sigma: float = 4.0,
        n_features: int | None = None,
        seed: int = 1024,
        epsilon: float = 0.01,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(backbone, sigma)
        total = sum(backbone.channels)
        self.n_features = int(n_features) if n_features is not None else default_n_features(backbone.name, total)
        self.seed = int(seed)
        self.epsilon = float(epsilon)
        self.chunk_size = chunk_size
        self.register_buffer("channel_index", random_channel_subset(total, self.n_features, self.seed))
        self.register_buffer("mean", None)
        self.register_buffer("cov_inv", None)

    def positions_per_chunk(self) -> int:
        """Grid positions handled at once: `chunk_size`, or about 256 MB of float64 d x d matrices."""
        if self.chunk_size is not None:
            return max(1, int(self.chunk_size))
        return max(1, (256 * 2**20) // (8 * self.n_features**2))

    # --- features -------------------------------------------------------------------------------
    def features_from_maps(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.features_from_embedding(combine_layers(maps))

    def features_from_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        """The channel subset of a stride-4 combined embedding (what `features_from_maps` selects from)."""
        return embedding.index_select(1, self.channel_index.to(embedding.device))

    def method_view(self, embeddings: Embeddings | torch.Tensor) -> Embeddings:
        """The channel subset, read position by position (a band of grid rows at a time when fitting)."""
        return as_embeddings(embeddings).mapped(self.features_from_embedding, local=True)

    # --- fit ------------------------------------------------------------------------------------
    def positions_per_block(self, count: int) -> int:
        """Grid positions whose moments are computed together: their features of all `count` images (float64,
        and the centred copy) and their float64 d x d covariances stay within about 256 MB (or `chunk_size`
        positions), so the fit's working memory does not grow with the training set."""
        if self.chunk_size is not None:
            return max(1, int(self.chunk_size))
        per_position = 2 * 8 * self.n_features * (count + self.n_features)
        return max(1, (256 * 2**20) // per_position)

    def fit_features(self, features: Embeddings | torch.Tensor) -> "PaDiM":
        """Per-position mean and inverse regularised covariance from features [N, d, h, w] (an `Embeddings`,
        read block by block of grid positions: all images' block, then the next block)."""
        features = as_embeddings(features)
        count, channels, height, width = features.shape
        if channels != self.n_features:
            raise ValueError(f"expected {self.n_features} channels, got {channels}")
        if count < 2:
            raise ValueError("PaDiM needs at least 2 training images for an unbiased covariance.")
        identity = torch.eye(channels, dtype=torch.float64)
        self.mean = self.cov_inv = None  # free the previous fit first
        mean = torch.empty(channels, height, width)
        cov_inv = torch.empty(height, width, channels, channels)
        blocks = grid_blocks(height, width, self.positions_per_block(count))
        for rows, cols in progress_bar(blocks, desc="padim: Gaussians", enabled=self.progress, leave=False):
            block = torch.empty(count, channels, rows.stop - rows.start, cols.stop - cols.start, dtype=torch.float64)
            filled = 0
            for chunk in features.chunks(rows=rows, cols=cols):
                block[filled : filled + len(chunk)] = chunk
                filled += len(chunk)
            vectors = block.flatten(2)  # [N, d, P]
            block_mean = vectors.mean(dim=0)
            centred = (vectors - block_mean).permute(2, 0, 1)  # [P, N, d]
            del block, vectors
            covariance = centred.transpose(1, 2) @ centred / (count - 1) + self.epsilon * identity  # [P, d, d]
            shape = (rows.stop - rows.start, cols.stop - cols.start)
            mean[:, rows, cols] = block_mean.float().view(channels, *shape)
            cov_inv[rows, cols] = torch.linalg.inv(covariance).float().view(*shape, channels, channels)
        self.mean = mean
        self.cov_inv = cov_inv.view(height * width, channels, channels)
        return self

    # --- scoring --------------------------------------------------------------------------------
    def check_fitted_grid(self, features: torch.Tensor) -> None:
        """Raise unless fitted, and on features [B, d, h, w] whose (d, h, w) is not the fitted grid's."""
        if self.mean is None or self.cov_inv is None:
            raise RuntimeError("PaDiM is not fitted: call fit() / fit_features() or load a state first.")
        if tuple(features.shape[1:]) != tuple(self.mean.shape):
            raise ValueError(
                f"features of shape {tuple(features.shape[1:])} do not match the fitted grid {tuple(self.mean.shape)}"
            )

    def patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        self.check_fitted_grid(features)
        batch, channels, height, width = features.shape
        mean = self.mean.to(features.device, features.dtype).view(channels, -1)
        cov_inv = self.cov_inv.to(features.device, features.dtype)
        difference = (features.reshape(batch, channels, -1) - mean).permute(2, 0, 1)  # [L, B, d]
        squared = []
        step = self.positions_per_chunk()
        for start in range(0, height * width, step):
            part = difference[start : start + step]
            squared.append(((part @ cov_inv[start : start + step]) * part).sum(dim=-1))  # [P, B]
        distances = torch.cat(squared).clamp_min(0).sqrt()
        return distances.transpose(0, 1).reshape(batch, height, width)

    # --- persistence ----------------------------------------------------------------------------
    def options(self) -> dict:
        return {
            "n_features": self.n_features, "seed": self.seed, "epsilon": self.epsilon, "chunk_size": self.chunk_size,
        }

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.mean is None or self.cov_inv is None:
            raise RuntimeError("PaDiM is not fitted.")
        return {
            "channel_index": self.channel_index.cpu().contiguous(),
            "mean": self.mean.cpu().contiguous(),
            "cov_inv": self.cov_inv.cpu().contiguous(),
        }

    @classmethod
    def from_state(cls, backbone: Backbone, config: dict, tensors: dict[str, torch.Tensor]) -> "PaDiM":
        """Rebuild a fitted PaDiM from `config()` (options and sigma) and `state_tensors()`."""
        detector = cls(backbone, **config)
        if not torch.equal(detector.channel_index, tensors["channel_index"].long()):
            detector.channel_index = tensors["channel_index"].long().clone()
        detector.mean = tensors["mean"].float().clone()
        detector.cov_inv = tensors["cov_inv"].float().clone()
        return detector
