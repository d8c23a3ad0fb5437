"""Tables and figures of the data and feature notebooks (01, 02), drawn from what `experiments.data_study` read.

Every figure has a title and axis labels; every function returns the Figure or DataFrame and leaves
displaying to the notebook. Paths shown to readers are relative to the repository, numbers are
rounded, and nothing prints progress bars, so re-executed notebooks give identical text outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from ..experiments.data_study import LayerMap

# --------------------------------------------------------------------------- 01: data


def count_summary(counts: pd.DataFrame) -> pd.DataFrame:
    """One row per category: train good, test good, test anomalous, number of defect types."""
    rows = []
    for (dataset, category), group in counts.groupby(["dataset", "category"], sort=False):
        test = group[group.split == "test"]
        rows.append({
            "dataset": dataset, "category": category,
            "train good": int(group[(group.split == "train")].images.sum()),
            "test good": int(test[test.label == "good"].images.sum()),
            "test anomalous": int(test[test.label == "anomalous"].images.sum()),
            "defect types": int((test.label == "anomalous").sum()),
        })
    return pd.DataFrame(rows)


def _image_hw3(image: torch.Tensor) -> np.ndarray:
    return np.clip(image.permute(1, 2, 0).numpy(), 0, 1)


def sample_grid(per_category: Sequence[tuple[str, Sequence[tuple[str, dict]]]], profile: str,
                panel: float = 1.9) -> Figure:
    """Two rows per category: sample images (mask outlined in red) and their ground-truth masks.

    ``per_category``: ``(category, [(kind, sample)])`` (`data_study.sample_images`: the first
    training image, the first good test image, the first test image of each defect type), after the
    ``profile``'s resize + center crop.
    """
    n_cols = max(len(p) for _, p in per_category)
    n_rows = 2 * len(per_category)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(panel * n_cols, panel * n_rows + 0.6), squeeze=False)
    for r, (category, picks) in enumerate(per_category):
        for c in range(n_cols):
            ax_img, ax_mask = axes[2 * r, c], axes[2 * r + 1, c]
            for ax in (ax_img, ax_mask):
                ax.set_xticks([])
                ax.set_yticks([])
            if c >= len(picks):
                ax_img.axis("off")
                ax_mask.axis("off")
                continue
            kind, sample = picks[c]
            mask, size = sample["mask"][0].numpy(), sample["image"].shape[-1]
            ax_img.imshow(_image_hw3(sample["image"]))
            if mask.any():
                ax_img.contour(mask, levels=[0.5], colors="red", linewidths=0.8)
            ax_img.set_title(kind, fontsize=8)
            ax_mask.imshow(mask, cmap="gray", vmin=0, vmax=1)
            ax_mask.set_xlabel(f"{Path(sample['path']).name} ({size} px)", fontsize=7)
            if c == 0:
                ax_img.set_ylabel(f"{category}\nimage", fontsize=8)
                ax_mask.set_ylabel(f"{category}\nmask", fontsize=8)
    fig.suptitle(f"Sample images and ground-truth masks ({profile} profile; red = defect outline)",
                 fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- 02: features


def cache_table(entries: Sequence[tuple[str, str, Sequence[int], Path, int]]) -> pd.DataFrame:
    """One row per cached split (`data_study.cache_entries`: category, split, embedding shape [N, C, h, w],
    file, bytes): images, shape, patch vectors, the cache key's digest (the end of the file name; it covers
    the files' modification times, so it differs between machines) and the size in MB."""
    rows = []
    for category, split, shape, path, size in entries:
        n, _, h, w = shape
        rows.append({"category": category, "split": split, "images": int(n),
                     "shape [N, C, h, w]": str(list(shape)), "patch vectors": int(n * h * w),
                     "key": Path(path).stem.rsplit("_", 1)[-1], "MB": round(size / 2**20, 1)})
    return pd.DataFrame(rows)


def pca_rgb(feature_map: torch.Tensor) -> np.ndarray:
    """A ``[C, h, w]`` map's first three principal components as an RGB image in 0..1.

    Signs are fixed (largest loading positive) and each component is scaled between its 1st and
    99th percentile, so the picture is reproducible.
    """
    c, h, w = feature_map.shape
    x = feature_map.reshape(c, -1).T.double()
    x = x - x.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    comps = vh[:3]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)))
    proj = (x @ (comps * signs).T).numpy()
    if proj.shape[1] < 3:
        proj = np.pad(proj, ((0, 0), (0, 3 - proj.shape[1])))
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    rgb = np.clip((proj - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    return rgb.reshape(h, w, 3)


def layer_maps_figure(rows: Sequence[tuple[str, dict, Sequence[LayerMap]]], backbone: str,
                      panel: float = 2.0) -> Figure:
    """What each tapped layer sees (`data_study.layer_maps`): per sample, the image and each layer's PCA-RGB
    map (top row), the mask and each layer's channel-mean activation (bottom row)."""
    n_layers = max(len(maps) for _, _, maps in rows)
    fig, axes = plt.subplots(2 * len(rows), 1 + n_layers,
                             figsize=(panel * (1 + n_layers), panel * 2 * len(rows) + 0.6), squeeze=False)
    for r, (label, sample, maps) in enumerate(rows):
        image = sample["image"]
        mask = sample["mask"][0].numpy()
        top, bottom = axes[2 * r], axes[2 * r + 1]
        top[0].imshow(_image_hw3(image))
        if mask.any():
            top[0].contour(mask, levels=[0.5], colors="red", linewidths=0.8)
        top[0].set_title(f"{label}: input", fontsize=8)
        top[0].set_ylabel("PCA (RGB = PC1-3)", fontsize=8)
        bottom[0].imshow(mask, cmap="gray", vmin=0, vmax=1)
        bottom[0].set_title("ground-truth mask", fontsize=8)
        bottom[0].set_ylabel("channel mean", fontsize=8)
        for j, (name, stride, fm) in enumerate(maps, start=1):
            top[j].imshow(pca_rgb(fm), interpolation="nearest")
            top[j].set_title(f"{name} (stride {stride}, {fm.shape[0]} ch)", fontsize=8)
            im = bottom[j].imshow(fm.mean(dim=0).numpy(), cmap="viridis", interpolation="nearest")
            bottom[j].set_title(f"{name} mean activation", fontsize=8)
            fig.colorbar(im, ax=bottom[j], fraction=0.046, pad=0.03).ax.tick_params(labelsize=7)
            bottom[j].set_xlabel(f"x ({fm.shape[2]} cells)", fontsize=7)
            top[j].set_xlabel(f"x ({fm.shape[2]} cells)", fontsize=7)
        bottom[0].set_xlabel(f"x ({image.shape[-1]} px)", fontsize=7)
        top[0].set_xlabel(f"x ({image.shape[-1]} px)", fontsize=7)
        for ax in (*top, *bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{backbone}: what each tapped layer looks like", fontsize=10)
    fig.tight_layout()
    return fig

