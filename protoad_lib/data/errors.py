"""What can go wrong with a dataset: bad layout, missing or orphan masks, unreadable images, failed downloads."""

from __future__ import annotations


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


class DownloadError(RuntimeError):
    """Base class for every error raised while preparing a dataset."""


class ChecksumError(DownloadError):
    """A downloaded file does not have the expected sha256 digest."""


class CorruptArchiveError(DownloadError):
    """An archive cannot be read (truncated or damaged download)."""


class UnsafeArchiveError(DownloadError):
    """An archive member would be written outside the output folder."""


class LayoutError(DownloadError):
    """A prepared dataset folder lacks a required sub-folder."""


class DatasetUnavailableError(DownloadError):
    """A dataset is neither on disk nor downloadable right now."""
