"""Measurements behind notebooks 03 and 04: FINCH's cost, and proofs that the network equals brute-force search.

These functions compute (cluster, time, compare); the tables and figures drawn from their results live in
`report.model_views`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..methods.protoad import ProtoAD, nearest_prototype_distance
from ..methods.protoad.prototypes import DEFAULT_MAX_PROTOTYPES, FinchHierarchy, finch_hierarchy
from ..measure import PeakMemory


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


def onnx_max_diff(path: str | Path, images01: torch.Tensor, maps: torch.Tensor, scores: torch.Tensor) -> float:
    """Run an exported ONNX detector with onnxruntime (CPU) and compare with torch's outputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: keep the notebook output clean
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    onnx_maps, onnx_scores = session.run(["anomaly_map", "score"], {"images": images01.numpy()})
    return max(max_abs_diff(onnx_maps, maps), max_abs_diff(onnx_scores, scores))
