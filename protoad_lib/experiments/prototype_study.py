"""Notebook 03's experiment: ProtoAD's prototype recipe per category with its cost, prototype usage, and FINCH vs k-means vs coreset."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch

from ..embeddings import Embeddings
from ..measure import PeakMemory, stopwatch
from ..methods.protoad import ProtoADConfig, prototype_usage
from ..methods.protoad.prototypes import (FinchHierarchy, PrototypeSet, prototype_inputs, prototypes_from,
                                          training_vectors)
from ..profiles import DatasetSpec
from ..session import RunSetup
from .ablation_plan import ablation_plan
from .ablations import clustering_method_ablation, protoad_with

#: The prototype methods set against each other at equal K (notebook 07's clustering ablation has random too).
COMPARED = ("finch", "kmeans", "coreset")
#: The projection figure shows at most this many categories.
PROJECTED = 3


@dataclass
class TimedHierarchy:
    """The recipe's FINCH hierarchy of one category with its cost (wall time and peak extra resident memory of
    subsampling, held-out gathering + clustering) and `level`: the level the fit uses (the configuration's level
    rule, `ProtoADConfig.level_rule`; notebook 07 compares the rules)."""

    hierarchy: FinchHierarchy
    seconds: float
    peak_mb: float
    n_vectors: int
    dim: int
    level: int


@dataclass
class ClusteringStudy:
    """Per category: the timed hierarchy, how many training patches pick each prototype, and FINCH vs k-means
    vs coreset at equal K (`comparison`, one row per method); `panels` ``(category, vectors, hierarchy,
    level)`` for the projection figure (the first `PROJECTED` categories); `lines`: what was clustered."""

    finch: dict[str, TimedHierarchy] = field(default_factory=dict)
    usage: dict[str, np.ndarray] = field(default_factory=dict)
    panels: list[tuple[str, np.ndarray, FinchHierarchy, int]] = field(default_factory=list)
    comparison: pd.DataFrame = field(default_factory=pd.DataFrame)
    lines: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return "\n".join(self.lines)


def timed_prototypes(features: Embeddings | torch.Tensor, config: ProtoADConfig) -> tuple[TimedHierarchy, PrototypeSet]:
    """ProtoAD's prototype recipe (`prototype_inputs`: subsample, held-out vectors, FINCH; then `prototypes_from`:
    the level its rule chooses and its cluster means; no bar), timed and memory-measured, as the fit runs it."""
    with PeakMemory("cpu") as memory, stopwatch() as watch:
        found = prototypes_from(prototype_inputs(features, config, progress=False), config, progress=False)
    found.info["seconds"] = watch.seconds
    dim = found.prototypes.shape[1]
    return TimedHierarchy(found.hierarchy, watch.seconds, memory.peak_mb, found.n_vectors, int(dim), found.level), found


def clustering_unit(run: RunSetup, spec: DatasetSpec, category: str, config: ProtoADConfig) -> dict:
    """One category's unit of notebook 03 (stored as it finishes): the timed recipe's hierarchy and cost, what it
    clustered (one line), prototype usage over every training patch, and the clustering ablation's rows (its
    reference ProtoAD is built from the timed recipe's prototypes: FINCH runs once)."""
    data = run.load(spec, category)
    n, c, h, w = data.train_embeddings.shape
    timed, found = timed_prototypes(data.train_embeddings, config)
    reference = protoad_with(run.backbone, found, config)
    return {
        "hierarchy": asdict(timed.hierarchy), "seconds": timed.seconds,
        "peak_mb": timed.peak_mb, "n_vectors": timed.n_vectors, "dim": timed.dim, "level": timed.level,
        "line": f"{category}: {n} images x {h * w} patches = {n * h * w} vectors of {c} channels; "
                f"clustering {timed.n_vectors} ({config.subsampling}, seed {config.seed})",
        "usage": prototype_usage(data.train_embeddings, torch.from_numpy(found.prototypes)),
        "comparison": clustering_method_ablation(run.backbone, [data], COMPARED, config, {data.name: reference}),
    }


def study_clustering(run: RunSetup) -> ClusteringStudy:
    """One pass over the run's categories (one at a time, its embeddings read a few images at a time), with
    notebook 07's reference configuration (`ablation_plan`): the timed recipe, prototype usage over every
    training patch (not only the clustered subsample), and the clustering ablation on the same data. Each
    category is a stored unit (`clustering_unit`): a rerun, or the serial pass after a spread run, reads it
    back; the projection's categories gather their clustered vectors again (a read of the subsample, no
    clustering)."""
    config = ablation_plan(run.profile, run.device).config(seed=run.seed)
    store = run.store("clustering", {"config": asdict(config), "compared": list(COMPARED)})
    study, comparisons = ClusteringStudy(), []
    for spec, category in run.each_category("clustering"):
        unit = store.computed(lambda: clustering_unit(run, spec, category, config), category)
        hierarchy = FinchHierarchy(**unit["hierarchy"])
        study.finch[category] = TimedHierarchy(hierarchy, unit["seconds"], unit["peak_mb"], unit["n_vectors"],
                                               unit["dim"], unit["level"])
        study.lines.append(unit["line"])
        study.usage[category] = unit["usage"]
        if len(study.panels) < PROJECTED:
            vectors = training_vectors(run.load(spec, category).train_embeddings, config.max_vectors,
                                       config.subsampling, config.seed)
            study.panels.append((category, vectors, hierarchy, unit["level"]))
        comparisons.append(unit["comparison"])
    study.comparison = pd.concat(comparisons, ignore_index=True)
    return study
