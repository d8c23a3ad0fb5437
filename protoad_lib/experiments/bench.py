"""Speed and memory benchmark: the backbone alone and every registered method on one shared backbone, one process."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..atomic import write_text_atomically
from ..backbones import Backbone, load_backbone
from ..methods import AnomalyDetector, bench_names, fitted_size, make_detector
from ..profiles import Profile
from ..progress import progress_bar
from .anomalib_adapter import AnomalibDetector
from ..machine import environment, loadavg, set_threads
from ..measure import PeakMemory, is_cuda, memory_in_use_mb, p50, p95, synchronize, time_interleaved

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
MEMORY_NOTE = (
    "peak_mem_mb = state_mb + infer_peak_mb: the method's fitted state (prototypes / memory bank / Gaussians: "
    "the bytes of state_tensors() plus PatchCore's faiss copy of the bank; where a model has none, the measured growth from before to after its fit) "
    "plus infer_peak_mb, the peak memory during one forward(images01) minus the memory in use just before it "
    "(activations and temporaries; the shared backbone's weights and the input batch are not counted). "
    "fit_peak_mem_mb: peak during the fit minus the memory in use before the method was built. "
    "CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats (GPU tensors only; PatchCore's "
    "faiss search runs on the CPU). "
    "CPU: process-level resident set size (VmHWM from /proc/self/status); the high-water mark is reset before "
    "each section by writing 5 to /proc/self/clear_refs when the kernel allows it (env.cpu_peak_reset). Without "
    "that reset VmHWM is monotone over the whole process, so a section's value is then an upper bound "
    "(earlier, larger peaks leak into later rows). CPU values are approximate in any case: they include "
    "allocator caching and any other thread's allocations, and freed memory may not be returned to the OS."
)

DEFAULT_METHODS: tuple[str, ...] = bench_names()
MINI_TRAIN_IMAGES = 16  # training images per category of the synthetic mini benchmark
ANOMALIB_METHODS: tuple[str, ...] = ("anomalib_patchcore", "anomalib_padim")


def build_detector(method: str, backbone: Backbone, **options: Any) -> AnomalyDetector:
    """A fresh, unfitted detector for a benchmark method name (`options` over the registry's defaults)."""
    if method not in DEFAULT_METHODS:
        raise ValueError(f"Unknown method {method!r}; choose from {DEFAULT_METHODS + ANOMALIB_METHODS}")
    return make_detector(method, backbone, **options)


def state_mb(detector: nn.Module) -> float | None:
    """Size of the fitted state in MB: the bytes of `state_tensors()`, plus the vectors a faiss index
    (PatchCore's `_index`, an IndexFlatL2 copy of the memory bank) holds; None without `state_tensors`."""
    tensors = getattr(detector, "state_tensors", None)
    if tensors is None:
        return None
    try:
        total = sum(t.numel() * t.element_size() for t in tensors().values())
    except Exception:  # noqa: BLE001 - a third-party model without our persistence API
        return None
    index = getattr(detector, "_index", None)
    if index is not None and hasattr(index, "ntotal") and hasattr(index, "d"):
        total += int(index.ntotal) * int(index.d) * 4
    return total / 2**20


@dataclass(frozen=True)
class BenchmarkSettings:
    """How much notebook 06 measures for one profile (the demo keeps it short: few repeats)."""

    batch_sizes: tuple[int, ...]
    n_images: int | None
    warmup: int
    repeats: int
    head_ks: tuple[int, ...]
    bank_sizes: tuple[int, ...]
    include_anomalib: bool
    fit_counts: tuple[int, ...]
    prn_epochs: int | None = None  # PRN's training length here (None: its schedule's)
    time_budget_s: float | None = None  # per (method, batch size): see `measure.time_interleaved`
    head_batch_sizes: tuple[int, ...] | None = None  # where the head alone is timed (None: every batch size)

    def timing(self) -> dict[str, Any]:
        """How long each timing runs, as `run_benchmark`, `head_cost_vs_k` and `memory_bank_cost` take it."""
        return {"warmup": self.warmup, "repeats": self.repeats, "budget_s": self.time_budget_s}

    def method_options(self) -> dict[str, dict]:
        """Options over the registry's defaults for `run_benchmark(..., options=...)`."""
        return {} if self.prn_epochs is None else {"prn": {"epochs": self.prn_epochs}}


def benchmark_settings(profile: Profile) -> BenchmarkSettings:
    """Demo: fit on 8 images (ProtoAD's FINCH then clusters 8 x 3,136 patches), batch 1 and 8, 3 timed runs.
    Paper: fit on the category's whole training set (`n_images=None`; e.g. bottle: 209 images, a PatchCore
    bank of 16,385 vectors at 10 %), so the speeds are those of the paper's setting; batch 1 / 8 / 32,
    10 timed runs, each callable within a 60 s budget once it has 3 (on 2 CPU cores one batch of 32 through
    N-pad's or PatchCore's head takes tens of seconds), the head alone at batch 1 and 8 only (its time per
    image does not change with the batch), one warm-up run, the harness' default K and bank-size sweeps.
    `fit_counts`: training-set sizes of the fit-time growth curve (`fit_scaling`). anomalib rows whenever the
    `peers` extra is installed. PRN trains for one epoch in the paper profile: its speed does not depend on how
    long it trained, and its schedule's training time (hours per category on a CPU) is notebook 05's. A smoke
    profile: 4 images, one timed run."""
    if profile.smoke:
        return BenchmarkSettings(batch_sizes=(1, 2), n_images=4, warmup=0, repeats=1, head_ks=(10, 100),
                                 bank_sizes=(100, 1_000), include_anomalib=False, fit_counts=(2, 4))
    if profile.name == "demo":
        return BenchmarkSettings(batch_sizes=(1, 8), n_images=8, warmup=1, repeats=3,
                                 head_ks=(10, 100, 1_000, 10_000), bank_sizes=(1_000, 3_000, 10_000, 30_000),
                                 include_anomalib=True, fit_counts=(4, 8, 16))
    return BenchmarkSettings(batch_sizes=(1, 8, 32), n_images=None, warmup=1, repeats=10,
                             head_ks=(10, 30, 100, 300, 1_000, 3_000, 10_000),
                             bank_sizes=(1_000, 10_000, 100_000), include_anomalib=True, fit_counts=(25, 50, 100, 200),
                             prn_epochs=1, time_budget_s=60.0, head_batch_sizes=(1, 8))


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


def load_images(data_root: str | Path | None = None, category: str | None = None, image_size: int = 224,
                n_images: int | None = 16) -> tuple[torch.Tensor, dict[str, Any]]:
    """The first `n_images` train images [N, 3, S, S] in 0..1 (None: all) and a description of where they came from.

    Default: the synthetic mini benchmark (`ensure_mini_benchmark()`, category "weave"; with more than its
    16 training images asked for, a `weave` of that many in `data/synthetic_train_<n>`, so a fit is at a
    category's scale); otherwise an MVTec-layout root. Geometry: resize to round(image_size * 256 / 224),
    centre crop image_size.
    """
    from ..data import AnomalyDataset, ensure_mini_benchmark
    from ..data.synthetic import DEFAULT_SYNTHETIC_DIR

    if data_root is None:
        category = category or "weave"
        if n_images is not None and n_images > MINI_TRAIN_IMAGES:
            root = ensure_mini_benchmark(DEFAULT_SYNTHETIC_DIR.parent / f"synthetic_train_{n_images}",
                                         n_train=n_images, categories=[category])
        else:
            root = ensure_mini_benchmark()
    else:
        root = Path(data_root)
        if category is None:
            raise ValueError("pass category together with data_root")
    resize = round(image_size * 256 / 224)
    dataset = AnomalyDataset(root, category, "train", resize=resize, crop=image_size)
    count = len(dataset) if n_images is None else min(int(n_images), len(dataset))
    images = torch.stack([dataset[i]["image"] for i in range(count)]).float()
    return images, {"data_root": str(root), "category": category, "n_images": count, "image_size": image_size,
                    "resize": resize}


def batch_of(images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`batch_size` images taken in order from `images`, cycling when there are fewer."""
    return images[torch.arange(batch_size) % len(images)].contiguous()


def _fit_batches(images: torch.Tensor, batch_size: int = 8) -> list[dict[str, torch.Tensor]]:
    return [{"image": images[i : i + batch_size]} for i in range(0, len(images), batch_size)]


def _row(method: str, batch_size: int, times: Sequence[float], head_times: Sequence[float] | None,
         peak_mb: float, fit_s: float | None, k: int | None, **extra: Any) -> BenchmarkRow:
    median = p50(times)
    return BenchmarkRow(
        method=method, batch_size=int(batch_size), images_per_s=batch_size / median,
        p50_ms=median * 1e3, p95_ms=p95(times) * 1e3, min_ms=min(times) * 1e3,
        head_ms=None if head_times is None else p50(head_times) * 1e3,
        peak_mem_mb=float(peak_mb), fit_s=fit_s, k=k, repeats=len(times), **extra,
    )


def run_benchmark(
    backbone_name: str = "efficientnet_lite0",
    methods: Sequence[str] = DEFAULT_METHODS,
    batch_sizes: Sequence[int] = (1, 8),
    device: str | torch.device = "cpu",
    data_root: str | Path | None = None,
    category: str | None = None,
    image_size: int = 224,
    n_images: int | None = 16,
    repeats: int = 10,
    threads: int | None = None,
    progress: bool = True,
    warmup: int = 2,
    weights: str = "imagenet",
    include_anomalib: bool = True,
    options: Mapping[str, dict] | None = None,
    budget_s: float | None = None,
    head_batch_sizes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Time the backbone alone and every method end to end, with one backbone object, images and process.

    Returns `{"env": {...}, "results": [row, ...]}` with one row per (method, batch size) (see
    `BenchmarkRow`; `backbone` first). Methods are fitted on the first `n_images` train images (None: all)
    (`fit_s`), then per batch size `detector(images01)` is timed (`p50_ms`, `p95_ms` per batch,
    `images_per_s` = batch_size / p50) and the post-backbone head on precomputed maps (`head_ms`).
    `anomalib_patchcore` / `anomalib_padim` rows are added when anomalib is importable
    (`include_anomalib`); otherwise env["anomalib"] is None. `threads` sets torch's and faiss'
    thread counts for the run (recorded in env) and restores the previous ones afterwards. `options`:
    per method name, constructor options over the registry's defaults (recorded in env). `budget_s`: each
    callable's time budget per batch size (`measure.time_interleaved`); `head_batch_sizes`: the batch sizes
    where the head alone is timed (None: all).
    """
    previous = set_threads(threads) if threads is not None else None
    try:
        return _run_benchmark(backbone_name, methods, batch_sizes, device, data_root, category, image_size,
                              n_images, repeats, threads, progress, warmup, weights, include_anomalib, options or {},
                              budget_s, batch_sizes if head_batch_sizes is None else head_batch_sizes)
    finally:
        if previous is not None:
            set_threads(*previous)


def _run_benchmark(backbone_name: str, methods: Sequence[str], batch_sizes: Sequence[int],
                   device: str | torch.device, data_root: str | Path | None, category: str | None,
                   image_size: int, n_images: int, repeats: int, threads: int | None, progress: bool,
                   warmup: int, weights: str, include_anomalib: bool, options: Mapping[str, dict],
                   budget_s: float | None, head_batch_sizes: Sequence[int]) -> dict[str, Any]:
    device = torch.device(device)
    backbone = load_backbone(backbone_name, weights=weights).to(device).eval()
    images, data_info = load_images(data_root, category, image_size, n_images)
    env = environment(device, threads) | {
        "backbone": backbone_name, "weights": weights, "batch_sizes": [int(b) for b in batch_sizes],
        "warmup": warmup, "repeats": repeats, "time_budget_s": budget_s,
        "head_batch_sizes": [int(b) for b in head_batch_sizes], **data_info, "timing": TIMING_NOTE,
        "memory": MEMORY_NOTE,
    } | ({"method_options": {m: dict(o) for m, o in options.items()}} if options else {})
    method_list = [m for m in dict.fromkeys(methods) if m != "backbone"]  # the backbone row is always there
    if include_anomalib and env["anomalib"] is not None:
        method_list += [m for m in ANOMALIB_METHODS if m not in method_list]
    size = tuple(images.shape[-2:])

    # 1. fit every method (all stay fitted: the timing below is interleaved across methods)
    fitted: dict[str, _Fitted] = {}
    errors: dict[str, str] = {}
    for method in progress_bar(method_list, desc="fit", enabled=progress):
        try:
            fitted[method] = fit_method(method, backbone, images, device, progress, options.get(method, {}))
        except Exception as error:  # noqa: BLE001
            if not method.startswith("anomalib_"):
                raise
            errors[method] = peer_failure(method, error)

    # 2. per batch size: round-robin timing of every model, then one pass each for peak memory
    rows: dict[tuple[str, int], BenchmarkRow] = {}
    resets: list[bool] = []
    with torch.inference_mode():
        for batch_size in progress_bar(batch_sizes, desc="time", enabled=progress):
            batch = batch_of(images, batch_size).to(device)
            maps = backbone(batch)
            calls: dict[str, Callable[[], Any]] = {"backbone": lambda: backbone(batch)}
            heads: dict[str, Callable[[], Any]] = {}
            for name, fit in fitted.items():
                calls[name] = lambda model=fit.detector: model(batch)
                if isinstance(fit.detector, AnomalyDetector) and batch_size in head_batch_sizes:
                    heads[name] = lambda model=fit.detector: model.head_forward(maps, size)
            times = time_interleaved(calls, warmup, repeats, device, budget_s)
            head_times = time_interleaved(heads, warmup, repeats, device, budget_s)
            for name, call in calls.items():
                fit = fitted.get(name)
                with PeakMemory(device) as memory:
                    call()
                resets.append(memory.reset)
                extra = {"infer_peak_mb": memory.peak_mb}
                if fit is not None:
                    extra |= {"fit_peak_mem_mb": fit.fit_peak_mem_mb, "state_mb": fit.state_mb}
                rows[name, batch_size] = _row(
                    name, batch_size, times[name], head_times.get(name),
                    memory.peak_mb + (0.0 if fit is None else fit.state_mb),
                    None if fit is None else fit.fit_s, None if fit is None else fit.k, **extra,
                )
            del maps

    env["loadavg_end"] = loadavg()
    env["cpu_peak_reset"] = None if is_cuda(device) else bool(resets) and all(resets)
    if errors:
        env["anomalib_errors"] = errors
    order = ["backbone", *fitted]
    results = [asdict(rows[name, b]) for name in order for b in batch_sizes]
    return {"env": env, "results": results}


@dataclass
class _Fitted:
    detector: nn.Module
    fit_s: float
    fit_peak_mem_mb: float
    k: int | None
    state_mb: float


def peer_failure(method: str, error: Exception) -> str:
    """Say on screen (a warning) that an optional anomalib row failed, and return the message to store."""
    message = f"{error.__class__.__name__}: {error}"
    warnings.warn(f"{method} was left out: {message}", RuntimeWarning, stacklevel=2)
    return message


def fit_method(method: str, backbone: Backbone, images: torch.Tensor, device: torch.device | str,
               progress: bool = False, options: Mapping[str, Any] | None = None) -> _Fitted:
    """Build (`options` over the registry's defaults) and fit one method on the train images; time and peak
    memory of the fit."""
    baseline = memory_in_use_mb(device)
    if method.startswith("anomalib_"):
        detector: nn.Module = AnomalibDetector(method.removeprefix("anomalib_"), backbone, **(options or {}))
    else:
        detector = build_detector(method, backbone, **(options or {}))
        if hasattr(detector, "progress"):
            detector.progress = progress
    with PeakMemory(device, baseline) as memory:
        start = time.perf_counter()
        detector.fit(_fit_batches(images), device=device, progress=False)
        synchronize(device)
        fit_s = time.perf_counter() - start
    detector.eval()
    state = state_mb(detector)
    if state is None:  # no state_tensors(): what stayed allocated after the fit
        state = max(0.0, memory_in_use_mb(device) - baseline)
    return _Fitted(detector, fit_s, memory.peak_mb, fitted_size(detector), state)


def speed_ratios(result: dict[str, Any], reference: str = "protoad") -> dict[int, dict[str, float]]:
    """images_per_s of `reference` divided by every other row's, per batch size: {batch: {method: ratio}}."""
    by_key = {(r["method"], r["batch_size"]): r["images_per_s"] for r in result["results"]}
    ratios: dict[int, dict[str, float]] = {}
    for (method, batch_size), speed in by_key.items():
        ref = by_key.get((reference, batch_size))
        if ref is not None and method != reference:
            ratios.setdefault(int(batch_size), {})[method] = ref / speed
    return ratios


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of the results (method, batch, img/s, p50, p95, min, head, peak MB, fit, K)."""
    def cell(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    header = f"{'method':<20}{'batch':>6}{'img/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'min ms':>10}{'head ms':>10}" \
             f"{'peak MB':>10}{'fit s':>9}{'K':>8}"
    lines = [header, "-" * len(header)]
    for r in result["results"]:
        lines.append(
            f"{r['method']:<20}{r['batch_size']:>6}{cell(r['images_per_s'], '.1f'):>10}{cell(r['p50_ms'], '.1f'):>10}"
            f"{cell(r['p95_ms'], '.1f'):>10}{cell(r.get('min_ms'), '.1f'):>10}{cell(r['head_ms'], '.2f'):>10}{cell(r['peak_mem_mb'], '.0f'):>10}"
            f"{cell(r['fit_s'], '.2f'):>9}{cell(r['k'], 'd'):>8}"
        )
    return "\n".join(lines)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (Path, torch.device)):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def save_json(result: Any, path: str | Path) -> Path:
    """Write `result` as JSON atomically (a temporary file in the same folder, then a rename)."""
    return write_text_atomically(path, json.dumps(result, indent=2, default=_json_default, allow_nan=False) + "\n")
