"""The two run profiles: `demo` (offline synthetic mini benchmark) and `paper` (MVTec AD + BTAD).

Settings only: every way one profile differs from another is a field of `Profile` (callers read the field,
never the profile's name); where a dataset comes from is `session`'s job, and a method's options in a run
are the method's own (`AnomalyDetector.run_options`, reading `max_vectors`, `prn_epochs`, `seed`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .backbones import DEFAULT_BACKBONE
from .data import BTAD_CATEGORIES, MVTEC_CATEGORIES
from .data.synthetic import SYNTHETIC_CATEGORIES
from .data.transforms import PAPER_CROP, PAPER_RESIZE

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Moves the feature cache (by default `<data folder>/feature_cache`), e.g. to a larger or faster disk.
CACHE_DIR_VARIABLE = "PROTOAD_CACHE_DIR"
#: Where a run writes its tables, figures and stored results when no `results_dir` is given.
RESULTS_DIR_VARIABLE = "PROTOAD_RESULTS_DIR"
#: The paper profile's clustering budget: ProtoAD's default (`methods.protoad.prototypes.DEFAULT_MAX_VECTORS`;
#: a test keeps the two equal, as a profile is settings and imports no method).
PAPER_MAX_VECTORS = 60_000


def feature_cache_dir(data_dir: str | Path | None = None) -> Path:
    """`$PROTOAD_CACHE_DIR` when set, else `<data_dir>/feature_cache` (`data_dir` None: `<repo>/data`)."""
    moved = os.environ.get(CACHE_DIR_VARIABLE)
    if moved:
        return Path(moved).expanduser().resolve()
    return Path(data_dir or REPO_ROOT / "data") / "feature_cache"


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark: its name, folder layout and categories; `generated`: made on this machine (the
    synthetic mini benchmark), never downloaded."""

    name: str
    layout: str
    categories: tuple[str, ...]
    generated: bool = False


@dataclass(frozen=True)
class BenchmarkSettings:
    """How much notebook 06 (the speed benchmark) measures for one profile.

    `n_images`: training images each method is fitted on (None: the whole training set); `train_epochs`: how
    long a trained method (PRN) trains there (None: its schedule's); `include_anomalib`: the anomalib peers'
    rows, when the `peers` extra is installed; `time_budget_s`: per (method, batch size), see
    `measure.time_interleaved`; `head_batch_sizes`: where the head alone is timed (None: every batch size);
    `fit_counts`: training-set sizes of the fit-time growth curve (`fit_scaling`).
    """

    batch_sizes: tuple[int, ...]
    n_images: int | None
    warmup: int
    repeats: int
    head_ks: tuple[int, ...]
    bank_sizes: tuple[int, ...]
    include_anomalib: bool
    fit_counts: tuple[int, ...]
    train_epochs: int | None = None
    time_budget_s: float | None = None
    head_batch_sizes: tuple[int, ...] | None = None

    def timing(self) -> dict[str, Any]:
        """How long each timing runs, as `run_benchmark`, `head_cost_vs_k` and `memory_bank_cost` take it."""
        return {"warmup": self.warmup, "repeats": self.repeats, "budget_s": self.time_budget_s}


#: Demo: fit on 8 images (ProtoAD's FINCH then clusters 8 x 3,136 patches), batch 1 and 8, 3 timed runs.
DEMO_BENCHMARK = BenchmarkSettings(batch_sizes=(1, 8), n_images=8, warmup=1, repeats=3,
                                   head_ks=(10, 100, 1_000, 10_000), bank_sizes=(1_000, 3_000, 10_000, 30_000),
                                   include_anomalib=True, fit_counts=(4, 8, 16))
#: Paper: fit on the category's whole training set (e.g. bottle: 209 images, a PatchCore bank of 16,385
#: vectors at 10 %), so the speeds are those of the paper's setting; batch 1 / 8 / 32, 10 timed runs, each
#: callable within a 60 s budget once it has 3 (on 2 CPU cores one batch of 32 through N-pad's or PatchCore's
#: head takes tens of seconds), the head alone at batch 1 and 8 only (its time per image does not change with
#: the batch), one warm-up run. PRN trains one epoch: its speed does not depend on how long it trained, and
#: its schedule's training time (hours per category on a CPU) is notebook 05's.
PAPER_BENCHMARK = BenchmarkSettings(batch_sizes=(1, 8, 32), n_images=None, warmup=1, repeats=10,
                                    head_ks=(10, 30, 100, 300, 1_000, 3_000, 10_000),
                                    bank_sizes=(1_000, 10_000, 100_000), include_anomalib=True,
                                    fit_counts=(25, 50, 100, 200), train_epochs=1, time_budget_s=60.0,
                                    head_batch_sizes=(1, 8))
#: Smoke: 4 images, one timed run, no peers.
SMOKE_BENCHMARK = BenchmarkSettings(batch_sizes=(1, 2), n_images=4, warmup=0, repeats=1, head_ks=(10, 100),
                                    bank_sizes=(100, 1_000), include_anomalib=False, fit_counts=(2, 4))


@dataclass(frozen=True)
class Profile:
    """Everything a notebook needs to know to run at one scale.

    `max_vectors` is how many training patch vectors FINCH clusters per category: the library
    default (60,000) for the paper profile; 20,000 keeps the demo series within minutes on 2 cores.
    `smoke`: the smallest settings that still run every code path (a CI check of the paper path on
    tiny data; see `smoke_version`), never a setting for numbers anyone should read.
    `prn_epochs`: PRN's training length in notebooks 05 and 07 (None: its schedule's on the run's device).
    `quiet`: no progress bars unless asked (re-executed notebooks print the same text); `commits_notebooks`:
    the committed notebooks carry this profile's outputs (`run --update-notebooks`); `bench`: what notebook 06
    measures. Notebook 07's costly ablations: `ablation_image_size_categories` (how many categories are
    re-extracted at other image sizes; None: all), `ablation_costly_categories` (how many PRN's and N-pad's
    ablations run on; None: all), `ablation_seen_anomalies` (real anomalies PRN's ablation trains on).
    """

    name: str
    datasets: tuple[DatasetSpec, ...]
    backbone: str
    resize: int = PAPER_RESIZE
    image_size: int = PAPER_CROP
    batch_size: int = 8
    seed: int = 0
    max_vectors: int = PAPER_MAX_VECTORS
    data_dir: Path = field(default=REPO_ROOT / "data")
    smoke: bool = False
    prn_epochs: int | None = None
    quiet: bool = False
    commits_notebooks: bool = False
    bench: BenchmarkSettings = PAPER_BENCHMARK
    ablation_image_size_categories: int | None = None
    ablation_costly_categories: int | None = 1
    ablation_seen_anomalies: int = 10

    @property
    def cache_dir(self) -> Path:
        return feature_cache_dir(self.data_dir)


PROFILES = {
    "demo": Profile(
        name="demo",
        datasets=(DatasetSpec("synthetic_mini", "mvtec", tuple(SYNTHETIC_CATEGORIES), generated=True),),
        backbone=DEFAULT_BACKBONE,
        max_vectors=20_000,
        prn_epochs=15,
        quiet=True,
        commits_notebooks=True,
        bench=DEMO_BENCHMARK,
        ablation_image_size_categories=1,
        ablation_costly_categories=None,
        ablation_seen_anomalies=2,
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
    return replace(profile, resize=73, image_size=64, max_vectors=2_000, smoke=True, prn_epochs=1,
                   bench=SMOKE_BENCHMARK)


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise KeyError(f"Unknown profile {name!r}; choose one of {sorted(PROFILES)}.")
    return PROFILES[name]
