"""Every registered method fitted and scored on every category of a run: the rows of the evaluation tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import pandas as pd
import torch

from ..backbones import Backbone
from ..evaluation import CategoryData, fit_and_score
from ..methods import Predictions, fitted_size, make_detector, method_names
from ..methods.protoad import ProtoADConfig


@dataclass
class Evaluation:
    """Every method on every category: metrics (one row each), timings, and the predictions."""

    results: pd.DataFrame
    timings: pd.DataFrame
    categories: list[tuple[str, CategoryData]]
    predictions: dict[tuple[str, str], Predictions] = field(default_factory=dict)
    normal_scales: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)


def method_options(protoad_max_vectors: int | None = None, seed: int = 0) -> dict[str, dict]:
    """Options over the registry's defaults: ProtoAD's clustering budget and every seeded method's seed."""
    config = ProtoADConfig(seed=seed) if protoad_max_vectors is None else \
        ProtoADConfig(max_vectors=int(protoad_max_vectors), seed=seed)
    return {"protoad": {"config": config}, "patchcore": {"seed": seed}}


def normal_scale(predictions: Predictions, labels: torch.Tensor) -> tuple[float, float]:
    """A colour scale a reader can trust: the 1st..99.9th percentile of the method's anomaly maps on the
    *good* test images. The top of the scale is then "as anomalous as the most extreme normal pixels", so
    a defect shows red, a normal image stays cool, and a few extreme values cannot wash a method out.
    (Maps of normal *training* images would not do: PatchCore's bank and PaDiM's Gaussians contain them,
    so their in-sample scores are far below any unseen image's.) Used for display only, never for a metric."""
    good = predictions.maps[labels == 0] if bool((labels == 0).any()) else predictions.maps
    flat = good.flatten()
    sample = flat[torch.linspace(0, len(flat) - 1, min(len(flat), 1_000_000)).long()].double()
    low, high = torch.quantile(sample, torch.tensor([0.01, 0.999], dtype=torch.float64)).tolist()
    return float(low), float(max(high, low + 1e-6))


def evaluate_methods(backbone: Backbone, categories: Sequence[tuple[str, CategoryData]],
                     methods: Sequence[str] | None = None, options: Mapping[str, dict] | None = None,
                     device: str | None = None) -> Evaluation:
    """Fit each method on each category's cached train embeddings and score its test set.

    `categories`: `(dataset name, CategoryData)` pairs (`RunSetup.load_all`). `methods`: registry
    names (None: every method of the evaluation tables). Results have one row per (dataset, category,
    method) with image/pixel AUROC, AUPRO, image/pixel F1-max (fractions) and `k` (ProtoAD prototypes /
    PatchCore memory-bank size; empty otherwise). Fitting and scoring run on the CPU (the cached
    embeddings live there); `device` (e.g. "cuda") is used where a method can move its expensive
    fitting step there (PatchCore's coreset selection).
    """
    methods = method_names() if methods is None else tuple(methods)
    options = method_options() if options is None else options
    rows, timings, predictions, scales = [], [], {}, {}
    for dataset, data in categories:
        for method in methods:
            detector = make_detector(method, backbone, **options.get(method, {}))
            if device is not None and hasattr(detector, "coreset_device"):
                detector.coreset_device = device
            scored = fit_and_score(detector, data, full_metrics=True)
            rows.append({"dataset": dataset, "category": data.name, "method": method, **scored.metrics,
                         "k": fitted_size(detector)})
            timings.append({"dataset": dataset, "category": data.name, "method": method,
                            "fit_s": scored.fit_s, "infer_s": scored.infer_s,
                            "n_train": len(data.train), "n_test": len(data.test)})
            predictions[(data.name, method)] = scored.predictions
            scales[(data.name, method)] = normal_scale(scored.predictions, data.labels)
            del detector
    results = pd.DataFrame(rows)
    results["k"] = results["k"].astype("Int64")
    return Evaluation(results, pd.DataFrame(timings), list(categories), predictions, scales)
