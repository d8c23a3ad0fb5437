"""Download, verify and unpack the official MVTec AD and BTAD archives."""

from __future__ import annotations

import hashlib
import http.client
import lzma
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from ..progress import progress_bar


Layout = Literal["mvtec", "btad"]
DatasetName = Literal["mvtec", "btad"]


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


@dataclass(frozen=True)
class ArchiveSpec:
    """One official dataset archive.

    ``sha256`` is ``None`` where the digest is not known for sure: verification is then
    skipped, but :func:`download_file` writes a ``<filename>.sha256`` sidecar after the
    download so later runs verify against it. ``extract_subdir`` is the folder inside the
    extracted archive that holds the category folders (``""`` when they sit at the top).
    """

    name: str
    url: str
    sha256: str | None
    filename: str
    extract_subdir: str


ARCHIVES: dict[str, ArchiveSpec] = {
    "mvtec": ArchiveSpec(
        name="mvtec",
        url=(
            "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/"
            "download/420938113-1629952094/mvtec_anomaly_detection.tar.xz"
        ),
        sha256=None,
        filename="mvtec_anomaly_detection.tar.xz",
        extract_subdir="",
    ),
    "btad": ArchiveSpec(
        name="btad",
        url="https://avires.dimi.uniud.it/papers/btad/btad.zip",
        sha256=None,
        filename="BTech_Dataset_transformed.zip",
        extract_subdir="BTech_Dataset_transformed",
    ),
}

ENV_VARS: dict[str, str] = {"mvtec": "MVTEC_AD_ROOT", "btad": "BTAD_ROOT"}

GOOD_DIRS: dict[str, str] = {"mvtec": "good", "btad": "ok"}

SPLITS = ("train", "test", "ground_truth")


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".sha256")


def _expected_digest(dest: Path, sha256: str | None) -> str | None:
    if sha256 is not None:
        return sha256.lower()
    sidecar = _sidecar(dest)
    return sidecar.read_text().split()[0].lower() if sidecar.is_file() else None


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def download_file(
    url: str,
    dest: Path,
    sha256: str | None = None,
    chunk_size: int = 1 << 20,
    timeout: float = 60,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest``, resuming a previous partial transfer.

    Bytes go to ``<dest>.part`` first; an existing part file is continued with an HTTP
    ``Range`` request (restarted from zero when the server ignores it). The expected digest
    is ``sha256`` or, failing that, the one in ``<dest>.sha256`` from an earlier download.
    When ``dest`` already exists and matches it (or no digest is known) no request is made.
    Network failures propagate as ``urllib.error.URLError`` / ``OSError``; a transfer cut
    short raises :class:`DownloadError` and keeps the part file for the next run.
    """
    dest = Path(dest)
    expected = _expected_digest(dest, sha256)
    if dest.is_file():
        if expected is None or file_sha256(dest) == expected:
            return dest
        dest.unlink()

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not offset:
            raise
        offset = 0
        response = _open(url, offset, timeout)

    with response:
        content_range = response.headers.get("Content-Range", "")
        if response.status != 206:
            offset = 0
        elif not content_range.startswith(f"bytes {offset}-"):
            raise DownloadError(f"{url}: server resumed at a wrong offset; delete {part} and retry")
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        received = offset
        with part.open("ab" if offset else "wb") as handle, progress_bar(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=dest.name, enabled=progress,
        ) as bar:
            while chunk := response.read(chunk_size):
                handle.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))

    if total is not None and received < total:
        raise DownloadError(
            f"{url}: connection closed after {received} of {total} bytes; "
            f"run again to resume from {part}"
        )
    actual = file_sha256(part)
    if expected is not None and actual != expected:
        part.unlink()
        raise ChecksumError(f"{dest}: sha256 mismatch, expected {expected}, got {actual}")
    part.replace(dest)
    _sidecar(dest).write_text(f"{actual}  {dest.name}\n")
    return dest


def _check_member(archive: Path, name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts:
        raise UnsafeArchiveError(
            f"{archive}: refusing to extract member {name!r} (absolute path or '..' "
            "would write outside the output folder)"
        )


def _extract_into(archive: Path, target: Path) -> None:
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zipped:
            for name in zipped.namelist():
                _check_member(archive, name)
            zipped.extractall(target)
    elif archive.name.endswith((".tar.xz", ".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                _check_member(archive, member.name)
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


def _unavailable(spec: ArchiveSpec, folder: Path, reason: str) -> DatasetUnavailableError:
    return DatasetUnavailableError(
        f"{spec.name} dataset is not available: {reason}\n"
        f"  Download it manually from {spec.url}\n"
        f"  and extract it so that the category folders are inside {folder}\n"
        f"  or, for a copy elsewhere, set {ENV_VARS[spec.name]}=<folder> or pass --root <folder>."
    )


def resolve_dataset_root(
    name: DatasetName,
    root: Path | None,
    download: bool,
    data_dir: Path,
    *,
    sha256: str | None = None,
) -> Path:
    """Return the folder holding the category folders of dataset ``name``.

    Order: explicit ``root``, then ``$MVTEC_AD_ROOT`` / ``$BTAD_ROOT``, then
    ``data_dir/<name>`` if already extracted, else download and extract it when
    ``download`` is true. ``sha256`` overrides the registry's expected digest.
    """
    spec = ARCHIVES[name]
    env_root = os.environ.get(ENV_VARS[name])
    for given, source in ((root, "root argument"), (env_root, ENV_VARS[name])):
        if given:
            if not Path(given).is_dir():
                raise DatasetUnavailableError(
                    f"{name} root from {source} is not a folder: {given}"
                )
            return Path(given)

    extracted = Path(data_dir) / name
    folder = extracted / spec.extract_subdir
    if not extracted.exists():
        if not download:
            raise _unavailable(spec, folder, f"{extracted} does not exist and download is off")
        try:
            archive = download_file(spec.url, Path(data_dir) / spec.filename, sha256 or spec.sha256)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            raise _unavailable(spec, folder, f"downloading {spec.url} failed ({err})") from err
        extract_archive(archive, extracted)
    if not folder.is_dir():
        raise LayoutError(f"{name}: expected the category folders in {folder}, which is missing")
    return folder
