"""Anomaly-detection metrics: image/pixel AUROC, AUPRO (MVTec AD per-region overlap) and max-F1."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

ArrayLike = np.ndarray | torch.Tensor

# 8-connectivity inside each map of an [N, H, W] stack, no connection between maps
# (the MVTec AD evaluation code labels each ground-truth mask with a 3x3 structure).
_REGION_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_REGION_STRUCTURE[1] = True


def _to_numpy(x: ArrayLike) -> np.ndarray:
    """Return `x` as a numpy array (torch tensors are detached and moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:  # numpy has no bfloat16
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _as_binary(x: np.ndarray, name: str) -> np.ndarray:
    """Check that `x` only holds 0/1 values and return it as a bool array."""
    if not np.isin(x, (0, 1)).all():
        raise ValueError(f"{name} must be binary (0 good, 1 anomalous), got values {np.unique(x)[:5]}...")
    return x.astype(bool)


def _as_scores(x: np.ndarray, name: str) -> np.ndarray:
    """Return `x` as float64, rejecting NaN."""
    scores = x.astype(np.float64)
    if np.isnan(scores).any():
        raise ValueError(f"{name} contain NaN")
    return scores


def _as_map_stack(x: ArrayLike, name: str) -> np.ndarray:
    """Return `x` as an [N, H, W] array; a singleton channel axis ([N, 1, H, W]) is dropped."""
    x = _to_numpy(x)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3 or x.size == 0:
        raise ValueError(f"{name} must be a non-empty [N, H, W] (or [N, 1, H, W]) stack, got shape {x.shape}")
    return x


def _image_inputs(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate per-image labels [N] and scores [N]; return (bool labels, float64 scores)."""
    labels, scores = _to_numpy(labels), _to_numpy(scores)
    if labels.ndim != 1 or labels.shape != scores.shape or labels.size == 0:
        raise ValueError(
            f"labels and scores must be non-empty 1-D arrays of equal length, got shapes {labels.shape} and {scores.shape}"
        )
    return _as_binary(labels, "labels"), _as_scores(scores, "scores")


def _pixel_inputs(masks: ArrayLike, maps: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate ground-truth masks and anomaly maps [N, H, W]; return (bool masks, float64 maps)."""
    masks, maps = _as_map_stack(masks, "masks"), _as_map_stack(maps, "maps")
    if masks.shape != maps.shape:
        raise ValueError(f"masks and maps must have the same shape, got {masks.shape} and {maps.shape}")
    return _as_binary(masks, "masks"), _as_scores(maps, "maps")


def _require_both_classes(labels: np.ndarray, metric: str) -> None:
    """Raise if the bool `labels` contain only good or only anomalous samples."""
    if labels.all() or not labels.any():
        only = "anomalous" if labels.all() else "good"
        raise ValueError(f"{metric} needs both good and anomalous samples, but all {labels.size} are {only}")


def _auroc(labels: np.ndarray, scores: np.ndarray, metric: str) -> float:
    _require_both_classes(labels, metric)
    return float(roc_auc_score(labels, scores))


def image_auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Image-level ROC AUC of per-image anomaly scores [N] against labels [N] (1 = anomalous)."""
    labels, scores = _image_inputs(labels, scores)
    return _auroc(labels, scores, "image AUROC")


def pixel_auroc(masks: ArrayLike, maps: ArrayLike) -> float:
    """Pixel-level ROC AUC of anomaly maps [N, H, W] against binary masks [N, H, W], all pixels pooled."""
    masks, maps = _pixel_inputs(masks, maps)
    return _auroc(masks.ravel(), maps.ravel(), "pixel AUROC")


def _pro_curve(masks: np.ndarray, maps: np.ndarray, num_thresholds: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Return (fpr, pro) points of the per-region-overlap curve, from (0, 0) up to (1, 1).

    Pixels are sorted by descending score once; lowering the threshold past a pixel adds
    1 / (region_size * n_regions) to PRO if it is anomalous and 1 / n_normal to FPR if it is
    normal, so cumulative sums give the curve after every prefix of the sorted pixels. A curve
    point is only taken where the threshold can actually stop: at the last pixel of each run of
    equal scores (exact), or at the last pixel scoring >= each of `num_thresholds` thresholds.
    Requires at least one anomalous and one normal pixel.
    """
    regions, n_regions = ndimage.label(masks, structure=_REGION_STRUCTURE)
    regions = regions.ravel()
    region_sizes = np.bincount(regions)  # index 0 counts the normal pixels
    pro_step = np.zeros(n_regions + 1)
    pro_step[1:] = 1.0 / (n_regions * region_sizes[1:])

    order = np.argsort(maps.ravel())[::-1]
    sorted_scores = maps.ravel()[order]
    pro = np.cumsum(pro_step[regions[order]])
    fpr = np.cumsum(regions[order] == 0) / region_sizes[0]

    if num_thresholds is None:
        stops = np.append(np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]), sorted_scores.size - 1)
    else:
        thresholds = np.linspace(sorted_scores[0], sorted_scores[-1], num_thresholds)  # descending
        n_below = np.searchsorted(sorted_scores[::-1], thresholds, side="left")
        stops = sorted_scores.size - n_below - 1  # index of the last pixel scoring >= threshold
    return np.concatenate(([0.0], fpr[stops])), np.concatenate(([0.0], pro[stops]))


