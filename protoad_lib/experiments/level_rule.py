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

#: The rules compared (`ProtoADConfig` fields): the budget alone, the held-out margin rule (the default before)
#: and the bound rule at a few ratios (2.0: the default).
RULES: dict[str, dict] = {
    "budget only": {"level_rule": "budget"},
    "margin 0.5 (before)": {"level_rule": "margin", "level_margin": 0.5},
    "bound 1.5": {"level_rule": "bound", "bound_ratio": 1.5},
    "bound 2.0 (default)": {"level_rule": "bound", "bound_ratio": 2.0},
    "bound 3.0": {"level_rule": "bound", "bound_ratio": 3.0},
}


def head_ms(detector: ProtoAD, data: CategoryData, repeats: int = 20) -> float:
    """Median time (ms) of everything after the backbone for one test image (batch size 1)."""
    backbone = detector.backbone
    maps = split_layers(data.test_embeddings.read([0]), backbone.channels, backbone.strides)
    with torch.inference_mode():
        return p50(time_callable(lambda: detector.head_forward(maps, data.image_size), warmup=3,
                                 repeats=repeats)) * 1000


def level_rule_ablation(backbone: Backbone, categories: Sequence[CategoryData], fits: Mapping[str, ProtoAD],
                        rules: Mapping[str, dict] = RULES, repeats: int = 20) -> pd.DataFrame:
    """The FINCH level each rule in `rules` (name -> `ProtoADConfig` fields) chooses on each category's reference
    FINCH hierarchy (no new clustering), and its accuracy. Columns: setting, level, K, head_ms
    (machine-dependent), metrics."""
    rows = []
    for data in categories:
        fitted = fits[data.name]
        settings: ProtoADConfig = fitted.settings
        inputs = prototype_inputs(data.train_embeddings, settings, fitted.prototype_set.hierarchy, held_out=True)
        for name, fields in rules.items():
            config = replace(settings, level=None, **fields)
            level = inputs.level_for(config).level
            prototypes = torch.from_numpy(cluster_prototypes(inputs.vectors, inputs.hierarchy.level_labels(level)))
            detector = ProtoAD(backbone, sigma=fitted.sigma, prototypes=prototypes,
                               config=replace(config, level=level)).eval()
            scored = score(detector, data)
            rows.append({"ablation": "level_rule", "setting": name, "category": data.name, "level": level,
                         "head_ms": head_ms(detector, data, repeats), "K": detector.k,
                         **{m: scored.metrics[m] for m in HEADLINE_METRICS}})
    return pd.DataFrame(rows)
