"""How fit time and memory grow with the number of training images, for every method of the comparison."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..backbones import Backbone
from ..methods import get_method, peer_names
from ..progress import progress_bar
from .bench_memory import fit_method, peer_failure

FIT_METHODS: tuple[str, ...] = ("protoad", "patchcore_10", "padim", "npad")


def fit_time_vs_images(backbone: Backbone, images: torch.Tensor, counts: Sequence[int],
                       methods: Sequence[str] = FIT_METHODS, include_anomalib: bool = True,
                       device: str | torch.device = "cpu", progress: bool = True) -> list[dict[str, Any]]:
    """Fit each method on the first n of `images` [N, 3, S, S] for every n in `counts` (capped at N).

    One row per (method, n): `fit_s` (backbone pass included, as `protoad fit` runs it), `fit_peak_mem_mb`
    (peak during the fit above what was in use before), `size` (prototypes / bank rows; None for PaDiM).
    The registered peers (anomalib's PatchCore and PaDiM, when anomalib is installed) are added with
    `include_anomalib`; a failing one is warned about and left out.
    """
    names = list(methods) + (list(peer_names()) if include_anomalib else [])
    rows = []
    for count in progress_bar(sorted({min(int(n), len(images)) for n in counts}), desc="fit vs images",
                              enabled=progress):
        for method in names:
            try:
                fitted = fit_method(method, backbone, images[:count], device)
            except Exception as error:  # noqa: BLE001 - an optional peer must not stop the curve
                if not get_method(method).peer:
                    raise
                peer_failure(method, error)
                continue
            rows.append({"method": method, "n_images": count, "fit_s": fitted.fit_s,
                         "fit_peak_mem_mb": fitted.fit_peak_mem_mb, "size": fitted.k})
            del fitted
    return rows
