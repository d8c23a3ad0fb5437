"""What notebook 05's views need beyond `comparison.evaluate_run`: which datasets ran whole, and the example images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..data import example_indices
from ..methods import method_names
from ..session import RunSetup
from .comparison import EXAMPLE_DEFECTS, Evaluation


@dataclass
class OverlayExample:
    """One example test image (the dataset's sample dict) and, per method, its anomaly map of it [H, W], the
    method's colour scale on that category (`MethodResult.normal_scale`) and its image score."""

    category: str
    sample: dict
    maps: dict[str, tuple[torch.Tensor, tuple[float, float], float]]


def complete_datasets(run: RunSetup) -> list[str]:
    """Datasets of a run whose categories were all selected: only
    their means are comparable with published means over the whole benchmark."""
    selected = set(run.category_names)
    return [spec.name for spec in run.profile.datasets if set(spec.categories) <= selected]


def overlay_examples(evaluation: Evaluation, methods: Sequence[str] | None = None) -> list[OverlayExample]:
    """Per category the first good test image and the first image of the first `EXAMPLE_DEFECTS` defect types,
    read from the test sets, each with every method's (None: the registry's) stored map, scale and score."""
    methods = method_names() if methods is None else tuple(methods)
    examples = []
    for category, test in evaluation.tests.items():
        for index in example_indices(test, EXAMPLE_DEFECTS):
            outcomes = {method: evaluation.outcomes[(category, method)] for method in methods}
            examples.append(OverlayExample(category, test[index], {
                method: (outcome.example_maps[index], outcome.normal_scale, float(outcome.scores[index]))
                for method, outcome in outcomes.items()}))
    return examples
