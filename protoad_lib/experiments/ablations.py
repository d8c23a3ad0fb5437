"""ProtoAD's ablations on cached embeddings, and N-pad's (`npad_ablations`) in the same run (notebook 07).

ProtoAD: layers, FINCH level, the level rule (`level_rule`), clustering method, subsampling, image size, sigma,
image-score rule.
Every ablation takes the categories' cached stride-4 embeddings (`evaluation.CategoryData`), changes one
setting of ProtoAD at a time, and returns a DataFrame with one row per (setting, category) and the
columns of `METRIC_COLUMNS` (fractions in 0..1, exact floats: round them for display). Everything is
deterministic: subsampling, k-means, coreset and random prototypes are seeded by `ProtoADConfig.seed`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..backbones import Backbone
from ..evaluation import CategoryData, Scored, load_category, score
from ..features import FeatureCache, combine_layers
from ..methods.base import split_layers
from ..methods.protoad import ProtoAD, ProtoADConfig, nearest_prototype_distance
from ..methods.protoad.prototypes import cluster_prototypes, training_vectors
from ..methods.prn import schedule_for, training_epochs
from ..profiles import DatasetSpec, Profile
from ..session import RunSetup
from .level_rule import level_rule_ablation
from .npad_ablations import NPAD_SWEEPS, npad_ablation
from .prn_ablation import prn_ablation

#: The metrics every ablation reports (fractions).
METRIC_COLUMNS = ("image_auroc", "pixel_auroc", "aupro")


@dataclass(frozen=True)
class AblationPlan:
    """The settings each ablation sweeps for one profile (what notebook 07 runs)."""

    max_vectors: int
    layer_subsets: tuple[tuple[int, ...], ...] = ((1, 2, 3), (2, 3), (1, 2))
    clustering_methods: tuple[str, ...] = ("finch", "kmeans", "coreset", "random")
    strategies: tuple[str, ...] = ("random", "stratified")
    budgets: tuple[int, ...] = ()
    image_sizes: tuple[int, ...] = (160, 224, 288)
    image_size_categories: int | None = None  # how many categories get re-extracted (None: all)
    sigmas: tuple[float, ...] = (0, 2, 4, 8)
    image_score_rules: tuple[str, ...] = ("max", "mean_top1pct")
    npad_sweeps: tuple[tuple[str, tuple], ...] = NPAD_SWEEPS
    prn_epochs: tuple[int, ...] = (5, 15)  # the last is the reference training length
    prn_seen: tuple[int, ...] = (2,)
    prn_schedule: str = "cpu"
    prn_categories: int | None = None  # how many categories PRN's ablation trains on (None: all)

    def config(self, seed: int = 0) -> ProtoADConfig:
        """The reference ProtoAD configuration every ablation starts from."""
        return ProtoADConfig(max_vectors=self.max_vectors, seed=seed)


def ablation_plan(profile: Profile, device: str = "cpu") -> AblationPlan:
    """The profile's clustering budget (`Profile.max_vectors`) as the reference; the demo re-extracts
    features at other image sizes for one category only.

    PRN trains with the schedule of `device` (`prn.schedule_for`: "full" on CUDA, "cpu" elsewhere) for a
    third of its epochs, all of them, and all of them with a few seen anomalies (`Profile.prn_epochs`
    replaces the schedule's length). The paper profile runs PRN's ablation on the first category only:
    three trainings per category would add hours per category on a CPU (see README, "Paper-scale cost").

    Coreset *subsampling* is left out of both plans (pass it in `strategies` to run it): the greedy
    selection runs on the CPU in `clustering.subsample_indices` and costs one pass over all training
    vectors per kept vector (minutes for 10,000 of the demo's 50,176; hours for 60,000 of an MVTec AD
    category's ~600,000). Coreset *prototypes* at FINCH's K stay in the clustering-method ablation.
    """
    budget = profile.max_vectors
    if profile.smoke:  # every ablation runs, each with its fewest settings
        return AblationPlan(max_vectors=budget, layer_subsets=((1, 2, 3), (2, 3)), clustering_methods=("finch", "kmeans"),
                            strategies=("stratified",), budgets=(budget,), image_sizes=(48, 64),
                            image_size_categories=1, sigmas=(0, 4), image_score_rules=("max",),
                            npad_sweeps=(("radius", (0, 1)), ("n_centroids", (0, 16)),
                                         ("test_neighbourhood", ("pooled", "min")), ("fusion", ("sum", "max"))),
                            prn_epochs=(1,), prn_seen=(1,), prn_categories=1)
    epochs = training_epochs(device, profile.prn_epochs)
    demo = profile.name == "demo"
    return AblationPlan(max_vectors=budget, strategies=("random", "stratified"),
                        budgets=(budget // 4, budget // 2, budget),
                        image_size_categories=1 if demo else None,
                        prn_epochs=(max(1, epochs // 3), epochs), prn_seen=(2,) if demo else (10,),
                        prn_schedule=schedule_for(device), prn_categories=None if demo else 1)


# --------------------------------------------------------------------------- fit and score


def fit_protoad(backbone: Backbone, data: CategoryData, config: ProtoADConfig | None = None,
                sigma: float = 4.0, train_embeddings: torch.Tensor | None = None) -> ProtoAD:
    """A ProtoAD fitted (silently) on a category's training embeddings."""
    detector = ProtoAD(backbone, sigma=sigma, config=config or ProtoADConfig())
    train = data.train_embeddings if train_embeddings is None else train_embeddings
    detector.progress = False
    detector.fit_features(train)
    return detector.eval()


def fit_baselines(backbone: Backbone, categories: Sequence[CategoryData],
                  config: ProtoADConfig | None = None) -> dict[str, ProtoAD]:
    """The reference ProtoAD of each category (the ablations' shared starting point), by category name."""
    return {data.name: fit_protoad(backbone, data, config) for data in categories}


def _with(fitted: ProtoAD, sigma: float | None = None, image_score: str | None = None) -> ProtoAD:
    """A ProtoAD sharing a fitted one's prototype head (bit for bit) with another sigma / image-score rule."""
    settings = fitted.settings if image_score is None else replace(fitted.settings, image_score=image_score)
    detector = ProtoAD(fitted.backbone, sigma=fitted.sigma if sigma is None else sigma, config=settings)
    detector.head = fitted.head
    return detector.eval()


def _row(ablation: str, setting: str, data: CategoryData, k: int, scored: Scored, **extra) -> dict:
    return {"ablation": ablation, "setting": setting, "category": data.name, **extra, "K": int(k),
            **{m: scored.metrics[m] for m in METRIC_COLUMNS}}


def _baselines(backbone, categories, config, fits) -> Mapping[str, ProtoAD]:
    return fits if fits is not None else fit_baselines(backbone, categories, config)


# --------------------------------------------------------------------------- layers


def layer_subset(embeddings: torch.Tensor, backbone: Backbone, layers: Sequence[int]) -> torch.Tensor:
    """The embedding ProtoAD would see if the backbone tapped only `layers` (1-based indices).

    The cached stride-4 embedding is split back into the layers' own maps (`split_layers`) and the chosen
    ones are combined again (`combine_layers`): the grid is the first chosen layer's. Every layer: the
    embedding itself (no copy; a paper-sized category's is several GB).
    """
    if not layers or any(not 1 <= i <= len(backbone.channels) for i in layers):
        raise ValueError(f"layers must be 1-based indices into {backbone.layers}, got {list(layers)}")
    if sorted(set(layers)) == list(range(1, len(backbone.channels) + 1)):
        return embeddings
    maps = split_layers(embeddings, backbone.channels, backbone.strides)
    return combine_layers([maps[i - 1] for i in sorted(layers)])


def layer_ablation(backbone: Backbone, categories: Sequence[CategoryData],
                   subsets: Sequence[Sequence[int]] = ((1, 2, 3), (2, 3), (1, 2)),
                   config: ProtoADConfig | None = None,
                   fits: Mapping[str, ProtoAD] | None = None) -> pd.DataFrame:
    """ProtoAD on subsets of the tapped layers (1 = stride 4, 2 = stride 8, 3 = stride 16).

    Columns: setting ("2+3"), layers (names), channels, grid (h x w of the patch-score map), K, metrics.
    The full set reuses `fits` when given (it is the same model).
    """
    config = config or ProtoADConfig()
    full = tuple(range(1, len(backbone.channels) + 1))
    rows = []
    for subset in subsets:
        subset = tuple(sorted(subset))
        label = "+".join(str(i) for i in subset)
        names = "+".join(backbone.layers[i - 1] for i in subset)
        channels = sum(backbone.channels[i - 1] for i in subset)
        for data in categories:
            train = layer_subset(data.train_embeddings, backbone, subset)
            test = layer_subset(data.test_embeddings, backbone, subset)
            if subset == full and fits is not None and data.name in fits:
                detector = fits[data.name]
            else:
                detector = fit_protoad(backbone, data, config, train_embeddings=train)
            scored = score(detector, data, test)
            rows.append(_row("layers", label, data, detector.k, scored, layers=names, channels=channels,
                             grid=f"{test.shape[-2]} x {test.shape[-1]}"))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- FINCH level / K


def _training_vectors(features: torch.Tensor, config: ProtoADConfig) -> np.ndarray:
    """The unit vectors `build_prototypes` clusters for `config` (same subsample, recomputed)."""
    return training_vectors(features, config.max_vectors, config.subsampling, config.seed)


def finch_level_ablation(backbone: Backbone, categories: Sequence[CategoryData],
                         config: ProtoADConfig | None = None,
                         fits: Mapping[str, ProtoAD] | None = None) -> pd.DataFrame:
    """Every partition level of the FINCH hierarchy as the prototype set (one FINCH run per category).

    Columns: setting ("level 0"...), level, K (clusters at that level, decreasing), default (the level
    ProtoAD picks: the finest with at most `max_prototypes` clusters), metrics.
    """
    config = config or ProtoADConfig()
    fits = _baselines(backbone, categories, config, fits)
    rows = []
    for data in categories:
        fitted = fits[data.name]
        prototype_set = fitted.prototype_set
        if prototype_set is None or prototype_set.hierarchy is None:
            raise ValueError(f"{data.name}: the reference fit has no FINCH hierarchy (method must be 'finch')")
        settings = fitted.settings
        vectors = _training_vectors(data.train_embeddings, settings)
        hierarchy = prototype_set.hierarchy
        for level, k in enumerate(hierarchy.num_clusters):
            prototypes = torch.from_numpy(cluster_prototypes(vectors, hierarchy.level_labels(level)))
            detector = ProtoAD(backbone, sigma=fitted.sigma, config=replace(settings, level=level),
                               prototypes=prototypes)
            rows.append(_row("finch_level", f"level {level}", data, k, score(detector, data), level=level,
                             default=level == prototype_set.level))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- clustering method


def clustering_method_ablation(backbone: Backbone, categories: Sequence[CategoryData],
                               methods: Sequence[str] = ("finch", "kmeans", "coreset", "random"),
                               config: ProtoADConfig | None = None,
                               fits: Mapping[str, ProtoAD] | None = None) -> pd.DataFrame:
    """FINCH vs spherical k-means vs greedy coreset vs random patches, all with FINCH's K.

    K per category is the K of the reference FINCH fit (its default level); every method clusters the
    same subsampled training vectors. Besides the metrics, `held_out_distance` is the mean
    nearest-prototype distance `1 - max cos` of the *normal test* patches (lower: the prototypes cover
    normal appearance better) and `prototype_s` the time to build the prototypes (machine-dependent).
    """
    config = config or ProtoADConfig()
    fits = _baselines(backbone, categories, config, fits)
    rows = []
    for method in methods:
        for data in categories:
            reference = fits[data.name]
            if method == "finch":
                detector = reference
            else:
                settings = replace(reference.settings, method=method, k=reference.k, level=None)
                detector = fit_protoad(backbone, data, settings, sigma=reference.sigma)
            normal = data.test_embeddings[data.labels == 0]
            held_out = nearest_prototype_distance(normal, detector.head.prototypes).double().mean()
            rows.append(_row("clustering", method, data, detector.k, score(detector, data),
                             held_out_distance=float(held_out),
                             prototype_s=detector.prototype_set.info["seconds"]))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- subsampling


def subsampling_ablation(backbone: Backbone, categories: Sequence[CategoryData],
                         strategies: Sequence[str] = ("random", "stratified", "coreset"),
                         budgets: Sequence[int] = (2_500, 5_000, 10_000),
                         config: ProtoADConfig | None = None,
                         fits: Mapping[str, ProtoAD] | None = None) -> pd.DataFrame:
    """How the training patch vectors are subsampled before FINCH, and how many are kept.

    Rows: every strategy at the reference budget `config.max_vectors`, then the reference strategy at
    each of `budgets`. Columns: setting, strategy, max_vectors, n_vectors (actually clustered), K, metrics.
    The reference setting (its strategy at its budget) reuses `fits` and appears once.
    """
    config = config or ProtoADConfig()
    settings = [(strategy, config.max_vectors) for strategy in strategies]
    settings += [(config.subsampling, int(b)) for b in budgets if (config.subsampling, int(b)) not in settings]
    rows = []
    for strategy, budget in settings:
        for data in categories:
            if (strategy, budget) == (config.subsampling, config.max_vectors) and fits is not None \
                    and data.name in fits:
                detector = fits[data.name]
            else:
                detector = fit_protoad(backbone, data, replace(config, subsampling=strategy, max_vectors=budget))
            rows.append(_row("subsampling", f"{strategy} {budget}", data, detector.k, score(detector, data),
                             strategy=strategy, max_vectors=budget, n_vectors=detector.prototype_set.n_vectors))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- image size


def resize_for(image_size: int, base_resize: int = 256, base_crop: int = 224) -> int:
    """The resize that keeps the paper's resize/crop ratio (256/224) at another crop size."""
    return int(round(image_size * base_resize / base_crop))


def image_size_ablation(backbone: Backbone, root: str | Path, category: str, layout: str = "mvtec",
                        sizes: Sequence[int] = (160, 224, 288), config: ProtoADConfig | None = None,
                        cache: FeatureCache | None = None, dataset_name: str = "dataset",
                        batch_size: int = 8, device: str = "cpu", base_resize: int = 256,
                        base_crop: int = 224) -> pd.DataFrame:
    """ProtoAD at several input sizes (center crop `size` after resizing to `size * 256 / 224`).

    Needs a new backbone pass per size, so it takes one category. Masks are scored at each size.
    Cache keys of sizes other than the profile's own carry the resize in their dataset name.
    """
    config = config or ProtoADConfig()
    rows = []
    for size in sizes:
        resize = resize_for(size, base_resize, base_crop)
        name = dataset_name if (size, resize) == (base_crop, base_resize) else f"{dataset_name}@resize{resize}"
        data = load_category(backbone, root, category, layout=layout, resize=resize, image_size=size,
                             batch_size=batch_size, device=device, cache=cache, dataset_name=name, progress=False)
        detector = fit_protoad(backbone, data, config)
        grid = data.test_embeddings.shape[-2:]
        rows.append(_row("image_size", f"{size} px", data, detector.k, score(detector, data), image_size=size,
                         resize=resize, grid=f"{grid[0]} x {grid[1]}"))
        del data, detector  # one size's embeddings in memory at a time
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- post-processing


def sigma_ablation(backbone: Backbone, categories: Sequence[CategoryData], sigmas: Sequence[float] = (0, 2, 4, 8),
                   config: ProtoADConfig | None = None,
                   fits: Mapping[str, ProtoAD] | None = None) -> pd.DataFrame:
    """Gaussian smoothing of the anomaly map (sigma 0 = none; the paper uses 4), same prototypes."""
    fits = _baselines(backbone, categories, config, fits)
    rows = []
    for sigma in sigmas:
        for data in categories:
            detector = _with(fits[data.name])
            detector.set_sigma(float(sigma))
            rows.append(_row("sigma", f"sigma {sigma:g}", data, detector.k, score(detector, data), sigma=float(sigma)))
    return pd.DataFrame(rows)


def image_score_ablation(backbone: Backbone, categories: Sequence[CategoryData],
                         rules: Sequence[str] = ("max", "mean_top1pct"), config: ProtoADConfig | None = None,
                         fits: Mapping[str, ProtoAD] | None = None) -> pd.DataFrame:
    """Image score = maximum of the smoothed map (paper) vs mean of its top 1 % pixels, same prototypes.

    Only the image-level metrics can change; pixel metrics are reported for completeness.
    """
    fits = _baselines(backbone, categories, config, fits)
    rows = []
    for rule in rules:
        for data in categories:
            detector = _with(fits[data.name], image_score=rule)
            rows.append(_row("image_score", rule, data, detector.k, score(detector, data)))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- a whole run


ABLATIONS = ("layers", "finch_level", "level_rule", "clustering", "subsampling", "image_size", "sigma", "image_score",
             "npad", "prn")


def ablate_category(run: RunSetup, spec: DatasetSpec, category: str, plan: AblationPlan, config: ProtoADConfig,
                    with_image_size: bool, with_prn: bool = True) -> dict[str, pd.DataFrame]:
    """Every ablation of `plan` on one category, sharing one reference fit (tables by `ABLATIONS` name);
    the image-size and PRN ablations only when asked (`with_image_size`, `with_prn`)."""
    backbone = run.backbone
    data = run.load(spec, category)
    fits = fit_baselines(backbone, [data], config)
    tables = {
        "layers": layer_ablation(backbone, [data], plan.layer_subsets, config, fits),
        "finch_level": finch_level_ablation(backbone, [data], config, fits),
        "level_rule": level_rule_ablation(backbone, [data], fits),
        "clustering": clustering_method_ablation(backbone, [data], plan.clustering_methods, config, fits),
        "subsampling": subsampling_ablation(backbone, [data], plan.strategies, plan.budgets, config, fits),
        "sigma": sigma_ablation(backbone, [data], plan.sigmas, config, fits),
        "image_score": image_score_ablation(backbone, [data], plan.image_score_rules, config, fits),
        "npad": npad_ablation(backbone, data, plan.npad_sweeps),
    }
    if with_prn:
        tables["prn"] = prn_ablation(backbone, data, plan.prn_epochs, plan.prn_seen, {"schedule": plan.prn_schedule},
                                     seed=run.seed, device=run.device)
    del data, fits  # the image-size ablation holds its own embeddings (larger ones at 288 px)
    if with_image_size:
        tables["image_size"] = image_size_ablation(
            backbone, run.root(spec), category, layout=spec.layout, sizes=plan.image_sizes, config=config,
            cache=run.cache, dataset_name=spec.name, batch_size=run.profile.batch_size, device=run.device,
            base_resize=run.profile.resize, base_crop=run.profile.image_size)
    return tables


def run_ablations(run: RunSetup, plan: AblationPlan, config: ProtoADConfig) -> dict[str, pd.DataFrame]:
    """Every ablation on every category of the run, category by category (one category's embeddings in
    memory at a time), each category's tables stored as it finishes so an interrupted run resumes there."""
    store = run.store("ablations", {"plan": asdict(plan), "config": asdict(config)})
    sized = run.category_names[: plan.image_size_categories]
    trained = run.category_names[: plan.prn_categories]
    per_category = []
    for spec, category in run.each_category("ablations"):
        tables = store.load(category)
        if tables is None:
            tables = ablate_category(run, spec, category, plan, config, category in sized, category in trained)
            store.save(tables, category)
        per_category.append(tables)
    return {name: pd.concat([tables[name] for tables in per_category if name in tables], ignore_index=True)
            for name in ABLATIONS}
