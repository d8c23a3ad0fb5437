"""ProtoAD's ablations on cached embeddings, and N-pad's (`npad_ablations`) in the same run (notebook 07).

ProtoAD: layers, FINCH level, the level rule (`level_rule`), clustering method, subsampling, image size, sigma,
image-score rule.
Every ablation takes the categories' cached stride-4 embeddings (`categories.CategoryData`, read a few images
at a time through `embeddings.Embeddings`), changes one setting of ProtoAD at a time, and returns a DataFrame with one row per (setting, category) and the
columns of `METRIC_COLUMNS` (fractions in 0..1, exact floats: round them for display). Everything is
deterministic: subsampling, k-means, coreset and random prototypes are seeded by `ProtoADConfig.seed`.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch

from ..backbones import Backbone
from ..categories import CategoryData, load_category
from ..embeddings import Embeddings, as_embeddings
from ..evaluation import Scored, score
from ..features import FeatureCache, combine_layers
from ..measure import stopwatch
from ..methods.base import split_layers
from ..methods.protoad import ProtoAD, ProtoADConfig, nearest_prototype_distance
from ..methods.protoad.prototypes import PrototypeSet, cluster_prototypes, prototype_inputs
from ..metrics import HEADLINE_METRICS
from ..profiles import DatasetSpec
from ..resume import ResultStore
from ..session import RunSetup
from .ablation_plan import AblationPlan, ablation_plan  # noqa: F401 (ablation_plan: notebook 07 calls ab.ablation_plan)
from .level_rule import level_rule_ablation
from .npad_ablations import npad_ablation
from .prn_ablation import prn_ablation

#: The metrics every ablation reports (fractions): the headline triple.
METRIC_COLUMNS = HEADLINE_METRICS


# --------------------------------------------------------------------------- fit and score


def fit_protoad(backbone: Backbone, data: CategoryData, config: ProtoADConfig | None = None,
                sigma: float = 4.0, train_embeddings: Embeddings | None = None) -> ProtoAD:
    """A ProtoAD fitted (silently) on a category's training embeddings (or the given view of them)."""
    detector = ProtoAD(backbone, sigma=sigma, config=config or ProtoADConfig())
    train = data.train_embeddings if train_embeddings is None else train_embeddings
    detector.progress = False
    detector.fit_embeddings(train)
    return detector.eval()


def protoad_with(backbone: Backbone, found: PrototypeSet, config: ProtoADConfig, sigma: float = 4.0) -> ProtoAD:
    """The ProtoAD `fit_protoad` would give, built from prototypes already found for the same data and config."""
    detector = ProtoAD(backbone, sigma=sigma, config=config)
    detector.progress = False
    return detector.use_prototypes(found).eval()


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


