"""Notebook 04's experiment: ProtoAD networks built from prototypes, proved equal to brute-force search, mapped, exported."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..checkpoint import export_onnx, export_torchscript, load_detector, missing_export_modules, save_detector
from ..data import example_indices
from ..embeddings import Embeddings
from ..methods.protoad import ProtoAD, ProtoADConfig, nearest_prototype_distance
from ..methods.protoad.prototypes import FinchHierarchy, PrototypeSet
from ..profiles import DatasetSpec
from ..session import RunSetup
from .ablations import protoad_with

#: The proof's exact differences from brute force (float32 rounding; the last bits depend on the threads).
DIFFERENCES = ("max |difference|", "max |difference| end to end")


@dataclass
class Networks:
    """One fitted ProtoAD per category, its example test samples (the datasets' dicts) and the proof rows.

    ``equivalence``: per category K, patches compared, the head's and the whole network's largest difference
    from brute force (exact floats; round them for display) and the mean patch score."""

    detectors: dict[str, ProtoAD] = field(default_factory=dict)
    examples: dict[str, list[dict]] = field(default_factory=dict)
    roots: dict[str, Path] = field(default_factory=dict)
    equivalence: pd.DataFrame = field(default_factory=pd.DataFrame)

    def images(self, category: str) -> torch.Tensor:
        """A category's example images as one batch ``[n, 3, H, W]`` in 0..1."""
        return torch.stack([sample["image"] for sample in self.examples[category]])

    @property
    def worst_difference(self) -> float:
        """The largest difference, head or end to end, over every category."""
        return float(self.equivalence[list(DIFFERENCES)].max().max())

    def describe(self) -> str:
        """One line per category: K, the FINCH level the prototypes come from, every level's K, vectors clustered."""
        lines = []
        for category, detector in self.detectors.items():
            chosen = detector.prototype_set
            lines.append(f"{category}: K = {detector.k} prototypes (FINCH level {chosen.level}, "
                         f"levels {chosen.hierarchy.num_clusters}) from {chosen.n_vectors} vectors")
        return "\n".join(lines)


def max_abs_diff(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Largest absolute element-wise difference (computed in float64)."""
    a = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).double()
    b = torch.as_tensor(np.asarray(b) if not isinstance(b, torch.Tensor) else b).double()
    return float((a - b).abs().max())


@torch.inference_mode()
def head_equivalence(category: str, detector: ProtoAD, embeddings: Embeddings, batch_size: int = 8) -> dict:
    """Network head vs brute-force nearest-prototype search on every test patch of a category, `batch_size`
    images at a time.

    The head is L2 normalisation + a 1x1 convolution with K prototype kernels + max over K + ``1 - x``;
    the reference computes ``1 - max_k cos(x, m_k)`` with explicit float64 dot products.
    """
    device = detector.head.conv.weight.device
    patches, total, worst = 0, 0.0, 0.0
    for chunk in detector.method_view(embeddings).chunks(batch_size):
        features = chunk.to(device)
        network = detector.patch_scores(features)
        reference = nearest_prototype_distance(features, detector.head.prototypes)
        patches, total = patches + network.numel(), total + float(network.double().sum())
        worst = max(worst, max_abs_diff(network, reference))
    return {"category": category, "K": detector.k, "patches compared": patches, "max |difference|": worst,
            "mean patch score": round(total / patches, 4)}


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


def proved_network(run: RunSetup, spec: DatasetSpec, category: str, config: ProtoADConfig) -> dict:
    """One category's unit of notebook 04 (stored as it finishes): ProtoAD fitted on the cached train embeddings,
    its prototype set (prototypes, FINCH level and hierarchy, vectors clustered) and its proof row (the head vs
    brute force on every test patch, the whole network on the example images)."""
    data = run.load(spec, category)
    detector = ProtoAD(run.backbone, config=config)
    detector.progress = False
    found = detector.fit_embeddings(data.train_embeddings).to(run.device).eval().prototype_set
    proof = head_equivalence(category, detector, data.test_embeddings)
    examples = torch.stack([data.test[i]["image"] for i in example_indices(data.test)])
    proof["max |difference| end to end"] = end_to_end_diff(detector, examples)
    return {"prototypes": found.prototypes, "method": found.method, "level": found.level,
            "hierarchy": asdict(found.hierarchy),
            "n_vectors": found.n_vectors, "proof": proof}


def build_networks(run: RunSetup) -> Networks:
    """Fit ProtoAD (the profile's clustering budget, the run's seed) on every category's cached train
    embeddings, keep its example test images (`data.example_indices`) and prove the network equal to
    brute force on them and on every test patch (one category at a time, its embeddings read in chunks).
    Each category's fit and proof is a stored unit (`proved_network`): a rerun, or the serial pass after a
    spread run, reads it back and rebuilds the same network from it."""
    config = ProtoADConfig(max_vectors=run.profile.max_vectors, seed=run.seed)
    store = run.store("networks", {"config": asdict(config)})
    networks, rows = Networks(), []
    for spec, category in run.each_category("networks"):
        unit = store.computed(lambda: proved_network(run, spec, category, config), category)
        found = PrototypeSet(unit["prototypes"], unit["method"], unit["level"],
                             FinchHierarchy(**unit["hierarchy"]), unit["n_vectors"])
        networks.detectors[category] = protoad_with(run.backbone, found, config).to(run.device)
        test = run.dataset(spec, category, "test")
        networks.examples[category] = [test[i] for i in example_indices(test)]
        networks.roots[category] = Path(test.root)
        rows.append(unit["proof"])
    networks.equivalence = pd.DataFrame(rows)
    return networks


@torch.inference_mode()
def example_maps(networks: Networks, device: str = "cpu") -> tuple[list[tuple], pd.DataFrame]:
    """Every example image scored end to end from pixels: rows ``(label, image [3, H, W], mask [H, W], anomaly
    map [H, W], image score)`` for `report.model_views.anomaly_map_figure`, and the scores as a table (the
    image relative to its dataset, defect type, score rounded to 4 decimals)."""
    rows, scores = [], []
    for category, detector in networks.detectors.items():
        maps, image_scores = detector(networks.images(category).to(device))
        for j, sample in enumerate(networks.examples[category]):
            rows.append((f"{category} {sample['defect_type']}", sample["image"], sample["mask"][0], maps[j].cpu(),
                         float(image_scores[j])))
            scores.append({"category": category, "image": os.path.relpath(sample["path"], networks.roots[category]),
                           "defect type": sample["defect_type"], "image score": round(float(image_scores[j]), 4)})
    return rows, pd.DataFrame(scores)


@contextmanager
def _no_jit_deprecation() -> Iterator[None]:
    """TorchScript export still works; torch only announces its deprecation in favour of torch.export."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


@dataclass
class Exported:
    """The exported files and how far each one's outputs are from torch's; ONNX is None without the extra."""

    torchscript: Path
    torchscript_diff: float
    onnx: Path | None
    onnx_diff: float | None
    missing: list[str]


def onnx_max_diff(path: str | Path, images01: torch.Tensor, maps: torch.Tensor, scores: torch.Tensor) -> float:
    """Run an exported ONNX detector with onnxruntime (CPU) and compare with torch's outputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: keep the notebook output clean
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    onnx_maps, onnx_scores = session.run(["anomaly_map", "score"], {"images": images01.numpy()})
    return max(max_abs_diff(onnx_maps, maps), max_abs_diff(onnx_scores, scores))


def export_network(detector: ProtoAD, images01: torch.Tensor, directory: Path, name: str,
                   image_size: int) -> Exported:
    """Export the whole network (backbone included, on the CPU) to TorchScript and, with the `export` extra,
    ONNX, as ``<directory>/<name>.*``; reload / run each on ``images01`` and compare with torch."""
    detector = detector.cpu()
    with torch.inference_mode():
        maps, scores = detector(images01)
    with _no_jit_deprecation():
        torchscript = export_torchscript(detector, directory / f"{name}.torchscript.pt", image_size=image_size)
        scripted = torch.jit.load(str(torchscript))
        with torch.inference_mode():
            script_maps, script_scores = scripted(images01)
    script_diff = max(max_abs_diff(script_maps, maps), max_abs_diff(script_scores, scores))
    missing = missing_export_modules()
    if missing:
        return Exported(torchscript, script_diff, None, None, missing)
    with _no_jit_deprecation():
        onnx = export_onnx(detector, directory / f"{name}.onnx", image_size=image_size)
    return Exported(torchscript, script_diff, onnx, onnx_max_diff(onnx, images01, maps, scores), missing)


def checkpoint_round_trip(detector: ProtoAD, images01: torch.Tensor, path: Path, image_size: int,
                          resize: int) -> tuple[ProtoAD, dict, float]:
    """Save the detector as one safetensors file, rebuild it from the file, and return the reloaded detector,
    its metadata and the largest difference of its maps and scores from the original's on ``images01``."""
    detector = detector.cpu()
    checkpoint = save_detector(detector, path, image_size=image_size, resize=resize)
    reloaded, metadata = load_detector(checkpoint)
    with torch.inference_mode():
        maps, scores = detector(images01)
        reloaded_maps, reloaded_scores = reloaded(images01)
    return reloaded, metadata, max(max_abs_diff(reloaded_maps, maps), max_abs_diff(reloaded_scores, scores))
