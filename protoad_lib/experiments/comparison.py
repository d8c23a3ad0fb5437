"""Every registered method fitted and scored on every category of a run: the rows of the evaluation tables.

A paper run takes hours, so it goes category by category (one category's embeddings in memory at a
time) and keeps each (category, method) result as it finishes (`RunSetup.store`): an interrupted run,
restarted, recomputes only what is missing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import pandas as pd
import torch

from ..backbones import Backbone
from ..data import AnomalyDataset, example_indices
from ..categories import CategoryData
from ..evaluation import fit_and_score
from ..methods import make_detector, method_label, method_names, run_options
from ..profiles import Profile
from ..progress import progress_bar
from ..session import RunSetup

#: Defect types per category whose first image is kept for the overlay figures.
EXAMPLE_DEFECTS = 2


@dataclass
class MethodResult:
    """One method on one category: metrics, timings, image scores, the example maps and their colour scale."""

    metrics: dict
    timing: dict
    scores: torch.Tensor
    example_maps: dict[int, torch.Tensor]
    normal_scale: tuple[float, float]


@dataclass
class Evaluation:
    """Every method on every category: metrics (one row each), timings, and what the overlays need."""

    results: pd.DataFrame
    timings: pd.DataFrame
    tests: dict[str, AnomalyDataset] = field(default_factory=dict)
    outcomes: dict[tuple[str, str], MethodResult] = field(default_factory=dict)


def method_options(profile: Profile, device: str = "cpu") -> dict[str, dict]:
    """Every method's options over the registry's defaults in a run of `profile` on `device`: what each
    method declares (`AnomalyDetector.run_options`: ProtoAD's clustering budget, the seeds, PRN's schedule for
    the device and the profile's training length)."""
    return run_options(profile, device)


def normal_scale(maps: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """A colour scale a reader can trust: the 1st..99.9th percentile of the method's anomaly maps on the
    *good* test images. The top of the scale is then "as anomalous as the most extreme normal pixels", so
    a defect shows red, a normal image stays cool, and a few extreme values cannot wash a method out.
    (Maps of normal *training* images would not do: PatchCore's bank and PaDiM's Gaussians contain them,
    so their in-sample scores are far below any unseen image's.) Used for display only, never for a metric."""
    good = maps[labels == 0] if bool((labels == 0).any()) else maps
    flat = good.flatten()
    sample = flat[torch.linspace(0, len(flat) - 1, min(len(flat), 1_000_000)).long()].double()
    low, high = torch.quantile(sample, torch.tensor([0.01, 0.999], dtype=torch.float64)).tolist()
    return float(low), float(max(high, low + 1e-6))


def score_method(backbone: Backbone, data: CategoryData, dataset: str, method: str, options: Mapping[str, dict],
                 device: str | None = None) -> MethodResult:
    """Fit one registered method on a category's cached train embeddings and score its test set (a trained
    method, PRN, trains on `device`)."""
    detector = make_detector(method, backbone, **options.get(method, {}))
    if device is not None and hasattr(detector, "coreset_device"):
        detector.coreset_device = device
    scored = fit_and_score(detector, data, full_metrics=True, device=device or "cpu")
    maps = scored.predictions.maps
    keys = {"dataset": dataset, "category": data.name, "method": method}
    return MethodResult(
        metrics=keys | scored.metrics | {"k": detector.fitted_size(),
                                         "level": detector.fit_report().get("finch_level")},
        timing=keys | {"fit_s": scored.fit_s, "infer_s": scored.infer_s, "n_train": len(data.train),
                       "n_test": len(data.test)},
        scores=scored.predictions.scores,
        example_maps={index: maps[index].clone() for index in example_indices(data.test, EXAMPLE_DEFECTS)},
        normal_scale=normal_scale(maps, data.labels),
    )


def _method_result(fields: dict | None) -> MethodResult | None:
    """A `MethodResult` from the fields it was stored as (a stored result holds data, not classes)."""
    return None if fields is None else MethodResult(**fields)


def evaluate_run(run: RunSetup, methods: Sequence[str] | None = None,
                 options: Mapping[str, dict] | None = None) -> Evaluation:
    """Every method (registry names; None: every method of the evaluation tables) on every category of the run.

    Results have one row per (dataset, category, method) with image/pixel AUROC, AUPRO, image/pixel F1-max
    (fractions), `k` (ProtoAD prototypes / PatchCore memory-bank size; empty otherwise) and `level` (the FINCH
    level ProtoAD's rule chose; empty otherwise). Fitting and scoring run on the CPU (the cached embeddings live
    there); `run.device` (e.g. "cuda") is used where a method can move its expensive fitting step there
    (PatchCore's coreset selection).
    """
    methods = method_names() if methods is None else tuple(methods)
    options = method_options(run.profile, run.device) if options is None else options
    store = run.store("evaluation", {"options": {m: options.get(m, {}) for m in methods}})
    outcomes: dict[tuple[str, str], MethodResult] = {}
    tests: dict[str, AnomalyDataset] = {}
    for spec, category in run.each_category("evaluation"):
        stored = {method: _method_result(store.load(category, method)) for method in methods}
        missing = [method for method, result in stored.items() if result is None]
        if missing:
            data = run.load(spec, category)
            with progress_bar(total=len(missing), unit="method", enabled=run.progress, leave=False) as bar:
                for method in missing:  # the bar names the method at work and estimates the category's time left
                    bar.set_description(f"{category}: {method_label(method)}")
                    stored[method] = score_method(run.backbone, data, spec.name, method, options, run.device)
                    store.save(asdict(stored[method]), category, method)
                    bar.update()
            del data
        tests[category] = run.dataset(spec, category, "test")
        outcomes |= {(category, method): result for method, result in stored.items()}
    results = pd.DataFrame([result.metrics for result in outcomes.values()])
    results = results.astype({"k": "Int64", "level": "Int64"})
    return Evaluation(results, pd.DataFrame([result.timing for result in outcomes.values()]), tests, outcomes)
