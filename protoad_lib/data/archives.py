"""Unpack an archive safely (no member outside the target, nothing half-extracted) and check the result's layout."""

from __future__ import annotations

import lzma
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Literal

from .errors import CorruptArchiveError, LayoutError, UnsafeArchiveError

Layout = Literal["mvtec", "btad"]
SPLITS = ("train", "test", "ground_truth")
GOOD_DIRS: dict[str, str] = {"mvtec": "good", "btad": "ok"}


def _check_member(archive: Path, target: Path, name: str, special: str | None) -> None:
    """Refuse a member that is not a plain file or folder (``special`` names what it is instead),
    or whose path could land outside ``target`` (resolved).

    Links are refused outright, not resolved: a chain of symlinks plus a hard link got past
    tarfile's own ``filter="data"`` on Python 3.11.7 (CVE-2025-4517), and the datasets need
    only files and folders. Without links no member can be written through one; the
    resolved-path check is the second line of defence.
    """
    path = PurePosixPath(name.replace("\\", "/"))
    if special is not None:
        reason = f"a {special}: only files and folders are extracted, a link could lead outside"
    elif path.is_absolute() or ".." in path.parts:
        reason = "absolute path or '..' would write outside the output folder"
    elif not (target / path).resolve().is_relative_to(target):
        reason = "its resolved path is outside the output folder"
    else:
        return
    raise UnsafeArchiveError(
        f"{archive}: refusing to extract member {name!r} ({reason}); this is not a safe copy "
        "of the dataset: delete it and download the official archive again"
    )


def _zip_special(info: zipfile.ZipInfo) -> str | None:
    return "symbolic link" if stat.S_ISLNK(info.external_attr >> 16) else None


def _tar_special(member: tarfile.TarInfo) -> str | None:
    if member.isfile() or member.isdir():
        return None
    return {tarfile.SYMTYPE: "symbolic link", tarfile.LNKTYPE: "hard link"}.get(member.type, "device or fifo")


def _extract_into(archive: Path, target: Path) -> None:
    """Unpack member by member, each checked by :func:`_check_member` before it is written."""
    target = target.resolve()
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zipped:
            for info in zipped.infolist():
                _check_member(archive, target, info.filename, _zip_special(info))
            zipped.extractall(target)
    elif archive.name.endswith((".tar.xz", ".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                _check_member(archive, target, member.name, _tar_special(member))
                tar.extract(member, target, filter="data")
    else:
        raise ValueError(
            f"{archive}: unsupported archive type (expected .tar.xz, .tar.gz, .tar or .zip)"
        )


def extract_archive(archive: Path, out_dir: Path) -> Path:
    """Extract ``archive`` into ``out_dir`` atomically and return ``out_dir``.

    Members are unpacked into a temporary sibling folder which is renamed to ``out_dir``
    only once everything was extracted, so a failure never leaves a half-written
    ``out_dir``. ``out_dir`` must not exist yet.
    """
    archive, out_dir = Path(archive), Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; delete it to extract {archive} again")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent)
    )
    try:
        try:
            _extract_into(archive, staging)
        except tarfile.FilterError as err:
            raise UnsafeArchiveError(f"{archive}: unsafe member rejected: {err}") from err
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, lzma.LZMAError, zlib.error) as err:
            raise CorruptArchiveError(
                f"{archive} is corrupt or incomplete ({err}); delete it and download it again"
            ) from err
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def count_layout(root: Path, layout: Layout) -> dict[str, dict[str, int]]:
    """Count files per ``category -> "split/subfolder"`` under ``root``.

    Both layouts share the shape ``root/<category>/{train,test,ground_truth}/<subfolder>/<file>``
    (MVTec calls normal images ``good``, BTAD ``ok``).
    """
    if layout not in GOOD_DIRS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {sorted(GOOD_DIRS)}")
    counts: dict[str, dict[str, int]] = {}
    for category in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        counts[category.name] = {
            folder.relative_to(category).as_posix(): sum(1 for f in folder.iterdir() if f.is_file())
            for folder in sorted(category.glob("*/*"))
            if folder.is_dir() and folder.parent.name in SPLITS
        }
    return counts


def check_layout(root: Path, categories: Iterable[str], layout: Layout) -> None:
    """Raise :class:`LayoutError` naming the first missing ``train/<good>`` or ``test`` folder."""
    good = GOOD_DIRS[layout]
    for category in categories:
        for required in (Path(root) / category / "train" / good, Path(root) / category / "test"):
            if not required.is_dir():
                raise LayoutError(
                    f"{layout} category {category!r}: missing folder {required} "
                    f"(expected <root>/<category>/train/{good} and <root>/<category>/test)"
                )
