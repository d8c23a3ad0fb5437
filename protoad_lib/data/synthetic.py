"""A small synthetic benchmark in the MVTec AD layout (for tests, demos and smoke runs).

Two categories, one texture and one object, like MVTec AD's two families:

- ``weave`` (texture): a periodic plain-weave fabric (fixed period, random phase, slight
  illumination / noise jitter per image). Defects: ``scratch`` (thin dark line),
  ``hole`` (irregular dark hole in the fabric), ``stain`` (semi-transparent colour blob).
- ``disc`` (object): a shaded metallic washer (ring with a concentric groove) on a dark
  background, with small position / illumination jitter. Defects: ``crack`` (thin dark
  polyline on the ring), ``spot`` (rust-coloured blob on the ring).

Every defect is painted through an exact binary mask: the defective image differs from
its defect-free rendering exactly on the mask pixels, and the mask is written to
``ground_truth/<defect>/<stem>_mask.png`` (values 0/255). Defects are placed in the
central part of the image so they survive the 256 -> 224 centre crop.

Output is fully determined by ``seed`` and the size arguments (numpy ``Generator`` seeded
per image, PNGs written by PIL without timestamps): re-running gives byte-identical files.
Each category is written to a temporary folder and renamed into place; a ``.complete``
marker (JSON with the generation parameters) makes later calls skip it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image

__all__ = [
    "SYNTHETIC_CATEGORIES",
    "SYNTHETIC_DEFECTS",
    "DEFAULT_SYNTHETIC_DIR",
    "GENERATOR_VERSION",
    "generate_mini_benchmark",
    "ensure_mini_benchmark",
    "render_sample",
]

GENERATOR_VERSION = 1
SYNTHETIC_CATEGORIES: tuple[str, ...] = ("weave", "disc")
SYNTHETIC_DEFECTS: dict[str, tuple[str, ...]] = {
    "weave": ("scratch", "hole", "stain"),
    "disc": ("crack", "spot"),
}
DEFAULT_SYNTHETIC_DIR = Path("data/synthetic_mini")
MARKER = ".complete"

# Stable integer ids for seeding (never Python's salted hash()).
_CAT_ID = {"weave": 1, "disc": 2}
_SPLIT_ID = {"train": 1, "test": 2}
_DEFECT_ID = {"good": 0, "scratch": 1, "hole": 2, "stain": 3, "crack": 4, "spot": 5}


# --------------------------------------------------------------------------- geometry helpers


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    return yy + 0.5, xx + 0.5


def _segment_distance(yy, xx, p0, p1) -> np.ndarray:
    """Distance of every pixel centre to the segment p0-p1 ((y, x) tuples)."""
    (y0, x0), (y1, x1) = p0, p1
    dy, dx = y1 - y0, x1 - x0
    denom = dy * dy + dx * dx
    if denom == 0:
        return np.hypot(yy - y0, xx - x0)
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / denom, 0.0, 1.0)
    return np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx))


def _blob(yy, xx, cy, cx, radius, rng) -> np.ndarray:
    """Irregular filled blob: a circle whose radius is modulated by random harmonics."""
    ang = np.arctan2(yy - cy, xx - cx)
    r = np.hypot(yy - cy, xx - cx)
    mod = np.ones_like(ang)
    for k in (2, 3, 5):
        mod += rng.uniform(0.04, 0.14) * np.sin(k * ang + rng.uniform(0, 2 * np.pi))
    return r <= radius * mod


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- weave (texture)


def _render_weave(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    s = size / 256.0
    yy, xx = _grid(size)
    period = 16.0 * s
    phy, phx = rng.uniform(0, period, 2)
    u, v = (xx + phx) / period, (yy + phy) / period
    fu, fv = u - np.floor(u), v - np.floor(v)
    over = ((np.floor(u) + np.floor(v)) % 2) == 0
    warp = np.sin(np.pi * fu) ** 0.6 * (0.8 + 0.2 * np.sin(np.pi * fv))
    weft = np.sin(np.pi * fv) ** 0.6 * (0.8 + 0.2 * np.sin(np.pi * fu))
    c_warp = np.array([0.80, 0.71, 0.55])
    c_weft = np.array([0.72, 0.63, 0.49])
    val = np.where(over, warp, weft)[..., None]
    col = np.where(over[..., None], c_warp, c_weft)
    img = 0.12 + 0.85 * val * col
    gain = rng.uniform(0.95, 1.05)
    grad = 1.0 + rng.uniform(-0.04, 0.04) * (xx / size - 0.5) + rng.uniform(-0.04, 0.04) * (
        yy / size - 0.5)
    img = img * (gain * grad)[..., None]
    img = img + rng.normal(0.0, 0.015, img.shape)
    return np.clip(img, 0, 1), {"yy": yy, "xx": xx, "s": s}


def _weave_defect(defect: str, img: np.ndarray, ctx: dict, rng: np.random.Generator):
    yy, xx, s = ctx["yy"], ctx["xx"], ctx["s"]
    size = img.shape[0]
    cy, cx = rng.uniform(0.25 * size, 0.75 * size, 2)
    if defect == "scratch":
        theta = rng.uniform(0, np.pi)
        half = 0.5 * rng.uniform(0.25, 0.45) * size
        p0 = (cy - half * np.sin(theta), cx - half * np.cos(theta))
        p1 = (cy + half * np.sin(theta), cx + half * np.cos(theta))
        width = max(1.5, rng.uniform(1.8, 2.6) * s)
        mask = _segment_distance(yy, xx, p0, p1) <= width / 2
        out = img.copy()
        out[mask] = img[mask] * rng.uniform(0.25, 0.35)
    elif defect == "hole":
        mask = _blob(yy, xx, cy, cx, rng.uniform(0.035, 0.06) * size, rng)
        out = img.copy()
        dark = np.array([0.06, 0.05, 0.05]) + rng.normal(0, 0.01, (int(mask.sum()), 3))
        out[mask] = dark
    elif defect == "stain":
        mask = _blob(yy, xx, cy, cx, rng.uniform(0.05, 0.09) * size, rng)
        palette = np.array([[0.45, 0.27, 0.10], [0.20, 0.30, 0.62], [0.35, 0.50, 0.20]])
        colour = palette[rng.integers(len(palette))]
        out = _tint(img, mask, colour, rng.uniform(0.45, 0.6))
    else:  # pragma: no cover - guarded by caller
        raise ValueError(f"unknown weave defect {defect!r}")
    return out, mask


def _tint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray, alpha: float) -> np.ndarray:
    """A copy of `img` with `colour` blended into the masked pixels at opacity `alpha`."""
    out = img.copy()
    out[mask] = (1 - alpha) * img[mask] + alpha * colour
    return out


# --------------------------------------------------------------------------- disc (object)


def _render_disc(rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict]:
    s = size / 256.0
    yy, xx = _grid(size)
    cy, cx = size / 2 + rng.uniform(-3.0, 3.0, 2) * s
    r_out = 0.34 * size * rng.uniform(0.99, 1.01)
    r_in = 0.13 * size
    r_groove = 0.235 * size
    r = np.hypot(yy - cy, xx - cx)
    ang = np.arctan2(yy - cy, xx - cx)
    alpha = np.clip(r_out - r + 0.5, 0, 1) * np.clip(r - r_in + 0.5, 0, 1)  # soft edges
    light = rng.uniform(-np.pi, np.pi)
    bright = 0.78 + 0.12 * np.cos(ang - light) * (r / r_out)
    bright = bright - 0.25 * np.exp(-0.5 * ((r - r_groove) / (2.0 * s)) ** 2)  # groove
    gain = rng.uniform(0.94, 1.06)
    metal = np.array([0.80, 0.80, 0.84])
    obj = (bright * gain)[..., None] * metal
    bg = np.full(obj.shape, 0.08)
    img = bg * (1 - alpha[..., None]) + obj * alpha[..., None]
    img = img + rng.normal(0.0, 0.012, img.shape)
    ctx = {"yy": yy, "xx": xx, "s": s, "cy": cy, "cx": cx, "r_in": r_in, "r_out": r_out,
           "solid": alpha >= 0.999}
    return np.clip(img, 0, 1), ctx


def _point_on_ring(ctx: dict, rng: np.random.Generator, margin: float) -> tuple[float, float]:
    rr = rng.uniform(ctx["r_in"] + margin, ctx["r_out"] - margin)
    a = rng.uniform(-np.pi, np.pi)
    return ctx["cy"] + rr * np.sin(a), ctx["cx"] + rr * np.cos(a)


def _disc_defect(defect: str, img: np.ndarray, ctx: dict, rng: np.random.Generator):
    yy, xx, s = ctx["yy"], ctx["xx"], ctx["s"]
    size = img.shape[0]
    if defect == "crack":
        y, x = _point_on_ring(ctx, rng, 6 * s)
        direction = rng.uniform(-np.pi, np.pi)
        width = max(1.5, rng.uniform(1.6, 2.2) * s)
        dist = np.full(yy.shape, np.inf)
        for _ in range(int(rng.integers(4, 7))):
            direction += rng.uniform(-0.7, 0.7)
            step = rng.uniform(0.035, 0.06) * size
            ny, nx = y + step * np.sin(direction), x + step * np.cos(direction)
            dist = np.minimum(dist, _segment_distance(yy, xx, (y, x), (ny, nx)))
            y, x = ny, nx
        mask = (dist <= width / 2) & ctx["solid"]
        out = img.copy()
        out[mask] = img[mask] * rng.uniform(0.2, 0.3)
    elif defect == "spot":
        rad = rng.uniform(0.025, 0.045) * size
        cy, cx = _point_on_ring(ctx, rng, rad * 1.2 + 2 * s)
        mask = _blob(yy, xx, cy, cx, rad, rng) & ctx["solid"]
        colour = np.array([0.55, 0.26, 0.10]) * rng.uniform(0.9, 1.1)
        out = _tint(img, mask, colour, rng.uniform(0.6, 0.75))
    else:  # pragma: no cover - guarded by caller
        raise ValueError(f"unknown disc defect {defect!r}")
    return out, mask


_RENDER: dict[str, tuple[Callable, Callable]] = {
    "weave": (_render_weave, _weave_defect),
    "disc": (_render_disc, _disc_defect),
}


def render_sample(category: str, defect: str, seed: int, split: str, index: int,
                  size: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
    """Render one image (uint8 ``[H,W,3]``) and, for defects, its bool mask ``[H,W]``."""
    if category not in _RENDER:
        raise ValueError(f"unknown synthetic category {category!r}; "
                         f"choose from {SYNTHETIC_CATEGORIES}")
    if defect != "good" and defect not in SYNTHETIC_DEFECTS[category]:
        raise ValueError(f"unknown defect {defect!r} for {category!r}; "
                         f"choose from {SYNTHETIC_DEFECTS[category]}")
    rng = np.random.default_rng(
        [int(seed), _CAT_ID[category], _SPLIT_ID[split], _DEFECT_ID[defect], int(index)]
    )
    render, paint = _RENDER[category]
    base, ctx = render(rng, size)
    if defect == "good":
        return _to_uint8(base), None
    min_area = max(12.0, 40.0 * (size / 256.0) ** 2)
    for _ in range(50):  # resample until the defect is clearly present (deterministic)
        img, mask = paint(defect, base, ctx, rng)
        if mask.sum() >= min_area:
            break
    else:  # pragma: no cover - practically unreachable
        raise RuntimeError(f"could not place a {defect} defect on {category} #{index}")
    return _to_uint8(img), mask


# --------------------------------------------------------------------------- writing


def _save_png(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path, format="PNG", optimize=False, compress_level=1)


def _meta(category: str, seed: int, n_train: int, n_test_good: int, n_test_per_defect: int,
          size: int) -> dict:
    defects = list(SYNTHETIC_DEFECTS[category])
    return {
        "generator": "protoad_lib.data.synthetic",
        "version": GENERATOR_VERSION,
        "category": category,
        "seed": int(seed),
        "size": int(size),
        "n_train": int(n_train),
        "n_test_good": int(n_test_good),
        "n_test_per_defect": int(n_test_per_defect),
        "defects": defects,
        "counts": {
            "train": int(n_train),
            "test_good": int(n_test_good),
            "test_anomalous": int(n_test_per_defect) * len(defects),
        },
    }


def _is_complete(cat_dir: Path, meta: dict) -> bool:
    marker = cat_dir / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == meta
    except (OSError, ValueError):
        return False


def _write_category(dest: Path, category: str, seed: int, n_train: int, n_test_good: int,
                    n_test_per_defect: int, size: int) -> None:
    def write_split(split: str, defect: str, n: int) -> None:
        img_dir = dest / split / defect
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir = dest / "ground_truth" / defect
        if defect != "good":
            gt_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, mask = render_sample(category, defect, seed, split, i, size)
            _save_png(img, img_dir / f"{i:03d}.png")
            if mask is not None:
                _save_png(mask.astype(np.uint8) * 255, gt_dir / f"{i:03d}_mask.png")

    write_split("train", "good", n_train)
    write_split("test", "good", n_test_good)
    for defect in SYNTHETIC_DEFECTS[category]:
        write_split("test", defect, n_test_per_defect)


def generate_mini_benchmark(
    out_dir: str | Path,
    seed: int = 0,
    n_train: int = 16,
    n_test_good: int = 4,
    n_test_per_defect: int = 3,
    size: int = 256,
    overwrite: bool = False,
    categories: Iterable[str] | None = None,
) -> Path:
    """Write the synthetic benchmark (MVTec layout) under ``out_dir`` and return ``out_dir``.

    ``out_dir/<category>/{train/good, test/{good,<defect>}, ground_truth/<defect>}``.
    A category whose folder already holds a ``.complete`` marker written with the same
    parameters is left untouched unless ``overwrite``; a folder without the marker (an
    interrupted or foreign write) or with different parameters is regenerated.
    """
    out_dir = Path(out_dir)
    cats = tuple(SYNTHETIC_CATEGORIES if categories is None else categories)
    unknown = [c for c in cats if c not in SYNTHETIC_CATEGORIES]
    if unknown:
        raise ValueError(f"unknown synthetic categories {unknown}; choose from "
                         f"{SYNTHETIC_CATEGORIES}")
    if n_train < 1 or n_test_good < 0 or n_test_per_defect < 0:
        raise ValueError("need n_train >= 1, n_test_good >= 0 and n_test_per_defect >= 0")
    if n_test_good + n_test_per_defect == 0:
        raise ValueError("the test split would be empty; set n_test_good or n_test_per_defect")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    out_dir.mkdir(parents=True, exist_ok=True)

    for cat in cats:
        meta = _meta(cat, seed, n_train, n_test_good, n_test_per_defect, size)
        final = out_dir / cat
        if not overwrite and _is_complete(final, meta):
            continue
        tmp = Path(tempfile.mkdtemp(prefix=f".{cat}.tmp-", dir=out_dir))
        try:
            os.chmod(tmp, 0o755)
            _write_category(tmp, cat, seed, n_train, n_test_good, n_test_per_defect, size)
            (tmp / MARKER).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            if final.exists():
                trash = out_dir / f".{cat}.old-{uuid.uuid4().hex}"
                os.rename(final, trash)
                os.rename(tmp, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                try:
                    os.rename(tmp, final)
                except OSError:
                    # Another process finished the same category first: keep theirs.
                    if not _is_complete(final, meta):
                        raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def ensure_mini_benchmark(data_dir: str | Path | None = None, seed: int = 0, **kwargs) -> Path:
    """Return the benchmark root ``data_dir`` (default ``data/synthetic_mini``), generating
    any missing / incomplete category first. ``data_dir`` is the root itself, i.e. the folder
    that will contain ``weave/`` and ``disc/``; extra kwargs go to
    :func:`generate_mini_benchmark`."""
    root = Path(data_dir) if data_dir is not None else DEFAULT_SYNTHETIC_DIR
    return generate_mini_benchmark(root, seed=seed, overwrite=False, **kwargs)
