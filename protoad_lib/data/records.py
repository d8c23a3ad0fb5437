"""Samples as records on disk (path, label, defect type, mask path) and the dataset that loads them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from PIL import Image
from torch.utils.data import Dataset

from .errors import CorruptImageError
from .images import colour_mode, image_size_of, load_mask, load_rgb, verify_file
from .transforms import PairedTransform, paper_transform

ON_ERROR = ("raise", "skip")


def _file_stamp(path: Path, content: bool) -> str:
    """Size and modification time of a file, or its size and SHA-256 with `content`."""
    stat = path.stat()
    if not content:
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    with path.open("rb") as handle:
        return f"{stat.st_size}:{hashlib.file_digest(handle, 'sha256').hexdigest()}"


@dataclass(frozen=True)
class SampleRecord:
    """Where a sample lives on disk (cheap; no pixels)."""

    path: str
    label: int
    defect_type: str
    mask_path: str | None = None


class RecordDataset(Dataset):
    """Shared loading code: ``samples`` is a list of :class:`SampleRecord`."""

    samples: list[SampleRecord]
    transform: PairedTransform
    skipped: list[tuple[str, str]]

    def files_digest(self, content: bool = False) -> str:
        """A digest of the split's files (last folders, names, sizes and modification times; with `content`
        also each file's SHA-256): what a feature cache keys on. Replacing or touching any image or mask
        changes it; `content=True` also catches an edit that keeps size and time, at the cost of reading
        every file, and makes byte-identical copies anywhere on disk share it."""
        digest = hashlib.sha256()
        for record in self.samples:
            for path in (record.path, record.mask_path):
                if path is not None:
                    digest.update(f"{Path(*Path(path).parts[-3:])}:{_file_stamp(Path(path), content)};".encode())
        return digest.hexdigest()[:16]

    def _init_common(self, resize: int, crop: int, on_error: str,
                     transform: PairedTransform | Callable | None) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.on_error = on_error
        self.resize = int(resize)
        self.crop = int(crop)
        self.transform = transform if transform is not None else paper_transform(resize, crop)
        self.skipped = []

    # ------------------------------------------------------------------ views
    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    @property
    def defect_types(self) -> list[str]:
        """Per-sample defect type, parallel to :attr:`labels` and :attr:`samples`."""
        return [s.defect_type for s in self.samples]

    @property
    def defect_names(self) -> list[str]:
        """Sorted unique defect types present (``"good"`` included if present)."""
        return sorted(set(self.defect_types))

    @property
    def paths(self) -> list[str]:
        return [s.path for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def colour_mode(self) -> str:
        """The images' kind, "colour", "grayscale" or "mixed" (both occur), from their headers (opening a file
        reads no pixels): a checkpoint records it, so that predict can warn about an image of the other kind."""
        kinds = set()
        for path in self.paths:
            with Image.open(path) as image:
                kinds.add(colour_mode(image.mode))
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def load_sample(self, index: int) -> dict[str, Any]:
        rec = self.samples[index]
        try:
            image = load_rgb(rec.path)
        except CorruptImageError as error:  # raise mode: say how to go on without the file
            raise CorruptImageError(f"{error} Or leave such files out: `protoad fit --on-error skip` "
                                    "(Python: on_error='skip').") from error
        mask = None
        if rec.mask_path is not None:
            mask = load_mask(rec.mask_path)
            if mask.shape != (image.height, image.width):
                raise CorruptImageError(
                    f"mask {rec.mask_path} has size {mask.shape[1]}x{mask.shape[0]} but image "
                    f"{rec.path} has size {image.width}x{image.height}; masks must match their "
                    "image pixel for pixel."
                )
        img_t, mask_t = self.transform(image, mask)
        return {
            "image": img_t,
            "label": int(rec.label),
            "mask": mask_t,
            "defect_type": rec.defect_type,
            "path": rec.path,
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.load_sample(index)

    def summary(self) -> dict[str, Any]:
        return count_samples(self)

    def _validate_for_skip(self, records: list[SampleRecord]) -> list[SampleRecord]:
        """Skip mode: open every image (and mask) now; drop bad ones into ``skipped``."""
        kept = []
        for rec in records:
            reason = verify_file(Path(rec.path))
            if reason is not None:
                self.skipped.append((rec.path, reason))
                continue
            if rec.mask_path is not None:
                mreason = verify_file(Path(rec.mask_path))
                if mreason is not None:
                    self.skipped.append((rec.path, f"its mask {rec.mask_path}: {mreason}"))
                    continue
                isz, msz = image_size_of(Path(rec.path)), image_size_of(Path(rec.mask_path))
                if isz != msz:
                    self.skipped.append(
                        (rec.path, f"mask {rec.mask_path} size {msz} != image size {isz}")
                    )
                    continue
            kept.append(rec)
        return kept


def count_samples(dataset: RecordDataset) -> dict[str, Any]:
    """Counts of a dataset: ``{"category", "split", "total", "good", "anomalous",
    "per_defect": {defect_type: n}, "skipped"}`` (plain dict, no pandas)."""
    per_defect: dict[str, int] = {}
    for d in dataset.defect_types:
        per_defect[d] = per_defect.get(d, 0) + 1
    labels = dataset.labels
    return {
        "category": getattr(dataset, "category", None),
        "split": getattr(dataset, "split", None),
        "total": len(labels),
        "good": sum(1 for x in labels if x == 0),
        "anomalous": sum(1 for x in labels if x == 1),
        "per_defect": dict(sorted(per_defect.items())),
        "skipped": len(getattr(dataset, "skipped", [])),
    }


def example_indices(dataset: RecordDataset, n_defective: int = 2) -> list[int]:
    """Indices of the first good image and of the first image of the first `n_defective` defect types
    (sorted by name): the examples every figure of anomaly maps shows."""
    first_of: dict[str, int] = {}
    for i, record in enumerate(dataset.samples):
        first_of.setdefault(record.defect_type, i)
    picks = [first_of["good"]] if "good" in first_of else []
    picks += [first_of[d] for d in sorted(first_of) if d != "good"][:n_defective]
    return picks
