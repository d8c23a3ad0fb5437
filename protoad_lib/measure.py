"""How the project measures time and peak memory (one way, used by the CLI, the benchmark and `benchmarks/`)."""

from __future__ import annotations

import contextlib
import gc
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch


def is_cuda(device: str | torch.device) -> bool:
    return torch.device(device).type == "cuda"


def synchronize(device: str | torch.device) -> None:
    """Wait for queued CUDA work on `device` (no-op elsewhere)."""
    if is_cuda(device):
        torch.cuda.synchronize(torch.device(device))


def time_callable(fn: Callable[[], Any], warmup: int = 2, repeats: int = 10,
                  device: str | torch.device = "cpu", budget_s: float | None = None,
                  min_repeats: int = 3) -> list[float]:
    """Call `fn` `warmup` times untimed, then up to `repeats` times timed; returns the timed durations in seconds.

    Each timed run is bracketed by `torch.cuda.synchronize()` when `device` is CUDA, so queued kernels
    are counted in the run that launched them. `budget_s` / `min_repeats`: as in `time_interleaved`.
    """
    return time_interleaved({"fn": fn}, warmup, repeats, device, budget_s, min_repeats)["fn"]


@dataclass
class Stopwatch:
    """Wall seconds since `start`: read live while it runs (a progress line, a stop message), frozen by `stop()`.
    On a CUDA `device`, queued work is waited for when it stops, so it counts in the block that launched it."""

    device: str | torch.device = "cpu"
    start: float = field(default_factory=time.perf_counter)
    end: float | None = None

    @property
    def seconds(self) -> float:
        return (time.perf_counter() if self.end is None else self.end) - self.start

    def stop(self) -> float:
        synchronize(self.device)
        self.end = time.perf_counter()
        return self.seconds


@contextlib.contextmanager
def stopwatch(device: str | torch.device = "cpu") -> Iterator[Stopwatch]:
    """Time one block once (a fit, a category): `with stopwatch() as watch: ...`, then `watch.seconds`."""
    synchronize(device)
    watch = Stopwatch(device)
    try:
        yield watch
    finally:
        watch.stop()


def _timed(fn: Callable[[], Any], device: str | torch.device) -> float:
    with stopwatch(device) as watch:
        fn()
    return watch.seconds


def time_interleaved(fns: dict[str, Callable[[], Any]], warmup: int = 2, repeats: int = 10,
                     device: str | torch.device = "cpu", budget_s: float | None = None,
                     min_repeats: int = 3) -> dict[str, list[float]]:
    """Time several callables round-robin: `warmup` untimed runs of each, then rounds of one timed run of
    every callable, up to `repeats` rounds; returns each callable's timed durations in seconds.

    Slow drifts in machine load (other processes, thermal state) then hit every callable alike, so
    their ratios are more trustworthy than with one block of repeats per callable. `budget_s` bounds
    what a slow callable costs: once its runs (warm-up included) have taken `budget_s` seconds and it
    has `min_repeats` timed runs (or `repeats`, if fewer), it leaves the rounds and the others go on.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    spent = {name: 0.0 for name in fns}
    for name, fn in fns.items():
        for _ in range(max(0, warmup)):
            spent[name] += _timed(fn, device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    enough = min(repeats, max(1, min_repeats))

    def done(name: str) -> bool:
        count = len(times[name])
        return count >= repeats or (budget_s is not None and count >= enough and spent[name] >= budget_s)

    while active := [name for name in fns if not done(name)]:
        for name in active:
            times[name].append(_timed(fns[name], device))
            spent[name] += times[name][-1]
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
