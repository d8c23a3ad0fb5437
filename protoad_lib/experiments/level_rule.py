"""Ablation of ProtoAD's FINCH level rule: accuracy and the head's time at batch size 1, side by side."""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

import pandas as pd
import torch

from ..backbones import Backbone
from ..categories import CategoryData
from ..evaluation import score
from ..methods.base import split_layers
from ..methods.protoad import ProtoAD, ProtoADConfig
from ..methods.protoad.prototypes import cluster_prototypes, prototype_inputs
from ..measure import p50, time_callable
from ..metrics import HEADLINE_METRICS

MARGINS: tuple[float | None, ...] = (None, 0.25, 0.5, 1.0)


def head_ms(detector: ProtoAD, data: CategoryData, repeats: int = 20) -> float:
    """Median time (ms) of everything after the backbone for one test image (batch size 1)."""
    backbone = detector.backbone
    maps = split_layers(data.test_embeddings.read([0]), backbone.channels, backbone.strides)
    with torch.inference_mode():
        return p50(time_callable(lambda: detector.head_forward(maps, data.image_size), warmup=3,
                                 repeats=repeats)) * 1000


def level_rule_ablation(backbone: Backbone, categories: Sequence[CategoryData], fits: Mapping[str, ProtoAD],
                        margins: Sequence[float | None] = MARGINS, repeats: int = 20) -> pd.DataFrame:
    """The FINCH level by the prototype budget alone (margin None) and by each held-out `level_margin`,
    on each category's reference FINCH hierarchy (no new clustering). Columns: setting, level, margin,
    head_ms (machine-dependent), K, metrics."""
    rows = []
    for data in categories:
        fitted = fits[data.name]
        settings: ProtoADConfig = fitted.settings
        inputs = prototype_inputs(data.train_embeddings, settings, fitted.prototype_set.hierarchy, held_out=True)
        for margin in margins:
            level, _ = inputs.level_for(replace(settings, level=None, level_margin=margin))
            prototypes = torch.from_numpy(cluster_prototypes(inputs.vectors, inputs.hierarchy.level_labels(level)))
            detector = ProtoAD(backbone, sigma=fitted.sigma, prototypes=prototypes,
                               config=replace(settings, level=level, level_margin=margin)).eval()
            scored = score(detector, data)
            rows.append({"ablation": "level_rule", "setting": "budget only" if margin is None else f"margin {margin:g}",
                         "category": data.name, "level": level, "head_ms": head_ms(detector, data, repeats),
                         "K": detector.k, **{m: scored.metrics[m] for m in HEADLINE_METRICS}})
    return pd.DataFrame(rows)
