"""Datasets for MVTec AD, BTAD and plain folders of good images.

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

import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageFile
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

__all__ = [
    "MVTEC_CATEGORIES",
    "BTAD_CATEGORIES",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "DatasetError",
    "DatasetLayoutError",
    "MissingMaskError",
    "OrphanMaskError",
    "CorruptImageError",
    "Sample",
    "SampleRecord",
    "PairedTransform",
    "paper_transform",
    "load_rgb",
    "load_mask",
    "list_images",
    "AnomalyDataset",
    "ImageFolderDataset",
    "count_samples",
]

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

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LAYOUTS: tuple[str, ...] = ("mvtec", "btad")
_ON_ERROR = ("raise", "skip")


# --------------------------------------------------------------------------- errors


class DatasetError(Exception):
    """Base class of all dataset errors raised by this module."""


class DatasetLayoutError(DatasetError):
    """The folder structure does not match the expected layout."""


class MissingMaskError(DatasetLayoutError):
    """A defective test image has no ground-truth mask."""


class OrphanMaskError(DatasetLayoutError):
    """A ground-truth mask has no matching test image."""


class CorruptImageError(DatasetError):
    """An image or mask file cannot be decoded (unreadable, truncated, wrong size)."""


# --------------------------------------------------------------------------- records


@dataclass
class Sample:
    """One loaded sample (the dataset itself returns the same fields as a dict)."""

    image: torch.Tensor  # [3,H,W] float 0..1
    label: int  # 0 good, 1 anomalous
    mask: torch.Tensor  # [1,H,W] float {0,1}
    defect_type: str
    path: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Sample":
        return cls(
            image=d["image"], label=int(d["label"]), mask=d["mask"],
            defect_type=d["defect_type"], path=d["path"],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image, "label": self.label, "mask": self.mask,
            "defect_type": self.defect_type, "path": self.path,
        }


@dataclass(frozen=True)
class SampleRecord:
    """Where a sample lives on disk (cheap; no pixels)."""

    path: str
    label: int
    defect_type: str
    mask_path: str | None = None


# --------------------------------------------------------------------------- image I/O

_TRUNCATION_LOCK = threading.RLock()


@contextlib.contextmanager
def _strict_truncation() -> Iterator[None]:
    """Make sure PIL refuses truncated files, even if someone enabled the global flag."""
    with _TRUNCATION_LOCK:
        old = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = old


def _open_loaded(path: Path, what: str) -> Image.Image:
    """Open and fully decode ``path``; raise a clear error if that fails."""
    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(
            f"{what} file not found: {path}. It was listed when the dataset was built; "
            "was it moved or deleted? Rebuild the dataset."
        )
    try:
        with _strict_truncation():
            with Image.open(path) as im:
                im.load()
                return im.copy()  # detached from the (closed) file
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CorruptImageError(
            f"cannot read {what} {path}: {type(exc).__name__}: {exc}. The file is unreadable "
            "or truncated; re-download/replace it, or pass on_error='skip' to leave it out."
        ) from exc


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (grayscale replicated, alpha dropped, 16-bit rescaled)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        if im.mode.startswith("I;16"):
            scale = 65535.0
        elif im.mode == "F" and arr.size and np.nanmax(arr) <= 1.0:
            scale = 1.0
        else:
            scale = 65535.0 if arr.size and np.nanmax(arr) > 255 else 255.0
        arr8 = np.clip(np.round(np.nan_to_num(arr) / scale * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "P") or "A" in im.getbands():
        # Drop alpha without compositing: pixel colours stay as stored.
        return im.convert("RGBA").convert("RGB")
    return im.convert("RGB")


def _mask_to_binary(im: Image.Image) -> np.ndarray:
    """Any mask image -> bool array [H,W]; any non-zero pixel (ignoring alpha) is anomalous."""
    if im.mode == "P":
        im = im.convert("RGB")
    elif im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGB") if im.mode != "LA" else im.convert("L")
    arr = np.asarray(im)
    if arr.ndim == 3:
        return arr.any(axis=-1)
    return arr != 0


def load_rgb(path: str | Path) -> Image.Image:
    """Load an image as 8-bit RGB PIL image; :class:`CorruptImageError` if undecodable."""
    return _to_rgb(_open_loaded(Path(path), "image"))


def load_mask(path: str | Path) -> np.ndarray:
    """Load a ground-truth mask as a bool array ``[H, W]`` (non-zero = anomalous)."""
    return _mask_to_binary(_open_loaded(Path(path), "mask"))


def _verify_file(path: Path) -> str | None:
    """Return ``None`` if the file decodes fully, else a short reason (used by skip mode)."""
    try:
        with _strict_truncation():
            with Image.open(path) as im:
                im.verify()  # header / chunk CRC checks (catches most truncated PNGs)
            with Image.open(path) as im:  # verify() leaves the image unusable: reopen
                im.load()  # full decode: catches truncation in formats verify() skips
                return None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"unreadable or truncated image ({type(exc).__name__}: {exc})"


def _image_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 - reported elsewhere
        return None


# --------------------------------------------------------------------------- transform


class PairedTransform:
    """``Resize((resize, resize))`` + ``CenterCrop(crop)`` applied identically to image and mask.

    The image is resized bilinearly (antialiased) and returned as float ``[3,H,W]`` in 0..1;
    the mask is resized with nearest neighbour and returned as float ``[1,H,W]`` in {0,1}.
    """

    def __init__(self, resize: int = 256, crop: int = 224) -> None:
        resize, crop = int(resize), int(crop)
        if resize <= 0 or crop <= 0:
            raise ValueError(f"resize and crop must be positive, got resize={resize}, crop={crop}")
        if crop > resize:
            raise ValueError(f"crop ({crop}) must not be larger than resize ({resize})")
        self.resize = resize
        self.crop = crop

    def __repr__(self) -> str:
        return f"PairedTransform(resize={self.resize}, crop={self.crop})"

    def image(self, im: Image.Image) -> torch.Tensor:
        im = _to_rgb(im)
        im = TF.resize(im, [self.resize, self.resize],
                       interpolation=InterpolationMode.BILINEAR, antialias=True)
        im = TF.center_crop(im, [self.crop, self.crop])
        return TF.to_tensor(im)  # float32 [3,H,W] in 0..1

    def mask(self, mask: Image.Image | np.ndarray | None) -> torch.Tensor:
        if mask is None:
            return torch.zeros(1, self.crop, self.crop, dtype=torch.float32)
        binary = _mask_to_binary(mask) if isinstance(mask, Image.Image) else np.asarray(mask) != 0
        if binary.ndim == 3:
            binary = binary.any(axis=-1)
        m = Image.fromarray(binary.astype(np.uint8) * 255, mode="L")
        m = TF.resize(m, [self.resize, self.resize], interpolation=InterpolationMode.NEAREST)
        m = TF.center_crop(m, [self.crop, self.crop])
        t = torch.from_numpy(np.asarray(m, dtype=np.uint8).copy())
        return (t > 127).to(torch.float32).unsqueeze(0)

    def __call__(
        self, image: Image.Image, mask: Image.Image | np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image(image), self.mask(mask)


def paper_transform(resize: int = 256, crop: int = 224) -> PairedTransform:
    """The transform of the official PaDiM/ProtoAD code: Resize((256,256)) + CenterCrop(224)."""
    return PairedTransform(resize=resize, crop=crop)


# --------------------------------------------------------------------------- listing


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Sorted image files (png/jpg/jpeg/bmp/tif/tiff, any case) in ``folder``.

    Hidden files (``.xxx``, e.g. macOS ``._000.png``) are ignored. Raises
    :class:`DatasetLayoutError` if ``folder`` does not exist or is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise DatasetLayoutError(f"image folder {folder} {what}; pass a folder of image files.")
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted((p for p in it if _is_image(p)), key=lambda p: str(p))


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def _mask_index(gt_dir: Path) -> dict[str, list[Path]]:
    """Image files of a ground-truth folder grouped by stem (empty if the folder is missing)."""
    by_stem: dict[str, list[Path]] = {}
    if gt_dir.is_dir():
        for p in gt_dir.iterdir():
            if _is_image(p):
                by_stem.setdefault(p.stem, []).append(p)
    return by_stem


def _find_mask(index: dict[str, list[Path]], candidates: Sequence[str]) -> Path | None:
    """First existing mask among ``<candidate>.<image ext>`` (png preferred), else None."""
    for cand in candidates:
        found = index.get(cand)
        if found:
            return sorted(found, key=lambda p: (p.suffix.lower() != ".png", p.name))[0]
    return None


# --------------------------------------------------------------------------- datasets


class _RecordDataset(Dataset):
    """Shared loading code: ``samples`` is a list of :class:`SampleRecord`."""

    samples: list[SampleRecord]
    transform: PairedTransform
    skipped: list[tuple[str, str]]

    def _init_common(self, resize: int, crop: int, on_error: str,
                     transform: PairedTransform | Callable | None) -> None:
        if on_error not in _ON_ERROR:
            raise ValueError(f"on_error must be one of {_ON_ERROR}, got {on_error!r}")
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

    def load_sample(self, index: int) -> dict[str, Any]:
        rec = self.samples[index]
        image = load_rgb(rec.path)
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
            reason = _verify_file(Path(rec.path))
            if reason is not None:
                self.skipped.append((rec.path, reason))
                continue
            if rec.mask_path is not None:
                mreason = _verify_file(Path(rec.mask_path))
                if mreason is not None:
                    self.skipped.append((rec.path, f"its mask {rec.mask_path}: {mreason}"))
                    continue
                isz, msz = _image_size(Path(rec.path)), _image_size(Path(rec.mask_path))
                if isz != msz:
                    self.skipped.append(
                        (rec.path, f"mask {rec.mask_path} size {msz} != image size {isz}")
                    )
                    continue
            kept.append(rec)
        return kept


class AnomalyDataset(_RecordDataset):
    """MVTec AD / BTAD category split as a torch ``Dataset`` of dicts.

    Args:
        root: dataset root holding one folder per category.
        category: e.g. ``"bottle"`` (MVTec) or ``"01"`` (BTAD); any folder name works
            (custom / synthetic categories too).
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
        self.category = str(category)
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
            return " This looks like a BTAD folder (train/ok, test/ko): pass layout='btad'."
        if self.layout == "btad" and ((c / "train" / "good").is_dir() or (c / "test" / "good").is_dir()):
            return " This looks like an MVTec AD folder (train/good): pass layout='mvtec'."
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
                f"dataset root {self.root} does not exist; {hint}. Check the --data-dir / root "
                "argument (and download the dataset if needed)."
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

        loose = [p for p in split_dir.iterdir() if _is_image(p)]
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
                        f"{expected_of(p)}{alt}. Add the mask, remove the image, or pass "
                        "on_error='skip'."
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


class ImageFolderDataset(_RecordDataset):
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
        if not self.samples:
            raise DatasetLayoutError(
                f"no usable images ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}) in folder "
                f"{self.folder}" + (" (searched recursively)" if recursive else
                                    "; images in sub-folders need recursive=True")
                + (f"; {len(self.skipped)} skipped" if self.skipped else "")
            )

    def __repr__(self) -> str:
        return f"ImageFolderDataset(folder={str(self.folder)!r}, n={len(self)})"


def count_samples(dataset: _RecordDataset) -> dict[str, Any]:
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
