"""Speed and memory benchmark of ProtoAD against PatchCore and PaDiM on one shared backbone, plus head-cost scaling tables."""

from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .atomic import atomic_output
from .backbones import Backbone, load_backbone
from .detector import AnomalyDetector
from .progress import progress_bar

TIMING_NOTE = (
    "p50_ms / p95_ms / min_ms: per-BATCH wall-clock latency of detector(images01) (backbone included), "
    "time.perf_counter, warm-up runs discarded, CUDA synchronised before and after each run, the backbone and "
    "all methods timed round-robin (one run of each per repeat) so load drifts hit all alike; "
    "images_per_s = batch_size / (p50_ms / 1000); head_ms: median per-batch time of everything after "
    "the backbone (features_from_maps + patch_scores + anomaly-map head + image score) on precomputed "
    "backbone maps; fit_s: one fit on the train images (backbone feature extraction included)."
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

DEFAULT_METHODS: tuple[str, ...] = ("protoad", "patchcore_10", "patchcore_1", "padim")
ANOMALIB_METHODS: tuple[str, ...] = ("anomalib_patchcore", "anomalib_padim")


# --- timing --------------------------------------------------------------------------------------------


def is_cuda(device: str | torch.device) -> bool:
    return torch.device(device).type == "cuda"


def synchronize(device: str | torch.device) -> None:
    """Wait for queued CUDA work on `device` (no-op elsewhere)."""
    if is_cuda(device):
        torch.cuda.synchronize(torch.device(device))


def time_callable(fn: Callable[[], Any], warmup: int = 2, repeats: int = 10,
                  device: str | torch.device = "cpu") -> list[float]:
    """Call `fn` `warmup` times untimed, then `repeats` times timed; returns the timed durations in seconds.

    Each timed run is bracketed by `torch.cuda.synchronize()` when `device` is CUDA, so queued kernels
    are counted in the run that launched them.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(max(0, warmup)):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def time_interleaved(fns: dict[str, Callable[[], Any]], warmup: int = 2, repeats: int = 10,
                     device: str | torch.device = "cpu") -> dict[str, list[float]]:
    """Like `time_callable` for several callables, round-robin: repeat r times every callable once.

    Slow drifts in machine load (other processes, thermal state) then hit every callable alike, so
    their ratios are more trustworthy than with one block of repeats per callable.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for fn in fns.values():
        for _ in range(max(0, warmup)):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def percentile(times: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100, linear interpolation) of `times`."""
    if len(times) == 0:
        raise ValueError("no times to summarise")
    return float(np.percentile(np.asarray(times, dtype=np.float64), q))


def p50(times: Sequence[float]) -> float:
    return percentile(times, 50)


def p95(times: Sequence[float]) -> float:
    return percentile(times, 95)


# --- memory --------------------------------------------------------------------------------------------


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_mb() -> float:
    """Resident set size of this process now (MB); falls back to the peak where /proc is missing."""
    kb = _proc_status_kb("VmRSS")
    return kb / 1024 if kb is not None else peak_rss_mb()


def peak_rss_mb() -> float:
    """Process peak resident set size (VmHWM) in MB."""
    kb = _proc_status_kb("VmHWM")
    if kb is None:  # not Linux: ru_maxrss is kB on Linux, bytes on macOS
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kb = maxrss / 1024 if sys.platform == "darwin" else maxrss
    return kb / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, `echo 5 > /proc/self/clear_refs`); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def memory_in_use_mb(device: str | torch.device) -> float:
    """What the peak measurement is relative to: CUDA tensor memory, or process RSS on the CPU."""
    if is_cuda(device):
        synchronize(device)
        return torch.cuda.memory_allocated(torch.device(device)) / 2**20
    gc.collect()
    return current_rss_mb()


class PeakMemory:
    """Context manager: `peak_mb` = peak memory inside the block minus `baseline_mb` (default: use at entry).

    CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`. CPU: VmHWM of the whole
    process after trying to reset it (`reset` tells whether that worked; if not, VmHWM is monotone and
    the value is an upper bound). Clamped at 0.
    """

    def __init__(self, device: str | torch.device = "cpu", baseline_mb: float | None = None) -> None:
        self.device = torch.device(device)
        self.baseline_mb = baseline_mb
        self.peak_mb = float("nan")
        self.reset = False

    def __enter__(self) -> "PeakMemory":
        if self.baseline_mb is None:
            self.baseline_mb = memory_in_use_mb(self.device)
        if is_cuda(self.device):
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.reset = True
        else:
            self.reset = reset_peak_rss()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if is_cuda(self.device):
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            peak = peak_rss_mb()
        self.peak_mb = max(0.0, peak - float(self.baseline_mb))


# --- methods -------------------------------------------------------------------------------------------


BENCH_METHODS = {"protoad": ("protoad", {}), "patchcore_10": ("patchcore", {"coreset_fraction": 0.1}),
                 "patchcore_1": ("patchcore", {"coreset_fraction": 0.01}), "padim": ("padim", {})}


def build_detector(method: str, backbone: Backbone) -> AnomalyDetector:
    """A fresh, unfitted detector for a benchmark method name."""
    from .evaluation import make_detector

    if method not in BENCH_METHODS:
        raise ValueError(f"Unknown method {method!r}; choose from {DEFAULT_METHODS + ANOMALIB_METHODS}")
    name, options = BENCH_METHODS[method]
    return make_detector(name, backbone, **options)


def detector_k(detector: nn.Module) -> int | None:
    """Prototypes (ProtoAD) or memory-bank size (PatchCore); None where there is neither."""
    if getattr(detector, "method", None) == "protoad":
        return int(detector.k)
    bank = getattr(detector, "memory_bank", None)
    if isinstance(bank, torch.Tensor) and bank.ndim == 2 and bank.numel() > 0:
        return int(bank.shape[0])
    return None


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


# --- optional anomalib comparison (only when anomalib is installed) ------------------------------------


class _BackboneAsTimmExtractor(nn.Module):
    """Presents our Backbone as anomalib's feature extractor: {"layer1": stride 4, "layer2": 8, "layer3": 16}."""

    def __init__(self, backbone: Backbone, layers: Sequence[str]) -> None:
        super().__init__()
        self.backbone = backbone
        self.layers = list(layers)

    def forward(self, images01: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.backbone(images01)
        named = {f"layer{i + 1}": m for i, m in enumerate(maps)}
        return {name: named[name] for name in self.layers}


def anomalib_version() -> str | None:
    try:
        import anomalib
    except Exception:  # noqa: BLE001 - not installed or broken: skipped
        return None
    return str(getattr(anomalib, "__version__", "unknown"))


class _AnomalibDetector(nn.Module):
    """anomalib's own torch model (PatchcoreModel / PadimModel) with our backbone swapped in.

    Best effort across anomalib versions; not exercised by the test-suite (anomalib is optional).
    """

    def __init__(self, kind: str, backbone: Backbone, coreset_fraction: float = 0.1) -> None:
        super().__init__()
        self.kind = kind
        self.coreset_fraction = coreset_fraction
        if kind == "patchcore":
            from anomalib.models.image.patchcore.torch_model import PatchcoreModel

            layers = ["layer2", "layer3"]
            self.model = PatchcoreModel(layers=layers, backbone="resnet18", pre_trained=False)
        else:
            from anomalib.models.image.padim.torch_model import PadimModel

            layers = ["layer1", "layer2", "layer3"]
            self.model = PadimModel(layers=layers, backbone="resnet18", pre_trained=False)
            total = sum(backbone.channels)
            from .baselines import default_n_features, random_channel_subset

            index = random_channel_subset(total, default_n_features(backbone.name, total), 1024)
            self.model.idx = index
        self.model.feature_extractor = _BackboneAsTimmExtractor(backbone, layers)
        self.model.layers = layers

    @property
    def memory_bank(self) -> torch.Tensor | None:
        return getattr(self.model, "memory_bank", None) if self.kind == "patchcore" else None

    @torch.inference_mode()
    def fit(self, batches: Iterable[dict], device: str | torch.device = "cpu", **_: Any) -> "_AnomalibDetector":
        self.to(device)
        self.model.train()
        embeddings = torch.cat([self.model(batch["image"].to(device)) for batch in batches])
        if self.kind == "patchcore":
            self.model.subsample_embedding(embeddings, self.coreset_fraction)
        elif hasattr(self.model, "gaussian"):
            self.model.gaussian.fit(embeddings)
        self.model.eval()
        return self

    @torch.inference_mode()
    def forward(self, images01: torch.Tensor) -> Any:
        return self.model(images01)


# --- the benchmark -------------------------------------------------------------------------------------


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


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> list[float] | None:
    """1, 5 and 15-minute load averages: other processes competing for the CPU make timings noisy."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def environment(device: str | torch.device, threads: int | None = None) -> dict[str, Any]:
    """Where and with what the benchmark ran."""
    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "threads_requested": threads,
        "device": str(device),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "anomalib": anomalib_version(),
        "loadavg_start": _loadavg(),
    }
    try:
        import faiss

        env["faiss"] = getattr(faiss, "__version__", "unknown")
        env["faiss_threads"] = faiss.omp_get_max_threads()
    except Exception:  # noqa: BLE001
        env["faiss"] = None
    if is_cuda(device):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
    return env


def set_threads(threads: int, faiss_threads: int | None = None) -> tuple[int, int | None]:
    """Use `threads` intra-op threads in torch and `faiss_threads` (default: the same) in faiss' OpenMP.

    Returns the previous (torch, faiss) thread counts, to restore them with `set_threads(*previous)`.
    torch and faiss may share one OpenMP runtime (then setting one sets the other): both previous
    values are read before anything is set, and faiss is set first so that torch's count wins.
    """
    previous_torch = torch.get_num_threads()
    try:
        import faiss
    except Exception:  # noqa: BLE001 - faiss missing: torch alone
        faiss = None
    previous_faiss = faiss.omp_get_max_threads() if faiss is not None else None
    if faiss is not None:
        faiss.omp_set_num_threads(int(faiss_threads if faiss_threads is not None else threads))
    torch.set_num_threads(int(threads))
    return previous_torch, previous_faiss


def load_images(data_root: str | Path | None = None, category: str | None = None, image_size: int = 224,
                n_images: int = 16) -> tuple[torch.Tensor, dict[str, Any]]:
    """The first `n_images` train images [N, 3, S, S] in 0..1 and a description of where they came from.

    Default: the synthetic mini benchmark (`ensure_mini_benchmark()`, category "weave"); otherwise an
    MVTec-layout root. Geometry: resize to round(image_size * 256 / 224), centre crop image_size.
    """
    from .data import AnomalyDataset, ensure_mini_benchmark

    if data_root is None:
        root = ensure_mini_benchmark()
        category = category or "weave"
    else:
        root = Path(data_root)
        if category is None:
            raise ValueError("pass category together with data_root")
    resize = round(image_size * 256 / 224)
    dataset = AnomalyDataset(root, category, "train", resize=resize, crop=image_size)
    count = min(int(n_images), len(dataset))
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
    n_images: int = 16,
    repeats: int = 10,
    threads: int | None = None,
    progress: bool = True,
    warmup: int = 2,
    weights: str = "imagenet",
    include_anomalib: bool = True,
) -> dict[str, Any]:
    """Time the backbone alone and every method end to end, with one backbone object, images and process.

    Returns `{"env": {...}, "results": [row, ...]}` with one row per (method, batch size) (see
    `BenchmarkRow`; `backbone` first). Methods are fitted on the first `n_images` train images
    (`fit_s`), then per batch size `detector(images01)` is timed (`p50_ms`, `p95_ms` per batch,
    `images_per_s` = batch_size / p50) and the post-backbone head on precomputed maps (`head_ms`).
    `anomalib_patchcore` / `anomalib_padim` rows are added when anomalib is importable
    (`include_anomalib`); otherwise env["anomalib"] is None. `threads` sets torch's and faiss'
    thread counts for the run (recorded in env) and restores the previous ones afterwards.
    """
    previous = set_threads(threads) if threads is not None else None
    try:
        return _run_benchmark(backbone_name, methods, batch_sizes, device, data_root, category, image_size,
                              n_images, repeats, threads, progress, warmup, weights, include_anomalib)
    finally:
        if previous is not None:
            set_threads(*previous)


def _run_benchmark(backbone_name: str, methods: Sequence[str], batch_sizes: Sequence[int],
                   device: str | torch.device, data_root: str | Path | None, category: str | None,
                   image_size: int, n_images: int, repeats: int, threads: int | None, progress: bool,
                   warmup: int, weights: str, include_anomalib: bool) -> dict[str, Any]:
    device = torch.device(device)
    backbone = load_backbone(backbone_name, weights=weights).to(device).eval()
    images, data_info = load_images(data_root, category, image_size, n_images)
    env = environment(device, threads) | {
        "backbone": backbone_name, "weights": weights, "batch_sizes": [int(b) for b in batch_sizes],
        "warmup": warmup, "repeats": repeats, **data_info, "timing": TIMING_NOTE, "memory": MEMORY_NOTE,
    }
    method_list = [m for m in dict.fromkeys(methods) if m != "backbone"]  # the backbone row is always there
    if include_anomalib and env["anomalib"] is not None:
        method_list += [m for m in ANOMALIB_METHODS if m not in method_list]
    size = tuple(images.shape[-2:])

    # 1. fit every method (all stay fitted: the timing below is interleaved across methods)
    fitted: dict[str, _Fitted] = {}
    errors: dict[str, str] = {}
    for method in progress_bar(method_list, desc="fit", enabled=progress):
        try:
            fitted[method] = _fit(method, backbone, images, device, progress)
        except Exception as error:  # noqa: BLE001
            if not method.startswith("anomalib_"):
                raise
            errors[method] = f"{error.__class__.__name__}: {error}"

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
                if isinstance(fit.detector, AnomalyDetector):
                    heads[name] = lambda model=fit.detector: model.head_forward(maps, size)
            times = time_interleaved(calls, warmup, repeats, device)
            head_times = time_interleaved(heads, warmup, repeats, device)
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

    env["loadavg_end"] = _loadavg()
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


def _fit(method: str, backbone: Backbone, images: torch.Tensor, device: torch.device, progress: bool) -> _Fitted:
    """Build and fit one method on the train images; time and peak memory of the fit."""
    baseline = memory_in_use_mb(device)
    if method.startswith("anomalib_"):
        detector: nn.Module = _AnomalibDetector(method.removeprefix("anomalib_"), backbone)
    else:
        detector = build_detector(method, backbone)
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
    return _Fitted(detector, fit_s, memory.peak_mb, detector_k(detector), state)


def speed_ratios(result: dict[str, Any], reference: str = "protoad") -> dict[int, dict[str, float]]:
    """images_per_s of `reference` divided by every other method's, per batch size."""
    by_key = {(r["method"], r["batch_size"]): r["images_per_s"] for r in result["results"]}
    ratios: dict[int, dict[str, float]] = {}
    for (method, batch_size), speed in by_key.items():
        ref = by_key.get((reference, batch_size))
        if ref is not None and method != reference:
            ratios.setdefault(batch_size, {})[f"{reference}/{method}"] = ref / speed
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


# --- scaling tables (issue #6) -------------------------------------------------------------------------


def head_cost_vs_k(
    channels: Sequence[int] = (24, 40, 112),
    ks: Sequence[int] = (10, 30, 100, 300, 1000, 3000, 10000),
    grid: tuple[int, int] = (56, 56),
    batch_size: int = 1,
    warmup: int = 2,
    repeats: int = 10,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Time ProtoAD's prototype head (as `forward` runs it, on per-layer maps) for each K.

    Random maps of `channels` at strides 4, 8, 16 (the finest on `grid`) and random unit
    prototypes; rows carry `ms_per_image` (median batch time / batch_size), `p50_ms` / `p95_ms`
    per batch and the multiply-accumulates per image (K * sum of channels x positions per layer).
    """
    from .model import PrototypeHead

    generator = torch.Generator().manual_seed(seed)
    maps = [
        torch.randn(batch_size, width, grid[0] // 2**i, grid[1] // 2**i, generator=generator).to(device)
        for i, width in enumerate(channels)
    ]
    positions = sum(m.shape[1] * m.shape[2] * m.shape[3] for m in maps)
    rows = []
    with torch.inference_mode():
        for k in progress_bar(ks, desc="head vs K", enabled=progress):
            prototypes = F.normalize(torch.randn(int(k), sum(channels), generator=generator), dim=1)
            head = PrototypeHead(prototypes).to(device).eval()
            times = time_callable(lambda: head.forward_maps(maps), warmup, repeats, device)
            rows.append({
                "k": int(k), "channels": sum(channels), "grid": list(grid), "batch_size": batch_size,
                "ms_per_image": p50(times) * 1e3 / batch_size, "p50_ms": p50(times) * 1e3,
                "p95_ms": p95(times) * 1e3, "macs_per_image": int(k) * positions,
                "device": str(device),
            })
    return rows


def memory_bank_cost(
    bank_sizes: Sequence[float] = (1e3, 1e4, 1e5),
    dim: int = 1024,
    grid: tuple[int, int] = (28, 28),
    batch_size: int = 1,
    warmup: int = 2,
    repeats: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Time PatchCore's nearest-neighbour search: faiss IndexFlatL2, h*w*batch_size queries, k = 1, per bank size.

    Random Gaussian bank and queries (exact search cost does not depend on the data). faiss-cpu:
    always on the CPU. Rows carry `ms_per_image` (median / batch_size), `p50_ms` / `p95_ms` per batch
    and the bank's size in MB.
    """
    import faiss

    rng = np.random.default_rng(seed)
    queries = rng.standard_normal((batch_size * grid[0] * grid[1], dim), dtype=np.float32)
    rows = []
    for size in progress_bar(bank_sizes, desc="bank size", enabled=progress):
        size = int(size)
        index = faiss.IndexFlatL2(dim)
        index.add(rng.standard_normal((size, dim), dtype=np.float32))
        times = time_callable(lambda: index.search(queries, 1), warmup, repeats, "cpu")
        rows.append({
            "bank_size": size, "dim": dim, "grid": list(grid), "batch_size": batch_size,
            "ms_per_image": p50(times) * 1e3 / batch_size, "p50_ms": p50(times) * 1e3,
            "p95_ms": p95(times) * 1e3, "bank_mb": size * dim * 4 / 2**20, "device": "cpu",
        })
        del index
    return rows


# --- output --------------------------------------------------------------------------------------------


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
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(result, indent=2, default=_json_default, allow_nan=False) + "\n")
    return Path(path)
