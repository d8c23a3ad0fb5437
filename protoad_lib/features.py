"""Multi-layer patch embeddings on the stride-4 grid, extracted batch by batch into an on-disk feature cache."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .atomic import Unusable, atomic_output, read_checked, settings_digest
from .backbones import Backbone
from .data.datasets import check_category_name
from .embeddings import Embeddings, SpilledEmbeddings, StoredEmbeddings, as_embeddings, write_embeddings
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


#: File name ending of a feature cache entry.
SUFFIX = ".safetensors"

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

    def as_json(self) -> str:
        """`as_dict` as the JSON text a cache entry's metadata holds (keys sorted)."""
        return json.dumps(self.as_dict(), sort_keys=True)

    def digest(self) -> str:
        return settings_digest(self.as_dict())

    def filename(self) -> str:
        """One name in the cache folder: the category is checked, the backbone (`timm:<any model>`) reduced to
        safe characters."""
        backbone = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.backbone)
        return f"{self.category}_{self.split}_{backbone}_{self.digest()}{SUFFIX}"


def _images_of(batch: dict | torch.Tensor) -> torch.Tensor:
    return batch["image"] if isinstance(batch, dict) else batch


def as_loader(data: Dataset | Iterable, batch_size: int) -> Iterable:
    """A dataset as its batches in order (a DataLoader); an iterable of batches as it is."""
    return DataLoader(data, batch_size=batch_size, shuffle=False) if isinstance(data, Dataset) else data


def embed_batches(backbone: Backbone, data: Dataset | Iterable, batch_size: int, device: str | torch.device,
                  from_maps: Callable[[list[torch.Tensor]], torch.Tensor], progress: bool = True,
                  description: str = "features", leave: bool = False) -> Iterator[torch.Tensor]:
    """The one extraction loop (`extract_features`, `AnomalyDetector.method_features`): `from_maps` of the
    backbone's maps of every batch of `data` (a dataset, or an iterable of batches: dicts with "image" or
    image tensors), batch by batch on the CPU, under a progress bar. The caller puts the backbone on `device`
    (and in eval mode)."""
    for batch in progress_bar(as_loader(data, batch_size), desc=description, enabled=progress, leave=leave):
        with torch.inference_mode():
            embedded = from_maps(backbone(_images_of(batch).to(device))).cpu()
        yield embedded


def count_images(data: Dataset | Iterable) -> tuple[int, Dataset | Iterable]:
    """How many images `data` holds, and `data` to read them from (an iterable without a length is listed
    first: it holds its batches already)."""
    if isinstance(data, Dataset):
        return len(data), data
    batches = list(data)
    return sum(len(_images_of(batch)) for batch in batches), batches


def spill(backbone: Backbone, data: Dataset | Iterable, batch_size: int, device: str | torch.device,
          from_maps: Callable[[list[torch.Tensor]], torch.Tensor], progress: bool = True,
          description: str = "features", leave: bool = False) -> SpilledEmbeddings:
    """`embed_batches` written batch by batch to a temporary file (`SpilledEmbeddings`)."""
    total, data = count_images(data)
    if total == 0:
        raise ValueError("No images to extract features from: the dataset is empty.")
    return SpilledEmbeddings.of(embed_batches(backbone, data, batch_size, device, from_maps, progress, description,
                                              leave), total)


def extract_features(
    backbone: Backbone,
    data: Dataset | Iterable,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = True,
    description: str = "features",
) -> Embeddings:
    """Embed every image of a dataset (or an iterable of batches) into a temporary file: [N, C, h, w]."""
    backbone = backbone.to(device).eval()
    return spill(backbone, data, batch_size, device, combine_layers, progress, description)


class FeatureCache:
    """Embeddings on disk, one safetensors file per `CacheKey` (see `embeddings.write_embeddings`), stored as
    `dtype` (float32 by default; float16 halves the bytes, README: "Feature cache") and always read back as
    float32, a few images at a time (`protoad cache list|clear`)."""

    def __init__(self, directory: str | Path, dtype: torch.dtype = torch.float32) -> None:
        self.directory = Path(directory)
        self.dtype = dtype

    def path(self, key: CacheKey) -> Path:
        return self.directory / key.filename()

    def load(self, key: CacheKey) -> StoredEmbeddings | None:
        """The cached embeddings of `key`, or None on a miss. An entry that cannot be read (cut short, padded,
        zeroed) or holds something else than its name says is reported, deleted and treated as a miss."""

        def read(path: Path) -> StoredEmbeddings:
            stored = StoredEmbeddings(path)
            if stored.metadata.get("key") != key.as_json():
                raise Unusable("it was written for other settings")
            if len(stored) != key.n_images:
                raise Unusable(f"it holds {len(stored)} images, not {key.n_images}")
            return stored

        return read_checked(self.path(key), read, "Feature cache entry")

    def write(self, key: CacheKey, batches: Iterable[torch.Tensor]) -> StoredEmbeddings:
        """Store batches [b, C, h, w] of the `key.n_images` images atomically (a temporary file in the same
        folder, renamed into place when whole), one batch in memory at a time."""
        path = self.path(key)
        with atomic_output(path) as temporary:
            write_embeddings(temporary, batches, key.n_images, {"key": key.as_json()}, self.dtype)
        return StoredEmbeddings(path)

    def save(self, key: CacheKey, features: Embeddings | torch.Tensor) -> Path:
        """Store embeddings already at hand (`write` for a stream)."""
        return self.write(key, as_embeddings(features).chunks()).path

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.glob("*" + SUFFIX)) if self.directory.is_dir() else 0

    def get_or_extract(
        self, key: CacheKey, backbone: Backbone, data: Dataset, batch_size: int = 8,
        device: str | torch.device = "cpu", progress: bool = True,
    ) -> StoredEmbeddings:
        """Cached embeddings when present; otherwise extract them into the cache batch by batch."""
        cached = self.load(key)
        if cached is not None:
            return cached
        backbone = backbone.to(device).eval()
        return self.write(key, embed_batches(backbone, data, batch_size, device, combine_layers, progress,
                                             f"{key.category}/{key.split}"))


def embed_split(
    backbone: Backbone, data: Dataset, key: CacheKey, cache: FeatureCache | None = None, batch_size: int = 8,
    device: str | torch.device = "cpu", progress: bool = True,
) -> Embeddings:
    """Embeddings of one dataset split: through the cache when one is given, else into a temporary file."""
    if cache is not None:
        return cache.get_or_extract(key, backbone, data, batch_size, device, progress)
    return extract_features(backbone, data, batch_size, device, progress=progress,
                            description=f"{key.category}/{key.split}")
