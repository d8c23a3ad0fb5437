"""Results of a long run kept as they come, one file per unit of work, so a rerun redoes only what is missing.

A unit is e.g. (category, method) of the evaluation or a category of the ablations. Its file is named by
the unit and a digest of the settings it was computed with, and holds those settings; a rerun with other
settings (backbone, image size, method options, library source, ...) finds no file and computes the unit
again, and `redo=True` ignores every stored unit.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .atomic import CacheWarning, atomic_output


def settings_digest(settings: Mapping[str, Any]) -> str:
    """A short stable digest of JSON-able settings (key order does not matter)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ResultStore:
    """Per-unit results on disk under `directory`, valid for one set of `settings`."""

    def __init__(self, directory: str | Path, settings: Mapping[str, Any], redo: bool = False) -> None:
        self.directory = Path(directory)
        self.settings = json.loads(json.dumps(dict(settings), sort_keys=True, default=str))
        self.digest = settings_digest(self.settings)
        self.redo = redo

    def path(self, *unit: str) -> Path:
        """One file per unit and settings (`<unit>__<settings digest>.pt`): results of other settings stay
        apart (and are listed and cleared by `protoad cache`)."""
        name = "__".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", part) for part in (*unit, self.digest))
        return self.directory / f"{name}.pt"

    def load(self, *unit: str) -> Any | None:
        """The stored result of `unit`, or None when it is missing or `redo` is set. A file that cannot be
        read (damaged, cut short) or holds another unit's settings is reported, deleted and recomputed."""
        path = self.path(*unit)
        if self.redo or not path.is_file():
            return None
        try:
            stored = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # noqa: BLE001 - an unreadable file is recomputed, not fatal
            reason = f"it cannot be read ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
        else:
            if isinstance(stored, dict) and stored.get("settings_digest") == self.digest and "result" in stored:
                return stored["result"]
            reason = "it holds results of other settings"
        warnings.warn(f"Stored result {path} is discarded because {reason}; recomputing it.", CacheWarning,
                      stacklevel=2)
        path.unlink(missing_ok=True)
        return None

    def computed(self, compute: Callable[[], Any], *unit: str) -> Any:
        """The stored result of `unit`, else `compute()`, stored as soon as it returns (a None result reads as
        missing, so it is computed again each time)."""
        result = self.load(*unit)
        if result is None:
            result = compute()
            self.save(result, *unit)
        return result

    def save(self, result: Any, *unit: str) -> Path:
        """Store `result` for `unit` atomically (a temporary file, then a rename)."""
        path = self.path(*unit)
        payload = {"settings_digest": self.digest, "settings": self.settings, "result": result}
        with atomic_output(path) as temporary:
            torch.save(payload, temporary)
        return path
