"""N-pad ablations (notebook 07): each open choice of the reconstruction varied alone from the registry's defaults."""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from ..backbones import Backbone
from ..evaluation import CategoryData, fit_and_score
from ..methods import get_method, make_detector

METRICS = ("image_auroc", "pixel_auroc", "aupro")
#: What notebook 07 varies: the neighbourhood radius, the number of centroids (0: no centroid term),
#: the test-time neighbourhood and the fusion rule of the two standardised scores (a value may be a
#: dict of options, for the weighted rule with its weight).
NPAD_SWEEPS: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("radius", (0, 1, 2)),
    ("n_centroids", (0, 16, 64, 256)),
    ("test_neighbourhood", ("pooled", "min")),
    ("fusion", ("sum", "max", {"fusion": "weighted", "centroid_weight": 0.2},
                {"fusion": "weighted", "centroid_weight": 0.8})),
)


def npad_ablation(backbone: Backbone, data: CategoryData,
                  sweeps: Sequence[tuple[str, Sequence[Any]]] = NPAD_SWEEPS) -> pd.DataFrame:
    """One row per (option, value): N-pad with that option changed and every other at its default.

    Columns as the other ablations (`ablation` = `npad_<option>`, `setting`, `category`, `K` = centroids,
    the metrics), plus `value` and `default` (the registry's value). The default setting is fitted once
    and reused in every sweep."""
    defaults = make_detector("npad", backbone).options()
    scored: dict[tuple, dict] = {}
    rows = []
    for option, values in sweeps:
        for value in values:
            changed = value if isinstance(value, dict) else {option: value}
            options = {**get_method("npad").options, **changed}
            key = tuple(sorted({**defaults, **options}.items()))
            if key not in scored:
                detector = make_detector("npad", backbone, **options)
                scored[key] = fit_and_score(detector, data).metrics | {"K": detector.n_centroids}
            result = scored[key]
            label = ", ".join(f"{name} = {setting}" for name, setting in changed.items())
            rows.append({"ablation": f"npad_{option}", "setting": label, "category": data.name,
                         "value": str(changed[option]), "default": all(defaults[k] == v for k, v in changed.items()),
                         "K": int(result["K"]),
                         **{metric: result[metric] for metric in METRICS}})
    return pd.DataFrame(rows)