def layer_subset(embeddings: Embeddings | torch.Tensor, backbone: Backbone, layers: Sequence[int]) -> Embeddings:
    """The embedding ProtoAD would see if the backbone tapped only `layers` (1-based indices), as a view
    computed chunk by chunk (no copy; a paper-sized category's embedding is several GB).

    With the first layer kept the grid stays the stride-4 one and the view is the chosen layers' channels
    (a local view: windows and single patch vectors read through it). Without it, each chunk is split back
    into the layers' own maps (`split_layers`) and the chosen ones are combined again (`combine_layers`) on
    the first chosen layer's coarser grid. Every layer: the embeddings themselves.
    """
    if not layers or any(not 1 <= i <= len(backbone.channels) for i in layers):
        raise ValueError(f"layers must be 1-based indices into {backbone.layers}, got {list(layers)}")
    embeddings, chosen = as_embeddings(embeddings), sorted(set(layers))
    if chosen == list(range(1, len(backbone.channels) + 1)):
        return embeddings
    if chosen[0] == 1:
        starts = [0, *itertools.accumulate(backbone.channels)]
        channels = torch.cat([torch.arange(starts[i - 1], starts[i]) for i in chosen])
        return embeddings.mapped(lambda chunk: chunk[:, channels], local=True)

    def combined(chunk: torch.Tensor) -> torch.Tensor:
        maps = split_layers(chunk, backbone.channels, backbone.strides)
        return combine_layers([maps[i - 1] for i in chosen])

    return embeddings.mapped(combined)


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
        hierarchy = prototype_set.hierarchy
        vectors = prototype_inputs(data.train_embeddings, settings, hierarchy, held_out=False).vectors
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
            normal = data.test_embeddings.subset(torch.nonzero(data.labels == 0).flatten())
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
        grid = data.test_embeddings.grid
        rows.append(_row("image_size", f"{size} px", data, detector.k, score(detector, data), image_size=size,
                         resize=resize, grid=f"{grid[0]} x {grid[1]}"))
        del data, detector  # without a cache, one size's temporary embedding files at a time
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
                    index: int, store: ResultStore) -> dict[str, pd.DataFrame]:
    """Every ablation `plan` gives the run's category number `index` (`AblationPlan.ablates`): tables by
    `ABLATIONS` name, and `seconds` (the time each ablation took, without loading the category's embeddings
    and fitting the reference ProtoAD most of them share: both are made on first need, outside any ablation's
    clock). Each ablation's table is stored as it finishes (`store`, unit (category, ablation)), so an
    interrupted category resumes after its last finished ablation."""
    backbone = run.backbone
    shared: dict[str, Any] = {}

    def category_data() -> CategoryData:
        if "data" not in shared:
            shared["data"] = run.load(spec, category)
        return shared["data"]

    def reference_fits() -> dict[str, ProtoAD]:
        if "fits" not in shared:
            shared["fits"] = fit_baselines(backbone, [category_data()], config)
        return shared["fits"]

    tables, seconds = {}, []

    def ablate(name: str, ablation: Callable[..., pd.DataFrame], *inputs: Callable[[], Any]) -> None:
        """Run (or read back) one ablation; its inputs are made before its clock starts."""
        if plan.ablates(name, index):
            def compute() -> tuple[pd.DataFrame, float]:
                arguments = [make() for make in inputs]
                return timed(lambda: ablation(*arguments))

            tables[name], took = store.computed(compute, category, name)
            seconds.append({"category": category, "ablation": name, "seconds": took})

    with_reference = (category_data, reference_fits)
    ablate("layers", lambda data, fits: layer_ablation(backbone, [data], plan.layer_subsets, config, fits),
           *with_reference)
    ablate("finch_level", lambda data, fits: finch_level_ablation(backbone, [data], config, fits), *with_reference)
    ablate("level_rule", lambda data, fits: level_rule_ablation(backbone, [data], fits), *with_reference)
    ablate("clustering", lambda data, fits: clustering_method_ablation(backbone, [data], plan.clustering_methods,
                                                                       config, fits), *with_reference)
    ablate("subsampling", lambda data, fits: subsampling_ablation(backbone, [data], plan.strategies, plan.budgets,
                                                                  config, fits), *with_reference)
    ablate("sigma", lambda data, fits: sigma_ablation(backbone, [data], plan.sigmas, config, fits), *with_reference)
    ablate("image_score", lambda data, fits: image_score_ablation(backbone, [data], plan.image_score_rules, config,
                                                                  fits), *with_reference)
    ablate("npad", lambda data: npad_ablation(backbone, data, plan.npad_sweeps), category_data)
    ablate("prn", lambda data: prn_ablation(backbone, data, plan.prn_epochs, plan.prn_seen,
                                            {"schedule": plan.prn_schedule}, seed=run.seed, device=run.device),
           category_data)
    shared.clear()  # the image-size ablation loads its own embeddings (larger ones at 288 px)
    ablate("image_size", lambda: image_size_ablation(
        backbone, run.root(spec), category, layout=spec.layout, sizes=plan.image_sizes, config=config,
        cache=run.cache, dataset_name=spec.name, batch_size=run.profile.batch_size, device=run.device,
        base_resize=run.profile.resize, base_crop=run.profile.image_size))
    tables["seconds"] = pd.DataFrame(seconds)
    return tables


def timed(compute: Callable[[], pd.DataFrame]) -> tuple[pd.DataFrame, float]:
    """`compute()` and the seconds it took (one decimal)."""
    with stopwatch() as watch:
        table = compute()
    return table, round(watch.seconds, 1)


def run_ablations(run: RunSetup, plan: AblationPlan, config: ProtoADConfig) -> dict[str, pd.DataFrame]:
    """Every ablation on every category of the run, category by category (one category loaded at a time,
    its embeddings read a few images at a time), each (category, ablation) table stored as it finishes so an interrupted run resumes
    after the last finished one. `seconds`: what each ablation took on each category (stored with its table)."""
    store = run.store("ablations", {"plan": asdict(plan), "config": asdict(config)})
    per_category = [ablate_category(run, spec, category, plan, config, index, store)
                    for index, (spec, category) in enumerate(run.each_category("ablations"))]
    return {name: pd.concat([tables[name] for tables in per_category if name in tables], ignore_index=True)
            for name in (*ABLATIONS, "seconds") if any(name in tables for tables in per_category)}
