"""Tests for protoad_lib.data.download against a local HTTP server (never the internet)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import socket
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from protoad_lib.data import archives
from protoad_lib.data import download as dl
from protoad_lib.data import errors

LAYOUT_FILES = {
    "bottle/train/good/000.png": b"\x89PNG train good 0",
    "bottle/train/good/001.png": b"\x89PNG train good 1",
    "bottle/test/good/000.png": b"\x89PNG test good 0",
    "bottle/test/broken/000.png": b"\x89PNG test broken 0",
    "bottle/ground_truth/broken/000_mask.png": b"\x89PNG mask 0",
    "bottle/train/good/padding.bin": os.urandom(200_000),
}
EXPECTED_COUNTS = {
    "bottle": {
        "train/good": 3,
        "test/broken": 1,
        "test/good": 1,
        "ground_truth/broken": 1,
    }
}


class RangeHandler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range`` unless ``server.mode`` says otherwise."""

    server: FileServer

    def do_GET(self) -> None:
        server = self.server
        data = server.files.get(self.path.lstrip("/"))
        server.requests.append(self.headers.get("Range"))
        if data is None:
            self.send_error(404)
            return
        start = 0
        range_header = self.headers.get("Range")
        if range_header and server.mode != "ignore_range":
            start = int(range_header.removeprefix("bytes=").split("-")[0])
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.mode == "drop_once" and not server.dropped:
            server.dropped = True
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class FileServer(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files: dict[str, bytes] = {}
        self.mode = "normal"
        self.dropped = False
        self.requests: list[str | None] = []

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.delenv("MVTEC_AD_ROOT", raising=False)
    monkeypatch.delenv("BTAD_ROOT", raising=False)


@pytest.fixture
def server() -> Iterator[FileServer]:
    httpd = FileServer()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mvtec_anomaly_detection.tar.xz"


def make_tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def make_zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zipped:
        for name, data in files.items():
            zipped.writestr(name, data)
    return buffer.getvalue()


Builder = Callable[[dict[str, bytes]], bytes]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".part", ".partial")))


def test_download_verifies_checksum_writes_sidecar_and_skips_network_when_present(
    server: FileServer, tmp_path: Path
) -> None:
    data = make_tar_gz(LAYOUT_FILES)
    server.files["a.tar.gz"] = data
    dest = tmp_path / "a.tar.gz"

    assert dl.download_file(server.url("a.tar.gz"), dest, sha256=sha(data), progress=False) == dest
    assert dest.read_bytes() == data
    assert leftovers(tmp_path) == []
    assert (tmp_path / "a.tar.gz.sha256").read_text().split()[0] == sha(data)
    assert server.requests == [None]

    assert dl.download_file(server.url("a.tar.gz"), dest, progress=False) == dest
    assert server.requests == [None]


def test_checksum_mismatch_raises_and_leaves_nothing(server: FileServer, tmp_path: Path) -> None:
    data = make_tar_gz(LAYOUT_FILES)
    server.files["a.tar.gz"] = data
    dest = tmp_path / "a.tar.gz"
    wrong = "0" * 64

    with pytest.raises(dl.ChecksumError) as excinfo:
        dl.download_file(server.url("a.tar.gz"), dest, sha256=wrong, progress=False)

    message = str(excinfo.value)
    assert str(dest) in message and wrong in message and sha(data) in message
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_file_with_wrong_digest_is_downloaded_again(
    server: FileServer, tmp_path: Path
) -> None:
    data = b"fresh archive bytes" * 100
    server.files["a.zip"] = data
    dest = tmp_path / "a.zip"
    dest.write_bytes(b"stale")

    dl.download_file(server.url("a.zip"), dest, sha256=sha(data), progress=False)

    assert dest.read_bytes() == data
    assert server.requests == [None]


