"""Tables and figures of the clustering and network notebooks (03, 04): FINCH levels, prototype usage,
projections, anomaly maps.

Every figure has a title and axis labels; functions return Figures / DataFrames / plain numbers and
leave printing to the notebook. Timings are returned separately from the deterministic numbers so a
notebook can show them in a cell that nbval does not compare.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from ..experiments.network_study import DIFFERENCES
from ..experiments.prototype_study import TimedHierarchy
from ..methods.protoad.prototypes import DEFAULT_MAX_PROTOTYPES, FinchHierarchy, cluster_prototypes
from ..overlays import overlay


# --------------------------------------------------------------------------- FINCH hierarchy


def hierarchy_table(runs: dict[str, TimedHierarchy]) -> pd.DataFrame:
    """One row per category and FINCH level: K, mean cluster size, and whether ProtoAD uses it."""
    rows = []
    for category, run in runs.items():
        for level, k in enumerate(run.hierarchy.num_clusters):
            rows.append({"category": category, "level": level, "K": int(k),
                         "patches per cluster": round(run.n_vectors / k, 1),
                         "used by ProtoAD": "yes" if level == run.level else ""})
    return pd.DataFrame(rows)


def cost_table(runs: dict[str, TimedHierarchy]) -> pd.DataFrame:
    """Per category: vectors clustered, their dimension and size, FINCH levels, and the recipe's time and peak
    extra memory (measurements of this machine)."""
    return pd.DataFrame([
        {"category": category, "vectors": r.n_vectors, "dim": r.dim,
         "input MB": round(r.n_vectors * r.dim * 4 / 2**20, 1), "levels": len(r.hierarchy.num_clusters),
         "time (s)": round(r.seconds, 2), "peak extra memory (MB)": round(r.peak_mb, 1)}
        for category, r in runs.items()
    ])


def plot_hierarchy(table: pd.DataFrame) -> Figure:
    """K per FINCH level (log scale), one line per category; the level ProtoAD uses is circled."""
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    for category, group in table.groupby("category", sort=False):
        chosen = group[group["used by ProtoAD"] == "yes"]
        used = ", ".join(f"level {r.level}: K={r.K}" for r in chosen.itertuples())
        (line,) = ax.plot(group.level, group.K, marker="o", label=f"{category} (used {used})")
        ax.scatter(chosen.level, chosen.K, s=160, facecolors="none", edgecolors=line.get_color(), linewidths=1.5)
    ax.axhline(DEFAULT_MAX_PROTOTYPES, color="grey", linestyle=":", linewidth=1,
               label=f"max prototypes ({DEFAULT_MAX_PROTOTYPES})")
    ax.set_yscale("log")
    ax.set_xlabel("FINCH partition level (0 = finest)")
    ax.set_ylabel("number of clusters K (log)")
    ax.set_xticks(sorted(table.level.unique()))
    ax.set_title("FINCH hierarchy: clusters per level")
    ax.legend(title="category (circled = prototype level)", fontsize=8, title_fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- prototype usage


def usage_table(usages: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per category: K, unused prototypes, patches per prototype (median, max) and the top-10 share."""
    rows = []
    for category, usage in usages.items():
        total = int(usage.sum())
        top = np.sort(usage)[::-1][:10].sum()
        rows.append({"category": category, "K": len(usage), "patches": total,
                     "unused prototypes": int((usage == 0).sum()),
                     "median patches / prototype": float(np.median(usage)),
                     "max patches / prototype": int(usage.max()),
                     "share of top-10 prototypes": round(float(top / max(total, 1)), 4)})
    return pd.DataFrame(rows)


def plot_usage(usages: dict[str, np.ndarray]) -> Figure:
    """Histogram of how many training patches pick each prototype as their nearest (log x)."""
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    biggest = max(int(u.max()) for u in usages.values())
    smallest = max(1, min(int(u.min()) for u in usages.values()))
    bins = np.unique(np.round(np.logspace(np.log10(smallest), np.log10(max(biggest, smallest + 1)) + 0.02,
                                          30)).astype(int))
    for category, usage in usages.items():
        ax.hist(np.maximum(usage, 1), bins=bins, histtype="step", linewidth=1.6,
                label=f"{category} (K={len(usage)})")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("training patches whose nearest prototype it is (log)")
    ax.set_ylabel("number of prototypes")
    ax.set_title("Prototype usage on the training patches")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- 2-D projection


def coarse_level(hierarchy: FinchHierarchy, max_k: int = 12) -> int:
    """The finest level with at most ``max_k`` clusters (few enough to tell apart by colour)."""
    return hierarchy.default_level(max_k)


