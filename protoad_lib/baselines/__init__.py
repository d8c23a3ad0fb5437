"""The comparison methods: PatchCore and PaDiM, on the shared `AnomalyDetector` interface."""

from .coreset import GreedyCoresetSampler
from .padim import PaDiM, default_n_features, random_channel_subset
from .patchcore import PatchCore, patchcore_embedding

__all__ = ["GreedyCoresetSampler", "PaDiM", "PatchCore", "default_n_features", "patchcore_embedding",
           "random_channel_subset"]
