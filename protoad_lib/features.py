"""Multi-layer patch embeddings on the stride-4 grid, batched, with an on-disk feature cache."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .atomic import Unusable, atomic_output, read_checked, settings_digest
from .backbones import Backbone
from .data.datasets import check_category_name
from .progress import progress_bar


def combine_layers(maps: list[torch.Tensor]) -> torch.Tensor:
    """Bring every map to the first map's grid by nearest-neighbour upsampling and concatenate.

    This is what the official code's unfold/fold `embedding_concat` computes (tested).
    """
    height, width = maps[0].shape[-2:]
    resized = [maps[0]] + [F.interpolate(m, size=(height, width), mode="nearest") for m in maps[1:]]
    return torch.cat(resized, dim=1)


def embed(backbone: Backbone, images01: torch.Tensor) -> torch.Tensor:
    """Patch embeddings [B, C, H/4, W/4] of a batch of images in 0..1."""
    return combine_layers(backbone(images01))


#: Version of what `embed` computes from a backbone's maps; bump it when that changes, so caches miss.
FEATURE_CODE_VERSION = 2


@dataclass(frozen=True)
class CacheKey:
    """Everything that determines a set of extracted features: the files, the geometry, the network."""

    dataset: str
    category: str
    split: str
    backbone: str
    weights: str
    layers: tuple[str, ...]
    image_size: int
    n_images: int
    files: str = ""
    resize: int = 0
    weights_digest: str = ""
    code_version: int = FEATURE_CODE_VERSION

    def __post_init__(self) -> None:
        check_category_name(self.category)  # it is part of the file name: '../../x' would leave the cache folder

    @classmethod
    def of(cls, dataset_name: str, category: str, split: str, backbone: Backbone, data: Any,
           content: bool = False) -> "CacheKey":
        """The key of one dataset split embedded by `backbone`: its files (names, sizes and modification
        times; their content too with `content=True`, see `RecordDataset.files_digest`), resize and crop,
        the backbone's weights and normalisation (`Backbone.weights_digest`) and `FEATURE_CODE_VERSION`."""
        return cls(dataset_name, category, split, backbone.name, backbone.weights, tuple(backbone.layers), data.crop,
                   len(data), data.files_digest(content), data.resize, backbone.weights_digest())

    def as_dict(self) -> dict:
        return asdict(self) | {"layers": list(self.layers)}

    def digest(self) -> str:
        return settings_digest(self.as_dict())

    def filename(self) -> str:
        """One name in the cache folder: the category is checked, the backbone (`timm:<any model>`) reduced to
        safe characters."""
        backbone = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.backbone)
        return f"{self.category}_{self.split}_{backbone}_{self.digest()}.pt"


def _images_of(batch: dict | torch.Tensor) -> torch.Tensor:
    return batch["image"] if isinstance(batch, dict) else batch


def as_loader(data: Dataset | Iterable, batch_size: int) -> Iterable:
    """A dataset as its batches in order (a DataLoader); an iterable of batches as it is."""
    return DataLoader(data, batch_size=batch_size, shuffle=False) if isinstance(data, Dataset) else data


def embed_batches(backbone: Backbone, data: Dataset | Iterable, batch_size: int, device: str | torch.device,
                  from_maps: Callable[[list[torch.Tensor]], torch.Tensor], progress: bool = True,
                  description: str = "features", leave: bool = False) -> torch.Tensor:
    """The one extraction loop (`extract_features`, `AnomalyDetector.method_features`): `from_maps` of the
    backbone's maps of every batch of `data` (a dataset, or an iterable of batches: dicts with "image" or
    image tensors), stacked along dim 0 (into one preallocated tensor when `data` has a length), under a
    progress bar. The caller puts the backbone on `device` (and in eval mode) and `from_maps` moves each
    batch's result where it is kept."""
    batches = (
        from_maps(backbone(_images_of(batch).to(device)))
        for batch in progress_bar(as_loader(data, batch_size), desc=description, enabled=progress, leave=leave)
    )
    return stack_batches(batches, len(data) if isinstance(data, Dataset) else None)


@torch.inference_mode()
def extract_features(
    backbone: Backbone,
    data: Dataset | Iterable,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    description: str = "features",
) -> torch.Tensor:
    """Embed every image of a dataset (or an iterable of batches); returns [N, C, h, w] on the CPU."""
    backbone = backbone.to(device).eval()
    return embed_batches(backbone, data, batch_size, device, lambda maps: combine_layers(maps).to("cpu", dtype),
                         progress, description)


def stack_batches(batches: Iterable[torch.Tensor], total: int | None = None) -> torch.Tensor:
    """Concatenate batches along dim 0; with `total` known, into one preallocated tensor (no 2x peak)."""
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        raise ValueError("No images to extract features from: the dataset is empty.")
    if total is None:
        return torch.cat([first, *iterator])
    stacked = torch.empty((total, *first.shape[1:]), dtype=first.dtype, device=first.device)
    stacked[: len(first)] = first
    filled = len(first)
    for batch in iterator:
        stacked[filled : filled + len(batch)] = batch
        filled += len(batch)
    return stacked[:filled]


class FeatureCache:
    """Feature tensors on disk, one file per `CacheKey` (see `protoad cache list|clear`)."""

    def __init__(self, directory: str | Path, dtype: torch.dtype = torch.float32) -> None:
        self.directory = Path(directory)
        self.dtype = dtype

    def path(self, key: CacheKey) -> Path:
        return self.directory / key.filename()

    def load(self, key: CacheKey) -> torch.Tensor | None:
        """The cached features of `key`, or None on a miss. An entry that cannot be read (cut short, zeroed)
        or holds something else than its name says is reported, deleted and treated as a miss."""

        def read(path: Path) -> torch.Tensor:
            stored = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain types only
            features = stored["features"]
            if stored.get("key") != key.as_dict():
                raise Unusable("it was written for other settings")
            if features.shape[0] != key.n_images:
                raise Unusable(f"it holds {features.shape[0]} images, not {key.n_images}")
            return features.float()

        return read_checked(self.path(key), read, "Feature cache entry")

    def save(self, key: CacheKey, features: torch.Tensor) -> Path:
        """Write atomically: a temporary file in the same folder, then a rename."""
        path = self.path(key)
        payload = {"key": key.as_dict(), "features": features.to(self.dtype)}
        with atomic_output(path) as temporary:
            torch.save(payload, temporary)
        return path

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.glob("*.pt")) if self.directory.is_dir() else 0

    def get_or_extract(
        self, key: CacheKey, backbone: Backbone, data: Dataset, batch_size: int = 8,
        device: str | torch.device = "cpu", progress: bool = True,
    ) -> torch.Tensor:
        """Cached features when present; otherwise extract, store and return them."""
        cached = self.load(key)
        if cached is not None:
            return cached
        features = extract_features(backbone, data, batch_size, device, progress=progress,
                                    description=f"{key.category}/{key.split}")
        self.save(key, features)
        return features


def embed_split(
    backbone: Backbone, data: Dataset, key: CacheKey, cache: FeatureCache | None = None, batch_size: int = 8,
    device: str | torch.device = "cpu", progress: bool = True,
) -> torch.Tensor:
    """Embeddings of one dataset split: through the cache when one is given, else extracted afresh."""
    if cache is not None:
        return cache.get_or_extract(key, backbone, data, batch_size, device, progress)
    return extract_features(backbone, data, batch_size, device, progress=progress,
                            description=f"{key.category}/{key.split}")
