"""Data and stored results never run code or write outside their folder (issue 24's security part)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

import protoad_lib
from protoad_lib import cli
from protoad_lib.atomic import CacheWarning
from protoad_lib.data import AnomalyDataset, archives
from protoad_lib.data import download as dl
from protoad_lib.data import errors
from protoad_lib.data.datasets import CategoryNameError, check_category_name
from protoad_lib.features import CacheKey, FeatureCache
from protoad_lib.resume import ResultStore
from protoad_lib.session import setup

STEPS = "abcdefghijklmnop"
UNPICKLING = ("weights_only=False", "allow_pickle=True", "pickle.load")


def _add(tar: tarfile.TarFile, name: str, content: bytes | None = None, **fields: object) -> None:
    info = tarfile.TarInfo(name)
    for field, value in fields.items():
        setattr(info, field, value)
    if content is not None:
        info.size = len(content)
    tar.addfile(info, None if content is None else io.BytesIO(content))


def write_realpath_limit_tar(path: Path, out_dir: Path, victim: str, mode: str = "w") -> None:
    """The CVE-2025-4517 archive: a chain of symlinks whose expansion overflows PATH_MAX, so tarfile's
    ``filter="data"`` stops resolving them, then a symlink ``escape`` to the output folder's parent, a hard
    link to ``escape/<victim>`` and a file of the link's name that overwrites the victim through it.

    The components are sized for the staging folder ``extract_archive`` unpacks into
    (``.<name>.<8 random characters>.partial`` beside ``out_dir``).
    """
    staging = len(str(out_dir.parent)) + len(f"/.{out_dir.name}.") + 8 + len(".partial")
    component = "d" * ((os.pathconf(out_dir.parent, "PC_PATH_MAX") - staging - 1) // (len(STEPS) + 1))
    with tarfile.open(path, mode) as tar:
        prefix = ""
        for step in STEPS:
            _add(tar, os.path.join(prefix, component), type=tarfile.DIRTYPE, mode=0o777)
            _add(tar, os.path.join(prefix, step), type=tarfile.SYMTYPE, linkname=component)
            prefix = os.path.join(prefix, component)
        too_long = os.path.join(*STEPS, "l" * 254)
        _add(tar, too_long, type=tarfile.SYMTYPE, linkname=os.path.join(*[".."] * len(STEPS)))
        _add(tar, "escape", type=tarfile.SYMTYPE, linkname=os.path.join(too_long, ".."))
        _add(tar, "flaglink", type=tarfile.LNKTYPE, linkname=f"escape/{victim}")
        _add(tar, "flaglink", content=b"overwritten")
        _add(tar, "escape/newfile", content=b"new")


def test_symlink_chain_and_hard_link_cannot_overwrite_a_file_outside(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    victim = data_dir / "victim.txt"
    victim.write_text("original")
    archive = tmp_path / "crafted.tar"
    write_realpath_limit_tar(archive, data_dir / "mvtec", victim.name)

    with pytest.raises(errors.UnsafeArchiveError, match=r"member 'a' \(a symbolic link") as excinfo:
        archives.extract_archive(archive, data_dir / "mvtec")

    assert str(archive) in str(excinfo.value) and "delete it" in str(excinfo.value)
    assert victim.read_text() == "original"
    assert sorted(p.name for p in data_dir.iterdir()) == ["victim.txt"]


def test_hand_written_verified_record_does_not_stand_for_the_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crafted archive under the official name with a ``.verified.json`` claiming the published digest
    (and copying the file's size and time) is hashed, refused and never extracted."""
    monkeypatch.delenv("MVTEC_AD_ROOT", raising=False)
    spec = dl.ARCHIVES["mvtec"]
    monkeypatch.setitem(dl.ARCHIVES, "mvtec", dataclasses.replace(spec, url="http://127.0.0.1:9/unreachable"))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    victim = data_dir / "victim.txt"
    victim.write_text("original")
    archive = data_dir / spec.filename
    write_realpath_limit_tar(archive, data_dir / "mvtec", victim.name, mode="w:xz")
    status = archive.stat()
    record = {"sha256": spec.sha256, "size": status.st_size, "mtime_ns": status.st_mtime_ns}
    (data_dir / f"{spec.filename}.verified.json").write_text(json.dumps(record))

    with pytest.raises(dl.ChecksumError, match=f"expected {spec.sha256}"):
        dl.resolve_dataset_root("mvtec", None, False, data_dir)

    assert victim.read_text() == "original"
    assert not (data_dir / "mvtec").exists() and not (data_dir / "newfile").exists()


