"""`protoad predict`: score images in batches, return each map in its image's own geometry, write as it goes.

Every image is scored whole: it is resized to the network's square input (as `protoad fit` resized the
training images) and its anomaly map is resized back to the image's own height and width. Per image, as
soon as its batch is scored: an overlay at the original resolution (fixed colour scale from the
checkpoint's calibration, anomalous region outlined, colour bar), optionally the float map (`.npy`), and
one row appended (and flushed) to `scores.csv`. An interruption keeps every image finished before it, and a
rerun into the same folder skips the images `scores.csv` already lists and appends the rest. Images too
small to judge or too large to decode are refused (`load_bounded`), never scored.
"""

from __future__ import annotations

import csv
import ctypes
import io
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from .atomic import atomic_output, write_text_atomically
from .calibration import Calibration
from .data import CorruptImageError, DatasetLayoutError
from .data.images import DEFAULT_MAX_PIXELS, MAX_SIDE, colour_mode, load_bounded
from .data.transforms import PairedTransform
from .methods import AnomalyDetector
from .overlays import decision_overlay
from .progress import progress_bar

CSV_FIELDS = ("image", "score", "threshold", "anomalous", "anomalous_area", "note")
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class OutputFolderError(ValueError):
    """The output folder holds a `scores.csv` this run cannot continue."""


