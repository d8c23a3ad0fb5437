"""Speed and memory benchmark: the backbone alone and every registered method on one shared backbone, one process.

The harness (`run_benchmark`, its settings in one `BenchRequest`); the jobs around it have their own modules:
`bench_images` (the images), `bench_memory` (one fitted method, its fit time and memory), `bench_text` (the
terminal table), `bench_json` (the JSON file); what a profile measures is `Profile.bench`. The methods come
from the registry: ours (`bench_names`) and, where anomalib is installed, its peers (`peer_names`).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..backbones import DEFAULT_BACKBONE, load_backbone
from ..data.transforms import PAPER_CROP
from ..machine import environment, loadavg, thread_count
from ..measure import PeakMemory, is_cuda, p50, p95, time_interleaved
from ..methods import AnomalyDetector, bench_names, get_method, peer_names
from ..profiles import BenchmarkSettings
from ..progress import progress_bar
from .bench_images import batch_of, load_images
from .bench_memory import MEMORY_NOTE, Fitted, fit_method, peer_failure

TIMING_NOTE = (
    "p50_ms / p95_ms / min_ms: per-BATCH wall-clock latency of detector(images01) (backbone included), "
    "time.perf_counter, warm-up runs discarded, CUDA synchronised before and after each run, the backbone and "
    "all methods timed round-robin (one run of each per repeat) so load drifts hit all alike; with a time budget "
    "(env.time_budget_s) a callable leaves the rounds once its runs have taken that long and it has 3 timed runs "
    "(or `repeats`, if fewer), and the others go on round-robin without it (each row's `repeats` says how many "
    "runs it got); "
    "images_per_s = batch_size / (p50_ms / 1000); head_ms: median per-batch time of everything after "
    "the backbone (features_from_maps + patch_scores + anomaly-map head + image score) on precomputed "
    "backbone maps (None at batch sizes outside env.head_batch_sizes); fit_s: one fit on the train images "
    "(backbone feature extraction included)."
)

DEFAULT_METHODS: tuple[str, ...] = bench_names()


def bench_options(settings: BenchmarkSettings) -> dict[str, dict]:
    """Options over the registry's defaults for `run_benchmark(..., options=...)`: each trained method's
    length (`training_options(settings.train_epochs)`; the paper profile trains PRN one epoch)."""
    options = {name: get_method(name).detector.training_options(settings.train_epochs) for name in bench_names()}
    return {name: chosen for name, chosen in options.items() if chosen}


@dataclass(frozen=True)
class BenchRequest:
    """What one benchmark run measures (the arguments of `run_benchmark`).

    Methods are fitted on the first `n_images` train images (None: all) of `category` under `data_root`
    (None: the synthetic mini benchmark). `threads`: torch's and faiss' thread counts for the run (restored
    afterwards); `include_anomalib`: the registered peers' rows too; `options`: per method name, constructor
    options over the registry's defaults (recorded in env); `budget_s`: each callable's time budget per batch
    size (`measure.time_interleaved`); `head_batch_sizes`: where the head alone is timed (None: all).
    """

    backbone_name: str = DEFAULT_BACKBONE
    methods: Sequence[str] = DEFAULT_METHODS
    batch_sizes: Sequence[int] = (1, 8)
    device: str | torch.device = "cpu"
    data_root: str | Path | None = None
    category: str | None = None
    image_size: int = PAPER_CROP
    n_images: int | None = 16
    repeats: int = 10
    threads: int | None = None
    progress: bool = True
    warmup: int = 2
    weights: str = "imagenet"
    include_anomalib: bool = True
    options: Mapping[str, dict] = field(default_factory=dict)
    budget_s: float | None = None
    head_batch_sizes: Sequence[int] | None = None

    @property
    def timed_head_sizes(self) -> Sequence[int]:
        return self.batch_sizes if self.head_batch_sizes is None else self.head_batch_sizes


@dataclass
class BenchmarkRow:
    """One (method, batch size) measurement; see TIMING_NOTE and MEMORY_NOTE for the definitions."""

    method: str
    batch_size: int
    images_per_s: float
    p50_ms: float
    p95_ms: float
    min_ms: float
    head_ms: float | None
    peak_mem_mb: float
    fit_s: float | None
    k: int | None
    fit_peak_mem_mb: float | None = None
    state_mb: float | None = None
    infer_peak_mb: float | None = None
    repeats: int = 0


def _row(method: str, batch_size: int, times: Sequence[float], head_times: Sequence[float] | None,
         peak_mb: float, fit: Fitted | None, **extra: Any) -> BenchmarkRow:
    median = p50(times)
    return BenchmarkRow(
        method=method, batch_size=int(batch_size), images_per_s=batch_size / median,
        p50_ms=median * 1e3, p95_ms=p95(times) * 1e3, min_ms=min(times) * 1e3,
        head_ms=None if head_times is None else p50(head_times) * 1e3,
        peak_mem_mb=float(peak_mb), fit_s=None if fit is None else fit.fit_s, k=None if fit is None else fit.k,
        repeats=len(times), **extra,
    )


def run_benchmark(backbone_name: str = DEFAULT_BACKBONE, **settings: Any) -> dict[str, Any]:
    """Time the backbone alone and every method end to end, with one backbone object, images and process.

    `settings`: the fields of `BenchRequest`. Returns `{"env": {...}, "results": [row, ...]}` with one row per
    (method, batch size) (see `BenchmarkRow`; `backbone` first): each method's fit (`fit_s`), then per batch
    size `detector(images01)` (`p50_ms`, `p95_ms` per batch, `images_per_s` = batch_size / p50) and the
    post-backbone head on precomputed maps (`head_ms`). The registered peers' rows (anomalib's) are added with
    `include_anomalib` where anomalib is installed; env["anomalib"] is None otherwise.
    """
    request = BenchRequest(backbone_name=backbone_name, **settings | {"options": settings.get("options") or {}})
    with nullcontext() if request.threads is None else thread_count(request.threads):
        return benchmark(request)


def _environment(request: BenchRequest, device: torch.device, data_info: dict) -> dict[str, Any]:
    return environment(device, request.threads) | {
        "backbone": request.backbone_name, "weights": request.weights,
        "batch_sizes": [int(b) for b in request.batch_sizes], "warmup": request.warmup, "repeats": request.repeats,
        "time_budget_s": request.budget_s, "head_batch_sizes": [int(b) for b in request.timed_head_sizes],
        **data_info, "timing": TIMING_NOTE, "memory": MEMORY_NOTE,
    } | ({"method_options": {m: dict(o) for m, o in request.options.items()}} if request.options else {})


def benchmark(request: BenchRequest) -> dict[str, Any]:
    """`run_benchmark`'s work for one request (threads already set)."""
    device = torch.device(request.device)
    backbone = load_backbone(request.backbone_name, weights=request.weights).to(device).eval()
    images, data_info = load_images(request.data_root, request.category, request.image_size, request.n_images)
    env = _environment(request, device, data_info)
    method_list = [m for m in dict.fromkeys(request.methods) if m != "backbone"]  # the backbone row is always there
    if request.include_anomalib:
        method_list += [m for m in peer_names() if m not in method_list]
    size = tuple(images.shape[-2:])

    # 1. fit every method (all stay fitted: the timing below is interleaved across methods)
    fitted: dict[str, Fitted] = {}
    errors: dict[str, str] = {}
    for method in progress_bar(method_list, desc="fit", enabled=request.progress):
        try:
            fitted[method] = fit_method(method, backbone, images, device, request.progress,
                                        request.options.get(method, {}))
        except Exception as error:  # noqa: BLE001
            if not get_method(method).peer:
                raise
            errors[method] = peer_failure(method, error)

    # 2. per batch size: round-robin timing of every model, then one pass each for peak memory
    rows: dict[tuple[str, int], BenchmarkRow] = {}
    resets: list[bool] = []
    timing = (request.warmup, request.repeats, device, request.budget_s)
    with torch.inference_mode():
        for batch_size in progress_bar(request.batch_sizes, desc="time", enabled=request.progress):
            batch = batch_of(images, batch_size).to(device)
            maps = backbone(batch)
            calls: dict[str, Callable[[], Any]] = {"backbone": lambda: backbone(batch)}
            heads: dict[str, Callable[[], Any]] = {}
            for name, fit in fitted.items():
                calls[name] = lambda model=fit.detector: model(batch)
                if isinstance(fit.detector, AnomalyDetector) and batch_size in request.timed_head_sizes:
                    heads[name] = lambda model=fit.detector: model.head_forward(maps, size)
            times = time_interleaved(calls, *timing)
            head_times = time_interleaved(heads, *timing)
            for name, call in calls.items():
                fit = fitted.get(name)
                with PeakMemory(device) as memory:
                    call()
                resets.append(memory.reset)
                extra = {"infer_peak_mb": memory.peak_mb}
                if fit is not None:
                    extra |= {"fit_peak_mem_mb": fit.fit_peak_mem_mb, "state_mb": fit.state_mb}
                rows[name, batch_size] = _row(name, batch_size, times[name], head_times.get(name),
                                              memory.peak_mb + (0.0 if fit is None else fit.state_mb), fit, **extra)
            del maps

    env["loadavg_end"] = loadavg()
    env["cpu_peak_reset"] = None if is_cuda(device) else bool(resets) and all(resets)
    if errors:
        env["anomalib_errors"] = errors
    order = ["backbone", *fitted]
    return {"env": env, "results": [asdict(rows[name, b]) for name in order for b in request.batch_sizes]}
