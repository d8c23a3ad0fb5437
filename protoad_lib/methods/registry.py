"""The one list of methods: name -> detector class, display label and default options.

Every place that names a method (the command line, evaluation, the benchmark, checkpoint loading,
report labels, the notebooks) reads it from here, and asks the detector class what it needs to know
(how it fits, its command-line flags, its options in a run, its fitted size: `AnomalyDetector`'s
declarations) instead of branching on a name, so adding a method is one module and one entry.
A *variant* is a registered method under preset options (e.g. PatchCore with a 1 % coreset); it
has its own name and label in benchmark tables and builds the same detector class. A *peer* is a
third-party implementation timed beside ours (anomalib's PatchCore and PaDiM), registered only when its
package imports (the `peers` extra).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..backbones import Backbone
from . import anomalib_peers
from .anomalib_peers import AnomalibModel, AnomalibPaDiM, AnomalibPatchCore
from .base import AnomalyDetector
from .npad import NPad
from .padim import PaDiM
from .patchcore import PatchCore
from .prn import PRN
from .protoad import ProtoAD


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its name (also the checkpoint's `method`), label, class and default options.

    `compared`: whether the method is a row of the evaluation tables (notebook 05, `evaluate`);
    `variant_of`: the registered method whose detector class this preset builds; `colour`: its colour
    in every figure; `published`: (method, text in `setting`) of the cited rows in `data/paper_tables/`
    that its results are set against; `peer`: a third-party model (`anomalib_peers`), only timed by the
    benchmark (never compared, never checkpointed), whose failure there is a warning, not an error.
    """

    name: str
    label: str
    detector: type[AnomalyDetector] | type[AnomalibModel]
    options: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""
    compared: bool = True
    variant_of: str | None = None
    colour: str = "tab:gray"
    published: tuple[str, str] | None = None
    peer: bool = False


REGISTRY: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("protoad", "ProtoAD", ProtoAD, summary="FINCH prototypes + cosine 1x1 convolution (training-free)",
                   colour="tab:blue"),
        MethodSpec("patchcore", "PatchCore-10%", PatchCore, {"coreset_fraction": 0.1},
                   summary="memory bank of locally aware patches, 10 % greedy coreset, nearest-neighbour distance",
                   colour="tab:orange", published=("PatchCore", "coreset 10%")),
        MethodSpec("patchcore_10", "PatchCore-10%", PatchCore, {"coreset_fraction": 0.1}, compared=False,
                   variant_of="patchcore", colour="tab:orange"),
        MethodSpec("patchcore_1", "PatchCore-1%", PatchCore, {"coreset_fraction": 0.01}, compared=False,
                   variant_of="patchcore", colour="tab:red"),
        MethodSpec("padim", "PaDiM", PaDiM, summary="per-position Gaussians, Mahalanobis distance",
                   colour="tab:green", published=("PaDiM", "Rd550")),
        MethodSpec("npad", "N-pad (reconstructed)", NPad,
                   summary="N-pad reconstructed from its abstract: neighbourhood-pooled Gaussians + nominal centroids",
                   colour="tab:purple", published=("N-pad", "as published")),
        MethodSpec("prn", "PRN (trained, ours)", PRN,
                   summary="PRN, our implementation: a network trained on residuals to prototypes with synthesised "
                           "anomalies (CPU schedule by default; --schedule full for a GPU)",
                   colour="tab:cyan", published=("PRN", "supervised")),
        MethodSpec("anomalib_patchcore", "anomalib PatchCore", AnomalibPatchCore, compared=False, peer=True,
                   summary="anomalib's own PatchcoreModel on our backbone (speed comparison)", colour="tab:brown"),
        MethodSpec("anomalib_padim", "anomalib PaDiM", AnomalibPaDiM, compared=False, peer=True,
                   summary="anomalib's own PadimModel on our backbone (speed comparison)", colour="tab:olive"),
    )
    if not spec.peer or anomalib_peers.available()
}


def method_names() -> tuple[str, ...]:
    """The methods of the evaluation tables (and of `protoad fit/evaluate --method`), in table order."""
    return tuple(name for name, spec in REGISTRY.items() if spec.compared)


def bench_names() -> tuple[str, ...]:
    """The benchmark's own rows: every method of ours, a variant standing for its method where one exists."""
    replaced = {spec.variant_of for spec in REGISTRY.values() if spec.variant_of}
    return tuple(name for name, spec in REGISTRY.items() if name not in replaced and not spec.peer)


def peer_names() -> tuple[str, ...]:
    """The peers registered in this environment (anomalib's, when the `peers` extra is installed)."""
    return tuple(name for name, spec in REGISTRY.items() if spec.peer)


def detector_classes() -> tuple[type[AnomalyDetector], ...]:
    """Each class of our methods once (variants share their method's), in registry order."""
    return tuple(dict.fromkeys(spec.detector for spec in REGISTRY.values() if not spec.peer))


def get_method(name: str) -> MethodSpec:
    """The registry entry of `name`, or a ValueError listing the registered names."""
    if name not in REGISTRY:
        raise ValueError(f"Unknown method {name!r}; choose one of {tuple(REGISTRY)}.")
    return REGISTRY[name]


def method_label(name: str) -> str:
    """The display label of a method or variant; unregistered names (e.g. `backbone`) are returned as given."""
    return REGISTRY[name].label if name in REGISTRY else name


def run_options(profile: Any, device: str, methods: Sequence[str] | None = None) -> dict[str, dict]:
    """Every method's (or those of `methods`) options in a run of `profile` on `device`, over the registry's
    defaults (`AnomalyDetector.run_options`: ProtoAD's clustering budget, seeds, PRN's schedule and length)."""
    names = tuple(REGISTRY) if methods is None else tuple(methods)
    return {name: get_method(name).detector.run_options(profile, device) for name in names
            if not get_method(name).peer}


def run_notes(profile: Any, device: str) -> dict[str, str]:
    """The lines every method adds to a run's description ({label: text})."""
    return {label: text for cls in detector_classes() for label, text in cls.run_notes(profile, device).items()}


def make_detector(name: str, backbone: Backbone, **options: Any) -> AnomalyDetector:
    """A fresh, unfitted detector: the entry's default options, overridden by `options`."""
    spec = get_method(name)
    return spec.detector(backbone, **{**spec.options, **options})


def checkpoint_class(method: str) -> type[AnomalyDetector] | None:
    """The class that rebuilds a checkpoint whose metadata names `method` (None if unknown)."""
    spec = REGISTRY.get(method)
    return None if spec is None or spec.peer else spec.detector
