"""Image and mask files: strict decoding (truncated files are errors), RGB conversion, binary masks, listing."""

from __future__ import annotations

import contextlib
import math
import threading
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageFile, ImageOps

from .errors import CorruptImageError, DatasetLayoutError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


#: `load_bounded` refuses images smaller than this on either side: a network input made from fewer pixels
#: holds no texture to judge (a 1 x 1 image, resized, is one flat colour and was called anomalous).
MIN_SIDE = 32
#: `load_bounded` decodes images at most this many pixels a side (JPEG: at 1/2, 1/4 or 1/8 scale while
#: decoding; other formats: reduced after it), so a map and overlay cost at most about 1 GB, not 8.5 GB.
MAX_SIDE = 4096
#: Pixels `load_bounded` decodes at most by default (after a JPEG's reduced-scale decoding): PIL's own
#: decompression-bomb limit, about 0.27 GB as RGB; a caller may raise it.
DEFAULT_MAX_PIXELS = 89_478_485
#: PIL modes of single-channel images; every other mode counts as colour.
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})

_PIL_SETTINGS_LOCK = threading.RLock()


@contextlib.contextmanager
def _pil_setting(owner: object, name: str, value: object) -> Iterator[None]:
    """A PIL module setting changed for one block (under a lock: the setting is global)."""
    with _PIL_SETTINGS_LOCK:
        old = getattr(owner, name)
        setattr(owner, name, value)
        try:
            yield
        finally:
            setattr(owner, name, old)


def _strict_truncation() -> contextlib.AbstractContextManager[None]:
    """Make sure PIL refuses truncated files, even if someone enabled the global flag."""
    return _pil_setting(ImageFile, "LOAD_TRUNCATED_IMAGES", False)


def _open_loaded(path: Path, what: str, prepare: Callable[[Image.Image], None] | None = None) -> Image.Image:
    """Open and fully decode ``path`` (``prepare`` sees the opened file first, e.g. to refuse or shrink it);
    raise a clear error if that fails."""
    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(
            f"{what} file not found: {path}. It was listed when the dataset was built; "
            "was it moved or deleted? Rebuild the dataset."
        )
    try:
        with _strict_truncation():
            with Image.open(path) as im:
                if prepare is not None:
                    prepare(im)
                im.load()
                return im.copy()  # detached from the (closed) file
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CorruptImageError(
            f"cannot read {what} {path}: {type(exc).__name__}: {exc}. The file is unreadable "
            "or truncated; re-download or replace it."
        ) from exc


def to_rgb(im: Image.Image) -> Image.Image:
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


def mask_to_binary(im: Image.Image) -> np.ndarray:
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
    """Load an image as 8-bit RGB PIL image, turned upright by its EXIF orientation (phone photos);
    :class:`CorruptImageError` if undecodable."""
    return to_rgb(ImageOps.exif_transpose(_open_loaded(Path(path), "image")))


def colour_mode(mode: str) -> str:
    """"grayscale" for a single-channel PIL mode, else "colour" (the words checkpoints record)."""
    return "grayscale" if mode in GRAYSCALE_MODES else "colour"


@dataclass(frozen=True)
class BoundedImage:
    """An image decoded by `load_bounded`: upright 8-bit RGB pixels, and the file's own mode and size."""

    rgb: Image.Image
    mode: str
    size: tuple[int, int]

    @property
    def reduction(self) -> int:
        """How many times smaller than the file the pixels are on each side (1: full size)."""
        return round(max(self.size) / max(self.rgb.size))


def load_bounded(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE,
                 max_side: int = MAX_SIDE) -> BoundedImage:
    """Load an image as `load_rgb` does, within limits that keep odd files from being judged or from
    exhausting memory: :class:`CorruptImageError` if a side is below `min_side` or more than `max_pixels`
    pixels would be decoded; decoded at most `max_side` a side (a JPEG at reduced scale while decoding, so a
    huge photo never exists at full size). PIL's own decompression-bomb check gives way to `max_pixels`."""
    original: list[tuple[str, tuple[int, int]]] = []  # the file's mode and size, as opened

    def check_and_shrink(im: Image.Image) -> None:
        original.append((im.mode, im.size))
        width, height = im.size
        if min(width, height) < min_side:
            raise CorruptImageError(f"image {path} is {width} x {height} px, below the {min_side} px a side "
                                    "a detector can judge; score a larger image")
        factor = math.ceil(max(width, height) / max_side)
        if factor > 1:
            im.draft(im.mode, (math.ceil(width / factor), math.ceil(height / factor)))
        if im.width * im.height > max_pixels:
            raise CorruptImageError(f"image {path} is {width} x {height} px, more than the {max_pixels:,} pixels "
                                    f"decoded at most; raise the limit (`protoad predict --max-pixels "
                                    f"{im.width * im.height}`) to score it")

    with _pil_setting(Image, "MAX_IMAGE_PIXELS", None):
        image = to_rgb(ImageOps.exif_transpose(_open_loaded(Path(path), "image", check_and_shrink)))
    factor = math.ceil(max(image.size) / max_side)
    mode, size = original[0]
    return BoundedImage(image.reduce(factor) if factor > 1 else image, mode, size)


def load_mask(path: str | Path) -> np.ndarray:
    """Load a ground-truth mask as a bool array ``[H, W]`` (non-zero = anomalous)."""
    return mask_to_binary(_open_loaded(Path(path), "mask"))


def verify_file(path: Path) -> str | None:
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


def image_size_of(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 - reported elsewhere
        return None


def is_image(p: Path) -> bool:
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
    return sorted((p for p in it if is_image(p)), key=lambda p: str(p))
