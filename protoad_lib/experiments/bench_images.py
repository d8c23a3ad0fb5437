"""The benchmark's images: the first training images of one category, at the paper's resize/crop ratio."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..data import AnomalyDataset, ensure_mini_benchmark
from ..data.synthetic import DEFAULT_SYNTHETIC_DIR
from ..data.transforms import PAPER_CROP, PAPER_RESIZE

MINI_TRAIN_IMAGES = 16  # training images per category of the synthetic mini benchmark


def load_images(data_root: str | Path | None = None, category: str | None = None, image_size: int = PAPER_CROP,
                n_images: int | None = 16) -> tuple[torch.Tensor, dict[str, Any]]:
    """The first `n_images` train images [N, 3, S, S] in 0..1 (None: all) and a description of where they came from.

    Default: the synthetic mini benchmark (`ensure_mini_benchmark()`, category "weave"; with more than its
    16 training images asked for, a `weave` of that many in `data/synthetic_train_<n>`, so a fit is at a
    category's scale); otherwise an MVTec-layout root. Geometry: resize to round(image_size * PAPER_RESIZE /
    PAPER_CROP) (256 / 224), centre crop image_size.
    """
    if data_root is None:
        category = category or "weave"
        if n_images is not None and n_images > MINI_TRAIN_IMAGES:
            root = ensure_mini_benchmark(DEFAULT_SYNTHETIC_DIR.parent / f"synthetic_train_{n_images}",
                                         n_train=n_images, categories=[category])
        else:
            root = ensure_mini_benchmark()
    else:
        root = Path(data_root)
        if category is None:
            raise ValueError("pass category together with data_root")
    resize = round(image_size * PAPER_RESIZE / PAPER_CROP)
    dataset = AnomalyDataset(root, category, "train", resize=resize, crop=image_size)
    count = len(dataset) if n_images is None else min(int(n_images), len(dataset))
    images = torch.stack([dataset[i]["image"] for i in range(count)]).float()
    return images, {"data_root": str(root), "category": category, "n_images": count, "image_size": image_size,
                    "resize": resize}


def batch_of(images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`batch_size` images taken in order from `images`, cycling when there are fewer."""
    return images[torch.arange(batch_size) % len(images)].contiguous()


def fit_batches(images: torch.Tensor, batch_size: int = 8) -> list[dict[str, torch.Tensor]]:
    """The images as the dataset-like batches a detector's `fit` takes."""
    return [{"image": images[i : i + batch_size]} for i in range(0, len(images), batch_size)]
