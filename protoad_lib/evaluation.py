"""Fit a method on a category's good images, score its test set, and compute every metric."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .backbones import Backbone
from .data.datasets import AnomalyDataset
from .detector import AnomalyDetector, Predictions
from .features import CacheKey, FeatureCache, extract_features
from .metrics import evaluate_all

METHODS = ("protoad", "patchcore", "padim")


def make_detector(method: str, backbone: Backbone, **options) -> AnomalyDetector:
    """A fresh detector by method name; `options` go to its constructor."""
    from .baselines import PaDiM, PatchCore
    from .model import ProtoAD

    classes = {"protoad": ProtoAD, "patchcore": PatchCore, "padim": PaDiM}
    if method not in classes:
        raise ValueError(f"Unknown method {method!r}; choose one of {METHODS}.")
    return classes[method](backbone, **options)


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
        key = CacheKey(dataset_name, category, split, backbone.name, backbone.weights, tuple(backbone.layers),
                       image_size, len(dataset))
        if cache is not None:
            embeddings.append(cache.get_or_extract(key, backbone, dataset, batch_size, device))
        else:
            embeddings.append(extract_features(backbone, dataset, batch_size, device, progress=progress,
                                               description=f"{category}/{split}"))
    masks = torch.stack([test[i]["mask"][0] for i in range(len(test))])
    labels = torch.tensor(test.labels)
    return CategoryData(category, train, test, embeddings[0], embeddings[1], labels, masks,
                        time.perf_counter() - start)


@dataclass
class EvaluationResult:
    """Metrics (fractions in 0..1), timings and the predictions of one method on one category."""

    metrics: dict
    predictions: Predictions

    def row(self) -> dict:
        return dict(self.metrics)


def evaluate_on_category(detector: AnomalyDetector, data: CategoryData) -> EvaluationResult:
    """Fit on the cached train embeddings, score the cached test embeddings (the backbone runs once)."""
    start = time.perf_counter()
    detector.fit_features(detector.features_from_embedding(data.train_embeddings))
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    predictions = detector.predict_embeddings(data.test_embeddings, data.image_size)
    infer_s = time.perf_counter() - start
    metrics = evaluate_all(data.labels, predictions.scores, data.masks, predictions.maps)
    metrics |= {"fit_s": fit_s, "infer_s": infer_s, "n_train": len(data.train), "n_test": len(data.test)}
    return EvaluationResult(metrics, predictions)
