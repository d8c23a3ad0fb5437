"""Notebook 06 as a few calls: the speed benchmark of a run's first category, section by section.

`speed_study(run)` takes what the profile measures (`Profile.bench`) and the run's first category; each
section (`benchmark`, `fit_time`, `head_vs_k`, `bank_size`) is stored as it finishes (`RunSetup.store`), so an
interrupted run resumes after the last finished one, and carries no machine-specific path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..machine import anomalib_version
from ..profiles import BenchmarkSettings, DatasetSpec
from ..resume import ResultStore
from ..session import RunSetup, relative
from . import fit_scaling, scaling
from .bench import bench_options, run_benchmark
from .bench_images import load_images

#: PatchCore's patch features searched in `bank_size`: the stride-8 grid, 1024-dimensional.
BANK_STRIDE, BANK_DIM = 8, 1024


@dataclass
class SpeedStudy:
    """The speed benchmark of one run: its settings, the category it measures on and where sections are kept."""

    run: RunSetup
    settings: BenchmarkSettings
    spec: DatasetSpec
    category: str
    store: ResultStore

    def describe(self) -> str:
        return f"{self.run.describe()}\nbenchmark category: {self.spec.name}/{self.category}\n{self.settings}"

    def benchmark(self) -> dict[str, Any]:
        """`run_benchmark` on the category's first training images (the data root relative to the repository)."""
        def measure() -> dict[str, Any]:
            run, settings = self.run, self.settings
            result = run_benchmark(
                run.backbone_name, batch_sizes=settings.batch_sizes, device=run.device, data_root=run.root(self.spec),
                category=self.category, image_size=run.profile.image_size, n_images=settings.n_images,
                progress=run.progress, include_anomalib=settings.include_anomalib, weights=run.weights,
                options=bench_options(settings), head_batch_sizes=settings.head_batch_sizes, **settings.timing())
            result["env"]["data_root"] = relative(result["env"]["data_root"])  # no machine-specific paths
            return result

        return self.store.computed(measure, "benchmark")

    def fit_time(self) -> list[dict[str, Any]]:
        """Fit time of every method on the first n training images, for each n of `settings.fit_counts`."""
        def measure() -> list[dict[str, Any]]:
            run, settings = self.run, self.settings
            images, _ = load_images(run.root(self.spec), self.category, run.profile.image_size,
                                    max(settings.fit_counts))
            return fit_scaling.fit_time_vs_images(run.backbone, images, settings.fit_counts,
                                                  include_anomalib=settings.include_anomalib, device=run.device,
                                                  progress=run.progress)

        return self.store.computed(measure, "fit_time")

    def head_vs_k(self) -> list[dict[str, Any]]:
        """ProtoAD's head alone for each K of `settings.head_ks`, on layer maps shaped like the backbone's."""
        net, run = self.run.backbone, self.run
        grid = run.profile.image_size // net.strides[0]
        return self.store.computed(lambda: scaling.head_cost_vs_k(
            channels=tuple(net.channels), ks=self.settings.head_ks, grid=(grid, grid), device=run.device,
            seed=run.seed, progress=run.progress, **self.settings.timing()), "head_vs_k")

    def bank_size(self) -> list[dict[str, Any]]:
        """PatchCore's exact 1-NN search of one image's patches against banks of `settings.bank_sizes` rows."""
        run = self.run
        grid = run.profile.image_size // BANK_STRIDE
        return self.store.computed(lambda: scaling.memory_bank_cost(
            bank_sizes=self.settings.bank_sizes, dim=BANK_DIM, grid=(grid, grid), seed=run.seed,
            progress=run.progress, **self.settings.timing()), "bank_size")


def speed_study(run: RunSetup) -> SpeedStudy:
    """The run's speed benchmark: the profile's settings (`Profile.bench`) on the run's first category."""
    settings = run.profile.bench
    spec, category = run.categories[0]
    store = run.store("speed", {"device": str(run.device), "category": category, "settings": asdict(settings),
                                "anomalib": anomalib_version() if settings.include_anomalib else None})
    return SpeedStudy(run, settings, spec, category, store)
