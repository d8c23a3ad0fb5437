"""Tables and figures of the evaluation and ablation notebooks (05, 07): per-category metrics of ProtoAD,
PatchCore and PaDiM, the cited published numbers beside ours, bar charts, overlays and ablation plots.

Metrics are fractions in 0..1 in our tables and percent in the published ones (as printed in their
sources); comparison tables put both in percent. Every figure has a title and axis labels; functions
return Figures / DataFrames and leave display and saving to the notebook.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from ..ablations import METRIC_COLUMNS, fit_and_score
from ..backbones import Backbone
from ..bench import detector_k
from ..detector import Predictions
from ..evaluation import CategoryData, make_detector
from ..model import ProtoADConfig
from ..profiles import REPO_ROOT
from .model_views import pick_examples
from .overlays import overlay

__all__ = [
    "PUBLISHED_DIR",
    "METHODS",
    "METHOD_LABELS",
    "METRIC_LABELS",
    "Evaluation",
    "method_options",
    "evaluate_methods",
    "results_table",
    "metric_pivot",
    "timing_table",
    "complete_datasets",
    "load_published",
    "published_means",
    "published_per_category",
    "comparison_table",
    "category_bars",
    "overlay_grid",
    "ablation_table",
    "ablation_plot",
    "ablation_summary",
]

PUBLISHED_DIR = REPO_ROOT / "data" / "paper_tables"
METHODS = ("protoad", "patchcore", "padim")
METHOD_LABELS = {"protoad": "ProtoAD", "patchcore": "PatchCore-10%", "padim": "PaDiM"}
METRIC_LABELS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO@0.3",
                 "image_f1": "image F1-max", "pixel_f1": "pixel F1-max"}
#: Which published rows each of our methods is set against: (method in the CSVs, text in `setting`).
PUBLISHED_MATCH = {"patchcore": ("PatchCore", "coreset 10%"), "padim": ("PaDiM", "Rd550")}
_COLOURS = {"protoad": "tab:blue", "patchcore": "tab:orange", "padim": "tab:green"}


# --------------------------------------------------------------------------- running the methods


@dataclass
class Evaluation:
    """Every method on every category: metrics (one row each), timings, and the predictions."""

    results: pd.DataFrame
    timings: pd.DataFrame
    categories: list[tuple[str, CategoryData]]
    predictions: dict[tuple[str, str], Predictions] = field(default_factory=dict)


def method_options(protoad_max_vectors: int | None = None, seed: int = 0) -> dict[str, dict]:
    """Constructor options of each method: ProtoAD (FINCH, optional vector budget), PatchCore-10%, PaDiM."""
    config = ProtoADConfig(seed=seed) if protoad_max_vectors is None else \
        ProtoADConfig(max_vectors=int(protoad_max_vectors), seed=seed)
    return {"protoad": {"config": config}, "patchcore": {"coreset_fraction": 0.1, "seed": seed}, "padim": {}}


def evaluate_methods(backbone: Backbone, categories: Sequence[tuple[str, CategoryData]],
                     methods: Sequence[str] = METHODS, options: Mapping[str, dict] | None = None,
                     device: str | None = None) -> Evaluation:
    """Fit each method on each category's cached train embeddings and score its test set.

    ``categories``: ``(dataset name, CategoryData)`` pairs (``ablations.load_categories``). Results have
    one row per (dataset, category, method) with image/pixel AUROC, AUPRO, image/pixel F1-max
    (fractions) and ``k`` (ProtoAD prototypes / PatchCore memory-bank size; empty for PaDiM).
    Fitting and scoring run on the CPU (the cached embeddings live there); ``device`` (e.g. "cuda") is
    used where a method can move its expensive fitting step there (PatchCore's coreset selection).
    """
    options = method_options() if options is None else options
    rows, timings, predictions = [], [], {}
    for dataset, data in categories:
        for method in methods:
            detector = make_detector(method, backbone, **options.get(method, {}))
            if device is not None and hasattr(detector, "coreset_device"):
                detector.coreset_device = device
            scored = fit_and_score(detector, data, full_metrics=True)
            rows.append({"dataset": dataset, "category": data.name, "method": method, **scored.metrics,
                         "k": detector_k(detector)})
            timings.append({"dataset": dataset, "category": data.name, "method": method,
                            "fit_s": scored.fit_s, "infer_s": scored.infer_s,
                            "n_train": len(data.train), "n_test": len(data.test)})
            predictions[(data.name, method)] = scored.predictions
            del detector
    results = pd.DataFrame(rows)
    results["k"] = results["k"].astype("Int64")
    return Evaluation(results, pd.DataFrame(timings), list(categories), predictions)


def results_table(results: pd.DataFrame, decimals: int = 4) -> pd.DataFrame:
    """Per-category metrics with a ``mean`` row per dataset and method (mean over its categories),
    method names spelled out, rounded."""
    metrics = [m for m in METRIC_LABELS if m in results]
    parts = []
    for (dataset, method), group in results.groupby(["dataset", "method"], sort=False):
        mean = {"dataset": dataset, "category": "mean", "method": method,
                **{m: group[m].mean() for m in metrics}, "k": pd.NA}
        parts.append(pd.concat([group, pd.DataFrame([mean])], ignore_index=True))
    table = pd.concat(parts, ignore_index=True)
    order = {m: i for i, m in enumerate(METHODS)}
    table["_m"] = table["method"].map(order)
    table["_c"] = table["category"].eq("mean")
    datasets = list(dict.fromkeys(results["dataset"]))
    table["_d"] = table["dataset"].map({d: i for i, d in enumerate(datasets)})
    table = table.sort_values(["_d", "_m", "_c"], kind="stable").drop(columns=["_m", "_c", "_d"])
    table["method"] = table["method"].map(METHOD_LABELS).fillna(table["method"])
    table[metrics] = table[metrics].astype(float).round(decimals)
    return table.reset_index(drop=True)


def metric_pivot(results: pd.DataFrame, metric: str = "image_auroc", decimals: int = 4) -> pd.DataFrame:
    """One metric as a (dataset, category) x method table, with each dataset's mean row."""
    table = results_table(results, decimals)
    pivot = table.pivot_table(index=["dataset", "category"], columns="method", values=metric, sort=False)
    columns = [METHOD_LABELS[m] for m in METHODS if METHOD_LABELS[m] in pivot.columns]
    pivot = pivot[columns]
    pivot.columns.name = METRIC_LABELS.get(metric, metric)
    return pivot


def timing_table(timings: pd.DataFrame, decimals: int = 2) -> pd.DataFrame:
    """Fit and inference seconds per category and method (machine-dependent)."""
    table = timings.copy()
    table["method"] = table["method"].map(METHOD_LABELS).fillna(table["method"])
    table[["fit_s", "infer_s"]] = table[["fit_s", "infer_s"]].round(decimals)
    return table


def complete_datasets(run) -> list[str]:
    """Datasets of a run (``report.data_views.RunSetup``) whose categories were all selected: only
    their means are comparable with published means over the whole benchmark."""
    selected = set(run.category_names)
    return [spec.name for spec in run.profile.datasets if set(spec.categories) <= selected]


# --------------------------------------------------------------------------- published numbers


def load_published(directory: str | Path = PUBLISHED_DIR) -> pd.DataFrame:
    """All cited published numbers (``data/paper_tables/*.csv``), long format, percent, with ``file``."""
    directory = Path(directory)
    files = sorted(directory.glob("*.csv"))
    if not files:
        raise FileNotFoundError(f"no published tables (*.csv) in {directory}; see data/paper_tables/README.md")
    frames = [pd.read_csv(path).assign(file=path.name) for path in files]
    published = pd.concat(frames, ignore_index=True)
    missing = {"dataset", "category", "method", "setting", "metric", "value", "source"} - set(published.columns)
    if missing:
        raise ValueError(f"published tables in {directory} lack columns {sorted(missing)}")
    return published


def _short_source(row: pd.Series) -> str:
    source = str(row["source"])
    if source.startswith("amazon-science/patchcore-inspection"):
        return "patchcore-inspection README" if "README" in source else "patchcore-inspection results.csv"
    if source.startswith("xiahaifeng1995"):
        return "xiahaifeng1995 PaDiM README"
    if source.startswith("Roth et al."):
        return "Roth et al. CVPR 2022 (paper)"
    if source.startswith("Defard et al."):
        return "Defard et al. ICPR-W 2020 (paper)"
    return source.split(",")[0]


def published_means(published: pd.DataFrame, dataset: str = "mvtec") -> pd.DataFrame:
    """Published benchmark means (percent): one row per (method, setting, source), one column per metric."""
    means = published[(published["dataset"] == dataset) & (published["category"] == "mean")].copy()
    means["source (short)"] = means.apply(_short_source, axis=1)
    table = means.pivot_table(index=["method", "setting", "source (short)"], columns="metric", values="value",
                              sort=False)
    columns = [m for m in ("image_auroc", "pixel_auroc", "aupro") if m in table.columns]
    table = table[columns].rename(columns=METRIC_LABELS)
    table.columns.name = f"{dataset} mean (%)"
    return table


def published_per_category(published: pd.DataFrame, dataset: str = "mvtec") -> pd.DataFrame:
    """Published per-category numbers (percent): category x (method, source, metric)."""
    rows = published[(published["dataset"] == dataset) & (published["category"] != "mean")].copy()
    rows["source (short)"] = rows.apply(_short_source, axis=1)
    rows["metric"] = rows["metric"].map(METRIC_LABELS).fillna(rows["metric"])
    table = rows.pivot_table(index="category", columns=["method", "source (short)", "metric"], values="value",
                             sort=False)
    return table


def comparison_table(results: pd.DataFrame, published: pd.DataFrame,
                     complete: Iterable[str] = (), decimals: int = 2) -> pd.DataFrame:
    """Our numbers beside the cited published ones for the same dataset, category, method and metric.

    Percent; ``difference`` = ours - published (percentage points). Per-category rows where a source has
    per-category numbers; the ``mean`` row only for datasets in ``complete`` (all categories run).
    Empty when nothing matches (e.g. the synthetic demo data has no published counterpart).
    """
    complete = set(complete)
    table = results_table(results, decimals=12)
    label_to_method = {v: k for k, v in METHOD_LABELS.items()}
    rows = []
    for _, ours in table.iterrows():
        method = label_to_method.get(ours["method"], ours["method"])
        if method not in PUBLISHED_MATCH:
            continue
        if ours["category"] == "mean" and ours["dataset"] not in complete:
            continue
        name, setting = PUBLISHED_MATCH[method]
        match = published[(published["dataset"] == ours["dataset"]) & (published["category"] == ours["category"])
                          & (published["method"] == name) & published["setting"].str.contains(setting, regex=False)]
        for _, ref in match.iterrows():
            if ref["metric"] not in ours or pd.isna(ours[ref["metric"]]):
                continue
            value = 100 * float(ours[ref["metric"]])
            rows.append({"dataset": ours["dataset"], "category": ours["category"], "method": ours["method"],
                         "metric": METRIC_LABELS.get(ref["metric"], ref["metric"]),
                         "ours (%)": round(value, decimals), "published (%)": float(ref["value"]),
                         "difference (pp)": round(value - float(ref["value"]), decimals),
                         "source": _short_source(ref)})
    columns = ["dataset", "category", "method", "metric", "ours (%)", "published (%)", "difference (pp)", "source"]
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------- figures


def category_bars(results: pd.DataFrame, metrics: Sequence[str] = ("image_auroc", "pixel_auroc", "aupro"),
                  title: str = "Per-category results") -> Figure:
    """Grouped bars per category (plus each dataset's mean), one bar per method, one panel per metric."""
    table = results_table(results, decimals=6)
    if table["dataset"].nunique() > 1:
        table["label"] = table["dataset"] + "/" + table["category"]
    else:
        table["label"] = table["category"]
    labels = list(dict.fromkeys(table["label"]))
    methods = [METHOD_LABELS[m] for m in METHODS if METHOD_LABELS[m] in set(table["method"])]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6.0, 0.9 * len(labels) * len(methods) / 2 + 2),
                                                       2.6 * len(metrics) + 0.6), squeeze=False)
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(labels))
    for ax, metric in zip(axes[:, 0], metrics):
        lowest = 1.0
        for i, method in enumerate(methods):
            values = table[table["method"] == method].set_index("label")[metric].reindex(labels)
            key = next(k for k, v in METHOD_LABELS.items() if v == method)
            ax.bar(x + (i - (len(methods) - 1) / 2) * width, values.to_numpy(dtype=float), width,
                   label=method, color=_COLOURS.get(key))
            lowest = min(lowest, float(np.nanmin(values.to_numpy(dtype=float))))
        ax.set_ylim(max(0.0, lowest - 0.05), 1.0 + 0.005)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=30 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.set_xlabel("category")
        ax.grid(axis="y", alpha=0.3)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / fig.get_figheight()))
    fig.legend(handles, names, ncol=len(methods), fontsize=8, loc="upper center",
               bbox_to_anchor=(0.5, 1 - 0.3 / fig.get_figheight()), frameon=False)
    return fig


