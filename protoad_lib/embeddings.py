"""Embeddings [N, C, h, w] read a few images at a time: in memory, stored on disk (safetensors), or views of either.

Every consumer (the methods' fits, scoring, the notebooks' studies) reads a split through this interface, so
nothing needs a whole category's embeddings in memory:

- `chunks(batch_size)` yields [b, C, h, w] float32 tensors in image order (`images=` for a subset);
- `read(images, rows, cols)` returns the given images, optionally a window of the grid;
- `gather(indices)` returns patch vectors [k, C] by image-major flat index (image * h * w + y * w + x);
- `subset(images)` and `mapped(fn)` are views (no copy): a few images, or a per-chunk transform
  (a method's features, a layer subset).

On disk (`write_embeddings`, `StoredEmbeddings`) a split is one safetensors file holding one tensor
"embeddings" of shape [N, h, w, C] (channels last: one patch vector, or one image's band of grid rows, is a
contiguous run of bytes) and string metadata; it is read with plain file reads, never memory-mapped, so the
process's resident memory (VmHWM) is what it holds, not file pages. Any safetensors reader opens the file.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import weakref
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from .heap import release_free_heap

TENSOR_NAME = "embeddings"
DTYPES = {torch.float32: ("F32", np.float32), torch.float16: ("F16", np.float16)}
DTYPE_OF_CODE = {code: (dtype, numpy_dtype) for dtype, (code, numpy_dtype) in DTYPES.items()}
#: Images read together by `chunks`, `gather` and the views unless a caller says otherwise.
CHUNK_IMAGES = 8


class Embeddings:
    """A split's embeddings [N, C, h, w], read in pieces. Subclasses implement `shape` and `_read`."""

    @property
    def shape(self) -> tuple[int, int, int, int]:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.shape[-2:])

    def _read(self, images: np.ndarray, rows: slice, cols: slice) -> torch.Tensor:
        raise NotImplementedError

    def read(self, images: Sequence[int] | np.ndarray | torch.Tensor, rows: slice = slice(None),
             cols: slice = slice(None)) -> torch.Tensor:
        """Images `images` (indices, in that order) as float32 [len(images), C, rows, cols]: keep it to a few
        images, or a narrow window of the grid, at a time."""
        indices = np.asarray(torch.as_tensor(images, dtype=torch.long).flatten())
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"image index out of range for {len(self)} images")
        return self._read(indices, rows, cols)

    def chunks(self, batch_size: int = CHUNK_IMAGES, images: Sequence[int] | None = None, rows: slice = slice(None),
               cols: slice = slice(None)) -> Iterator[torch.Tensor]:
        """The images (all, or `images` in order) as float32 batches of at most `batch_size`."""
        order = np.arange(len(self)) if images is None else np.asarray(torch.as_tensor(images).flatten())
        for start in range(0, len(order), batch_size):
            yield self.read(order[start : start + batch_size], rows, cols)
            release_free_heap()  # what the consumer made of the chunk it is done with

    def gather(self, indices: Sequence[int] | np.ndarray, batch_size: int = CHUNK_IMAGES) -> torch.Tensor:
        """Patch vectors [len(indices), C] (float32) at image-major flat indices, in the order given; images are
        read `batch_size` at a time, only those that hold a wanted vector."""
        indices = np.asarray(indices, dtype=np.int64)
        count, channels, height, width = self.shape
        if len(indices) and (indices.min() < 0 or indices.max() >= count * height * width):
            raise IndexError(f"patch index out of range for {count} images of {height} x {width}")
        gathered = torch.empty(len(indices), channels)
        image_of, position = np.divmod(indices, height * width)
        wanted = np.unique(image_of)
        for start in range(0, len(wanted), batch_size):
            batch = wanted[start : start + batch_size]
            patches = self.read(batch).flatten(2)  # [b, C, h*w]
            chosen = np.flatnonzero(np.isin(image_of, batch))
            slot = np.searchsorted(batch, image_of[chosen])
            gathered[torch.from_numpy(chosen)] = patches[torch.from_numpy(slot), :, torch.from_numpy(position[chosen])]
        return gathered

    def subset(self, images: Sequence[int] | np.ndarray | torch.Tensor) -> "Embeddings":
        """A view of the given images (indices, in that order)."""
        return SubsetEmbeddings(self, np.asarray(torch.as_tensor(images, dtype=torch.long).flatten()))

    def mapped(self, transform: Callable[[torch.Tensor], torch.Tensor], local: bool = False) -> "Embeddings":
        """A view whose every read is `transform(read)` ([b, C, h, w] -> [b, C', h', w'], image by image
        independent). `local`: the transform treats every grid position alone (e.g. a channel selection), so
        windows of the grid and single patch vectors can be read through it."""
        return MappedEmbeddings(self, transform, local)

    def to_tensor(self) -> torch.Tensor:
        """Everything in one tensor: for small data (tests, a demo), never at category scale."""
        return torch.cat(list(self.chunks()))


