"""Download, verify and unpack the official MVTec AD and BTAD archives."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..atomic import write_text_atomically
from ..progress import progress_bar
from .archives import extract_archive
from .errors import ChecksumError, DatasetUnavailableError, DownloadError, LayoutError


DatasetName = Literal["mvtec", "btad"]


@dataclass(frozen=True)
class ArchiveSpec:
    """One official dataset archive.

    ``sha256`` is the published digest of the archive at ``url``: a download and an archive
    found in the data folder are both checked against it. ``None`` where no digest is known:
    :func:`download_file` then writes a ``<filename>.sha256`` sidecar after the download so
    later runs verify against that. ``filename`` is the archive's name in the data folder (the
    official one, so a copy downloaded by hand can be put there as is). ``extract_subdir`` is
    the folder inside the extracted archive that holds the category folders (``""`` when they
    sit at the top).
    """

    name: str
    url: str
    sha256: str | None
    filename: str
    extract_subdir: str


# Digests of the official archives as published in anomalib's data modules
# (anomalib/data/datamodules/image/mvtecad.py and btech.py, ``DownloadInfo.hashsum``).
ARCHIVES: dict[str, ArchiveSpec] = {
    "mvtec": ArchiveSpec(
        name="mvtec",
        url=(
            "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/"
            "download/420938113-1629952094/mvtec_anomaly_detection.tar.xz"
        ),
        sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
        filename="mvtec_anomaly_detection.tar.xz",
        extract_subdir="",
    ),
    "btad": ArchiveSpec(
        name="btad",
        url="https://avires.dimi.uniud.it/papers/btad/btad.zip",
        sha256="461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a",
        filename="btad.zip",
        extract_subdir="BTech_Dataset_transformed",
    ),
}

ENV_VARS: dict[str, str] = {"mvtec": "MVTEC_AD_ROOT", "btad": "BTAD_ROOT"}




def file_sha256(path: Path, chunk_size: int = 1 << 20, progress: bool = False) -> str:
    """Hex sha256 digest of a file, read in chunks.

    Hashing a multi-GB archive takes a while, hence the optional byte progress bar.
    """
    digest = hashlib.sha256()
    with path.open("rb") as handle, progress_bar(
        total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
        desc=f"sha256 {path.name}", enabled=progress,
    ) as bar:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
            bar.update(len(chunk))
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
    When ``dest`` already exists and matches it (or no digest is known) no request is made;
    a ``dest`` that does not match is downloaded again. Only a verified part file becomes
    ``dest``: a digest mismatch deletes it and raises :class:`ChecksumError`. An existing
    ``dest`` is hashed on every call, for the reason given in :func:`verify_archive`.
    Network failures propagate as ``urllib.error.URLError`` / ``OSError``; a transfer cut
    short raises :class:`DownloadError` and keeps the part file for the next run.
    """
    dest = Path(dest)
    expected = _expected_digest(dest, sha256)
    if dest.is_file():
        if expected is None or file_sha256(dest, progress=progress) == expected:
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
    actual = file_sha256(part, progress=progress)
    if expected is not None and actual != expected:
        part.unlink()
        raise ChecksumError(
            f"{dest}: sha256 mismatch, expected {expected}, got {actual}; the download was "
            f"deleted: run again to download it again, and if that fails too, check that "
            f"{url} still serves the official archive"
        )
    part.replace(dest)
    write_text_atomically(_sidecar(dest), f"{actual}  {dest.name}\n")
    return dest


def verify_archive(archive: Path, sha256: str | None = None, progress: bool = True) -> Path:
    """Check an archive already on disk against its expected digest and return it.

    An archive the user put in the data folder may be truncated, damaged or another file
    under the official name; extracting it would fail late or, worse, yield wrong data.
    The expected digest is ``sha256`` or, failing that, the one in ``<archive>.sha256``;
    with neither there is nothing to check against. A mismatch raises
    :class:`ChecksumError` and leaves the file in place (it may be the user's only copy).

    The file is hashed on every call (a progress bar shows it), never vouched for by a record
    beside it: such a record is as easy to write by hand as a crafted archive, and the library
    verifies an archive only on its way to being extracted, which happens once and takes
    longer than the hash (SHA-256 runs at about 1.6 GB/s on one core here, so MVTec AD's
    4.9 GB cost seconds to a minute, depending on the disk). Earlier versions wrote a
    ``<archive>.verified.json`` to skip the hash; it is ignored now.
    """
    archive = Path(archive)
    expected = _expected_digest(archive, sha256)
    if expected is None:
        return archive
    actual = file_sha256(archive, progress=progress)
    if actual != expected:
        raise ChecksumError(
            f"{archive}: sha256 mismatch, expected {expected}, got {actual}; the file is "
            "incomplete, damaged or not the official archive: delete it and download it "
            "again, or check your copy against the official one"
        )
    return archive


def _unavailable(spec: ArchiveSpec, data_dir: Path, reason: str) -> DatasetUnavailableError:
    return DatasetUnavailableError(
        f"{spec.name} dataset is not available: {reason}\n"
        f"  Download it manually from {spec.url}\n"
        f"  and save it as {data_dir / spec.filename} (verified and extracted on the next run)\n"
        f"  or extract it so that the category folders are inside "
        f"{data_dir / spec.name / spec.extract_subdir}\n"
        f"  or, for a copy elsewhere, set {ENV_VARS[spec.name]}=<folder> or pass --root <folder>."
    )


def _local_or_downloaded_archive(
    spec: ArchiveSpec, data_dir: Path, download: bool, sha256: str | None
) -> Path:
    """The archive in ``data_dir`` after :func:`verify_archive`, else a fresh download.

    A local archive is used even when ``download`` is off: using it needs no network.
    """
    archive = data_dir / spec.filename
    if archive.is_file():
        return verify_archive(archive, sha256)
    if not download:
        reason = f"neither {data_dir / spec.name} nor {archive} exists and download is off"
        raise _unavailable(spec, data_dir, reason)
    try:
        return download_file(spec.url, archive, sha256)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        raise _unavailable(spec, data_dir, f"downloading {spec.url} failed ({err})") from err


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
    ``data_dir/<name>`` if already extracted, else the archive ``data_dir/<filename>``
    (put there by hand or by an earlier run; verified by :func:`verify_archive`) or, when
    ``download`` is true, a fresh download, extracted into ``data_dir/<name>``.
    ``sha256`` overrides the registry's expected digest.
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
        expected = sha256 or spec.sha256
        extract_archive(_local_or_downloaded_archive(spec, Path(data_dir), download, expected),
                        extracted)
    if not folder.is_dir():
        raise LayoutError(f"{name}: expected the category folders in {folder}, which is missing")
    return folder
