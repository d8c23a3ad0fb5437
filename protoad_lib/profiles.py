"""The two run profiles: `demo` (offline synthetic mini benchmark) and `paper` (MVTec AD + BTAD)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from .methods.protoad.prototypes import DEFAULT_MAX_VECTORS
from .data import BTAD_CATEGORIES, MVTEC_CATEGORIES
from .data.synthetic import SYNTHETIC_CATEGORIES

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Moves the feature cache (by default `<data folder>/feature_cache`), e.g. to a larger or faster disk.
CACHE_DIR_VARIABLE = "PROTOAD_CACHE_DIR"
#: Where a run writes its tables, figures and stored results when no `results_dir` is given.
RESULTS_DIR_VARIABLE = "PROTOAD_RESULTS_DIR"


def feature_cache_dir(data_dir: str | Path | None = None) -> Path:
    """`$PROTOAD_CACHE_DIR` when set, else `<data_dir>/feature_cache` (`data_dir` None: `<repo>/data`)."""
    moved = os.environ.get(CACHE_DIR_VARIABLE)
    if moved:
        return Path(moved).expanduser().resolve()
    return Path(data_dir or REPO_ROOT / "data") / "feature_cache"


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark: its name, folder layout and categories."""

    name: str
    layout: str
    categories: tuple[str, ...]


@dataclass(frozen=True)
class Profile:
    """Everything a notebook needs to know to run at one scale.

    `max_vectors` is how many training patch vectors FINCH clusters per category: the library
    default (60,000) for the paper profile; 20,000 keeps the demo series within minutes on 2 cores.
    `smoke`: the smallest settings that still run every code path (a CI check of the paper path on
    tiny data; see `smoke_version`), never a setting for numbers anyone should read.
    """

    name: str
    datasets: tuple[DatasetSpec, ...]
    backbone: str
    resize: int = 256
    image_size: int = 224
    batch_size: int = 8
    seed: int = 0
    max_vectors: int = DEFAULT_MAX_VECTORS
    data_dir: Path = field(default=REPO_ROOT / "data")
    smoke: bool = False
    prn_epochs: int | None = None

    @property
    def cache_dir(self) -> Path:
        return feature_cache_dir(self.data_dir)


PROFILES = {
    "demo": Profile(
        name="demo",
        datasets=(DatasetSpec("synthetic_mini", "mvtec", tuple(SYNTHETIC_CATEGORIES)),),
        backbone="efficientnet_lite0",
        max_vectors=20_000,
        prn_epochs=15,
    ),
    "paper": Profile(
        name="paper",
        datasets=(
            DatasetSpec("mvtec", "mvtec", tuple(MVTEC_CATEGORIES)),
            DatasetSpec("btad", "btad", tuple(BTAD_CATEGORIES)),
        ),
        backbone="wide_resnet50_2",
    ),
}


def smoke_version(profile: Profile) -> Profile:
    """The same datasets and layouts at the smallest scale: 64 px crops, few clustered vectors, short
    benchmarks and ablations."""
    return replace(profile, resize=73, image_size=64, max_vectors=2_000, smoke=True, prn_epochs=1)


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise KeyError(f"Unknown profile {name!r}; choose one of {sorted(PROFILES)}.")
    return PROFILES[name]


def dataset_root(profile: Profile, spec: DatasetSpec, root: Path | None = None, download: bool = True) -> Path:
    """Where a benchmark's categories live: generated (synthetic), given, or downloaded on demand."""
    if spec.name == "synthetic_mini":
        from .data.synthetic import ensure_mini_benchmark

        return ensure_mini_benchmark(profile.data_dir / "synthetic_mini", seed=profile.seed)
    from .data.download import resolve_dataset_root

    return resolve_dataset_root(spec.name, root, download=download, data_dir=profile.data_dir)
