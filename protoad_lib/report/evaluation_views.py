"""Tables and figures of the evaluation notebook (05): per-category metrics of every registered method,
mean rows, bar charts and overlays.

Metrics are fractions in 0..1. Every figure has a title and axis labels; functions return Figures /
DataFrames and leave display and saving to the notebook.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib import pyplot as plt
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ..experiments.evaluation_study import OverlayExample
from ..methods import REGISTRY, method_label
from ..metrics import HEADLINE_METRICS
from ..overlays import overlay


METRIC_LABELS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO@0.3",
                 "image_f1": "image F1-max", "pixel_f1": "pixel F1-max"}


def mean_label(dataset: str, n_categories: int, complete: Sequence[str] | None) -> str:
    """`mean` for a dataset whose every category ran (comparable with published benchmark means),
    otherwise `mean of N categories` (not comparable). `complete`: None treats every dataset as complete."""
    return "mean" if complete is None or dataset in complete else f"mean of {n_categories} categories"


def results_table(results: pd.DataFrame, decimals: int = 4, complete: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-category metrics with a mean row per dataset and method (see `mean_label`; `complete` from
    `evaluation_study.complete_datasets(run)`), method names spelled out, rounded."""
    metrics = [m for m in METRIC_LABELS if m in results]
    parts = []
    for (dataset, method), group in results.groupby(["dataset", "method"], sort=False):
        label = mean_label(dataset, group["category"].nunique(), complete)
        mean = {"dataset": dataset, "category": label, "method": method,
                **{m: group[m].mean() for m in metrics}, "k": pd.NA, "level": pd.NA}
        parts.append(pd.concat([group, pd.DataFrame([mean])], ignore_index=True))
    table = pd.concat(parts, ignore_index=True)
    order = {m: i for i, m in enumerate(REGISTRY)}
    table["_m"] = table["method"].map(order)
    table["_c"] = table["category"].str.startswith("mean")
    datasets = list(dict.fromkeys(results["dataset"]))
    table["_d"] = table["dataset"].map({d: i for i, d in enumerate(datasets)})
    table = table.sort_values(["_d", "_m", "_c"], kind="stable").drop(columns=["_m", "_c", "_d"])
    table["method"] = table["method"].map(method_label)
    table[metrics] = table[metrics].astype(float).round(decimals)
    return table.reset_index(drop=True)


def _labels_present(labels) -> list[str]:
    """Registry labels (in registry order) among `labels`."""
    present = set(labels)
    return [label for label in dict.fromkeys(method_label(m) for m in REGISTRY) if label in present]


def metric_pivot(results: pd.DataFrame, metric: str = "image_auroc", decimals: int = 4,
                 complete: Sequence[str] | None = None) -> pd.DataFrame:
    """One metric as a (dataset, category) x method table, with each dataset's mean row."""
    table = results_table(results, decimals, complete)
    pivot = table.pivot_table(index=["dataset", "category"], columns="method", values=metric, sort=False)
    columns = _labels_present(pivot.columns)
    pivot = pivot[columns]
    pivot.columns.name = METRIC_LABELS.get(metric, metric)
    return pivot


def timing_table(timings: pd.DataFrame, decimals: int = 2) -> pd.DataFrame:
    """Fit and inference seconds per category and method (machine-dependent)."""
    table = timings.copy()
    table["method"] = table["method"].map(method_label)
    table[["fit_s", "infer_s"]] = table[["fit_s", "infer_s"]].round(decimals)
    return table


# --------------------------------------------------------------------------- figures


def category_bars(results: pd.DataFrame, metrics: Sequence[str] = HEADLINE_METRICS,
                  title: str = "Per-category results", complete: Sequence[str] | None = None) -> Figure:
    """Grouped bars per category (plus each dataset's mean), one bar per method, one panel per metric."""
    table = results_table(results, decimals=6, complete=complete)
    if table["dataset"].nunique() > 1:
        table["label"] = table["dataset"] + "/" + table["category"]
    else:
        table["label"] = table["category"]
    labels = list(dict.fromkeys(table["label"]))
    methods = _labels_present(table["method"])
    colours = {method_label(name): spec.colour for name, spec in REGISTRY.items()}
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6.0, 0.9 * len(labels) * len(methods) / 2 + 2),
                                                       2.6 * len(metrics) + 0.6), squeeze=False)
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(labels))
    for ax, metric in zip(axes[:, 0], metrics):
        lowest = 1.0
        for i, method in enumerate(methods):
            values = table[table["method"] == method].set_index("label")[metric].reindex(labels)
            ax.bar(x + (i - (len(methods) - 1) / 2) * width, values.to_numpy(dtype=float), width,
                   label=method, color=colours.get(method))
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


def overlay_grid(examples: Sequence[OverlayExample], panel: float = 1.8) -> Figure:
    """Qualitative results (`evaluation_study.overlay_examples`): per example test image, the image with the
    ground-truth outline, then each method's anomaly map over the image, each with a colour bar. Colour scale
    per method and category from its maps of the good test images (`MethodResult.normal_scale`: 1st..99.9th
    percentile), so red means "beyond the most extreme normal pixels" in every method and outliers cannot
    wash a method out."""
    methods = list(examples[0].maps)
    fig, axes = plt.subplots(len(examples), 1 + len(methods), figsize=(panel * 1.25 * (1 + len(methods)) + 0.4,
                                                                       panel * len(examples) + 0.7), squeeze=False)
    for r, example in enumerate(examples):
        image, mask = example.sample["image"], example.sample["mask"][0].numpy()
        label = f"{example.category}\n{example.sample['defect_type']}"
        axes[r, 0].imshow(np.clip(image.permute(1, 2, 0).numpy(), 0, 1))
        if mask.any():
            axes[r, 0].contour(mask, levels=[0.5], colors="red", linewidths=0.8)
        axes[r, 0].set_ylabel(label, fontsize=8)
        for c, method in enumerate(methods, start=1):
            anomaly_map, (vmin, vmax), score = example.maps[method]
            axes[r, c].imshow(overlay(image, anomaly_map, vmin, vmax))
            bar = fig.colorbar(ScalarMappable(Normalize(vmin, vmax), cmap="jet"), ax=axes[r, c], fraction=0.046,
                               pad=0.03, ticks=[vmin, vmax])
            bar.ax.set_yticklabels([f"{vmin:.3g}", f"{vmax:.3g}"], fontsize=6)
            if mask.any():
                axes[r, c].contour(mask, levels=[0.5], colors="white", linewidths=0.7)
            axes[r, c].set_title(f"score {score:.3g}", fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("image (red = defect)", fontsize=8)
    for c, method in enumerate(methods, start=1):
        axes[0, c].set_title(f"{method_label(method)}\n{axes[0, c].get_title()}", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("x (px)", fontsize=7)
    fig.suptitle("Anomaly maps over the test images (colour bar: a method's range on the good test images; "
                 "white = ground truth)",
                 fontsize=9)
    fig.tight_layout()
    return fig


