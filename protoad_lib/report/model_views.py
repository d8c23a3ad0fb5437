"""Tables and figures of the clustering and network notebooks (03, 04): FINCH levels, prototype usage,
projections, clustering-method comparison, network-vs-brute-force checks, anomaly maps, exports.

Every figure has a title and axis labels; functions return Figures / DataFrames / plain numbers and
leave printing to the notebook. Timings are returned separately from the deterministic numbers so a
notebook can show them in a cell that nbval does not compare.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from ..backbones import Backbone
from ..baselines.coreset import GreedyCoresetSampler
from ..bench import PeakMemory
from .. import clustering
from ..clustering import (
    DEFAULT_MAX_PROTOTYPES,
    FinchHierarchy,
    cluster_prototypes,
    finch_hierarchy,
    kmeans_prototypes,
    l2_normalise,
)
from ..metrics import image_auroc, pixel_auroc
from ..model import ProtoAD, nearest_prototype_distance
from .overlays import overlay

__all__ = [
    "training_vectors",
    "TimedHierarchy",
    "timed_finch",
    "hierarchy_table",
    "plot_hierarchy",
    "usage_table",
    "plot_usage",
    "coarse_level",
    "projection_figure",
    "MethodComparison",
    "compare_methods",
    "equivalence_table",
    "pick_examples",
    "anomaly_map_figure",
    "max_abs_diff",
    "end_to_end_diff",
    "onnx_max_diff",
]

#: Patch vectors clustered per category in the demo profile (a stratified subsample of the
#: 16 x 56 x 56 = 50,176 training patches) so FINCH runs in seconds on 2 CPU cores.
def training_vectors(features: torch.Tensor, max_vectors: int, seed: int = 0) -> np.ndarray:
    """The unit patch vectors ``build_prototypes`` clusters: stratified subsample of ``[N, C, h, w]``."""
    return clustering.training_vectors(features, max_vectors, "stratified", seed)


# --------------------------------------------------------------------------- FINCH hierarchy


@dataclass
class TimedHierarchy:
    """A FINCH hierarchy with its cost: wall time and peak extra resident memory."""

    hierarchy: FinchHierarchy
    seconds: float
    peak_mb: float
    n_vectors: int
    dim: int

    @property
    def level(self) -> int:
        """The level ProtoAD uses by default (finest with at most DEFAULT_MAX_PROTOTYPES clusters)."""
        return self.hierarchy.default_level(DEFAULT_MAX_PROTOTYPES)


def timed_finch(vectors: np.ndarray) -> TimedHierarchy:
    """Run FINCH (no progress bar) and measure its time and peak memory."""
    with PeakMemory("cpu") as memory:
        start = time.perf_counter()
        hierarchy = finch_hierarchy(vectors, progress=False)
        seconds = time.perf_counter() - start
    return TimedHierarchy(hierarchy, seconds, memory.peak_mb, int(vectors.shape[0]), int(vectors.shape[1]))


def hierarchy_table(runs: dict[str, TimedHierarchy]) -> pd.DataFrame:
    """One row per category and FINCH level: K, mean cluster size, and whether ProtoAD uses it."""
    rows = []
    for category, run in runs.items():
        for level, k in enumerate(run.hierarchy.num_clusters):
            rows.append({"category": category, "level": level, "K": int(k),
                         "patches per cluster": round(run.n_vectors / k, 1),
                         "used by ProtoAD": "yes" if level == run.level else ""})
    return pd.DataFrame(rows)


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


# --------------------------------------------------------------------------- method comparison


@dataclass
class MethodComparison:
    """FINCH vs k-means vs coreset at equal K: quality numbers and (separately) timings."""

    quality: pd.DataFrame
    timing: pd.DataFrame


def _coreset_prototypes(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    sampler = GreedyCoresetSampler(seed=seed, progress=False)
    picked = sampler.select(torch.from_numpy(vectors), n_samples=k)
    return l2_normalise(vectors[picked.numpy()])


def compare_methods(
    backbone: Backbone,
    categories: Sequence[tuple[str, np.ndarray, TimedHierarchy, torch.Tensor, torch.Tensor, torch.Tensor]],
    image_size: int,
    seed: int = 0,
) -> MethodComparison:
    """Prototypes from the same training vectors by FINCH (its ProtoAD level), spherical k-means and
    greedy coreset, all with FINCH's K; scored on the held-out test set.

    ``categories``: ``(name, training vectors, FINCH run, test embeddings, test labels, test masks)``.
    Quality: mean nearest-prototype distance ``1 - max cos`` of the held-out *normal* test patches
    (lower = prototypes cover normal appearance better), image and pixel AUROC of the resulting
    ProtoAD network (rounded to 4 decimals).
    """
    quality, timing = [], []
    for name, vectors, finch, test_embeddings, labels, masks in categories:
        k = finch.hierarchy.num_clusters[finch.level]
        builders = {
            "FINCH": (lambda: cluster_prototypes(vectors, finch.hierarchy.level_labels(finch.level)), finch.seconds),
            "k-means": (lambda: kmeans_prototypes(vectors, k, seed=seed)[0], None),
            "coreset": (lambda: _coreset_prototypes(vectors, k, seed), None),
        }
        good = labels == 0
        for method, (build, known_seconds) in builders.items():
            start = time.perf_counter()
            prototypes = torch.from_numpy(build())
            seconds = known_seconds if known_seconds is not None else time.perf_counter() - start
            held_out = nearest_prototype_distance(test_embeddings[good], prototypes)
            detector = ProtoAD(backbone, prototypes=prototypes).eval()
            predictions = detector.predict_embeddings(test_embeddings, (image_size, image_size))
            quality.append({
                "category": name, "method": method, "K": int(prototypes.shape[0]),
                "held-out normal distance": round(float(held_out.double().mean()), 4),
                "image AUROC": round(image_auroc(labels, predictions.scores), 4),
                "pixel AUROC": round(pixel_auroc(masks, predictions.maps), 4),
            })
            timing.append({"category": name, "method": method, "K": int(prototypes.shape[0]),
                           "prototype time (s)": round(seconds, 2)})
    return MethodComparison(pd.DataFrame(quality), pd.DataFrame(timing))


# --------------------------------------------------------------------------- 04: network checks


def max_abs_diff(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Largest absolute element-wise difference (computed in float64)."""
    a = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).double()
    b = torch.as_tensor(np.asarray(b) if not isinstance(b, torch.Tensor) else b).double()
    return float((a - b).abs().max())


