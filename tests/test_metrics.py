"""Tests for protoad_lib.metrics, with AUPRO checked against a slow threshold-by-threshold reference."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score

from protoad_lib.metrics import (
    aupro,
    evaluate_all,
    f1_max,
    image_auroc,
    image_f1,
    pixel_auroc,
    pixel_f1,
)


# ---------------------------------------------------------------------------
# Slow, obviously-correct AUPRO reference
# ---------------------------------------------------------------------------


def _components_8(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components of a 2-D bool mask, by flood fill."""
    seen = np.zeros_like(mask, dtype=bool)
    components = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        stack, component = [start], []
        while stack:
            r, c = stack.pop()
            component.append((r, c))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < mask.shape[0] and 0 <= cc < mask.shape[1] and mask[rr, cc] and not seen[rr, cc]:
                        seen[rr, cc] = True
                        stack.append((rr, cc))
        components.append(component)
    return components


def reference_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    masks = masks.astype(bool)
    regions = [(i, component) for i, mask in enumerate(masks) for component in _components_8(mask)]
    normal = ~masks
    points = [(0.0, 0.0)]  # threshold above every score
    for threshold in sorted(set(maps.ravel().tolist()), reverse=True):
        predicted = maps >= threshold
        fpr = (predicted & normal).sum() / normal.sum()
        overlaps = [np.mean([predicted[i, r, c] for r, c in component]) for i, component in regions]
        points.append((fpr, float(np.mean(overlaps))))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


def random_fixture(seed: int, n: int = 6, size: int = 24, levels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Random blob masks (some images all good) and noisy maps; `levels` quantises scores to create ties."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        for _ in range(rng.integers(0, 4)):
            cy, cx = rng.integers(0, size, 2)
            ry, rx = rng.uniform(1, 5, 2)
            masks[i][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
    masks[0, 3:7, 3:9] = 1  # at least one region
    maps = masks * rng.uniform(0.2, 1.0) + rng.normal(0, 0.4, masks.shape)
    if levels is not None:
        maps = np.round((maps - maps.min()) / (maps.max() - maps.min()) * (levels - 1))
    return masks, maps


# ---------------------------------------------------------------------------
# AUROC / F1
# ---------------------------------------------------------------------------


def test_image_auroc_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 50)
    scores = labels + rng.normal(0, 1, 50)
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert image_auroc(torch.tensor(labels), torch.tensor(scores)) == pytest.approx(roc_auc_score(labels, scores))


def test_pixel_auroc_matches_sklearn():
    masks, maps = random_fixture(1)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected)
    # torch tensors and a singleton channel axis are accepted
    assert pixel_auroc(torch.tensor(masks)[:, None].float(), torch.tensor(maps)) == pytest.approx(expected)


def test_f1_max_matches_best_threshold():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 40)
    scores = np.round(labels + rng.normal(0, 1, 40), 1)
    best = max(f1_score(labels, scores >= t) for t in np.unique(scores))
    assert f1_max(labels, scores) == pytest.approx(best)
    assert image_f1(labels, scores) == pytest.approx(best)


def test_pixel_f1_perfect_maps():
    masks, _ = random_fixture(3)
    assert pixel_f1(masks, masks.astype(float)) == pytest.approx(1.0)


def test_evaluate_all_keys_and_types():
    masks, maps = random_fixture(4)
    labels = masks.reshape(len(masks), -1).max(axis=1)
    labels[-1] = 0
    masks[-1] = 0
    image_scores = maps.reshape(len(maps), -1).max(axis=1)
    result = evaluate_all(labels, image_scores, masks, maps)
    assert set(result) == {"image_auroc", "pixel_auroc", "aupro", "image_f1", "pixel_f1"}
    for value in result.values():
        assert type(value) is float and 0.0 <= value <= 1.0
    assert result["aupro"] == pytest.approx(aupro(masks, maps))