@pytest.mark.parametrize(("kind", "target"), [(tarfile.SYMTYPE, "bottle/train"), (tarfile.LNKTYPE, "bottle/a.png")])
def test_every_link_member_is_refused_even_inside_the_target(tmp_path: Path, kind: bytes, target: str) -> None:
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        _add(tar, "bottle/a.png", content=b"png")
        _add(tar, "bottle/link", type=kind, linkname=target)

    with pytest.raises(errors.UnsafeArchiveError, match="'bottle/link'.*link"):
        archives.extract_archive(archive, tmp_path / "mvtec")
    assert not (tmp_path / "mvtec").exists()


def test_symlink_member_of_a_zip_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "btad.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("01/train/ok/000.png", b"png")
        link = zipfile.ZipInfo("01/escape")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zipped.writestr(link, "../../..")

    with pytest.raises(errors.UnsafeArchiveError, match="'01/escape'.*symbolic link"):
        archives.extract_archive(archive, tmp_path / "btad")
    assert not (tmp_path / "btad").exists()


class RunsCodeWhenUnpickled:
    """What a planted results file can hold: unpickling it calls ``Path.touch(marker)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return Path.touch, (self.marker,)


def test_planted_pickle_in_a_results_cache_never_runs_and_is_recomputed(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    store = ResultStore(tmp_path / "cache", {"backbone": "x"})
    payload = {"settings_digest": store.digest, "settings": store.settings, "result": RunsCodeWhenUnpickled(marker)}
    path = store.path("bottle", "padim")
    path.parent.mkdir()
    for planted in (path, path.with_suffix(".pt")):  # the unit's file, and the name earlier versions used
        torch.save(payload, planted)

    with pytest.warns(CacheWarning, match=f"{path.name} is discarded because it cannot be read"):
        assert store.computed(lambda: {"auroc": 0.9}, "bottle", "padim") == {"auroc": 0.9}

    assert not marker.exists()
    assert store.load("bottle", "padim") == {"auroc": 0.9}


def test_nothing_in_the_library_unpickles() -> None:
    library = Path(protoad_lib.__file__).parent
    found = [f"{path.relative_to(library)}:{number}: {line.strip()}"
             for path in sorted(library.rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if any(unsafe in line.replace(" ", "") for unsafe in UNPICKLING)
             or ("torch.load(" in line and "weights_only=True" not in line)]
    assert found == []


@pytest.mark.parametrize("name", ["../../x", "../weave", "a/b", "a\\b", "..", ".", ""])
def test_a_category_that_is_not_a_folder_name_is_refused_clearly(name: str) -> None:
    with pytest.raises(CategoryNameError, match="is not a folder name.*must not"):
        check_category_name(name)


@pytest.mark.parametrize("name", ["bottle", "metal_nut", "01", "weave"])
def test_every_benchmark_category_is_a_folder_name(name: str) -> None:
    assert check_category_name(name) == name


def test_a_dataset_never_reads_a_category_outside_its_root(tiny_benchmark: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_benchmark / "weave", tmp_path / "weave")
    (tmp_path / "data").mkdir()

    with pytest.raises(CategoryNameError, match="'../weave'"):
        AnomalyDataset(tmp_path / "data", "../weave", "train")


def test_the_feature_cache_never_writes_outside_its_folder(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "a" / "b" / "cache")

    with pytest.raises(CategoryNameError, match="'../../x'"):
        cache.save(CacheKey("toy", "../../x", "train", "resnet18", "random", ("layer1",), 64, 2), torch.ones(2, 1))
    assert list(tmp_path.rglob("*.pt")) == []


@pytest.mark.parametrize("categories", ["weave,../../x", ["../../x"]])
def test_notebook_categories_parameter_refuses_a_path(categories: str | list[str]) -> None:
    with pytest.raises(ValueError, match="category '../../x' is not a folder name"):
        setup(profile="demo", categories=categories)


@pytest.mark.parametrize("command", [
    ["fit", "--out", "model.safetensors"],
    ["evaluate"],
    ["bench", "--weights", "random", "--methods", "protoad"],
])
def test_command_line_refuses_a_category_path_with_status_2(
    command: list[str], tiny_benchmark: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code = cli.main([*command, "--data-root", str(tiny_benchmark), "--category", "../../x"])

    assert code == 2
    assert f"protoad {command[0]}: error: category '../../x' is not a folder name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
