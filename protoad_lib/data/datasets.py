"""Datasets for MVTec AD, BTAD and plain folders of good images: layouts, records, loading, counting.

Every dataset here returns dicts with the keys ``image, label, mask, defect_type, path``
(see ``docs/CONTRACTS.md``) so that torch's default collate works:

- ``image``: float tensor ``[3, H, W]`` in ``0..1`` (no normalisation; each backbone
  normalises its own input),
- ``label``: ``int``, 0 = good, 1 = anomalous,
- ``mask``: float tensor ``[1, H, W]`` with values in ``{0, 1}`` (all zero for good images),
- ``defect_type``: ``str`` (``"good"`` for defect-free images),
- ``path``: ``str`` path of the image file.

Geometry follows the official PaDiM / ProtoAD code: ``Resize((resize, resize))`` then
``CenterCrop(crop)``, bilinear (antialiased) for the image and nearest for the mask, so
image and mask stay pixel-aligned.

Supported folder layouts (``root/<category>/...``)::

    mvtec:  train/good/*.png
            test/good/*.png, test/<defect>/*.png
            ground_truth/<defect>/<stem>_mask.png
    btad:   train/ok/*.bmp|png
            test/ok/*, test/ko/*
            ground_truth/ko/<stem>.png|bmp    (mask name = image stem)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from .errors import DatasetError, DatasetLayoutError, MissingMaskError, OrphanMaskError
from .images import is_image, list_images
from .records import RecordDataset, SampleRecord
from .transforms import PairedTransform

MVTEC_CATEGORIES: tuple[str, ...] = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)
BTAD_CATEGORIES: tuple[str, ...] = ("01", "02", "03")

LAYOUTS: tuple[str, ...] = ("mvtec", "btad")


class CategoryNameError(DatasetError, ValueError):
    """A category name that is not a single folder name (it would reach outside the dataset or a cache)."""


def check_category_name(category: str) -> str:
    """``category`` when it is one plain folder name, else :class:`CategoryNameError`.

    A category names a folder under the dataset root and is part of cache file names, so
    ``../../x`` would read or write outside them: path separators, ``..`` and ``.`` are refused.
    """
    name = str(category)
    if name in ("", ".") or any(part in name for part in ("/", "\\", "..", "\0")):
        raise CategoryNameError(
            f"category {name!r} is not a folder name: a category must not be empty or '.', nor contain "
            "'/', '\\' or '..'; use the name of a category folder under the dataset root (e.g. 'bottle')"
        )
    return name



def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def _mask_index(gt_dir: Path) -> dict[str, list[Path]]:
    """Image files of a ground-truth folder grouped by stem (empty if the folder is missing)."""
    by_stem: dict[str, list[Path]] = {}
    if gt_dir.is_dir():
        for p in gt_dir.iterdir():
            if is_image(p):
                by_stem.setdefault(p.stem, []).append(p)
    return by_stem


def _find_mask(index: dict[str, list[Path]], candidates: Sequence[str]) -> Path | None:
    """First existing mask among ``<candidate>.<image ext>`` (png preferred), else None."""
    for cand in candidates:
        found = index.get(cand)
        if found:
            return sorted(found, key=lambda p: (p.suffix.lower() != ".png", p.name))[0]
    return None


class AnomalyDataset(RecordDataset):
    """MVTec AD / BTAD category split as a torch ``Dataset`` of dicts.

    Args:
        root: dataset root holding one folder per category.
        category: e.g. ``"bottle"`` (MVTec) or ``"01"`` (BTAD); any folder name works
            (custom / synthetic categories too), a path does not (:func:`check_category_name`).
        split: ``"train"`` or ``"test"``.
        layout: ``"mvtec"`` or ``"btad"`` (see module docstring).
        resize, crop: geometry of :func:`paper_transform` (``image_size`` is an alias of crop).
        on_error: ``"raise"`` (default): layout problems raise at construction, unreadable
            images raise :class:`CorruptImageError` when accessed. ``"skip"``: every file is
            opened at construction; bad files, images without masks and masks without images
            are left out and listed in :attr:`skipped` as ``(path, reason)``.
        transform: optional replacement for the paired transform
            (``callable(pil_image, mask_or_None) -> (image, mask)``).

    Attributes:
        samples: list of :class:`SampleRecord` (path, label, defect_type, mask_path).
        labels: per-sample labels; defect_types: per-sample defect types;
        defect_names: sorted unique defect types; skipped: ``[(path, reason)]``.
    """

    def __init__(
        self,
        root: str | Path,
        category: str,
        split: str = "train",
        layout: str = "mvtec",
        resize: int = 256,
        crop: int = 224,
        on_error: str = "raise",
        image_size: int | None = None,
        transform: PairedTransform | Callable | None = None,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if image_size is not None:
            crop = int(image_size)
        self._init_common(resize, crop, on_error, transform)
        self.root = Path(root)
        self.category = check_category_name(category)
        self.split = split
        self.layout = layout
        self.category_dir = self.root / self.category

        records = self._scan()
        if on_error == "skip":
            records = self._validate_for_skip(records)
        self.samples = records
        if not self.samples:
            raise DatasetLayoutError(
                f"no usable images for {self.layout} category {self.category!r} split "
                f"{self.split!r} under {self.category_dir / self.split}"
                + (f" ({len(self.skipped)} skipped: {self.skipped[:3]})" if self.skipped else "")
            )

    def __repr__(self) -> str:
        return (f"AnomalyDataset(root={str(self.root)!r}, category={self.category!r}, "
                f"split={self.split!r}, layout={self.layout!r}, n={len(self)}, "
                f"skipped={len(self.skipped)})")

    # ------------------------------------------------------------------ scanning
    def _layout_hint(self) -> str:
        if self.layout == "mvtec":
            return ("expected MVTec AD layout: <root>/<category>/train/good/*.png, "
                    "<root>/<category>/test/{good,<defect>}/*.png, "
                    "<root>/<category>/ground_truth/<defect>/<stem>_mask.png")
        return ("expected BTAD layout: <root>/<category>/train/ok/*, "
                "<root>/<category>/test/{ok,ko}/*, <root>/<category>/ground_truth/ko/<stem>.png|bmp")

    def _other_layout_hint(self) -> str:
        c = self.category_dir
        if self.layout == "mvtec" and ((c / "train" / "ok").is_dir() or (c / "test" / "ko").is_dir()):
            return " This looks like a BTAD folder (train/ok, test/ko): pass --layout btad (Python: layout='btad')."
        if self.layout == "btad" and ((c / "train" / "good").is_dir() or (c / "test" / "good").is_dir()):
            return " This looks like an MVTec AD folder (train/good): pass --layout mvtec (Python: layout='mvtec')."
        return ""

    def _problem(self, exc: DatasetLayoutError, path: Path) -> None:
        """Raise in raise mode; record in skip mode."""
        if self.on_error == "raise":
            raise exc
        self.skipped.append((str(path), str(exc)))

    def _scan(self) -> list[SampleRecord]:
        hint = self._layout_hint()
        if not self.root.is_dir():
            raise DatasetLayoutError(
                f"dataset root {self.root} does not exist; {hint}. Check --data-root (Python: the root "
                "argument), and download the dataset if needed."
            )
        if not self.category_dir.is_dir():
            present = [p.name for p in _subdirs(self.root)]
            raise DatasetLayoutError(
                f"category folder {self.category_dir} not found ({self.layout} layout); "
                f"{hint}. Categories present under {self.root}: {present[:20]}"
            )
        split_dir = self.category_dir / self.split
        if not split_dir.is_dir():
            raise DatasetLayoutError(
                f"split folder {split_dir} not found ({self.layout} layout); {hint}."
                + self._other_layout_hint()
            )
        good_name = "good" if self.layout == "mvtec" else "ok"

        loose = [p for p in split_dir.iterdir() if is_image(p)]
        if loose:
            raise DatasetLayoutError(
                f"{len(loose)} image(s) directly in {split_dir} (e.g. {loose[0].name}); the "
                f"label cannot be inferred. Put them in a class sub-folder; {hint}."
            )

        class_dirs = _subdirs(split_dir)
        if self.split == "train":
            good_dir = split_dir / good_name
            if not good_dir.is_dir():
                raise DatasetLayoutError(
                    f"training folder {good_dir} not found ({self.layout} layout); {hint}."
                    + self._other_layout_hint()
                )
            others = [d.name for d in class_dirs if d.name != good_name and list_images(d)]
            if others:
                raise DatasetLayoutError(
                    f"train split {split_dir} contains non-'{good_name}' folders with images "
                    f"{others}; training data must be defect-free ({self.layout} layout)."
                )
            return [SampleRecord(str(p), 0, "good", None) for p in list_images(good_dir)]

        # ---- test split
        if self.layout == "btad":
            unknown = [d.name for d in class_dirs if d.name not in ("ok", "ko")]
            if unknown:
                raise DatasetLayoutError(
                    f"unexpected folder(s) {unknown} in {split_dir}; BTAD test folders are "
                    f"'ok' and 'ko'; {hint}." + self._other_layout_hint()
                )
        if not class_dirs:
            raise DatasetLayoutError(f"test split {split_dir} has no class folders; {hint}.")

        gt_root = self.category_dir / "ground_truth"
        records: list[SampleRecord] = []
        for cdir in class_dirs:
            is_good = cdir.name == good_name
            defect_type = "good" if is_good else cdir.name
            images = list_images(cdir)
            if is_good:
                records.extend(SampleRecord(str(p), 0, "good", None) for p in images)
                continue
            gt_dir = gt_root / cdir.name
            if self.layout == "mvtec":
                candidates_of = lambda stem: (f"{stem}_mask",)  # noqa: E731
                expected_of = lambda p: gt_dir / f"{p.stem}_mask.png"  # noqa: E731
            else:
                candidates_of = lambda stem: (stem, f"{stem}_mask")  # noqa: E731
                expected_of = lambda p: gt_dir / f"{p.stem}.png"  # noqa: E731
            index = _mask_index(gt_dir)
            for p in images:
                mask = _find_mask(index, candidates_of(p.stem))
                if mask is None:
                    alt = " (or .bmp)" if self.layout == "btad" else ""
                    self._problem(MissingMaskError(
                        f"defective test image {p} has no ground-truth mask: expected "
                        f"{expected_of(p)}{alt}. Add the mask or remove the image (Python: on_error='skip' "
                        "leaves it out)."
                    ), p)
                    continue
                records.append(SampleRecord(str(p), 1, defect_type, str(mask)))
            self._check_orphans(gt_dir, {p.stem for p in images})

        # masks for defect folders that have no test folder at all
        if gt_root.is_dir():
            test_names = {d.name for d in class_dirs}
            for gdir in _subdirs(gt_root):
                if gdir.name not in test_names and gdir.name != good_name:
                    self._check_orphans(gdir, set())
        return records

    def _check_orphans(self, gt_dir: Path, image_stems: set[str]) -> None:
        if not gt_dir.is_dir():
            return
        for m in list_images(gt_dir):
            s = m.stem
            base = s[: -len("_mask")] if s.endswith("_mask") else None
            if self.layout == "mvtec":
                ok = base is not None and base in image_stems
            else:
                ok = s in image_stems or (base is not None and base in image_stems)
            if not ok:
                test_dir = self.category_dir / "test" / gt_dir.name
                want = base if base is not None else s
                self._problem(OrphanMaskError(
                    f"mask {m} has no matching test image (expected {test_dir}/{want}.<ext>). "
                    "Remove the stray mask or restore its image."
                ), m)


