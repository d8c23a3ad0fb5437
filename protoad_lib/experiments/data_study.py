"""What notebooks 01 and 02 read and measure (datasets, backbone, cache) for `report.data_views` to draw."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from ..backbones import Backbone
from ..data import AnomalyDataset
from ..features import combine_layers
from ..session import RunSetup

#: One tapped layer's output for one image: (layer name, stride, map [C, h, w] on the CPU).
LayerMap = tuple[str, int, torch.Tensor]


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


def sample_images(run: RunSetup, max_defects: int = 4) -> list[tuple[str, list[tuple[str, dict]]]]:
    """Per category, ``(category, [(kind, sample)])``: the first training image, the first good test image
    and the first test image of each defect type (at most ``max_defects``), after the profile's geometry.
    Samples are the datasets' own dicts (image [3, H, W] in 0..1, mask [1, H, W], defect type, path), so
    the figure gets arrays, never a dataset."""
    return [(category, _sample_picks(run.dataset(spec, category, "train"), run.dataset(spec, category, "test"),
                                     max_defects))
            for spec, category in run.categories]


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


def first_test_images(run: RunSetup, n_images: int = 4) -> torch.Tensor:
    """The first ``n_images`` test images of the run's first category, ``[n, 3, H, W]`` in 0..1."""
    spec, category = run.categories[0]
    test_set = run.dataset(spec, category, "test")
    return torch.stack([test_set[i]["image"] for i in range(n_images)])


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


def cache_entries(run: RunSetup) -> list[tuple[str, str, tuple[int, ...], Path, int]]:
    """Every split's embeddings from the shared cache (extracted on a miss): ``(category, split, shape
    [N, C, h, w], file, bytes)``; one split in memory at a time (paper scale: gigabytes each)."""
    entries = []
    for spec, category in run.each_category("features"):
        for split in ("train", "test"):
            features, path = run.embeddings(spec, category, split)
            entries.append((category, split, tuple(features.shape), path, path.stat().st_size))
            del features
    return entries


def first_defective(dataset: AnomalyDataset) -> dict:
    """The first anomalous sample of a test set (sorted order), or the first sample if none."""
    for i, record in enumerate(dataset.samples):
        if record.label == 1:
            return dataset[i]
    return dataset[0]


def defective_examples(run: RunSetup) -> list[tuple[str, dict]]:
    """``(label, sample)`` of each category's first defective test image, labelled by category and defect."""
    samples = []
    for spec, category in run.categories:
        sample = first_defective(run.dataset(spec, category, "test"))
        samples.append((f"{category} {sample['defect_type']}", sample))
    return samples


@torch.inference_mode()
def layer_maps(backbone: Backbone, samples: Sequence[tuple[str, dict]]) -> list[tuple[str, dict, list[LayerMap]]]:
    """Each sample with what every tapped layer makes of it: ``(label, sample, [(layer, stride, map)])``."""
    rows = []
    for label, sample in samples:
        maps = backbone(sample["image"].unsqueeze(0).to(backbone.mean.device))
        rows.append((label, sample, [(name, stride, m[0].cpu().float())
                                     for name, stride, m in zip(backbone.layers, backbone.strides, maps)]))
    return rows
