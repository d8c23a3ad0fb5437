"""One method fitted for the benchmark, with its fit time and the memory its fit and its state take."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from ..backbones import Backbone
from ..measure import PeakMemory, memory_in_use_mb, stopwatch
from ..methods import make_detector
from .bench_images import fit_batches

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


@dataclass
class Fitted:
    """A fitted benchmark model: fit seconds, the fit's peak memory, its fitted size (K) and state size."""

    detector: nn.Module
    fit_s: float
    fit_peak_mem_mb: float
    k: int | None
    state_mb: float


def peer_failure(method: str, error: Exception) -> str:
    """Say on screen (a warning) that an optional peer's row failed, and return the message to store."""
    message = f"{error.__class__.__name__}: {error}"
    warnings.warn(f"{method} was left out: {message}", RuntimeWarning, stacklevel=2)
    return message


def fit_method(method: str, backbone: Backbone, images: torch.Tensor, device: torch.device | str,
               progress: bool = False, options: Mapping[str, Any] | None = None) -> Fitted:
    """Build a registered method or peer (`options` over the registry's defaults) and fit it on the train
    images; time and peak memory of the fit."""
    baseline = memory_in_use_mb(device)
    detector = make_detector(method, backbone, **(options or {}))
    if hasattr(detector, "progress"):
        detector.progress = progress
    with PeakMemory(device, baseline) as memory:
        with stopwatch(device) as watch:
            detector.fit(fit_batches(images), device=device, progress=False)
    detector.eval()
    state = state_mb(detector)
    if state is None:  # no state_tensors(): what stayed allocated after the fit
        state = max(0.0, memory_in_use_mb(device) - baseline)
    return Fitted(detector, watch.seconds, memory.peak_mb, detector.fitted_size(), state)
