"""`protoad predict`: score images in batches, return each map in its image's own geometry, write as it goes.

Every image is scored whole: it is resized to the network's square input (as `protoad fit` resized the
training images) and its anomaly map is resized back to the image's own height and width. Per image, as
soon as its batch is scored: an overlay at the original resolution (fixed colour scale from the
checkpoint's calibration, anomalous region outlined, colour bar), optionally the float map (`.npy`), and
one row appended (and flushed) to `scores.csv`. An interruption keeps every image finished before it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .atomic import atomic_output, write_text_atomically
from .calibration import Calibration
from .data import CorruptImageError, DatasetLayoutError, load_rgb
from .data.transforms import PairedTransform
from .methods import AnomalyDetector
from .progress import progress_bar
from .report.overlays import decision_overlay

CSV_FIELDS = ("image", "score", "threshold", "anomalous", "anomalous_area")


class ImageFiles(Dataset):
    """Image files -> the whole image at `size` x `size` in 0..1, and the original RGB pixels (or the error)."""

    def __init__(self, paths: Sequence[Path], size: int) -> None:
        self.paths = list(paths)
        self.transform = PairedTransform(resize=size, crop=size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        try:
            image = load_rgb(self.paths[index])
        except (CorruptImageError, DatasetLayoutError, OSError) as error:
            return {"index": index, "error": str(error)}
        return {"index": index, "input": self.transform.image(image), "original": np.asarray(image)}


def _as_list(items: list[dict]) -> list[dict]:
    return items


def output_names(paths: Sequence[Path]) -> list[str]:
    """A distinct file stem per image: its stem, `<folder>_<stem>` where stems repeat (sub-folders), and a
    `__2`, `__3`, ... suffix where even those repeat."""
    stems = [path.stem for path in paths]
    candidates = [f"{path.parent.name}_{path.stem}" if stems.count(path.stem) > 1 else path.stem for path in paths]
    seen: dict[str, int] = {}
    names = []
    for name in candidates:
        count = seen[name] = seen.get(name, 0) + 1
        names.append(name if count == 1 else f"{name}__{count}")
    return names


@dataclass
class PredictSummary:
    """What a predict run wrote: counts, the unreadable files with reasons, and the output folder."""

    out: Path
    scored: int = 0
    anomalous: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Decision:
    """The thresholds and colour scale a run applies (from the checkpoint, or `--threshold`)."""

    image_threshold: float | None
    pixel_threshold: float | None
    colour_scale: tuple[float, float] | None

    @classmethod
    def of(cls, calibration: Calibration | None, threshold: float | None = None) -> "Decision":
        if calibration is None:
            return cls(threshold, threshold, None)
        image = calibration.image_threshold if threshold is None else threshold
        pixel = calibration.pixel_threshold if threshold is None else threshold
        return cls(image, pixel, (calibration.colour_low, calibration.colour_high))


def map_to_original(anomaly_map: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """An anomaly map [h, w] resized bilinearly to the image's own [height, width]."""
    return F.interpolate(anomaly_map[None, None].float(), size=(height, width), mode="bilinear",
                         align_corners=False)[0, 0]


def save_image_result(out: Path, name: str, original: np.ndarray, full_map: torch.Tensor, score: float,
                      decision: Decision, save_maps: bool) -> None:
    """The overlay PNG (and the float map) of one image, each written atomically; the region above the
    pixel threshold is outlined on images flagged anomalous."""
    scale = decision.colour_scale or (float(full_map.min()), float(full_map.max()))
    flagged = decision.image_threshold is not None and score > decision.image_threshold
    image = decision_overlay(original, full_map.numpy(), scale, decision.pixel_threshold if flagged else None)
    with atomic_output(out / f"{name}_heatmap.png") as temporary:
        image.save(temporary, format="PNG")
    if save_maps:
        with atomic_output(out / f"{name}_map.npy") as temporary, open(temporary, "wb") as handle:
            np.save(handle, full_map.numpy().astype(np.float32))


@torch.inference_mode()
def predict_images(detector: AnomalyDetector, paths: Sequence[Path], out: str | Path, input_size: int,
                   decision: Decision, batch_size: int = 8, workers: int = 0, device: str = "cpu",
                   save_maps: bool = False, progress: bool = True) -> PredictSummary:
    """Score `paths` (see the module docstring); unreadable files are counted and listed, never fatal."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = output_names(paths)
    summary = PredictSummary(out)
    loader = DataLoader(ImageFiles(paths, input_size), batch_size=batch_size, num_workers=workers,
                        collate_fn=_as_list)
    detector.to(device).eval()
    with open(out / "scores.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        handle.flush()
        for batch in progress_bar(loader, desc="predict", unit="batch"):
            readable = [item for item in batch if "error" not in item]
            summary.unreadable += [(str(paths[item["index"]]), item["error"]) for item in batch if "error" in item]
            if not readable:
                continue
            maps, scores = detector(torch.stack([item["input"] for item in readable]).to(device))
            for item, anomaly_map, score in zip(readable, maps.cpu(), scores.cpu().tolist()):
                height, width = item["original"].shape[:2]
                full_map = map_to_original(anomaly_map, height, width)
                save_image_result(out, names[item["index"]], item["original"], full_map, score, decision, save_maps)
                writer.writerow(_row(paths[item["index"]], score, full_map, decision))
                handle.flush()
                summary.scored += 1
                summary.anomalous += int(decision.image_threshold is not None and score > decision.image_threshold)
    if summary.unreadable:
        listing = io.StringIO()
        csv.writer(listing).writerows([("image", "reason"), *summary.unreadable])
        write_text_atomically(out / "unreadable.csv", listing.getvalue())
    return summary


def _row(path: Path, score: float, full_map: torch.Tensor, decision: Decision) -> dict:
    if decision.image_threshold is None:
        return {"image": str(path), "score": f"{score:.6g}", "threshold": "", "anomalous": "", "anomalous_area": ""}
    area = float((full_map > decision.pixel_threshold).float().mean())
    return {"image": str(path), "score": f"{score:.6g}", "threshold": f"{decision.image_threshold:.6g}",
            "anomalous": "yes" if score > decision.image_threshold else "no", "anomalous_area": f"{area:.6f}"}