# ---------------------------------------------------------------------------
# AUPRO
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seed, levels",
    [(10, None), (11, None), (12, None), (13, 5), (14, 8), (15, 20), (16, 3)],
)
def test_aupro_matches_reference(seed, levels):
    masks, maps = random_fixture(seed, levels=levels)
    assert aupro(masks, maps) == pytest.approx(reference_aupro(masks, maps), abs=1e-6)


@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_aupro_matches_reference_other_limits(fpr_limit):
    masks, maps = random_fixture(20, levels=10)
    expected = reference_aupro(masks, maps, fpr_limit)
    assert aupro(masks, maps, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-6)


def test_aupro_perfect_and_inverted():
    masks, _ = random_fixture(5)
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert aupro(masks, -masks.astype(float)) == pytest.approx(0.0, abs=1e-9)


def test_aupro_single_region():
    masks = np.zeros((1, 8, 8), dtype=np.uint8)
    masks[0, 2:4, 2:4] = 1
    rng = np.random.default_rng(6)
    maps = rng.uniform(size=masks.shape) + masks * 0.5
    assert aupro(masks, maps) == pytest.approx(reference_aupro(masks, maps), abs=1e-9)


def test_aupro_uses_8_connectivity():
    # Pixel A=(0,0) touches the L-shape B={(1,1),(1,2),(2,1)} only diagonally: one region of 4 pixels.
    masks = np.zeros((1, 4, 4), dtype=np.uint8)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 1, 2] = masks[0, 2, 1] = 1
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0] = 1.0
    maps[0, 1, 1] = maps[0, 1, 2] = maps[0, 2, 1] = 0.5
    maps[0, 3, :] = maps[0, 2, 2:] = 0.75  # 6 of the 12 normal pixels
    # Curve: (0, 1/4) -> (0.5, 1/4) -> (0.5, 1) -> (1, 1); with 4-connectivity PRO would be 1/2.
    assert aupro(masks, maps) == pytest.approx(0.25)


def test_aupro_ties_between_normal_and_anomalous():
    # All scores equal: the only curve points are (0, 0) and (1, 1), area to 0.3 is 0.3^2 / 2.
    masks = np.array([[[1, 1, 0, 0]]])
    maps = np.full(masks.shape, 0.7)
    assert aupro(masks, maps) == pytest.approx(0.15)


def test_aupro_no_anomalous_or_no_normal_pixels_is_nan():
    maps = np.random.default_rng(7).uniform(size=(3, 8, 8))
    assert math.isnan(aupro(np.zeros((3, 8, 8)), maps))
    assert math.isnan(aupro(np.ones((3, 8, 8)), maps))


def test_aupro_num_thresholds():
    masks, maps = random_fixture(8, levels=11)  # integer scores 0..10
    assert aupro(masks, maps, num_thresholds=11) == pytest.approx(aupro(masks, maps))
    masks, maps = random_fixture(9)
    assert aupro(masks, maps, num_thresholds=2000) == pytest.approx(aupro(masks, maps), abs=1e-2)


# ---------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        image_auroc(np.array([0, 1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="shape"):
        pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="shape"):
        aupro(np.zeros((2, 4, 4)), np.zeros((4, 4)))
    masks, maps = random_fixture(0, n=3)
    with pytest.raises(ValueError, match="labels"):
        evaluate_all(np.array([0, 1]), np.array([0.1, 0.9]), masks, maps)


def test_single_class_raises():
    with pytest.raises(ValueError, match="both good and anomalous"):
        image_auroc(np.ones(5), np.arange(5.0))
    with pytest.raises(ValueError, match="both good and anomalous"):
        pixel_auroc(np.zeros((2, 4, 4)), np.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="both good and anomalous"):
        image_f1(np.zeros(5), np.arange(5.0))


def test_non_binary_labels_raise():
    with pytest.raises(ValueError, match="binary"):
        image_auroc(np.array([0, 1, 2]), np.array([0.1, 0.2, 0.3]))

