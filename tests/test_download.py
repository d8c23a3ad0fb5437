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

from protoad_lib.data import download as dl

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

    assert dl.extract_archive(archive, out_dir) == out_dir

    assert dl.count_layout(out_dir, "mvtec") == EXPECTED_COUNTS
    dl.check_layout(out_dir, ["bottle"], "mvtec")
    assert (out_dir / "bottle/test/broken/000.png").read_bytes() == b"\x89PNG test broken 0"
    assert [p.name for p in out_dir.parent.iterdir()] == ["mvtec"]


@pytest.mark.parametrize("name", ["a.tar.gz", "a.zip"])
def test_corrupt_archive_raises_and_leaves_no_output(tmp_path: Path, name: str) -> None:
    full = make_tar_gz(LAYOUT_FILES) if name.endswith(".tar.gz") else make_zip(LAYOUT_FILES)
    archive = tmp_path / name
    archive.write_bytes(full[: len(full) // 2])
    out_dir = tmp_path / "data" / "mvtec"

    with pytest.raises(dl.CorruptArchiveError) as excinfo:
        dl.extract_archive(archive, out_dir)

    assert str(archive) in str(excinfo.value) and "delete it" in str(excinfo.value)
    assert not out_dir.exists()
    assert list(out_dir.parent.iterdir()) == []


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/evil.txt", "bottle/../../evil.txt"])
@pytest.mark.parametrize("build", [make_tar_gz, make_zip])
def test_path_traversal_is_rejected(tmp_path: Path, member: str, build: Builder) -> None:
    archive = tmp_path / ("a.zip" if build is make_zip else "a.tar.gz")
    archive.write_bytes(build({"bottle/train/good/000.png": b"ok", member: b"evil"}))
    out_dir = tmp_path / "data" / "mvtec"

    with pytest.raises(dl.UnsafeArchiveError, match="evil.txt"):
        dl.extract_archive(archive, out_dir)

    assert not out_dir.exists()
    assert not (tmp_path / "data" / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_check_layout_names_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "bottle" / "train" / "good").mkdir(parents=True)

    with pytest.raises(dl.LayoutError, match=str(tmp_path / "bottle" / "test")):
        dl.check_layout(tmp_path, ["bottle"], "mvtec")
    with pytest.raises(dl.LayoutError, match=str(tmp_path / "01" / "train" / "ok")):
        dl.check_layout(tmp_path, ["01"], "btad")


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


def test_resolve_downloads_and_extracts(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {f"BTech_Dataset_transformed/{k}": v for k, v in LAYOUT_FILES.items()}
    server.files["btad.zip"] = make_zip(files)
    monkeypatch.setitem(dl.ARCHIVES, "btad", dataclasses.replace(dl.ARCHIVES["btad"],
                                                                 url=server.url("btad.zip")))
    data_dir = tmp_path / "data"

    root = dl.resolve_dataset_root("btad", None, True, data_dir)

    assert root == data_dir / "btad" / "BTech_Dataset_transformed"
    assert dl.count_layout(root, "btad") == EXPECTED_COUNTS
    assert (data_dir / "BTech_Dataset_transformed.zip").is_file()
    assert dl.resolve_dataset_root("btad", None, True, data_dir) == root
    assert len(server.requests) == 1


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
    assert str(tmp_path / "btad" / "BTech_Dataset_transformed") in message
    assert "BTAD_ROOT" in message
