"""Image and mask files: strict decoding (truncated files are errors), RGB conversion, binary masks, listing."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageFile, ImageOps

from .errors import CorruptImageError, DatasetLayoutError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


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
            "or truncated; re-download or replace it, or leave it out (`protoad fit --on-error skip`; "
            "Python: on_error='skip')."
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
