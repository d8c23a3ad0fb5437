"""Tests for protoad_lib.data.datasets (MVTec / BTAD layouts, transform, error handling)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader

from protoad_lib.data import (
    BTAD_CATEGORIES,
    MVTEC_CATEGORIES,
    AnomalyDataset,
    CorruptImageError,
    DatasetLayoutError,
    ImageFolderDataset,
    MissingMaskError,
    OrphanMaskError,
    count_samples,
    list_images,
    paper_transform,
)


# --------------------------------------------------------------------------- helpers


def _rgb(path: Path, size=(64, 64), value=None, seed=0, fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = (rng.integers(0, 256, (size[1], size[0], 3)) if value is None
           else np.full((size[1], size[0], 3), value)).astype(np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def _mask(path: Path, size=(64, 64), box=(10, 10, 30, 30), value=255, fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = value
    Image.fromarray(arr).save(path, format=fmt)
    return path


def _make_mvtec(root: Path, cat: str = "thing") -> Path:
    c = root / cat
    for i in range(3):
        _rgb(c / "train/good" / f"{i:03d}.png", seed=i)
    for i in range(2):
        _rgb(c / "test/good" / f"{i:03d}.png", seed=10 + i)
    for d in ("crack", "scratch"):
        for i in range(2):
            _rgb(c / "test" / d / f"{i:03d}.png", seed=20 + i)
            _mask(c / "ground_truth" / d / f"{i:03d}_mask.png")
    return root


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# --------------------------------------------------------------------------- constants


def test_category_lists():
    assert len(MVTEC_CATEGORIES) == 15 and len(set(MVTEC_CATEGORIES)) == 15
    assert {"bottle", "metal_nut", "toothbrush", "zipper", "carpet"} <= set(MVTEC_CATEGORIES)
    assert BTAD_CATEGORIES == ("01", "02", "03")


# --------------------------------------------------------------------------- transform


def test_paper_transform_shapes_and_ranges():
    t = paper_transform()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8))
    m = np.zeros((300, 400), np.uint8)
    m[100:200, 150:250] = 255
    x, y = t(img, Image.fromarray(m))
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert y.shape == (1, 224, 224) and y.dtype == torch.float32
    assert set(torch.unique(y).tolist()) == {0.0, 1.0}
    # no mask -> zeros of the right shape
    _, z = t(img, None)
    assert z.shape == (1, 224, 224) and z.sum() == 0


def test_paper_transform_keeps_image_and_mask_aligned():
    # non-square image: Resize((256,256)) squashes both the same way before the crop
    h, w = 240, 320
    img = np.zeros((h, w, 3), np.uint8)
    msk = np.zeros((h, w), np.uint8)
    img[60:140, 100:180] = 255
    msk[60:140, 100:180] = 255
    x, y = paper_transform(256, 224)(Image.fromarray(img), Image.fromarray(msk))
    bright = x.mean(0) > 0.5
    m = y[0] > 0.5
    inter = (bright & m).sum().item()
    union = (bright | m).sum().item()
    assert union > 0 and inter / union > 0.95
    cy_i, cx_i = torch.nonzero(bright).float().mean(0)
    cy_m, cx_m = torch.nonzero(m).float().mean(0)
    assert abs(cy_i - cy_m) < 1.0 and abs(cx_i - cx_m) < 1.0
    # expected position: rows 60..140 of 240 -> 64..149.3 of 256 -> minus 16 crop offset
    assert abs(cy_m.item() - ((60 + 140) / 2 * 256 / 240 - 16)) < 1.5


def test_paper_transform_grayscale_and_nonbinary_masks():
    t = paper_transform(64, 48)
    gray = Image.fromarray(np.full((50, 50), 128, np.uint8), mode="L")
    x, _ = t(gray)
    assert x.shape == (3, 48, 48)
    assert torch.allclose(x[0], x[1]) and torch.allclose(x[1], x[2])
    rgba = Image.fromarray(np.full((50, 50, 4), 200, np.uint8), mode="RGBA")
    assert t(rgba)[0].shape == (3, 48, 48)
    g16 = Image.fromarray(np.full((50, 50), 65535, np.uint16))
    x16, _ = t(g16)
    assert x16.shape == (3, 48, 48) and torch.allclose(x16, torch.ones_like(x16))
    # any non-zero mask pixel (here value 1, and an RGB mask) counts as anomalous
    m1 = np.zeros((50, 50), np.uint8)
    m1[10:40, 10:40] = 1
    assert set(torch.unique(t(gray, Image.fromarray(m1))[1]).tolist()) == {0.0, 1.0}
    m3 = np.zeros((50, 50, 3), np.uint8)
    m3[10:40, 10:40, 2] = 7
    assert t(gray, Image.fromarray(m3))[1].sum() > 0


def test_paper_transform_rejects_bad_geometry():
    with pytest.raises(ValueError):
        paper_transform(200, 224)


# --------------------------------------------------------------------------- MVTec layout


def test_mvtec_layout_loads(tmp_path):
    root = _make_mvtec(tmp_path)
    train = AnomalyDataset(root, "thing", "train")
    assert len(train) == 3 and train.labels == [0, 0, 0]
    test = AnomalyDataset(root, "thing", "test", resize=64, crop=56)
    assert len(test) == 6
    assert test.defect_types == ["crack", "crack", "good", "good", "scratch", "scratch"]
    assert test.labels == [1, 1, 0, 0, 1, 1]
    assert test.defect_names == ["crack", "good", "scratch"]
    assert test.paths == sorted(test.paths)
    for i in range(len(test)):
        s = test[i]
        assert set(s) == {"image", "label", "mask", "defect_type", "path"}
        assert s["image"].shape == (3, 56, 56) and s["mask"].shape == (1, 56, 56)
        assert (s["mask"].sum() > 0) == (s["label"] == 1)
        rec = test.samples[i]
        assert rec.path == s["path"] and (rec.mask_path is None) == (rec.label == 0)
    counts = count_samples(test)
    assert counts["total"] == 6 and counts["good"] == 2 and counts["anomalous"] == 4
    assert counts["per_defect"] == {"crack": 2, "good": 2, "scratch": 2}
    assert test.summary() == counts
    batch = next(iter(DataLoader(test, batch_size=4)))
    assert batch["image"].shape == (4, 3, 56, 56) and batch["label"].tolist() == [1, 1, 0, 0]
    # contract alias: image_size == crop
    assert AnomalyDataset(root, "thing", "train", image_size=32, resize=40)[0]["image"].shape[-1] == 32


def test_missing_category_and_split_errors(tmp_path):
    root = _make_mvtec(tmp_path)
    with pytest.raises(DatasetLayoutError) as ei:
        AnomalyDataset(root, "nope", "train")
    assert str(root / "nope") in str(ei.value) and "mvtec" in str(ei.value).lower()
    with pytest.raises(DatasetLayoutError) as ei:
        AnomalyDataset(tmp_path / "missing_root", "thing", "train")
    assert "missing_root" in str(ei.value)
    import shutil

    shutil.rmtree(root / "thing" / "test")
    with pytest.raises(DatasetLayoutError) as ei:
        AnomalyDataset(root, "thing", "test")
    msg = str(ei.value)
    assert str(root / "thing" / "test") in msg and "layout" in msg.lower()


def test_missing_mask_raises_or_skips(tmp_path):
    root = _make_mvtec(tmp_path)
    gone = root / "thing/ground_truth/crack/001_mask.png"
    gone.unlink()
    with pytest.raises(MissingMaskError) as ei:
        AnomalyDataset(root, "thing", "test")
    msg = str(ei.value)
    assert str(root / "thing/test/crack/001.png") in msg and str(gone) in msg
    ds = AnomalyDataset(root, "thing", "test", on_error="skip")
    assert len(ds) == 5
    assert [p for p, _ in ds.skipped] == [str(root / "thing/test/crack/001.png")]
    assert "mask" in ds.skipped[0][1]
    assert all((ds[i]["mask"].sum() > 0) == (ds[i]["label"] == 1) for i in range(len(ds)))


def test_orphan_mask_is_reported(tmp_path):
    root = _make_mvtec(tmp_path)
    (root / "thing/test/scratch/000.png").unlink()
    with pytest.raises(OrphanMaskError) as ei:
        AnomalyDataset(root, "thing", "test")
    assert str(root / "thing/ground_truth/scratch/000_mask.png") in str(ei.value)
    ds = AnomalyDataset(root, "thing", "test", on_error="skip")
    assert len(ds) == 5
    assert ds.skipped[0][0] == str(root / "thing/ground_truth/scratch/000_mask.png")
    # a whole ground-truth folder without a test folder is orphaned too
    _rgb(root / "thing/test/scratch/000.png")
    AnomalyDataset(root, "thing", "test")  # consistent again
    _mask(root / "thing/ground_truth/ghost/000_mask.png")
    with pytest.raises(OrphanMaskError, match="ghost"):
        AnomalyDataset(root, "thing", "test")


def test_truncated_png_raises_corrupt_image_error(tmp_path):
    root = _make_mvtec(tmp_path)
    bad = root / "thing/train/good/001.png"
    _truncate(bad)
    ds = AnomalyDataset(root, "thing", "train")  # raise mode: fails lazily, at access
    ds[0]
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        ImageFile.LOAD_TRUNCATED_IMAGES = True  # even if someone enabled it globally
        with pytest.raises(CorruptImageError) as ei:
            ds[1]
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # and we restored it
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old
    assert str(bad) in str(ei.value)
    with pytest.raises(CorruptImageError):
        ds[1]


def test_skip_mode_skips_corrupt_files(tmp_path):
    root = _make_mvtec(tmp_path)
    bad = root / "thing/train/good/001.png"
    _truncate(bad)
    (root / "thing/train/good/002.png").write_bytes(b"this is not an image")
    ds = AnomalyDataset(root, "thing", "train", on_error="skip")
    assert len(ds) == 1 and ds.paths == [str(root / "thing/train/good/000.png")]
    assert {p for p, _ in ds.skipped} == {str(bad), str(root / "thing/train/good/002.png")}
    assert ds[0]["image"].shape == (3, 224, 224)
    # a corrupt mask makes its image skipped (never loaded with a wrong, empty mask)
    _truncate(root / "thing/ground_truth/crack/000_mask.png", 0.3)
    ts = AnomalyDataset(root, "thing", "test", on_error="skip")
    assert str(root / "thing/test/crack/000.png") in [p for p, _ in ts.skipped]
    assert len(ts) == 5
    with pytest.raises(CorruptImageError, match="000_mask.png"):
        AnomalyDataset(root, "thing", "test")[0]


def test_mask_size_mismatch_is_an_error(tmp_path):
    root = _make_mvtec(tmp_path)
    _mask(root / "thing/ground_truth/crack/000_mask.png", size=(32, 32))
    with pytest.raises(CorruptImageError, match="size"):
        AnomalyDataset(root, "thing", "test")[0]
    ds = AnomalyDataset(root, "thing", "test", on_error="skip")
    assert len(ds) == 5 and "size" in ds.skipped[0][1]


def test_bad_arguments(tmp_path):
    root = _make_mvtec(tmp_path)
    with pytest.raises(ValueError):
        AnomalyDataset(root, "thing", "val")
    with pytest.raises(ValueError):
        AnomalyDataset(root, "thing", "train", layout="visa")
    with pytest.raises(ValueError):
        AnomalyDataset(root, "thing", "train", on_error="ignore")


# --------------------------------------------------------------------------- BTAD layout


def test_btad_layout_with_bmp(tmp_path):
    c = tmp_path / "01"
    for i in range(3):
        _rgb(c / "train/ok" / f"{i:04d}.bmp", seed=i, fmt="BMP")
    _rgb(c / "test/ok/0000.bmp", seed=5, fmt="BMP")
    _rgb(c / "test/ok/0001.BMP", seed=6, fmt="BMP")  # upper-case extension
    _rgb(c / "test/ko/0000.bmp", seed=7, fmt="BMP")
    _rgb(c / "test/ko/0001.png", seed=8)
    _mask(c / "ground_truth/ko/0000.bmp", fmt="BMP")
    _mask(c / "ground_truth/ko/0001.png")
    train = AnomalyDataset(tmp_path, "01", "train", layout="btad")
    assert len(train) == 3 and train.labels == [0, 0, 0]
    test = AnomalyDataset(tmp_path, "01", "test", layout="btad")
    assert test.labels == [1, 1, 0, 0]
    assert test.defect_types == ["ko", "ko", "good", "good"]
    for i in range(len(test)):
        s = test[i]
        assert (s["mask"].sum() > 0) == (s["label"] == 1)
    # missing BTAD mask names the expected file
    (c / "ground_truth/ko/0000.bmp").unlink()
    with pytest.raises(MissingMaskError) as ei:
        AnomalyDataset(tmp_path, "01", "test", layout="btad")
    assert str(c / "test/ko/0000.bmp") in str(ei.value)
    assert str(c / "ground_truth/ko/0000") in str(ei.value)
    # BTAD split folder missing -> layout error mentioning btad
    with pytest.raises(DatasetLayoutError, match="(?i)btad"):
        AnomalyDataset(tmp_path, "01", "train", layout="mvtec")


# --------------------------------------------------------------------------- plain folders


def test_list_images_and_image_folder(tmp_path):
    d = tmp_path / "imgs"
    _rgb(d / "b.PNG", seed=1)
    _rgb(d / "a.jpg", seed=2, fmt="JPEG")
    _rgb(d / "c.tiff", seed=3, fmt="TIFF")
    _rgb(d / "sub/d.png", seed=4)
    (d / "notes.txt").write_text("x")
    (d / "._a.png").write_bytes(b"junk")  # macOS resource fork: ignored
    assert [p.name for p in list_images(d)] == ["a.jpg", "b.PNG", "c.tiff"]
    assert [p.name for p in list_images(d, recursive=True)] == ["a.jpg", "b.PNG", "c.tiff", "d.png"]
    ds = ImageFolderDataset(d, resize=64, crop=48)
    assert len(ds) == 3 and ds.labels == [0, 0, 0]
    s = ds[1]
    assert s["image"].shape == (3, 48, 48) and s["mask"].shape == (1, 48, 48)
    assert s["mask"].sum() == 0 and s["label"] == 0 and s["defect_type"] == "good"
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        list_images(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="no usable images"):
        ImageFolderDataset(tmp_path / "empty")
