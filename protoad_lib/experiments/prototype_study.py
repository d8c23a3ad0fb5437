"""Notebook 03's experiment: ProtoAD's prototype recipe per category with its cost, prototype usage, and FINCH vs k-means vs coreset."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch

from ..embeddings import Embeddings
from ..measure import PeakMemory, stopwatch
from ..methods.protoad import ProtoADConfig, prototype_usage
from ..methods.protoad.prototypes import FinchHierarchy, cluster_prototypes, prototype_inputs, training_vectors
from ..profiles import DatasetSpec
from ..session import RunSetup
from .ablation_plan import ablation_plan
from .ablations import clustering_method_ablation, fit_baselines

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


def timed_inputs(features: Embeddings | torch.Tensor, config: ProtoADConfig) -> tuple[TimedHierarchy, np.ndarray]:
    """ProtoAD's recipe up to the clustering (`prototype_inputs`: subsample, held-out vectors, FINCH; no bar),
    timed and memory-measured, the level its rule chooses (as the fit does), and the clustered unit vectors."""
    with PeakMemory("cpu") as memory, stopwatch() as watch:
        inputs = prototype_inputs(features, config, progress=False)
    level = inputs.level_for(config).level
    n_vectors, dim = inputs.vectors.shape
    return TimedHierarchy(inputs.hierarchy, watch.seconds, memory.peak_mb, int(n_vectors), int(dim), level), \
        inputs.vectors


def clustering_unit(run: RunSetup, spec: DatasetSpec, category: str, config: ProtoADConfig) -> dict:
    """One category's unit of notebook 03 (stored as it finishes): the timed recipe's hierarchy and cost, what it
    clustered (one line), prototype usage over every training patch, and the clustering ablation's rows."""
    data = run.load(spec, category)
    n, c, h, w = data.train_embeddings.shape
    found, vectors = timed_inputs(data.train_embeddings, config)
    prototypes = cluster_prototypes(vectors, found.hierarchy.level_labels(found.level))
    fits = fit_baselines(run.backbone, [data], config)
    return {
        "labels": found.hierarchy.labels, "num_clusters": found.hierarchy.num_clusters, "seconds": found.seconds,
        "peak_mb": found.peak_mb, "n_vectors": found.n_vectors, "dim": found.dim, "level": found.level,
        "line": f"{category}: {n} images x {h * w} patches = {n * h * w} vectors of {c} channels; "
                f"clustering {len(vectors)} ({config.subsampling}, seed {config.seed})",
        "usage": prototype_usage(data.train_embeddings, torch.from_numpy(prototypes)),
        "comparison": clustering_method_ablation(run.backbone, [data], COMPARED, config, fits),
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
        hierarchy = FinchHierarchy(unit["labels"], unit["num_clusters"])
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
