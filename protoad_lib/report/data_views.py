"""Tables and figures of the data and feature notebooks (01, 02).

Every figure has a title and axis labels; every function returns the Figure or DataFrame and leaves
displaying to the notebook. Paths shown to readers are relative to the repository, numbers are
rounded, and nothing prints progress bars, so re-executed notebooks give identical text outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from ..backbones import Backbone
from ..data import AnomalyDataset
from ..features import combine_layers
from ..session import RunSetup

# --------------------------------------------------------------------------- 01: data


def count_table(run: RunSetup) -> pd.DataFrame:
    """Images (and ground-truth masks) per dataset, category, split and defect type."""
    rows = []
    for spec, category in run.categories:
        for split in ("train", "test"):
            ds = run.dataset(spec, category, split)
            per_type: dict[str, list[int]] = {}
            for record in ds.samples:
                entry = per_type.setdefault(record.defect_type, [0, 0])
                entry[0] += 1
                entry[1] += record.mask_path is not None
            for defect, (images, masks) in sorted(per_type.items(), key=lambda kv: (kv[0] != "good", kv[0])):
                rows.append({"dataset": spec.name, "category": category, "split": split,
                             "defect_type": defect, "label": "good" if defect == "good" else "anomalous",
                             "images": images, "masks": masks})
    return pd.DataFrame(rows)


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


def _sample_picks(ds_train: AnomalyDataset, ds_test: AnomalyDataset, max_defects: int) -> list[tuple[str, dict]]:
    picks = [("train/good", ds_train[0])]
    first_of: dict[str, int] = {}
    for i, record in enumerate(ds_test.samples):
        first_of.setdefault(record.defect_type, i)
    if "good" in first_of:
        picks.append(("test/good", ds_test[first_of["good"]]))
    defects = [d for d in sorted(first_of) if d != "good"][:max_defects]
    picks.extend((f"test/{d}", ds_test[first_of[d]]) for d in defects)
    return picks


def _image_hw3(image: torch.Tensor) -> np.ndarray:
    return np.clip(image.permute(1, 2, 0).numpy(), 0, 1)


def sample_grid(run: RunSetup, max_defects: int = 4, panel: float = 1.9) -> Figure:
    """Two rows per category: sample images (mask outlined in red) and their ground-truth masks.

    Columns: the first training image, the first good test image, and the first test image of each
    defect type (at most ``max_defects``), after the profile's resize + center crop.
    """
    per_category = []
    for spec, category in run.categories:
        picks = _sample_picks(run.dataset(spec, category, "train"), run.dataset(spec, category, "test"),
                              max_defects)
        per_category.append((category, picks))
    n_cols = max(len(p) for _, p in per_category)
    n_rows = 2 * len(per_category)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(panel * n_cols, panel * n_rows + 0.6), squeeze=False)
    size = run.profile.image_size
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
            mask = sample["mask"][0].numpy()
            ax_img.imshow(_image_hw3(sample["image"]))
            if mask.any():
                ax_img.contour(mask, levels=[0.5], colors="red", linewidths=0.8)
            ax_img.set_title(kind, fontsize=8)
            ax_mask.imshow(mask, cmap="gray", vmin=0, vmax=1)
            ax_mask.set_xlabel(f"{Path(sample['path']).name} ({size} px)", fontsize=7)
            if c == 0:
                ax_img.set_ylabel(f"{category}\nimage", fontsize=8)
                ax_mask.set_ylabel(f"{category}\nmask", fontsize=8)
    fig.suptitle(f"Sample images and ground-truth masks ({run.profile.name} profile; red = defect outline)",
                 fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- 02: features


@torch.inference_mode()
def backbone_table(backbone: Backbone, image_size: int) -> pd.DataFrame:
    """Each tapped layer's channels, stride and grid at ``image_size``, and the combined embedding.

    Shapes come from a forward pass on a blank image, so the table shows what the network does.
    """
    maps = backbone(torch.zeros(1, 3, image_size, image_size, device=backbone.mean.device))
    total = sum(m.shape[1] for m in maps)
    rows = []
    for name, m, stride in zip(backbone.layers, maps, backbone.strides):
        rows.append({"layer": name, "channels": m.shape[1], "stride": stride,
                     "grid (h x w)": f"{m.shape[2]} x {m.shape[3]}",
                     "share of embedding": round(m.shape[1] / total, 4),
                     "upsampling to first grid": "-" if stride == backbone.strides[0]
                     else f"nearest x{stride // backbone.strides[0]}"})
    first = maps[0]
    rows.append({"layer": "embedding (concatenated)", "channels": total, "stride": backbone.strides[0],
                 "grid (h x w)": f"{first.shape[2]} x {first.shape[3]}", "share of embedding": 1.0,
                 "upsampling to first grid": "-"})
    return pd.DataFrame(rows)


@torch.inference_mode()
def embedding_shapes(backbone: Backbone, images01: torch.Tensor) -> pd.DataFrame:
    """Tensor shapes from a batch of images to the patch vectors ProtoAD compares with prototypes."""
    images01 = images01.to(backbone.mean.device)
    maps = backbone(images01)
    combined = combine_layers(maps)
    b, c, h, w = combined.shape
    rows = [{"tensor": "images (0..1, before normalisation)", "shape": list(images01.shape)}]
    rows += [{"tensor": f"{name} map", "shape": list(m.shape)} for name, m in zip(backbone.layers, maps)]
    rows.append({"tensor": "embedding = combine_layers(maps)", "shape": list(combined.shape)})
    rows.append({"tensor": "patch vectors [B*h*w, C]", "shape": [b * h * w, c]})
    return pd.DataFrame({"tensor": [r["tensor"] for r in rows], "shape": [str(r["shape"]) for r in rows]})


def cache_table(entries: Sequence[tuple[str, str, Sequence[int], Path]]) -> pd.DataFrame:
    """One row per cached split (category, split, embedding shape [N, C, h, w], file): images, shape,
    patch vectors, the cache key's digest (the end of the file name; it covers the files' modification
    times, so it differs between machines) and the size in MB."""
    rows = []
    for category, split, shape, path in entries:
        n, _, h, w = shape
        rows.append({"category": category, "split": split, "images": int(n),
                     "shape [N, C, h, w]": str(list(shape)), "patch vectors": int(n * h * w),
                     "key": Path(path).stem.rsplit("_", 1)[-1], "MB": round(Path(path).stat().st_size / 2**20, 1)})
    return pd.DataFrame(rows)


def first_defective(dataset: AnomalyDataset) -> dict:
    """The first anomalous sample of a test set (sorted order), or the first sample if none."""
    for i, record in enumerate(dataset.samples):
        if record.label == 1:
            return dataset[i]
    return dataset[0]


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


@torch.inference_mode()
def layer_maps_figure(backbone: Backbone, samples: Sequence[tuple[str, dict]], panel: float = 2.0) -> Figure:
    """What each tapped layer sees: per sample, the image and each layer's PCA-RGB map (top row),
    the mask and each layer's channel-mean activation (bottom row)."""
    n_layers = len(backbone.layers)
    fig, axes = plt.subplots(2 * len(samples), 1 + n_layers,
                             figsize=(panel * (1 + n_layers), panel * 2 * len(samples) + 0.6), squeeze=False)
    for r, (label, sample) in enumerate(samples):
        image = sample["image"]
        maps = [m.cpu() for m in backbone(image.unsqueeze(0).to(backbone.mean.device))]
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
        for j, (name, stride, m) in enumerate(zip(backbone.layers, backbone.strides, maps), start=1):
            fm = m[0].float()
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
    fig.suptitle(f"{backbone.name}: what each tapped layer looks like", fontsize=10)
    fig.tight_layout()
    return fig

