"""Where a measurement ran: CPU, versions, thread counts and load, recorded beside every timing."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from .measure import is_cuda


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> list[float] | None:
    """1, 5 and 15-minute load averages: other processes competing for the CPU make timings noisy."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def anomalib_version() -> str | None:
    """The installed anomalib's version (None when it is not installed: the peers' rows are skipped)."""
    try:
        import anomalib
    except Exception:  # noqa: BLE001 - not installed or broken: skipped
        return None
    return str(getattr(anomalib, "__version__", "unknown"))


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
        "loadavg_start": loadavg(),
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


@contextmanager
def thread_count(threads: int) -> Iterator[None]:
    """Run the block with `threads` torch and faiss threads (`set_threads`), then restore the counts before it.

    Float sums split over threads depend on their number, so work whose result must not depend on the process
    (a training run, where such differences grow step by step) runs with a fixed count."""
    previous = set_threads(threads)
    try:
        yield
    finally:
        set_threads(*previous)
