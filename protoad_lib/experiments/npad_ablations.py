"""N-pad ablations (notebook 07): each open choice of the reconstruction varied alone from the registry's defaults."""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
import torch

from ..backbones import Backbone
from ..categories import CategoryData
from ..evaluation import metrics_of
from ..methods import Predictions, get_method, make_detector
from ..methods.npad import NPad, fit_sharing_gaussians
from ..metrics import HEADLINE_METRICS

#: What notebook 07 varies: the neighbourhood radius, the number of centroids (0: no centroid term),
#: the test-time neighbourhood and the fusion rule of the two standardised scores (a value may be a
#: dict of options, for the weighted rule with its weight).
NPAD_SWEEPS: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("radius", (0, 1, 2)),
    ("n_centroids", (0, 16, 64, 256)),
    ("test_neighbourhood", ("pooled", "min")),
    ("fusion", ("sum", "max", {"fusion": "weighted", "centroid_weight": 0.2},
                {"fusion": "weighted", "centroid_weight": 0.8})),
)


def npad_ablation(backbone: Backbone, data: CategoryData,
                  sweeps: Sequence[tuple[str, Sequence[Any]]] = NPAD_SWEEPS) -> pd.DataFrame:
    """One row per (option, value): N-pad with that option changed and every other at its default.

    Columns as the other ablations (`ablation` = `npad_<option>`, `setting`, `category`, `K` = centroids,
    the metrics), plus `value` and `default` (the registry's value). Each distinct setting is fitted once
    (the default is reused in every sweep), and settings with the same Gaussians (all but the radius
    sweep's) share them: `fit_and_score_together`, one group of settings at a time (a fitted group's
    Gaussians, h * w * d^2 floats, are released before the next group is fitted)."""
    defaults = make_detector("npad", backbone).options()

    def detector(changed: dict) -> NPad:
        return make_detector("npad", backbone, **{**get_method("npad").options, **changed})

    labelled = []  # (option, changed options, detector's options); no detector kept: a fitted one holds its Gaussians
    groups: dict[tuple, dict[tuple, dict]] = {}  # Gaussians' options -> distinct settings -> changed options
    for option, values in sweeps:
        for value in values:
            changed = value if isinstance(value, dict) else {option: value}
            unfitted = detector(changed)
            key = options_key(unfitted.options())
            labelled.append((option, changed, key))
            groups.setdefault(options_key(unfitted.gaussian_options()), {}).setdefault(key, changed)
    scored: dict[tuple, dict] = {}
    for members in groups.values():  # one group's Gaussians in memory at a time
        scored |= dict(zip(members, fit_and_score_together(data, [detector(changed) for changed in members.values()])))
    rows = []
    for option, changed, key in labelled:
        result = scored[key]
        label = ", ".join(f"{name} = {setting}" for name, setting in changed.items())
        rows.append({"ablation": f"npad_{option}", "setting": label, "category": data.name,
                     "value": str(changed[option]), "default": all(defaults[k] == v for k, v in changed.items()),
                     "K": int(result["K"]), **{metric: result[metric] for metric in HEADLINE_METRICS}})
    return pd.DataFrame(rows)


def options_key(options: dict) -> tuple:
    return tuple(sorted(options.items()))


def fit_and_score_together(data: CategoryData, detectors: Sequence[NPad], batch_size: int = 16) -> list[dict]:
    """Metrics and K of unfitted N-pad `detectors` that share their Gaussians' options, fitted with
    `fit_sharing_gaussians` and scored with each test neighbourhood's Mahalanobis maps computed once: the
    same results as fitting and scoring each alone (tested), in a fraction of the time. The test features are
    read `batch_size` images at a time; kept are one Mahalanobis map [N, h, w] per test neighbourhood and
    one centroid-distance map [N, h, w] per detector with centroids."""
    for detector in detectors:
        detector.progress = False
    first = detectors[0]
    fit_sharing_gaussians(list(detectors), first.method_view(data.train_embeddings))
    rules = {detector.test_neighbourhood for detector in detectors}
    gauss: dict[str, list[torch.Tensor]] = {rule: [] for rule in rules}
    centroid: list[list[torch.Tensor | None]] = [[] for _ in detectors]
    with torch.inference_mode():
        for batch in first.method_view(data.test_embeddings).chunks(batch_size):
            for rule in rules:
                gauss[rule].append(first.mahalanobis(batch, rule))
            for distances, detector in zip(centroid, detectors):
                distances.append(detector.centroid_distances(batch) if detector.n_centroids > 0 else None)
        results = []
        for distances, detector in zip(centroid, detectors):
            predictions = Predictions.of_batches(detector.maps_and_scores(detector.fused(*terms), data.image_size)
                                                 for terms in zip(gauss[detector.test_neighbourhood], distances))
            results.append(metrics_of(data, predictions) | {"K": detector.n_centroids})
    return results
