"""A benchmark category loaded once for every method: datasets, cached backbone embeddings, labels, masks.

It sits with the data and the features (below the methods), not with scoring: a notebook run
(`session.RunSetup.load`), the command line and the evaluation all load a category here, and a scorer
(`evaluation`) only reads what it holds. `choose_seen` / `without_test_samples`: the few real anomalies a
trained method may see, and the scored test set without them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from .backbones import Backbone
from .data import AnomalyDataset
from .data.transforms import PAPER_CROP, PAPER_RESIZE
from .embeddings import Embeddings
from .features import CacheKey, FeatureCache, embed_split
from .measure import stopwatch


@dataclass
class CategoryData:
    """A category's train/test datasets with their backbone embeddings, labels and masks."""

    name: str
    train: AnomalyDataset
    test: AnomalyDataset
    train_embeddings: Embeddings
    test_embeddings: Embeddings
    labels: torch.Tensor
    masks: torch.Tensor
    embed_s: float

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.masks.shape[-2:])


def load_category(
    backbone: Backbone, root: str | Path, category: str, layout: str = "mvtec", resize: int = PAPER_RESIZE,
    image_size: int = PAPER_CROP, batch_size: int = 8, device: str = "cpu", cache: FeatureCache | None = None,
    dataset_name: str = "dataset", progress: bool = True,
) -> CategoryData:
    """Datasets and stride-4 embeddings of one category, ready for any method: the embeddings stay on disk (in
    `cache`, or in temporary files without one) and are read a few images at a time."""
    train = AnomalyDataset(root, category, "train", layout=layout, resize=resize, crop=image_size)
    test = AnomalyDataset(root, category, "test", layout=layout, resize=resize, crop=image_size)
    embeddings = []
    with stopwatch() as watch:
        for split, dataset in (("train", train), ("test", test)):
            key = CacheKey.of(dataset_name, category, split, backbone, dataset)
            embeddings.append(embed_split(backbone, dataset, key, cache, batch_size, device, progress))
        masks = torch.stack([test[i]["mask"][0] for i in range(len(test))])
        labels = torch.tensor(test.labels)
    return CategoryData(category, train, test, embeddings[0], embeddings[1], labels, masks, watch.seconds)


def choose_seen(labels: Sequence[int] | torch.Tensor, n: int, seed: int = 0) -> list[int]:
    """Indices (sorted) of `n` anomalous samples (label != 0) drawn at random with a generator seeded by `seed`.

    PRN's paper supervises with a few real anomalies per class (10 on MVTec AD); the caller trains on these
    samples and must drop them from the test set (PRNet does not: its issue #10, docs/peer_methods.md)."""
    labels = torch.as_tensor(labels).flatten()
    anomalous = torch.nonzero(labels != 0).flatten()
    if not 0 <= n <= len(anomalous):
        raise ValueError(f"cannot choose {n} seen anomalies among {len(anomalous)} anomalous samples")
    order = torch.randperm(len(anomalous), generator=torch.Generator().manual_seed(int(seed)))
    return sorted(int(i) for i in anomalous[order[:n]])


def without_test_samples(data: CategoryData, indices: Sequence[int]) -> CategoryData:
    """The category with the given test samples removed from its test embeddings, labels and masks (the
    scored test set); `test` stays the whole dataset."""
    keep = torch.tensor([i for i in range(len(data.labels)) if i not in set(indices)], dtype=torch.long)
    return replace(data, test_embeddings=data.test_embeddings.subset(keep), labels=data.labels[keep],
                   masks=data.masks[keep])
