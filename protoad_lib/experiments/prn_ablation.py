"""PRN's ablation (notebook 07): training length, and synthetic-only vs a few real ("seen") anomalies."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from ..backbones import Backbone
from ..categories import CategoryData
from ..evaluation import fit_and_score
from ..methods import make_detector
from ..metrics import HEADLINE_METRICS


def prn_ablation(backbone: Backbone, data: CategoryData, epochs: Sequence[int], seen: Sequence[int],
                 options: dict | None = None, seed: int = 0, device: str = "cpu") -> pd.DataFrame:
    """PRN (`options` over the registry's defaults) trained on `device` for each of `epochs` (synthetic
    anomalies only), then at the last of them with each nonzero count of `seen` real anomalies (drawn with
    `seed` from the test set and scored without them).

    Columns: setting, epochs, seen, excluded (the test images trained on, as <defect>/<file>), final_loss, history (the
    per-epoch mean loss), K (0: PRN has no prototype budget to report), metrics.
    """
    settings = [(int(e), 0) for e in epochs] + [(int(epochs[-1]), int(n)) for n in seen if n]
    rows = []
    for n_epochs, n_seen in settings:
        detector = make_detector("prn", backbone, **{**(options or {}), "epochs": n_epochs, "seed": seed})
        scored = fit_and_score(detector, data, seen=n_seen, seed=seed, device=device)
        label = f"{n_epochs} epochs" + (f" + {n_seen} seen" if n_seen else "")
        excluded = ";".join("/".join(Path(path).parts[-2:]) for path in scored.seen)
        rows.append({"ablation": "prn", "setting": label, "category": data.name, "epochs": n_epochs,
                     "seen": n_seen, "excluded": excluded, "final_loss": detector.history[-1],
                     "history": list(detector.history), "K": 0,
                     **{m: scored.metrics[m] for m in HEADLINE_METRICS}})
    return pd.DataFrame(rows)
