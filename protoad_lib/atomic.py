"""Safe saved state: atomic file output (a temporary file beside the target, renamed into place), the digest
that names a stored file by its settings, and how a stored file that cannot be trusted is reported, deleted
and recomputed (the feature cache and the stored results share all three)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

T = TypeVar("T")


class CacheWarning(UserWarning):
    """A stored file (cache entry, stored result) was unreadable or not what its name says: recomputed."""


class Unusable(Exception):
    """Raised by a `read_checked` reader: the file was read but is not what its name says (the message: why)."""


def settings_digest(settings: Mapping[str, Any]) -> str:
    """A short stable digest of JSON-able settings (key order does not matter; other values as `str`)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_checked(path: Path, read: Callable[[Path], T], label: str) -> T | None:
    """`read(path)`, or None when there is no file. A file `read` cannot read (it raises) or finds to be
    something else (it raises `Unusable`) is reported with a `CacheWarning` ("<label> <path> is discarded
    because ...; recomputing it.", attributed to the caller's caller), deleted, and read as None."""
    if not path.is_file():
        return None
    try:
        return read(path)
    except Unusable as error:
        reason = str(error)
    except Exception as error:  # noqa: BLE001 - a damaged file raises many kinds; it is recomputed, not fatal
        first_line = (str(error).splitlines() or [""])[0]
        reason = f"it cannot be read ({type(error).__name__}: {first_line[:120]})"
    warnings.warn(f"{label} {path} is discarded because {reason}; recomputing it.", CacheWarning, stacklevel=3)
    path.unlink(missing_ok=True)
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; it replaces `path` only if the block succeeds.

    Nothing half-written is ever left at `path`; the file gets the usual permissions (not
    mkstemp's 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write a text file (UTF-8) through `atomic_output`: readers see the old or the new file, never half."""
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)
