"""Fit a method on a category's good images, score its test set, and compute every metric.

The category comes loaded (`categories.load_category`); what
a method needs to know to fit (images or cached embeddings) it declares itself (`fits_on_images`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .categories import CategoryData, choose_seen, without_test_samples
from .embeddings import Embeddings
from .measure import stopwatch
from .methods import AnomalyDetector, Predictions
from .metrics import aupro, evaluate_all, image_auroc, pixel_auroc

__all__ = ["Scored", "evaluate_on_category", "fit_and_score", "metrics_of", "score"]


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


def score(detector: AnomalyDetector, data: CategoryData, test_embeddings: Embeddings | None = None,
          full_metrics: bool = False) -> Scored:
    """Score a fitted detector on a category's cached test embeddings (or the given ones).

    `full_metrics` adds image/pixel F1-max to image/pixel AUROC and AUPRO.
    """
    test = data.test_embeddings if test_embeddings is None else test_embeddings
    with stopwatch() as watch:
        predictions = detector.eval().predict_embeddings(test, tuple(data.masks.shape[-2:]))
    return Scored(metrics_of(data, predictions, full_metrics), predictions, None, watch.seconds)


def fit_and_score(detector: AnomalyDetector, data: CategoryData, train_embeddings: Embeddings | None = None,
                  test_embeddings: Embeddings | None = None, full_metrics: bool = False, seen: int = 0,
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
    if chosen and not detector.fits_on_images:
        raise ValueError(f"{detector.method} is training-free: it cannot use seen anomalies")
    with stopwatch() as watch:
        if detector.fits_on_images:
            pairs = [(data.test[i]["image"], data.test[i]["mask"]) for i in chosen]
            detector.fit(data.train, progress=progress, device=device, **({"seen": pairs} if pairs else {}))
            detector.to("cpu")
        else:
            detector.fit_embeddings(train)
    scored_data = without_test_samples(data, chosen) if chosen else data
    scored = score(detector, scored_data, test_embeddings, full_metrics)
    scored.fit_s = watch.seconds
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
