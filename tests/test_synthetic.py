"""Tests for protoad_lib.data.synthetic (the synthetic mini benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protoad_lib.data import AnomalyDataset, count_samples
from protoad_lib.data.synthetic import (
    SYNTHETIC_CATEGORIES,
    SYNTHETIC_DEFECTS,
    ensure_mini_benchmark,
    generate_mini_benchmark,
)

SMALL = dict(n_train=3, n_test_good=1, n_test_per_defect=1)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """The default-size benchmark, generated once for the module."""
    return generate_mini_benchmark(tmp_path_factory.mktemp("synth") / "mini", seed=0)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_categories_and_defects():
    assert len(SYNTHETIC_CATEGORIES) >= 2
    assert {"weave", "disc"} <= set(SYNTHETIC_CATEGORIES)
    for cat in SYNTHETIC_CATEGORIES:
        assert len(SYNTHETIC_DEFECTS[cat]) >= 2 and "good" not in SYNTHETIC_DEFECTS[cat]


def test_generation_is_deterministic(tmp_path):
    a = _files(generate_mini_benchmark(tmp_path / "a", seed=3, **SMALL))
    b = _files(generate_mini_benchmark(tmp_path / "b", seed=3, **SMALL))
    assert a and a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), "re-generation is not byte-identical"
    c = _files(generate_mini_benchmark(tmp_path / "c", seed=4, **SMALL))
    assert any(a[k] != c[k] for k in a if k.endswith(".png")), "seed has no effect"
    # no temporary folders left behind
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(SYNTHETIC_CATEGORIES)


def test_layout_and_counts(bench):
    for cat in SYNTHETIC_CATEGORIES:
        c = bench / cat
        assert len(list((c / "train/good").glob("*.png"))) == 16
        assert len(list((c / "test/good").glob("*.png"))) == 4
        for d in SYNTHETIC_DEFECTS[cat]:
            imgs = sorted((c / "test" / d).glob("*.png"))
            masks = sorted((c / "ground_truth" / d).glob("*_mask.png"))
            assert len(imgs) == 3
            assert [m.name for m in masks] == [f"{p.stem}_mask.png" for p in imgs]
        meta = json.loads((c / ".complete").read_text())
        assert meta["seed"] == 0 and meta["category"] == cat
        with Image.open(c / "train/good/000.png") as im:
            assert im.size == (256, 256) and im.mode == "RGB"


def test_masks_binary_nonempty_and_defects_visible(bench):
    for cat in SYNTHETIC_CATEGORIES:
        for d in SYNTHETIC_DEFECTS[cat]:
            for mp in sorted((bench / cat / "ground_truth" / d).glob("*_mask.png")):
                m = np.asarray(Image.open(mp))
                assert m.ndim == 2 and set(np.unique(m).tolist()) == {0, 255}, mp
                area = (m > 0).mean()
                assert 0.0005 < area < 0.05, (mp, area)
                # the defect is visible: inside differs from a thin band around it
                img = np.asarray(Image.open(bench / cat / "test" / d / mp.name.replace("_mask", "")),
                                 dtype=np.float64) / 255
                inside = m > 0
                from scipy.ndimage import binary_dilation

                band = binary_dilation(inside, iterations=4) & ~inside
                diff = np.abs(img[inside].mean(0) - img[band].mean(0)).max()
                assert diff > 0.08, (mp, diff)


def test_loads_with_anomaly_dataset(bench):
    for cat in SYNTHETIC_CATEGORIES:
        train = AnomalyDataset(bench, cat, "train")
        test = AnomalyDataset(bench, cat, "test")
        assert len(train) == 16 and set(train.labels) == {0}
        n_def = len(SYNTHETIC_DEFECTS[cat])
        counts = count_samples(test)
        assert counts["good"] == 4 and counts["anomalous"] == 3 * n_def
        for i in range(len(test)):
            s = test[i]
            assert s["image"].shape == (3, 224, 224)
            assert (s["mask"].sum().item() > 0) == (s["label"] == 1), s["path"]
            assert (s["defect_type"] == "good") == (s["label"] == 0)


def test_skip_existing_overwrite_and_repair(tmp_path):
    root = generate_mini_benchmark(tmp_path / "m", **SMALL)
    probe = root / "weave/train/good/000.png"
    probe.write_bytes(b"edited")
    generate_mini_benchmark(root, **SMALL)  # complete marker -> untouched
    assert probe.read_bytes() == b"edited"
    generate_mini_benchmark(root, overwrite=True, **SMALL)
    assert probe.read_bytes() != b"edited"
    # interrupted write (no marker) -> regenerated
    (root / "disc/.complete").unlink()
    (root / "disc/test/spot/000.png").unlink()
    generate_mini_benchmark(root, **SMALL)
    assert (root / "disc/test/spot/000.png").is_file() and (root / "disc/.complete").is_file()
    # different parameters -> regenerated, not silently reused
    generate_mini_benchmark(root, n_train=4, n_test_good=1, n_test_per_defect=1,
                            categories=["weave"])
    assert len(list((root / "weave/train/good").glob("*.png"))) == 4


def test_ensure_mini_benchmark(tmp_path):
    root = ensure_mini_benchmark(tmp_path / "synthetic_mini", seed=0, **SMALL)
    assert root == tmp_path / "synthetic_mini"
    assert all((root / c / ".complete").is_file() for c in SYNTHETIC_CATEGORIES)
    assert ensure_mini_benchmark(root, seed=0, **SMALL) == root


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate_mini_benchmark(tmp_path, categories=["nope"])
    with pytest.raises(ValueError):
        generate_mini_benchmark(tmp_path, n_train=0)
