"""Fit a method on a category's good images, score its test set, and compute every metric."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import torch

from .backbones import Backbone
from .data import AnomalyDataset
from .features import CacheKey, FeatureCache, embed_split
from .methods import AnomalyDetector, Predictions
from .methods.prn import choose_seen
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
    seen: list[str] = field(default_factory=list)  # test images trained on (and not scored): PRN's seen anomalies


def metrics_of(data: CategoryData, predictions: Predictions, full: bool = False) -> dict:
    """Image/pixel AUROC and AUPRO of predictions on the category's test set (`full`: every metric)."""
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
    return Scored(metrics_of(data, predictions, full_metrics), predictions, None, infer_s)


def without_test_samples(data: CategoryData, indices: Sequence[int]) -> CategoryData:
    """The category with the given test samples removed from its test embeddings, labels and masks (the
    scored test set); `test` stays the whole dataset."""
    keep = torch.tensor([i for i in range(len(data.labels)) if i not in set(indices)], dtype=torch.long)
    return replace(data, test_embeddings=data.test_embeddings[keep], labels=data.labels[keep], masks=data.masks[keep])


def fit_and_score(detector: AnomalyDetector, data: CategoryData, train_embeddings: torch.Tensor | None = None,
                  test_embeddings: torch.Tensor | None = None, full_metrics: bool = False, seen: int = 0,
                  seed: int = 0, device: str | torch.device = "cpu", progress: bool = True) -> Scored:
    """Fit on the cached train embeddings and score the test embeddings. A fit can take an hour (PRN's
    epochs, PatchCore's coreset on a paper-size category), so its steps show their bars (elapsed, time left)
    unless `progress` is False or `TQDM_DISABLE` is set (as the notebooks' demo runs do).

    The backbone is skipped: the method's features are taken from the stride-4 embedding; the
    embeddings can be replaced (e.g. a layer subset for ProtoAD, whose features are the embedding).
    A trained method (`fits_on_images`, PRN) fits on the training images instead; with `seen` > 0 it
    also trains on that many real anomalies drawn (seeded) from the test set, which are then **removed
    from the scored test set** and listed in `Scored.seen`. A trained method trains on `device` (e.g.
    "cuda"), then moves to the CPU, where the cached embeddings it is scored on live; the training-free
    methods fit on the CPU embeddings whatever `device` is.
    """
    train = data.train_embeddings if train_embeddings is None else train_embeddings
    detector.progress = progress
    chosen = choose_seen(data.labels, seen, seed) if seen else []
    start = time.perf_counter()
    if detector.fits_on_images:
        pairs = [(data.test[i]["image"], data.test[i]["mask"]) for i in chosen]
        detector.fit(data.train, progress=progress, device=device, **({"seen": pairs} if pairs else {}))
        detector.to("cpu")
    elif chosen:
        raise ValueError(f"{detector.method} is training-free: it cannot use seen anomalies")
    else:
        detector.fit_features(detector.features_from_embedding(train))
    fit_s = time.perf_counter() - start
    scored_data = without_test_samples(data, chosen) if chosen else data
    scored = score(detector, scored_data, test_embeddings, full_metrics)
    scored.fit_s = fit_s
    scored.seen = [data.test.samples[i].path for i in chosen]
    return scored


def evaluate_on_category(detector: AnomalyDetector, data: CategoryData, seen: int = 0, seed: int = 0,
                         device: str | torch.device = "cpu") -> Scored:
    """Fit on the cached train embeddings, score the test ones, all metrics plus timings and counts
    (`n_test`: the images scored, i.e. without any `seen` anomalies, see `fit_and_score`)."""
    scored = fit_and_score(detector, data, full_metrics=True, seen=seen, seed=seed, device=device)
    scored.metrics |= {"fit_s": scored.fit_s, "infer_s": scored.infer_s, "n_train": len(data.train),
                       "n_test": len(data.test) - len(scored.seen)}
    return scored