@torch.inference_mode()
def equivalence_table(detectors: dict[str, ProtoAD], embeddings: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Network head vs brute-force nearest-prototype search on every test patch of each category.

    The head is L2 normalisation + a 1x1 convolution with K prototype kernels + max over K + ``1 - x``;
    the reference computes ``1 - max_k cos(x, m_k)`` with explicit float64 dot products.
    ``max |difference|`` is the exact float difference (for display, round it).
    """
    rows = []
    for category, detector in detectors.items():
        device = detector.head.conv.weight.device
        features = detector.features_from_embedding(embeddings[category].to(device))
        network = detector.patch_scores(features)
        reference = nearest_prototype_distance(features, detector.head.prototypes)
        rows.append({"category": category, "K": detector.k, "patches compared": int(network.numel()),
                     "max |difference|": max_abs_diff(network, reference),
                     "mean patch score": round(float(network.double().mean()), 4)})
    return pd.DataFrame(rows)


@torch.inference_mode()
def end_to_end_diff(detector: ProtoAD, images01: torch.Tensor) -> float:
    """Whole network (images -> maps, scores) vs backbone + brute-force search + the same map head."""
    images01 = images01.to(detector.head.conv.weight.device)
    maps, scores = detector(images01)
    features = detector.features_from_maps(detector.backbone(images01))
    reference = nearest_prototype_distance(features, detector.head.prototypes)
    reference_maps = detector.map_head(reference, images01.shape[-2:])
    return max(max_abs_diff(maps.cpu(), reference_maps.cpu()),
               max_abs_diff(scores.cpu(), reference_maps.amax(dim=(1, 2)).cpu()))


def pick_examples(dataset, n_defective: int = 2) -> list[int]:
    """Indices of the first good test image and the first image of the first ``n_defective`` defect types."""
    first_of: dict[str, int] = {}
    for i, record in enumerate(dataset.samples):
        first_of.setdefault(record.defect_type, i)
    picks = [first_of["good"]] if "good" in first_of else []
    picks += [first_of[d] for d in sorted(first_of) if d != "good"][:n_defective]
    return picks


def anomaly_map_figure(rows: Sequence[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, float]],
                       vmin: float, vmax: float, panel: float = 2.1) -> Figure:
    """One row per example: image, ground-truth mask, anomaly map (shared colour scale), overlay.

    ``rows``: ``(label, image [3,H,W] in 0..1, mask [H,W], anomaly map [H,W], image score)``.
    """
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


def onnx_max_diff(path: str | Path, images01: torch.Tensor, maps: torch.Tensor, scores: torch.Tensor) -> float:
    """Run an exported ONNX detector with onnxruntime (CPU) and compare with torch's outputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: keep the notebook output clean
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    onnx_maps, onnx_scores = session.run(["anomaly_map", "score"], {"images": images01.numpy()})
    return max(max_abs_diff(onnx_maps, maps), max_abs_diff(onnx_scores, scores))
