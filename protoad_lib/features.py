"""Multi-layer patch embeddings on the stride-4 grid, batched, with an on-disk feature cache."""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .atomic import CacheWarning, atomic_output
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
        text = json.dumps(self.as_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def filename(self) -> str:
        """One name in the cache folder: the category is checked, the backbone (`timm:<any model>`) reduced to
        safe characters."""
        backbone = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.backbone)
        return f"{self.category}_{self.split}_{backbone}_{self.digest()}.pt"


def _images_of(batch: dict | torch.Tensor) -> torch.Tensor:
    return batch["image"] if isinstance(batch, dict) else batch


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
    loader = DataLoader(data, batch_size=batch_size, shuffle=False) if isinstance(data, Dataset) else data
    backbone = backbone.to(device).eval()
    batches = (
        embed(backbone, _images_of(batch).to(device)).to("cpu", dtype)
        for batch in progress_bar(loader, desc=description, enabled=progress, leave=False)
    )
    return stack_batches(batches, len(data) if isinstance(data, Dataset) else None)


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
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            features = stored["features"]
            problem = None
            if stored.get("key") != key.as_dict():
                problem = "it was written for other settings"
            elif features.shape[0] != key.n_images:
                problem = f"it holds {features.shape[0]} images, not {key.n_images}"
        except Exception as error:  # noqa: BLE001 - torch.load raises many kinds on a damaged file
            problem = f"it cannot be read ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
        if problem is not None:
            warnings.warn(f"Feature cache entry {path} is discarded because {problem}; recomputing it.",
                          CacheWarning, stacklevel=2)
            path.unlink(missing_ok=True)
            return None
        return features.float()

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