def overlay_grid(evaluation: Evaluation, n_defective: int = 2, methods: Sequence[str] = METHODS,
                 panel: float = 1.8) -> Figure:
    """Qualitative results: per category the first good test image and the first image of
    ``n_defective`` defect types; columns: image with the ground-truth outline, then each method's
    anomaly map over the image (colour scale per method and category: its min..max over the test set)."""
    rows = []
    for _, data in evaluation.categories:
        scales = {}
        for method in methods:
            maps = evaluation.predictions[(data.name, method)].maps
            scales[method] = (float(maps.min()), float(maps.max()))
        for index in pick_examples(data.test, n_defective):
            rows.append((data, index, scales))
    fig, axes = plt.subplots(len(rows), 1 + len(methods), figsize=(panel * (1 + len(methods)) + 0.4,
                                                                   panel * len(rows) + 0.7), squeeze=False)
    for r, (data, index, scales) in enumerate(rows):
        sample = data.test[index]
        image, mask = sample["image"], sample["mask"][0].numpy()
        label = f"{data.name}\n{data.test.samples[index].defect_type}"
        axes[r, 0].imshow(np.clip(image.permute(1, 2, 0).numpy(), 0, 1))
        if mask.any():
            axes[r, 0].contour(mask, levels=[0.5], colors="red", linewidths=0.8)
        axes[r, 0].set_ylabel(label, fontsize=8)
        for c, method in enumerate(methods, start=1):
            predictions = evaluation.predictions[(data.name, method)]
            vmin, vmax = scales[method]
            axes[r, c].imshow(overlay(image, predictions.maps[index], vmin, vmax))
            if mask.any():
                axes[r, c].contour(mask, levels=[0.5], colors="white", linewidths=0.7)
            axes[r, c].set_title(f"score {float(predictions.scores[index]):.3g}", fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("image (red = defect)", fontsize=8)
    for c, method in enumerate(methods, start=1):
        axes[0, c].set_title(f"{METHOD_LABELS[method]}\n{axes[0, c].get_title()}", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("x (px)", fontsize=7)
    fig.suptitle("Anomaly maps over the test images (jet: low..high per method and category; white = ground truth)",
                 fontsize=9)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- ablations (07)


def ablation_table(table: pd.DataFrame, decimals: int = 4, with_mean: bool = True) -> pd.DataFrame:
    """An ablation's rows rounded for display, with a ``mean`` row per setting when there are several
    categories (numbers of the reference setting are identical across ablations by construction)."""
    out = table.copy()
    integers = [c for c in out.columns if pd.api.types.is_integer_dtype(out[c])]
    flags = [c for c in out.columns if pd.api.types.is_bool_dtype(out[c])]
    if with_mean and out["category"].nunique() > 1:
        means = out.groupby("setting", sort=False)[list(METRIC_COLUMNS)].mean().reset_index()
        means["category"] = "mean"
        means["ablation"] = out["ablation"].iloc[0]
        out = pd.concat([out, means], ignore_index=True)
        order = {s: i for i, s in enumerate(dict.fromkeys(table["setting"]))}
        out["_s"] = out["setting"].map(order)
        out = out.sort_values(["_s"], kind="stable").drop(columns="_s").reset_index(drop=True)
    out[list(METRIC_COLUMNS)] = out[list(METRIC_COLUMNS)].astype(float).round(decimals)
    for column in integers:
        out[column] = out[column].astype("Int64")
    for column in flags:
        out[column] = out[column].astype("boolean")
    return out


def ablation_plot(table: pd.DataFrame, x: str = "setting", title: str | None = None, log_x: bool = False,
                  xlabel: str | None = None, metrics: Sequence[str] = METRIC_COLUMNS) -> Figure:
    """Metric vs setting, one line per category (numeric ``x`` as a line plot, otherwise categorical)."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.0 * len(metrics), 3.3), squeeze=False)
    numeric = pd.api.types.is_numeric_dtype(table[x])
    order = list(dict.fromkeys(table[x]))
    for ax, metric in zip(axes[0], metrics):
        for category, group in table.groupby("category", sort=False):
            if numeric:
                group = group.sort_values(x)
                xs = group[x].to_numpy(dtype=float)
            else:
                group = group.set_index(x).reindex(order).reset_index()
                xs = np.arange(len(order))
            ax.plot(xs, group[metric].to_numpy(dtype=float), marker="o", label=str(category))
            if "default" in group:
                chosen = group["default"].fillna(False).astype(bool).to_numpy()
                ax.scatter(xs[chosen], group[metric].to_numpy(dtype=float)[chosen], s=120, facecolors="none",
                           edgecolors="black", zorder=3)
        if not numeric:
            ax.set_xticks(np.arange(len(order)))
            ax.set_xticklabels([str(o) for o in order], rotation=30 if len(order) > 4 else 0,
                               ha="right" if len(order) > 4 else "center", fontsize=8)
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, title="category", title_fontsize=8)
    ablation = table["ablation"].iloc[0] if "ablation" in table and len(table) else ""
    title = title or f"ProtoAD ablation: {ablation}"
    if "default" in table:
        title += " (circled: the level ProtoAD uses)"
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def ablation_summary(tables: Sequence[pd.DataFrame], decimals: int = 4) -> pd.DataFrame:
    """One row per (ablation, setting): metrics averaged over the categories, and the categories' K."""
    rows = []
    for table in tables:
        for (ablation, setting), group in table.groupby(["ablation", "setting"], sort=False):
            rows.append({"ablation": ablation, "setting": setting, "categories": group["category"].nunique(),
                         "K": "/".join(str(int(k)) for k in group["K"]),
                         **{m: round(float(group[m].mean()), decimals) for m in METRIC_COLUMNS}})
    return pd.DataFrame(rows)
