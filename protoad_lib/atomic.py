"""Safe saved state: atomic file output (a temporary file beside the target, renamed into place), and the
warning given when a stored file cannot be trusted and is recomputed."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class CacheWarning(UserWarning):
    """A stored file (cache entry, stored result) was unreadable or not what its name says: recomputed."""


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
