"""One notebook run: parameters -> profile, categories, backbone, feature cache, results folder, data loader.

Every notebook's second cell is `run = setup(profile=profile, categories=categories, ...)` (keywords only);
the run then loads each category's data the one way the whole project does (`categories.load_category`
through the shared feature cache), says where results go, and asks each method for its options in the run
(`run.method_options(name)`: the method's `run_options` for the profile and device).
"""

from __future__ import annotations

import hashlib
import os
import random
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from .backbones import Backbone, load_backbone
from .categories import CategoryData, load_category
from .data import AnomalyDataset
from .data.datasets import check_category_name
from .data.download import resolve_dataset_root
from .data.synthetic import ensure_mini_benchmark
from .embeddings import StoredEmbeddings
from .features import CacheKey, FeatureCache
from .methods import get_method, run_notes
from .profiles import REPO_ROOT, RESULTS_DIR_VARIABLE, DatasetSpec, Profile, get_profile, smoke_version
from .resume import ResultStore
from .progress import progress_bar


def relative(path: str | Path) -> str:
    """`path` relative to the repository root when inside it (paths printed in notebooks)."""
    path = Path(path).resolve()
    try:
        return path.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def library_digest() -> str:
    """A digest of every source file of `protoad_lib` (which code computed a stored result)."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (the library also passes explicit seeds everywhere)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class RunSetup:
    """What a notebook runs on: the profile, its selected categories, backbone, device, data and results folders."""

    profile: Profile
    categories: tuple[tuple[DatasetSpec, str], ...]
    backbone_name: str
    device: str
    results_dir: Path
    given_roots: dict[str, Path] = field(default_factory=dict)
    progress: bool = False
    redo: bool = False
    weights: str = "imagenet"
    _roots: dict[str, Path] = field(default_factory=dict, repr=False)
    _backbone: Backbone | None = field(default=None, repr=False)

    @property
    def seed(self) -> int:
        return self.profile.seed

    @property
    def category_names(self) -> list[str]:
        return [category for _, category in self.categories]

    @property
    def is_subset(self) -> bool:
        """True when the run covers only part of the profile's categories (its means are not the benchmark's)."""
        return len(self.categories) < sum(len(spec.categories) for spec in self.profile.datasets)

    @property
    def backbone(self) -> Backbone:
        """The run's backbone on its device, loaded once."""
        if self._backbone is None:
            self._backbone = load_backbone(self.backbone_name, weights=self.weights).to(self.device).eval()
        return self._backbone

    @property
    def cache(self) -> FeatureCache:
        return FeatureCache(self.profile.cache_dir)

    def root(self, spec: DatasetSpec, download: bool = True) -> Path:
        """The folder holding `spec`'s category folders: generated (the synthetic benchmark), given, found or
        downloaded, once."""
        if spec.name not in self._roots:
            data_dir = self.profile.data_dir
            self._roots[spec.name] = Path(
                ensure_mini_benchmark(data_dir / spec.name, seed=self.profile.seed) if spec.generated else
                resolve_dataset_root(spec.name, self.given_roots.get(spec.name), download=download, data_dir=data_dir))
        return self._roots[spec.name]

    def dataset(self, spec: DatasetSpec, category: str, split: str) -> AnomalyDataset:
        """The profile's geometry (resize, crop) applied to one category split."""
        return AnomalyDataset(self.root(spec), category, split, layout=spec.layout,
                              resize=self.profile.resize, crop=self.profile.image_size)

    def output(self, name: str) -> Path:
        """Path of a result file of this run (its folder is created)."""
        self.results_dir.mkdir(parents=True, exist_ok=True)
        return self.results_dir / name

    def embeddings(self, spec: DatasetSpec, category: str, split: str) -> tuple[StoredEmbeddings, Path]:
        """Stride-4 embeddings `[N, C, h, w]` of a split in the shared cache, read from its file a few images at
        a time, and that file (extracted into it on a miss, with a bar unless the run is quiet: at paper scale
        a category's extraction takes minutes)."""
        dataset = self.dataset(spec, category, split)
        key = CacheKey.of(spec.name, category, split, self.backbone, dataset)
        features = self.cache.get_or_extract(key, self.backbone, dataset, self.profile.batch_size, self.device,
                                             progress=self.progress)
        return features, self.cache.path(key)

    def load(self, spec: DatasetSpec, category: str) -> CategoryData:
        """One category's datasets, cached embeddings, labels and masks: the loader every notebook uses."""
        return load_category(self.backbone, self.root(spec), category, layout=spec.layout,
                             resize=self.profile.resize, image_size=self.profile.image_size,
                             batch_size=self.profile.batch_size, device=self.device, cache=self.cache,
                             dataset_name=spec.name, progress=self.progress)

    def each_category(self, what: str = "categories") -> Iterator[tuple[DatasetSpec, str]]:
        """The run's categories one at a time, with a progress bar (elapsed, estimate of the time left)
        unless the run is quiet; load a category's data inside the loop so only one is in memory."""
        yield from progress_bar(self.categories, desc=what, unit="category", enabled=self.progress)

    def fingerprint(self) -> dict[str, Any]:
        """What every stored result of this run depends on (besides a notebook's own settings), the
        library's own source included: after any code change nothing stored earlier is reused."""
        return {"code": library_digest(), "profile": self.profile.name, "smoke": self.profile.smoke,
                "backbone": self.backbone_name, "weights": self.weights,
                "resize": self.profile.resize, "image_size": self.profile.image_size,
                "max_vectors": self.profile.max_vectors, "seed": self.seed}

    def store(self, name: str, settings: Mapping[str, Any] | None = None) -> ResultStore:
        """Where a notebook keeps per-category results as they finish (`<results>/cache/<name>/`): a rerun with
        the same settings skips what is stored, other settings recompute it, `redo=True` recomputes all."""
        return ResultStore(self.results_dir / "cache" / name, self.fingerprint() | dict(settings or {}), self.redo)

    def method_options(self, method: str) -> dict:
        """A registered method's options in this run (its `run_options` for the profile and device), over the
        registry's defaults: e.g. PRN's schedule and training length, ProtoAD's clustering budget."""
        return get_method(method).detector.run_options(self.profile, self.device)

    def describe(self) -> str:
        """A deterministic summary (no absolute paths inside the repository)."""
        lines = [
            f"profile    : {self.profile.name}",
            f"datasets   : {', '.join(dict.fromkeys(s.name for s, _ in self.categories))}",
            f"categories : {', '.join(self.category_names)}",
            f"backbone   : {self.backbone_name}" + ("" if self.weights == "imagenet" else f" ({self.weights} weights)"),
            f"device     : {self.device}",
            f"image size : resize {self.profile.resize} -> center crop {self.profile.image_size}",
            f"seed       : {self.seed}",
            *(f"{label:<11}: {text}" for label, text in run_notes(self.profile, self.device).items()),
            f"data dir   : {relative(self.profile.data_dir)}",
            f"results    : {relative(self.results_dir) if self.results_dir.is_relative_to(REPO_ROOT) else '(outside the repository)'}",
        ]
        return "\n".join(lines)