class TensorEmbeddings(Embeddings):
    """Embeddings held in a tensor (small data, and what a caller already has in memory)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        if tensor.ndim != 4:
            raise ValueError(f"embeddings must be [N, C, h, w], got shape {tuple(tensor.shape)}")
        self.tensor = tensor.detach()

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.tensor.shape)

    def _read(self, images: np.ndarray, rows: slice, cols: slice) -> torch.Tensor:
        return self.tensor[:, :, rows, cols][torch.from_numpy(images)].float()  # the window first: no whole images


def as_embeddings(features: Embeddings | torch.Tensor) -> Embeddings:
    """An `Embeddings` as it is, a [N, C, h, w] tensor wrapped (`TensorEmbeddings`)."""
    return features if isinstance(features, Embeddings) else TensorEmbeddings(features)


class SubsetEmbeddings(Embeddings):
    """Some images of other embeddings, in a given order."""

    def __init__(self, parent: Embeddings, images: np.ndarray) -> None:
        if len(images) and (images.min() < 0 or images.max() >= len(parent)):
            raise IndexError(f"image index out of range for {len(parent)} images")
        self.parent, self.images = parent, images

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.images), *self.parent.shape[1:])

    def _read(self, images: np.ndarray, rows: slice, cols: slice) -> torch.Tensor:
        return self.parent.read(self.images[images], rows, cols)


class MappedEmbeddings(Embeddings):
    """Other embeddings through a per-image transform (see `Embeddings.mapped`)."""

    def __init__(self, parent: Embeddings, transform: Callable[[torch.Tensor], torch.Tensor], local: bool) -> None:
        self.parent, self.transform, self.local = parent, transform, local
        self._shape: tuple[int, int, int, int] | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        if self._shape is None:
            if len(self.parent) == 0:
                raise ValueError("no images to map")
            self._shape = (len(self.parent), *self._read(np.arange(1), slice(None), slice(None)).shape[1:])
        return self._shape

    def _read(self, images: np.ndarray, rows: slice, cols: slice) -> torch.Tensor:
        if not self.local and (rows != slice(None) or cols != slice(None)):
            raise ValueError("a window of the grid cannot be read through a transform that is not local")
        return self.transform(self.parent.read(images, rows, cols)).float()

    def gather(self, indices: Sequence[int] | np.ndarray, batch_size: int = CHUNK_IMAGES) -> torch.Tensor:
        if not self.local:
            return super().gather(indices, batch_size)
        vectors = self.parent.gather(indices, batch_size)
        return self.transform(vectors[:, :, None, None]).float()[:, :, 0, 0]


# --- on disk ------------------------------------------------------------------------------------------------
class DamagedEmbeddings(ValueError):
    """A stored embeddings file is cut short, padded or not what its header says."""


def _header(shape: tuple[int, ...], dtype: torch.dtype, metadata: dict[str, str]) -> bytes:
    code, numpy_dtype = DTYPES[dtype]
    nbytes = int(np.prod(shape)) * np.dtype(numpy_dtype).itemsize
    header = {TENSOR_NAME: {"dtype": code, "shape": list(shape), "data_offsets": [0, nbytes]},
              "__metadata__": dict(metadata)}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the data to 8 bytes
    return struct.pack("<Q", len(text)) + text


def write_embeddings(path: str | Path, batches: Iterable[torch.Tensor], total: int, metadata: dict[str, str] | None = None,
                     dtype: torch.dtype = torch.float32) -> Path:
    """Write batches [b, C, h, w] (in image order, `total` images in all) to one safetensors file at `path`, batch
    by batch: memory holds one batch. The caller makes it atomic (`atomic.atomic_output`); fewer or more images
    than `total` raise."""
    if dtype not in DTYPES:
        raise ValueError(f"embeddings are stored as {[str(d) for d in DTYPES]}, not {dtype}")
    written = 0
    with open(path, "wb") as handle:
        for batch in batches:
            if written == 0:
                handle.write(_header((total, *batch.shape[2:], batch.shape[1]), dtype, metadata or {}))
            written += len(batch)
            if written > total:
                raise ValueError(f"more than the {total} images announced")
            handle.write(batch.detach().to("cpu", dtype).permute(0, 2, 3, 1).contiguous().numpy().tobytes())
    if written != total:
        raise ValueError(f"{written} images written, {total} announced")
    return Path(path)


class StoredEmbeddings(Embeddings):
    """A safetensors file of `write_embeddings`, read image by image (or band by band of grid rows)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise DamagedEmbeddings("shorter than a safetensors header")
            (length,) = struct.unpack("<Q", prefix)
            if not 2 <= length <= 100_000_000:
                raise DamagedEmbeddings(f"header length {length} is not plausible")
            text = handle.read(length)
        try:
            header = json.loads(text)
            entry = header[TENSOR_NAME]
            self.dtype, self._numpy_dtype = DTYPE_OF_CODE[entry["dtype"]]
            count, height, width, channels = (int(v) for v in entry["shape"])
            start, stop = (int(v) for v in entry["data_offsets"])
        except (ValueError, KeyError, TypeError) as error:
            raise DamagedEmbeddings(f"header is not an embeddings header ({error})") from error
        self.metadata: dict[str, str] = header.get("__metadata__") or {}
        self._shape = (count, channels, height, width)
        self._data_start = 8 + length + start
        self._image_bytes = height * width * channels * np.dtype(self._numpy_dtype).itemsize
        expected = self._data_start + count * self._image_bytes
        if stop - start != count * self._image_bytes or self.path.stat().st_size != expected:
            raise DamagedEmbeddings(f"{self.path.stat().st_size} bytes where the header needs {expected}")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self._shape

    def _read(self, images: np.ndarray, rows: slice, cols: slice) -> torch.Tensor:
        _, channels, height, width = self._shape
        (top, bottom), (left, right) = _span(rows, height), _span(cols, width)
        itemsize = np.dtype(self._numpy_dtype).itemsize
        out = np.empty((len(images), bottom - top, right - left, channels), dtype=self._numpy_dtype)
        whole_rows = right - left == width  # one read per image; a column window: one per image and row
        row_bytes = width * channels * itemsize
        with open(self.path, "rb", buffering=0) as handle:
            for slot, image in enumerate(images):
                start = self._data_start + int(image) * self._image_bytes + (top * width + left) * channels * itemsize
                pieces = [out[slot]] if whole_rows else list(out[slot])  # C-contiguous views into `out`
                for row, piece in enumerate(pieces):
                    view = memoryview(piece.reshape(-1).view(np.uint8))
                    if os.preadv(handle.fileno(), [view], start + row * row_bytes) != len(view):
                        raise DamagedEmbeddings(f"{self.path} ended while reading image {image}")
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().contiguous()


def _span(window: slice, size: int) -> tuple[int, int]:
    """The first and one-past-last index of a slice with step 1 over `size` (empty: equal)."""
    first, last, step = window.indices(size)
    if step != 1:
        raise ValueError("stored embeddings are read in windows of consecutive rows and columns")
    return first, max(first, last)


class SpilledEmbeddings(StoredEmbeddings):
    """Embeddings written to a temporary file (`$TMPDIR`) for the life of this object: what a fit from images
    and a category loaded without a feature cache read from, so neither holds a split in memory."""

    @classmethod
    def of(cls, batches: Iterable[torch.Tensor], total: int, dtype: torch.dtype = torch.float32) -> "SpilledEmbeddings":
        handle, name = tempfile.mkstemp(prefix="protoad-embeddings-", suffix=".safetensors")
        os.close(handle)
        try:
            write_embeddings(name, batches, total, dtype=dtype)
            spilled = cls(name)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        weakref.finalize(spilled, Path(name).unlink, missing_ok=True)
        return spilled
