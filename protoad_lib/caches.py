"""Where the reusable state lives (feature cache, stored results of resumable runs): list and clear it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterable

from .profiles import REPO_ROOT, RESULTS_DIR_VARIABLE, feature_cache_dir
from .resume import SUFFIX as RESULT_SUFFIX


@dataclass(frozen=True)
class CacheFolder:
    """One folder of reusable files: `kind` is "features" or "results"."""

    kind: str
    path: Path

    def files(self) -> list[Path]:
        """Its entries (feature cache entries and stored results, `*.safetensors`; both stored as `*.pt` by
        earlier versions, never read now, so that they can be cleared) and temporaries left by a killed writer
        (`.*.tmp`), in name order."""
        if not self.path.is_dir():
            return []
        patterns = ("*.pt", f"*{RESULT_SUFFIX}", ".*.tmp")
        return sorted(p for pattern in patterns for p in self.path.rglob(pattern) if p.is_file())

    def clear(self) -> tuple[int, int]:
        """Delete every entry; returns (files, bytes) removed."""
        files = self.files()
        freed = sum(p.stat().st_size for p in files)
        for path in files:
            path.unlink(missing_ok=True)
        return len(files), freed


def cache_folders(data_dir: str | Path | None = None, results_dirs: Iterable[str | Path] | None = None,
                  kinds: Iterable[str] = ("features", "results")) -> list[CacheFolder]:
    """The feature cache of `data_dir` (see `feature_cache_dir`) and the stored results (`<results>/cache`)
    of each results folder: by default every `<repo>/results/*` and `$PROTOAD_RESULTS_DIR`."""
    kinds = set(kinds)
    folders = [CacheFolder("features", feature_cache_dir(data_dir))] if "features" in kinds else []
    if "results" in kinds:
        if results_dirs is None:
            results_dirs = sorted((REPO_ROOT / "results").glob("*/"))
            if os.environ.get(RESULTS_DIR_VARIABLE):
                results_dirs.append(Path(os.environ[RESULTS_DIR_VARIABLE]).expanduser())
        folders += [CacheFolder("results", Path(r).resolve() / "cache") for r in results_dirs]
    return [folder for folder in folders if folder.kind == "features" or folder.path.is_dir()]


def describe(folders: list[CacheFolder], with_files: bool = False) -> str:
    """A table of the folders (kind, path, files, MB) and, with `with_files`, one line per file."""
    lines = [f"{'kind':<9} {'files':>6} {'MB':>10}  folder"]
    for folder in folders:
        files = folder.files()
        megabytes = sum(p.stat().st_size for p in files) / 2**20
        lines.append(f"{folder.kind:<9} {len(files):>6} {megabytes:>10.1f}  {folder.path}")
        if with_files:
            for path in files:
                stat = path.stat()
                when = datetime.fromtimestamp(stat.st_mtime).strftime("%Y-%m-%d %H:%M")
                lines.append(f"{'':<9} {'':>6} {stat.st_size / 2**20:>10.1f}  {when}  {path.relative_to(folder.path)}")
    return "\n".join(lines)