def _area_up_to(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Trapezoid area under pro(fpr) on [0, limit], with pro interpolated linearly at `limit`."""
    inside = np.searchsorted(fpr, limit, side="right")  # fpr[:inside] <= limit
    x, y = fpr[:inside], pro[:inside]
    if inside < fpr.size:
        pro_at_limit = np.interp(limit, fpr[inside - 1 : inside + 1], pro[inside - 1 : inside + 1])
        x, y = np.append(x, limit), np.append(y, pro_at_limit)
    return float(np.trapezoid(y, x))


def aupro(masks: ArrayLike, maps: ArrayLike, fpr_limit: float = 0.3, num_thresholds: int | None = None) -> float:
    """Area under the per-region-overlap (PRO) curve up to `fpr_limit`, normalised by `fpr_limit`.

    Follows the MVTec AD evaluation: regions are the 8-connected components of each
    ground-truth mask; at a threshold, PRO is the mean over all regions (of all images) of the
    fraction of the region's pixels predicted anomalous, and FPR is the fraction of all normal
    pixels predicted anomalous. A perfect detector scores 1.0.

    With `num_thresholds=None` every distinct score is a threshold (exact curve, ties handled);
    otherwise `num_thresholds` evenly spaced thresholds between the min and max score are used.

    Returns float('nan') when the masks contain no anomalous pixel (no region, PRO undefined)
    or no normal pixel (FPR undefined).
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if num_thresholds is not None and num_thresholds < 2:
        raise ValueError(f"num_thresholds must be at least 2 (or None for exact), got {num_thresholds}")
    masks, maps = _pixel_inputs(masks, maps)
    if masks.all() or not masks.any():
        return float("nan")
    fpr, pro = _pro_curve(masks, maps, num_thresholds)
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit


def f1_max(labels: ArrayLike, scores: ArrayLike) -> float:
    """Best F1 score over all thresholds of `scores` against binary `labels` (same shape, flattened)."""
    labels, scores = _to_numpy(labels), _to_numpy(scores)
    if labels.shape != scores.shape or labels.size == 0:
        raise ValueError(f"labels and scores must be non-empty with equal shapes, got {labels.shape} and {scores.shape}")
    labels = _as_binary(labels.ravel(), "labels")
    scores = _as_scores(scores.ravel(), "scores")
    _require_both_classes(labels, "F1-max")
    precision, recall, _ = precision_recall_curve(labels, scores)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return float(f1.max())


def image_f1(labels: ArrayLike, scores: ArrayLike) -> float:
    """Image-level F1-max of per-image scores [N] against labels [N]."""
    labels, scores = _image_inputs(labels, scores)
    return f1_max(labels, scores)


def pixel_f1(masks: ArrayLike, maps: ArrayLike) -> float:
    """Pixel-level F1-max of anomaly maps [N, H, W] against binary masks [N, H, W], all pixels pooled."""
    masks, maps = _pixel_inputs(masks, maps)
    return f1_max(masks, maps)


#: The three numbers every table reports per method and category (fractions in [0, 1]).
HEADLINE_METRICS = ("image_auroc", "pixel_auroc", "aupro")


def evaluate_all(labels: ArrayLike, image_scores: ArrayLike, masks: ArrayLike, maps: ArrayLike) -> dict[str, float]:
    """All metrics as fractions in [0, 1]: image_auroc, pixel_auroc, aupro, image_f1, pixel_f1."""
    labels, image_scores = _image_inputs(labels, image_scores)
    masks, maps = _pixel_inputs(masks, maps)
    if labels.shape[0] != masks.shape[0]:
        raise ValueError(f"got {labels.shape[0]} image labels but {masks.shape[0]} masks")
    return {
        "image_auroc": image_auroc(labels, image_scores),
        "pixel_auroc": pixel_auroc(masks, maps),
        "aupro": aupro(masks, maps),
        "image_f1": image_f1(labels, image_scores),
        "pixel_f1": pixel_f1(masks, maps),
    }
