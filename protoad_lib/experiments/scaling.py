"""How the methods' heads scale: ProtoAD's head time vs K, PatchCore's search time vs memory-bank size."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..methods.protoad import PrototypeHead
from ..progress import progress_bar
from ..measure import p50, p95, time_callable


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
    budget_s: float | None = None,
) -> list[dict[str, Any]]:
    """Time ProtoAD's prototype head (as `forward` runs it, on per-layer maps) for each K.

    Random maps of `channels` at strides 4, 8, 16 (the finest on `grid`) and random unit
    prototypes; rows carry `ms_per_image` (median batch time / batch_size), `p50_ms` / `p95_ms`
    per batch and the multiply-accumulates per image (K * sum of channels x positions per layer).
    `budget_s`: each K's time budget (`measure.time_callable`).
    """
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
            times = time_callable(lambda: head.forward_maps(maps), warmup, repeats, device, budget_s)
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
    budget_s: float | None = None,
) -> list[dict[str, Any]]:
    """Time PatchCore's nearest-neighbour search: faiss IndexFlatL2, h*w*batch_size queries, k = 1, per bank size.

    Random Gaussian bank and queries (exact search cost does not depend on the data). faiss-cpu:
    always on the CPU. Rows carry `ms_per_image` (median / batch_size), `p50_ms` / `p95_ms` per batch
    and the bank's size in MB. `budget_s`: each bank size's time budget (`measure.time_callable`).
    """
    import faiss

    rng = np.random.default_rng(seed)
    queries = rng.standard_normal((batch_size * grid[0] * grid[1], dim), dtype=np.float32)
    rows = []
    for size in progress_bar(bank_sizes, desc="bank size", enabled=progress):
        size = int(size)
        index = faiss.IndexFlatL2(dim)
        index.add(rng.standard_normal((size, dim), dtype=np.float32))
        times = time_callable(lambda: index.search(queries, 1), warmup, repeats, "cpu", budget_s)
        rows.append({
            "bank_size": size, "dim": dim, "grid": list(grid), "batch_size": batch_size,
            "ms_per_image": p50(times) * 1e3 / batch_size, "p50_ms": p50(times) * 1e3,
            "p95_ms": p95(times) * 1e3, "bank_mb": size * dim * 4 / 2**20, "device": "cpu",
        })
        del index
    return rows
