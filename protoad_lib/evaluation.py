"""Fit a method on a category's good images, score its test set, and compute every metric."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .backbones import Backbone
from .data import AnomalyDataset
from .features import CacheKey, FeatureCache, embed_split
from .methods import AnomalyDetector, Predictions
from .metrics import aupro, evaluate_all, image_auroc, pixel_auroc


@dataclass
class CategoryData:
    """A category's train/test datasets with their backbone embeddings, labels and masks."""

    name: str
    train: AnomalyDataset
    test: AnomalyDataset
    train_embeddings: torch.Tensor
    test_embeddings: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    embed_s: float

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.masks.shape[-2:])


def load_category(
    backbone: Backbone, root: str | Path, category: str, layout: str = "mvtec", resize: int = 256,
    image_size: int = 224, batch_size: int = 8, device: str = "cpu", cache: FeatureCache | None = None,
    dataset_name: str = "dataset", progress: bool = True,
) -> CategoryData:
    """Datasets and (cached) stride-4 embeddings of one category, ready for any method."""
    train = AnomalyDataset(root, category, "train", layout=layout, resize=resize, crop=image_size)
    test = AnomalyDataset(root, category, "test", layout=layout, resize=resize, crop=image_size)
    start = time.perf_counter()
    embeddings = []
    for split, dataset in (("train", train), ("test", test)):
        key = CacheKey.of(dataset_name, category, split, backbone, dataset)
        embeddings.append(embed_split(backbone, dataset, key, cache, batch_size, device, progress))
    masks = torch.stack([test[i]["mask"][0] for i in range(len(test))])
    labels = torch.tensor(test.labels)
    return CategoryData(category, train, test, embeddings[0], embeddings[1], labels, masks,
                        time.perf_counter() - start)


@dataclass
class Scored:
    """Metrics (fractions), predictions and timings of one detector on one category."""

    metrics: dict
    predictions: Predictions
    fit_s: float | None = None
    infer_s: float | None = None


def _metrics(data: CategoryData, predictions: Predictions, full: bool) -> dict:
    if full:
        return evaluate_all(data.labels, predictions.scores, data.masks, predictions.maps)
    return {
        "image_auroc": image_auroc(data.labels, predictions.scores),
        "pixel_auroc": pixel_auroc(data.masks, predictions.maps),
        "aupro": aupro(data.masks, predictions.maps),
    }


def score(detector: AnomalyDetector, data: CategoryData, test_embeddings: torch.Tensor | None = None,
          full_metrics: bool = False) -> Scored:
    """Score a fitted detector on a category's cached test embeddings (or the given ones).

    `full_metrics` adds image/pixel F1-max to image/pixel AUROC and AUPRO.
    """
    test = data.test_embeddings if test_embeddings is None else test_embeddings
    start = time.perf_counter()
    predictions = detector.eval().predict_embeddings(test, tuple(data.masks.shape[-2:]))
    infer_s = time.perf_counter() - start
    return Scored(_metrics(data, predictions, full_metrics), predictions, None, infer_s)


def fit_and_score(detector: AnomalyDetector, data: CategoryData, train_embeddings: torch.Tensor | None = None,
                  test_embeddings: torch.Tensor | None = None, full_metrics: bool = False) -> Scored:
    """Fit on the cached train embeddings and score the test embeddings, without progress output.

    The backbone is skipped: the method's features are taken from the stride-4 embedding; the
    embeddings can be replaced (e.g. a layer subset for ProtoAD, whose features are the embedding).
    """
    train = data.train_embeddings if train_embeddings is None else train_embeddings
    detector.progress = False
    start = time.perf_counter()
    detector.fit_features(detector.features_from_embedding(train))
    fit_s = time.perf_counter() - start
    scored = score(detector, data, test_embeddings, full_metrics)
    scored.fit_s = fit_s
    return scored


def evaluate_on_category(detector: AnomalyDetector, data: CategoryData) -> Scored:
    """Fit on the cached train embeddings, score the test ones, all metrics plus timings and counts."""
    scored = fit_and_score(detector, data, full_metrics=True)
    scored.metrics |= {"fit_s": scored.fit_s, "infer_s": scored.infer_s, "n_train": len(data.train),
                       "n_test": len(data.test)}
    return scored
