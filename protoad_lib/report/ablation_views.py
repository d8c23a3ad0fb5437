"""Tables and figures of the ablation notebook (07): rounded ablation tables with mean rows, metric-vs-setting
plots, and the one-row-per-setting summary."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from ..experiments.ablations import METRIC_COLUMNS
from .evaluation_views import METRIC_LABELS

#: Columns that are measurements of this machine (shown apart, never in the compared tables).
MACHINE_DEPENDENT = ("prototype_s", "head_ms")
#: Columns that are not one number per row (PRN's loss curves): plotted, never tabulated.
SERIES = ("history",)


def ablation_table(table: pd.DataFrame, decimals: int = 4, with_mean: bool = True) -> pd.DataFrame:
    """An ablation's rows rounded for display, with a ``mean`` row per setting when there are several
    categories (numbers of the reference setting are identical across ablations by construction).
    Timing columns (`MACHINE_DEPENDENT`) are left out; other float columns are rounded too."""
    out = table.drop(columns=[c for c in (*MACHINE_DEPENDENT, *SERIES) if c in table])
    integers = [c for c in out.columns if pd.api.types.is_integer_dtype(out[c])]
    flags = [c for c in out.columns if pd.api.types.is_bool_dtype(out[c])]
    if with_mean and out["category"].nunique() > 1:
        means = out.groupby(["ablation", "setting"], sort=False)[list(METRIC_COLUMNS)].mean().reset_index()
        means["category"] = "mean"
        out = pd.concat([out, means], ignore_index=True)
        order = {s: i for i, s in enumerate(dict.fromkeys(table["setting"]))}
        out["_s"] = out["setting"].map(order)
        out = out.sort_values(["_s"], kind="stable").drop(columns="_s").reset_index(drop=True)
    floats = [c for c in out.columns if pd.api.types.is_float_dtype(out[c])]
    out[floats] = out[floats].astype(float).round(decimals)
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
                positions = group[x].map({setting: index for index, setting in enumerate(order)})
                group = group.assign(position=positions).sort_values("position", kind="stable")
                xs = group["position"].to_numpy()
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


def loss_curve_figure(table: pd.DataFrame) -> Figure:
    """PRN's mean training loss per epoch, one line per (category, setting) of its ablation."""
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for _, row in table.iterrows():
        history = list(row["history"])
        ax.plot(range(1, len(history) + 1), history, marker=".", label=f"{row['category']}: {row['setting']}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean training loss (SmoothL1 + 5 x focal)")
    ax.set_title("PRN training loss", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