def test_interrupted_transfer_resumes_with_range(server: FileServer, tmp_path: Path) -> None:
    data = make_tar_gz(LAYOUT_FILES)
    server.files["a.tar.gz"] = data
    server.mode = "drop_once"
    dest = tmp_path / "a.tar.gz"
    part = tmp_path / "a.tar.gz.part"

    with pytest.raises(dl.DownloadError, match="resume"):
        dl.download_file(server.url("a.tar.gz"), dest, sha256=sha(data), chunk_size=4096,
                         progress=False)
    received = part.stat().st_size
    assert 0 < received < len(data)
    assert not dest.exists()

    dl.download_file(server.url("a.tar.gz"), dest, sha256=sha(data), chunk_size=4096,
                     progress=False)

    assert dest.read_bytes() == data
    assert server.requests == [None, f"bytes={received}-"]
    assert leftovers(tmp_path) == []


def test_server_ignoring_range_restarts_from_zero(server: FileServer, tmp_path: Path) -> None:
    data = make_zip(LAYOUT_FILES)
    server.files["a.zip"] = data
    server.mode = "ignore_range"
    dest = tmp_path / "a.zip"
    (tmp_path / "a.zip.part").write_bytes(b"garbage that must be discarded")

    dl.download_file(server.url("a.zip"), dest, sha256=sha(data), progress=False)

    assert dest.read_bytes() == data
    assert server.requests == ["bytes=30-"]


@pytest.mark.parametrize(("name", "build"), [("a.tar.gz", make_tar_gz), ("a.zip", make_zip)])
def test_extract_creates_folder_with_expected_counts(
    tmp_path: Path, name: str, build: Builder
) -> None:
    archive = tmp_path / name
    archive.write_bytes(build(LAYOUT_FILES))
    out_dir = tmp_path / "data" / "mvtec"

    assert archives.extract_archive(archive, out_dir) == out_dir

    assert archives.count_layout(out_dir, "mvtec") == EXPECTED_COUNTS
    archives.check_layout(out_dir, ["bottle"], "mvtec")
    assert (out_dir / "bottle/test/broken/000.png").read_bytes() == b"\x89PNG test broken 0"
    assert [p.name for p in out_dir.parent.iterdir()] == ["mvtec"]