class ImageFiles(Dataset):
    """Image files -> the whole image at `size` x `size` in 0..1, the RGB pixels (at most `MAX_SIDE` a side)
    and the file's own PIL mode; or the reason it cannot be scored."""

    def __init__(self, paths: Sequence[Path], size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.paths = list(paths)
        self.transform = PairedTransform(resize=size, crop=size)
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        try:
            image = load_bounded(self.paths[index], self.max_pixels)
        except (CorruptImageError, DatasetLayoutError, OSError) as error:
            return {"index": index, "error": str(error)}
        return {"index": index, "input": self.transform.image(image.rgb), "original": np.asarray(image.rgb),
                "mode": image.mode, "reduction": image.reduction}


def _shut_down(batches: object) -> None:
    """End a DataLoader iterator's worker processes now: a traceback kept after an error (Jupyter, pytest)
    would otherwise keep the iterator, and its idle workers, alive."""
    shutdown = getattr(batches, "_shutdown_workers", None)  # torch's multi-process iterator only (private)
    if shutdown is not None:
        shutdown()


def _end_with_parent(worker_id: int) -> None:
    """In each decoding worker: the kernel kills it when predict's process ends, however that ends (even
    SIGKILL); a no-op outside Linux, where the DataLoader's own shutdown is all there is."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


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
    """What a predict run wrote: counts (`skipped`: already in `scores.csv`), the unreadable files with
    reasons, the notes on scored images (reduced size, colour mode unlike training), the output folder."""

    out: Path
    scored: int = 0
    anomalous: int = 0
    skipped: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)


def scored_images(out: str | Path) -> list[str]:
    """The images `out/scores.csv` lists (none without one). A last line cut short by a kill is removed
    from the file first, so the next row starts on a line of its own and nothing half-written is read."""
    path = Path(out) / "scores.csv"
    if not path.is_file():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(len(complete))
    rows = list(csv.reader(io.StringIO(complete.decode("utf-8"), newline="")))
    if rows and tuple(rows[0]) != CSV_FIELDS:
        raise OutputFolderError(f"{path} has the columns {', '.join(rows[0])}, not {', '.join(CSV_FIELDS)} (an "
                                "older protoad?): pass --overwrite to replace it, or choose another --out")
    return [row[0] for row in rows[1:] if row]


def _unreadable_from_earlier(out: Path, attempted: set[str]) -> list[tuple[str, str]]:
    """The rows of an earlier `unreadable.csv` for images this run does not try again."""
    path = out / "unreadable.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [(row["image"], row["reason"]) for row in csv.DictReader(handle) if row["image"] not in attempted]


def image_notes(item: dict, train_colour_mode: str | None) -> list[str]:
    """Why a score may mislead: the image was scored at reduced size, or its colour mode is not the one of
    the training images (`train_colour_mode` "colour" or "grayscale"; "mixed" or None: no note)."""
    notes = []
    if item["reduction"] > 1:
        notes.append(f"scored at 1/{item['reduction']} size, as are its map and overlay (over {MAX_SIDE} px a side)")
    mode = colour_mode(item["mode"])
    if train_colour_mode in ("colour", "grayscale") and mode != train_colour_mode:
        notes.append(f"{mode} image (PIL mode {item['mode']}) but the checkpoint was fitted on {train_colour_mode} "
                     "images: its score is not comparable to theirs")
    return notes


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
                   save_maps: bool = False, progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS,
                   train_colour_mode: str | None = None, overwrite: bool = False) -> PredictSummary:
    """Score `paths` (see the module docstring): the images `out/scores.csv` lists already are skipped
    (all scored again with `overwrite`); unreadable and refused files are counted and listed in
    `unreadable.csv` (with an earlier run's entries for files not tried again), never fatal. The decoding
    workers end with the run, also when it is interrupted or fails."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for stale in ("scores.csv", "unreadable.csv"):
            (out / stale).unlink(missing_ok=True)
    done = set(scored_images(out))
    todo = [index for index, path in enumerate(paths) if str(path) not in done]
    names = output_names(paths)
    summary = PredictSummary(out, skipped=len(paths) - len(todo))
    earlier_unreadable = _unreadable_from_earlier(out, {str(paths[index]) for index in todo})
    loader = DataLoader(Subset(ImageFiles(paths, input_size, max_pixels), todo), batch_size=batch_size,
                        num_workers=workers, collate_fn=_as_list, worker_init_fn=_end_with_parent if workers else None)
    detector.to(device).eval()
    batches = iter(loader)
    try:
        with open(out / "scores.csv", "a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
            if handle.tell() == 0:
                writer.writeheader()
                handle.flush()
            for batch in progress_bar(batches, enabled=progress, total=len(loader), desc="predict", unit="batch"):
                readable = [item for item in batch if "error" not in item]
                summary.unreadable += [(str(paths[item["index"]]), item["error"]) for item in batch if "error" in item]
                if not readable:
                    continue
                maps, scores = detector(torch.stack([item["input"] for item in readable]).to(device))
                for item, anomaly_map, score in zip(readable, maps.cpu(), scores.cpu().tolist()):
                    path = paths[item["index"]]
                    height, width = item["original"].shape[:2]
                    full_map = map_to_original(anomaly_map, height, width)
                    save_image_result(out, names[item["index"]], item["original"], full_map, score, decision,
                                      save_maps)
                    notes = image_notes(item, train_colour_mode)
                    writer.writerow(_row(path, score, full_map, decision) | {"note": "; ".join(notes)})
                    handle.flush()
                    summary.notes += [(str(path), note) for note in notes]
                    summary.scored += 1
                    summary.anomalous += int(decision.image_threshold is not None and score > decision.image_threshold)
    finally:
        _shut_down(batches)
        unreadable = earlier_unreadable + summary.unreadable
        if unreadable:
            listing = io.StringIO()
            csv.writer(listing).writerows([("image", "reason"), *unreadable])
            write_text_atomically(out / "unreadable.csv", listing.getvalue())
    return summary


def _row(path: Path, score: float, full_map: torch.Tensor, decision: Decision) -> dict:
    if decision.image_threshold is None:
        return {"image": str(path), "score": f"{score:.6g}", "threshold": "", "anomalous": "", "anomalous_area": ""}
    area = float((full_map > decision.pixel_threshold).float().mean())
    return {"image": str(path), "score": f"{score:.6g}", "threshold": f"{decision.image_threshold:.6g}",
            "anomalous": "yes" if score > decision.image_threshold else "no", "anomalous_area": f"{area:.6f}"}
