"""The interface every method shares: fit on good images, predict anomaly maps and image scores, persist."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn
from torch.utils.data import Dataset

from ..backbones import Backbone
from ..embeddings import Embeddings, as_embeddings
from ..features import as_loader, spill
from ..postprocess import AnomalyMapHead
from ..progress import progress_bar


@dataclass
class Predictions:
    """Anomaly maps [N, H, W] and image scores [N] for a whole dataset, on the CPU."""

    maps: torch.Tensor
    scores: torch.Tensor

    @classmethod
    def of_batches(cls, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> "Predictions":
        """Join (maps, scores) batches in order, each moved to the CPU."""
        maps, scores = zip(*((batch_maps.cpu(), batch_scores.cpu()) for batch_maps, batch_scores in batches))
        return cls(torch.cat(maps), torch.cat(scores))


def split_layers(features: torch.Tensor, channels: list[int], strides: list[int]) -> list[torch.Tensor]:
    """Recover each layer's own map from a stride-4 combined embedding (the inverse of `combine_layers`)."""
    maps = []
    start = 0
    for width, stride in zip(channels, strides):
        step = stride // strides[0]
        maps.append(features[:, start : start + width, ::step, ::step])
        start += width
    return maps


class AnomalyDetector(nn.Module, ABC):
    """Backbone -> method-specific features -> patch scores -> anomaly map and image score.

    Subclasses implement `features_from_maps`, `fit_features` and `patch_scores`; fitting from
    a dataset, prediction over a dataset and the end-to-end `forward` come from here.
    Persistence: `options()` (the method's JSON-able settings) and `state_tensors()` (its fitted
    tensors); `config()` adds `sigma`, so a checkpoint restores everything with
    `from_state(backbone, config, tensors)`. `progress` switches the fit's own progress bars.

    Declarations (what callers ask instead of branching on a method's name; each has a neutral default):
    `fits_on_images`, `add_cli_options` / `options_from_cli` (its flags on `protoad fit` and `evaluate`),
    `run_options` (its options in a notebook run of a profile on a device), `training_options` (a trained
    method's length), `run_notes` (lines of a run's description), `fitted_size`, `fit_summary`, `fit_report`.
    """

    method: str = "detector"
    #: True for a trained method (PRN): it fits on images (`fit`), not on cached embeddings (`fit_features`).
    fits_on_images: bool = False

    # --- declarations ------------------------------------------------------------------------------------
    @classmethod
    def add_cli_options(cls, parser: Any) -> None:
        """Add the method's own flags to an argparse parser (`protoad fit` and `evaluate`); none by default.
        The flags of all methods share one parser, so each name must be the method's own."""

    @classmethod
    def options_from_cli(cls, args: Any) -> dict:
        """Constructor options from parsed command-line flags (those `add_cli_options` added, and the shared
        `--seed`); {} keeps the registry's defaults."""
        return {}

    @classmethod
    def run_options(cls, profile: Any, device: str) -> dict:
        """Constructor options in a notebook run of `profile` (a `profiles.Profile`: methods sit below that
        floor, so it is read by attribute) on `device`; {} keeps the registry's defaults."""
        return {}

    @classmethod
    def training_options(cls, epochs: int | None) -> dict:
        """Options that make a trained method train `epochs` epochs (None, or a training-free method: {})."""
        return {}

    @classmethod
    def run_notes(cls, profile: Any, device: str) -> dict[str, str]:
        """Lines the method adds to a run's description ({label: text}), e.g. how long it trains."""
        return {}

    def fitted_size(self) -> int | None:
        """The size of the fitted model that tables report as K (prototypes, memory-bank rows); None if none."""
        return None

    def fit_summary(self) -> str | None:
        """One line `protoad fit` prints about the fitted model (None: the method's label and fitted size)."""
        return None

    def fit_report(self) -> dict:
        """Facts of the fit that `protoad evaluate` adds to its metrics (a trained method's length and loss)."""
        return {}

    def __init__(self, backbone: Backbone, sigma: float = 4.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.map_head = AnomalyMapHead(sigma)
        self.progress = True

    @property
    def sigma(self) -> float:
        return self.map_head.blur.sigma

    def set_sigma(self, sigma: float) -> None:
        """Change the Gaussian smoothing of the anomaly maps (an ablation; the paper uses 4)."""
        self.map_head = AnomalyMapHead(sigma).to(self.map_head.blur.kernel.device)

    @abstractmethod
    def options(self) -> dict:
        """The method's settings (JSON-able), everything its constructor needs besides backbone and sigma."""

    @abstractmethod
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The fitted tensors a checkpoint stores."""

    @classmethod
    @abstractmethod
    def from_state(cls, backbone: Backbone, config: dict, tensors: dict[str, torch.Tensor]) -> "AnomalyDetector":
        """Rebuild a fitted detector from `config()` and `state_tensors()`."""

    def config(self) -> dict:
        """Every setting a checkpoint restores: the method's options and the map smoothing `sigma`."""
        return {"sigma": self.sigma, **self.options()}

    @abstractmethod
    def features_from_maps(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """The method's patch features [B, C, h, w] from the backbone's tapped maps."""

    @abstractmethod
    def fit_features(self, features: Embeddings | torch.Tensor) -> "AnomalyDetector":
        """Fit on the patch features [N, C, h, w] of the good training images: an `Embeddings` (read a few
        images at a time, never whole) or, for small data, a tensor."""

    @abstractmethod
    def patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Anomaly scores [B, h, w] of patch features [B, C, h, w] (the method's head alone)."""

    def features_from_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        """The method's features from a cached stride-4 embedding of all backbone layers."""
        return self.features_from_maps(split_layers(embedding, self.backbone.channels, self.backbone.strides))

    def method_view(self, embeddings: Embeddings | torch.Tensor) -> Embeddings:
        """The method's features of stride-4 embeddings, computed as they are read (`features_from_embedding`
        per chunk); a method whose features are local (a channel subset) or the embedding itself says so."""
        return as_embeddings(embeddings).mapped(self.features_from_embedding)

    def fit_embeddings(self, embeddings: Embeddings | torch.Tensor) -> "AnomalyDetector":
        """Fit on cached stride-4 embeddings of the good training images (through `method_view`)."""
        return self.fit_features(self.method_view(embeddings))

    def patch_scores_from_maps(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Patch scores straight from the backbone's maps; a method may fuse its steps here."""
        return self.patch_scores(self.features_from_maps(maps))

    def image_scores(self, patch_scores: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """Image score rule; the default is the maximum of the smoothed anomaly map."""
        return maps.amax(dim=(1, 2))

    def maps_and_scores(self, patch_scores: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps at the input size and image scores from patch scores."""
        maps = self.map_head(patch_scores, size)
        return maps, self.image_scores(patch_scores, maps)

    def head_forward(self, maps: list[torch.Tensor], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything after the backbone: its maps -> (anomaly maps, image scores)."""
        return self.maps_and_scores(self.patch_scores_from_maps(maps), size)

    def forward(self, images01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head_forward(self.backbone(images01), images01.shape[-2:])

    def method_features(self, data: Dataset | Iterable, batch_size: int = 8, device: str | torch.device = "cpu",
                        progress: bool = True) -> Embeddings:
        """The method's patch features [N, C, h, w] of every image of a dataset, written batch by batch to a
        temporary file (`embeddings.SpilledEmbeddings`) that the fit reads back a few images at a time."""
        self.to(device).eval()
        return spill(self.backbone, data, batch_size, device, self.features_from_maps, progress,
                     f"{self.method}: features", leave=True)

    @torch.inference_mode()
    def fit(self, data: Dataset | Iterable, batch_size: int = 8, device: str | torch.device = "cpu",
            progress: bool = True) -> "AnomalyDetector":
        """Extract features of the good training images and fit on them."""
        return self.fit_features(self.method_features(data, batch_size, device, progress))

    @torch.inference_mode()
    def predict(self, data: Dataset | Iterable, batch_size: int = 8, device: str | torch.device = "cpu",
                progress: bool = True) -> Predictions:
        """Anomaly maps and image scores for every image of a dataset."""
        self.to(device).eval()
        return Predictions.of_batches(
            self(batch["image"].to(device))
            for batch in progress_bar(as_loader(data, batch_size), desc=f"{self.method}: predict", enabled=progress)
        )

    @torch.inference_mode()
    def predict_embeddings(self, embeddings: Embeddings | torch.Tensor, image_size: tuple[int, int],
                           batch_size: int = 16) -> Predictions:
        """Maps and scores from cached stride-4 embeddings, skipping the backbone, `batch_size` images at a time
        (only the maps and scores are kept)."""
        return Predictions.of_batches(
            self.maps_and_scores(self.patch_scores(features), image_size)
            for features in self.method_view(embeddings).chunks(batch_size)
        )