def _pca_2d(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the top-2 principal axes (sign fixed: largest loading positive) of ``points``."""
    mean = points.mean(axis=0)
    cov = np.cov((points - mean).astype(np.float64), rowvar=False)
    values, vectors = np.linalg.eigh(cov)
    axes = vectors[:, np.argsort(values)[::-1][:2]].T
    signs = np.sign(axes[np.arange(2), np.abs(axes).argmax(axis=1)])
    return mean, axes * signs[:, None]


def projection_figure(panels: Sequence[tuple[str, np.ndarray, FinchHierarchy, int]], n_points: int = 4000,
                      seed: int = 0, max_colours: int = 12) -> Figure:
    """PCA of the training patch vectors per category, coloured by a coarse FINCH level.

    ``panels``: ``(category, vectors, hierarchy, level used for prototypes)``. Points: a seeded
    random subset of the patch vectors, coloured by their cluster at the finest level with at
    most ``max_colours`` clusters; stars: that level's prototypes; black dots: the prototypes of the
    level ProtoAD uses. The PCA is fitted on the plotted subset.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    for ax, (category, vectors, hierarchy, level) in zip(axes[0], panels):
        rng = np.random.default_rng(seed)
        subset = np.sort(rng.choice(len(vectors), size=min(n_points, len(vectors)), replace=False))
        coarse = coarse_level(hierarchy, max_colours)
        coarse_labels = hierarchy.level_labels(coarse)
        mean, pcs = _pca_2d(vectors[subset])
        xy = (vectors[subset] - mean) @ pcs.T
        _, colour_index = np.unique(coarse_labels, return_inverse=True)
        cmap = plt.get_cmap("tab20" if colour_index.max() >= 10 else "tab10")
        ax.scatter(xy[:, 0], xy[:, 1], c=colour_index[subset], cmap=cmap, s=4, alpha=0.5, linewidths=0,
                   vmin=0, vmax=max(colour_index.max(), 1))
        fine = (cluster_prototypes(vectors, hierarchy.level_labels(level)) - mean) @ pcs.T
        ax.scatter(fine[:, 0], fine[:, 1], c="black", s=5, label=f"prototypes, level {level} (K={len(fine)})")
        big = (cluster_prototypes(vectors, coarse_labels) - mean) @ pcs.T
        ax.scatter(big[:, 0], big[:, 1], c=np.arange(len(big)), cmap=cmap, marker="*", s=260,
                   edgecolors="black", linewidths=0.8, vmin=0, vmax=max(colour_index.max(), 1),
                   label=f"prototypes, level {coarse} (K={len(big)}, = colours)")
        ax.set_xlabel("principal component 1")
        ax.set_ylabel("principal component 2")
        ax.set_title(f"{category}: {len(subset)} of {len(vectors)} training patches", fontsize=10)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("2-D PCA of the L2-normalised patch vectors, coloured by FINCH cluster", fontsize=11)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- 04: network checks


def equivalence_table(equivalence: pd.DataFrame, tolerance: float = 1e-5) -> pd.DataFrame:
    """The proof's rows for reading (`network_study.Networks.equivalence`): K, patches compared, mean patch
    score, and whether both of a category's differences from brute force are below ``tolerance``. The exact
    differences are left out: their last bits depend on the number of threads."""
    differences = list(DIFFERENCES)
    below = equivalence[differences].max(axis=1) < tolerance
    label = f"below {np.format_float_scientific(tolerance, exp_digits=1, trim='-')}"
    return equivalence.drop(columns=differences).assign(**{label: below})


def anomaly_map_figure(rows: Sequence[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, float]],
                       vmin: float | None = None, vmax: float | None = None, panel: float = 2.1) -> Figure:
    """One row per example: image, ground-truth mask, anomaly map (shared colour scale), overlay.

    ``rows``: ``(label, image [3,H,W] in 0..1, mask [H,W], anomaly map [H,W], image score)``
    (`network_study.example_maps`); the colour scale defaults to the maps' overall min..max.
    """
    vmin = min(float(r[3].min()) for r in rows) if vmin is None else vmin
    vmax = max(float(r[3].max()) for r in rows) if vmax is None else vmax
    fig, axes = plt.subplots(len(rows), 4, figsize=(panel * 4 + 1.0, panel * len(rows) + 0.6), squeeze=False,
                             layout="constrained")
    image_artist = None
    for r, (label, image, mask, amap, score) in enumerate(rows):
        ax_img, ax_mask, ax_map, ax_over = axes[r]
        mask_np = np.asarray(mask, dtype=np.float32)
        ax_img.imshow(np.clip(image.permute(1, 2, 0).numpy(), 0, 1))
        ax_img.set_ylabel(label, fontsize=8)
        ax_mask.imshow(mask_np, cmap="gray", vmin=0, vmax=1)
        image_artist = ax_map.imshow(np.asarray(amap), cmap="jet", vmin=vmin, vmax=vmax)
        ax_over.imshow(overlay(image, amap, vmin, vmax))
        if mask_np.any():
            ax_over.contour(mask_np, levels=[0.5], colors="white", linewidths=0.8)
        ax_map.set_title(f"score {score:.3f}", fontsize=8)
        for ax in (ax_img, ax_mask, ax_map, ax_over):
            ax.set_xticks([])
            ax.set_yticks([])
        if r == 0:
            ax_img.set_title("image", fontsize=9)
            ax_mask.set_title("ground truth", fontsize=9)
            ax_over.set_title("overlay (white = defect)", fontsize=9)
    for ax, text in zip(axes[-1], ("x (px)", "x (px)", "x (px)", "x (px)")):
        ax.set_xlabel(text, fontsize=7)
    if image_artist is not None:
        cbar = fig.colorbar(image_artist, ax=axes, location="right", shrink=min(1.0, 3.0 / len(rows)))
        cbar.set_label("anomaly score 1 - max cos", fontsize=8)
    fig.suptitle("ProtoAD anomaly maps (bilinear upsampling + Gaussian sigma 4; one colour scale)", fontsize=10)
    return fig