@pytest.mark.parametrize("name", ["a.tar.gz", "a.zip"])
def test_corrupt_archive_raises_and_leaves_no_output(tmp_path: Path, name: str) -> None:
    full = make_tar_gz(LAYOUT_FILES) if name.endswith(".tar.gz") else make_zip(LAYOUT_FILES)
    archive = tmp_path / name
    archive.write_bytes(full[: len(full) // 2])
    out_dir = tmp_path / "data" / "mvtec"

    with pytest.raises(errors.CorruptArchiveError) as excinfo:
        archives.extract_archive(archive, out_dir)

    assert str(archive) in str(excinfo.value) and "delete it" in str(excinfo.value)
    assert not out_dir.exists()
    assert list(out_dir.parent.iterdir()) == []


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/evil.txt", "bottle/../../evil.txt"])
@pytest.mark.parametrize("build", [make_tar_gz, make_zip])
def test_path_traversal_is_rejected(tmp_path: Path, member: str, build: Builder) -> None:
    archive = tmp_path / ("a.zip" if build is make_zip else "a.tar.gz")
    archive.write_bytes(build({"bottle/train/good/000.png": b"ok", member: b"evil"}))
    out_dir = tmp_path / "data" / "mvtec"

    with pytest.raises(errors.UnsafeArchiveError, match="evil.txt"):
        archives.extract_archive(archive, out_dir)

    assert not out_dir.exists()
    assert not (tmp_path / "data" / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_check_layout_names_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "bottle" / "train" / "good").mkdir(parents=True)

    with pytest.raises(errors.LayoutError, match=str(tmp_path / "bottle" / "test")):
        archives.check_layout(tmp_path, ["bottle"], "mvtec")
    with pytest.raises(errors.LayoutError, match=str(tmp_path / "01" / "train" / "ok")):
        archives.check_layout(tmp_path, ["01"], "btad")


def test_resolve_prefers_explicit_root_then_env_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    explicit, from_env = tmp_path / "explicit", tmp_path / "env"
    explicit.mkdir()
    from_env.mkdir()
    monkeypatch.setitem(dl.ARCHIVES, "mvtec", dataclasses.replace(dl.ARCHIVES["mvtec"],
                                                                  url=closed_port_url()))
    monkeypatch.setenv("MVTEC_AD_ROOT", str(from_env))

    assert dl.resolve_dataset_root("mvtec", explicit, True, tmp_path / "data") == explicit
    assert dl.resolve_dataset_root("mvtec", None, True, tmp_path / "data") == from_env


def test_resolve_uses_prepared_data_dir_without_download(tmp_path: Path) -> None:
    (tmp_path / "btad" / "BTech_Dataset_transformed" / "01").mkdir(parents=True)

    root = dl.resolve_dataset_root("btad", None, False, tmp_path)

    assert root == tmp_path / "btad" / "BTech_Dataset_transformed"


BTAD_ZIP = make_zip({f"BTech_Dataset_transformed/{k}": v for k, v in LAYOUT_FILES.items()})


def serve_btad(
    server: FileServer, monkeypatch: pytest.MonkeyPatch, sha256: str | None
) -> dl.ArchiveSpec:
    """Point the btad spec at the local server (serving ``BTAD_ZIP``) with digest ``sha256``."""
    server.files["btad.zip"] = BTAD_ZIP
    spec = dataclasses.replace(dl.ARCHIVES["btad"], url=server.url("btad.zip"), sha256=sha256)
    monkeypatch.setitem(dl.ARCHIVES, "btad", spec)
    return spec


def count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record the path of every ``file_sha256`` call (the real hash still runs)."""
    calls: list[Path] = []
    real = dl.file_sha256

    def counting(path: Path, *args: object, **kwargs: object) -> str:
        calls.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(dl, "file_sha256", counting)
    return calls


def test_archive_specs_carry_published_digests() -> None:
    mvtec, btad = dl.ARCHIVES["mvtec"], dl.ARCHIVES["btad"]

    assert mvtec.filename == "mvtec_anomaly_detection.tar.xz"
    assert mvtec.sha256 == "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
    assert btad.filename == "btad.zip" and btad.url.endswith("/btad.zip")
    assert btad.sha256 == "461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a"


def test_resolve_downloads_and_extracts_archive_matching_known_digest(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve_btad(server, monkeypatch, sha256=sha(BTAD_ZIP).upper())
    data_dir = tmp_path / "data"

    root = dl.resolve_dataset_root("btad", None, True, data_dir)

    assert root == data_dir / "btad" / "BTech_Dataset_transformed"
    assert archives.count_layout(root, "btad") == EXPECTED_COUNTS
    assert (data_dir / "btad.zip").read_bytes() == BTAD_ZIP
    assert dl.resolve_dataset_root("btad", None, True, data_dir) == root
    assert len(server.requests) == 1


def test_resolve_rejects_download_with_wrong_known_digest_and_keeps_nothing(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = sha(b"the official archive")
    serve_btad(server, monkeypatch, sha256=published)
    data_dir = tmp_path / "data"

    with pytest.raises(dl.ChecksumError) as excinfo:
        dl.resolve_dataset_root("btad", None, True, data_dir)

    message = str(excinfo.value)
    assert str(data_dir / "btad.zip") in message
    assert f"expected {published}, got {sha(BTAD_ZIP)}" in message
    assert "download it again" in message
    assert list(data_dir.iterdir()) == []


@pytest.mark.parametrize("digest_from", ["spec", "sidecar"])
@pytest.mark.parametrize("download", [True, False])
def test_local_archive_with_wrong_digest_is_rejected_and_kept(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    digest_from: str, download: bool,
) -> None:
    published = sha(b"the official archive")
    serve_btad(server, monkeypatch, sha256=published if digest_from == "spec" else None)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    archive = data_dir / "btad.zip"
    archive.write_bytes(BTAD_ZIP)
    if digest_from == "sidecar":
        (data_dir / "btad.zip.sha256").write_text(f"{published}  btad.zip\n")

    with pytest.raises(dl.ChecksumError) as excinfo:
        dl.resolve_dataset_root("btad", None, download, data_dir)

    message = str(excinfo.value)
    assert str(archive) in message
    assert f"expected {published}, got {sha(BTAD_ZIP)}" in message
    assert "delete it and download it again" in message and "check your copy" in message
    assert archive.read_bytes() == BTAD_ZIP
    assert not (data_dir / "btad").exists()
    assert not (data_dir / "btad.zip.verified.json").exists()
    assert server.requests == []


def test_local_archive_matching_known_digest_is_extracted_without_download(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve_btad(server, monkeypatch, sha256=sha(BTAD_ZIP))
    (tmp_path / "btad.zip").write_bytes(BTAD_ZIP)

    root = dl.resolve_dataset_root("btad", None, False, tmp_path)

    assert root == tmp_path / "btad" / "BTech_Dataset_transformed"
    assert archives.count_layout(root, "btad") == EXPECTED_COUNTS
    assert server.requests == []


def test_every_verification_hashes_the_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_hashes(monkeypatch)
    archive = tmp_path / "btad.zip"
    archive.write_bytes(BTAD_ZIP)

    assert dl.verify_archive(archive, sha(BTAD_ZIP), progress=False) == archive
    assert dl.verify_archive(archive, sha(BTAD_ZIP), progress=False) == archive
    assert calls == [archive, archive]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["btad.zip"]

    with pytest.raises(dl.ChecksumError, match="0" * 64):
        dl.verify_archive(archive, "0" * 64, progress=False)
    archive.write_bytes(BTAD_ZIP[:-1] + b"X")
    with pytest.raises(dl.ChecksumError, match=sha(BTAD_ZIP)):
        dl.verify_archive(archive, sha(BTAD_ZIP), progress=False)


def test_completed_download_is_not_fetched_again_but_hashed_again_on_rerun(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_hashes(monkeypatch)
    server.files["a.zip"] = BTAD_ZIP
    dest = tmp_path / "a.zip"

    dl.download_file(server.url("a.zip"), dest, sha256=sha(BTAD_ZIP), progress=False)
    dl.download_file(server.url("a.zip"), dest, sha256=sha(BTAD_ZIP), progress=False)
    dl.verify_archive(dest, progress=False)

    assert calls == [tmp_path / "a.zip.part", dest, dest]
    assert server.requests == [None]


def test_verifying_local_archive_shows_progress_over_its_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    bars: list[object] = []
    real = dl.progress_bar

    def recording(*args: object, **kwargs: object) -> object:
        bars.append(real(*args, **kwargs))
        return bars[-1]

    monkeypatch.setattr(dl, "progress_bar", recording)
    archive = tmp_path / "btad.zip"
    archive.write_bytes(BTAD_ZIP)

    dl.verify_archive(archive, sha(BTAD_ZIP))

    # a disabled tqdm bar never counts, so n == total shows the bar was live
    assert [(bar.n, bar.total) for bar in bars] == [(len(BTAD_ZIP), len(BTAD_ZIP))]


def test_resolve_unreachable_url_raises_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = closed_port_url()
    monkeypatch.setitem(dl.ARCHIVES, "mvtec", dataclasses.replace(dl.ARCHIVES["mvtec"], url=url))

    with pytest.raises(dl.DatasetUnavailableError) as excinfo:
        dl.resolve_dataset_root("mvtec", None, True, tmp_path / "data")

    message = str(excinfo.value)
    assert url in message
    assert str(tmp_path / "data" / "mvtec") in message
    assert "MVTEC_AD_ROOT" in message and "--root" in message
    assert not (tmp_path / "data" / "mvtec").exists()


def test_resolve_without_download_explains_where_to_put_data(tmp_path: Path) -> None:
    with pytest.raises(dl.DatasetUnavailableError) as excinfo:
        dl.resolve_dataset_root("btad", None, False, tmp_path)

    message = str(excinfo.value)
    assert dl.ARCHIVES["btad"].url in message
    assert str(tmp_path / "btad.zip") in message
    assert str(tmp_path / "btad" / "BTech_Dataset_transformed") in message
    assert "BTAD_ROOT" in message
