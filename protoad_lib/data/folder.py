"""A plain folder of defect-free images, for fitting on a user's own photos (`protoad fit --train-dir`)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .errors import DatasetLayoutError
from .images import IMAGE_EXTENSIONS, list_images
from .records import RecordDataset, SampleRecord
from .transforms import PairedTransform


class ImageFolderDataset(RecordDataset):
    """A plain folder of defect-free images (e.g. ``protoad fit --train-dir``).

    Returns the same dict keys as :class:`AnomalyDataset` with ``label=0``,
    ``defect_type="good"`` and an all-zero mask.
    """

    def __init__(
        self,
        folder: str | Path,
        resize: int = 256,
        crop: int = 224,
        on_error: str = "raise",
        recursive: bool = False,
        transform: PairedTransform | Callable | None = None,
    ) -> None:
        self._init_common(resize, crop, on_error, transform)
        self.folder = Path(folder)
        paths = list_images(self.folder, recursive=recursive)
        records = [SampleRecord(str(p), 0, "good", None) for p in paths]
        if on_error == "skip":
            records = self._validate_for_skip(records)
        self.samples = records
        if self.skipped and not self.samples:
            path, reason = self.skipped[0]
            raise DatasetLayoutError(f"no usable images in folder {self.folder}: all {len(self.skipped)} are "
                                     f"unreadable (first: {path}: {reason})")
        if not self.samples:
            raise DatasetLayoutError(
                f"no usable images ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}) in folder "
                f"{self.folder}" + (" (searched recursively)" if recursive else
                                    "; images in sub-folders are found with recursive=True "
                                    "(--recursive on the command line)")
            )

    def __repr__(self) -> str:
        return f"ImageFolderDataset(folder={str(self.folder)!r}, n={len(self)})"
