"""Every anomaly-detection method behind one interface (`AnomalyDetector`) and one registry."""

from .base import AnomalyDetector, Predictions, fitted_size
from .coreset import GreedyCoresetSampler
from .npad import NPad
from .padim import PaDiM
from .patchcore import PatchCore
from .prn import PRN
from .protoad import ProtoAD, ProtoADConfig
from .registry import (REGISTRY, MethodSpec, bench_names, checkpoint_class, get_method, make_detector,
                       method_label, method_names)

__all__ = ["REGISTRY", "AnomalyDetector", "GreedyCoresetSampler", "MethodSpec", "NPad", "PaDiM", "PatchCore",
           "PRN", "Predictions", "ProtoAD", "ProtoADConfig", "bench_names", "checkpoint_class", "fitted_size", "get_method",
           "make_detector", "method_label", "method_names"]