def selected_categories(profile: Profile, categories: str | Sequence[str] | None) -> tuple[tuple[DatasetSpec, str], ...]:
    """The (dataset, category) pairs a run's `categories` parameter names (a list or comma-separated; None: all of
    the profile's), each checked; unknown names raise `ValueError`."""
    known = {c: s for s in profile.datasets for c in s.categories}
    if categories is None:
        wanted = list(known)
    else:
        items = categories.split(",") if isinstance(categories, str) else list(categories)
        wanted = [check_category_name(str(c).strip()) for c in items if str(c).strip()]
    unknown = [c for c in wanted if c not in known]
    if unknown or not wanted:
        raise ValueError(f"unknown categories {unknown} for profile {profile.name!r}; "
                         f"choose from {list(known)} (or None for all)")
    return tuple((known[c], c) for c in dict.fromkeys(wanted))


def _results_dir(profile: Profile, results_dir: str | Path | None) -> Path:
    chosen = results_dir or os.environ.get(RESULTS_DIR_VARIABLE)
    return Path(chosen).expanduser().resolve() if chosen else REPO_ROOT / "results" / profile.name


def setup(*, profile: str = "demo", categories: str | Sequence[str] | None = None, backbone: str | None = None,
          device: str = "cpu", data_root: str | Path | None = None, results_dir: str | Path | None = None,
          smoke: bool = False, redo: bool = False, prn_epochs: int | None = None,
          quiet: bool | None = None) -> RunSetup:
    """Resolve a notebook's parameters cell into a `RunSetup`, seed everything, and quiet the output.

    `categories`: None (all of the profile), a list, or a comma-separated string. `backbone`: None for
    the profile's; `name@random` asks for random weights by name (speed and memory measurements where the
    ImageNet weights are not on disk; never for accuracy). `data_root`: None for `<repo>/data`; otherwise a data folder (downloads and caches go
    there, datasets in `<data_root>/<name>`) or a local copy of a dataset holding its category folders
    directly; `$MVTEC_AD_ROOT` / `$BTAD_ROOT` point at local copies too. `results_dir`: where every CSV
    and figure goes (None: `$PROTOAD_RESULTS_DIR`, else `<repo>/results/<profile>`). `smoke`: the
    profile's smallest settings (`profiles.smoke_version`, for CI). `redo`: recompute results stored by
    an earlier, interrupted run. `prn_epochs`: PRN's training length instead of the profile's (None: the
    demo's 15, else the schedule's: 30 on a CPU, 700 on CUDA; a short one makes a CPU paper run
    affordable; the run's description states the length). `quiet` (default: the profile's `quiet`, the
    demo's): no progress bars (`TQDM_DISABLE`) and no tqdm widget warning, so re-executed notebooks print the
    same text; a paper run shows them. Keywords only: a notebook's parameters cell names each one.
    """
    chosen = get_profile(profile)
    if smoke:
        chosen = smoke_version(chosen)
    if prn_epochs is not None:
        if int(prn_epochs) < 1:
            raise ValueError(f"prn_epochs must be a positive number of epochs, got {prn_epochs!r}")
        chosen = replace(chosen, prn_epochs=int(prn_epochs))
    quiet = chosen.quiet if quiet is None else quiet
    selected = selected_categories(chosen, categories)
    given_roots: dict[str, Path] = {}
    if data_root is not None:
        root = Path(data_root).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"data_root {root} is not a folder; pass None or an existing folder")
        for spec in chosen.datasets:
            mine = [c for s, c in selected if s == spec]
            if not spec.generated and mine and all((root / c).is_dir() for c in mine):
                given_roots[spec.name] = root  # a local copy: category folders directly in data_root
        if not given_roots:  # a data folder: downloads, generated data and the feature cache go there
            chosen = replace(chosen, data_dir=root)
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
        warnings.filterwarnings("ignore", message="IProgress not found")
    seed_everything(chosen.seed)
    backbone_name, _, weights = (backbone or chosen.backbone).partition("@")
    return RunSetup(chosen, selected, backbone_name, str(device), _results_dir(chosen, results_dir),
                    given_roots, progress=not quiet, redo=bool(redo), weights=weights or "imagenet")
