"""Every anomaly-detection method behind one interface (`AnomalyDetector`) and one registry."""

from .anomalib_peers import AnomalibModel, AnomalibPaDiM, AnomalibPatchCore
from .base import AnomalyDetector, Predictions
from .coreset import GreedyCoresetSampler
from .npad import NPad
from .padim import PaDiM
from .patchcore import PatchCore
from .prn import PRN
from .protoad import ProtoAD, ProtoADConfig
from .registry import (REGISTRY, MethodSpec, bench_names, checkpoint_class, detector_classes, get_method,
                       make_detector, method_label, method_names, peer_names, run_notes, run_options)

__all__ = ["REGISTRY", "AnomalibModel", "AnomalibPaDiM", "AnomalibPatchCore", "AnomalyDetector",
           "GreedyCoresetSampler", "MethodSpec", "NPad", "PaDiM", "PatchCore", "PRN", "Predictions", "ProtoAD",
           "ProtoADConfig", "bench_names", "checkpoint_class", "detector_classes", "get_method",
           "make_detector", "method_label", "method_names", "peer_names", "run_notes", "run_options"]
