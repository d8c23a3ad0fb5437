"""Detector checkpoints (safetensors + JSON metadata) and TorchScript / ONNX export."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import atomic_output
from .backbones import Backbone, load_backbone
from .calibration import Calibration
from .methods import AnomalyDetector, checkpoint_class

FORMAT_VERSION = 3  # 2: sigma moved into the method config; 3: a SHA-256 of tensors + metadata, verified on load
OLDEST_READABLE_VERSION = 2
DIGEST_KEY = "protoad_sha256"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the backbone it is used with."""


def checkpoint_metadata(detector: AnomalyDetector, image_size: int, resize: int,
                        calibration: Calibration | None = None, train_colour_mode: str | None = None) -> dict:
    """What rebuilds and applies the detector: method, backbone, preprocessing (resize, then centre crop
    to image_size; equal sizes: the whole image), config, the calibration (`calibration.py`) or None, and
    the training images' colour mode ("colour", "grayscale", "mixed"; None: not known), so that predict can
    warn about an image of another kind."""
    backbone = detector.backbone
    return {
        "format_version": FORMAT_VERSION,
        "method": detector.method,
        "backbone": backbone.name,
        "weights": backbone.weights,
        "layers": backbone.layers,
        "channels": backbone.channels,
        "normalisation": {"mean": backbone.mean.flatten().tolist(), "std": backbone.std.flatten().tolist()},
        "image_size": image_size,
        "resize": resize,
        "config": detector.config(),
        "calibration": calibration.as_dict() if calibration is not None else None,
        "train_colour_mode": train_colour_mode,
    }


def content_digest(metadata_json: str, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the metadata text and every tensor's name, dtype, shape and bytes (in name order).

    It catches damage (a flipped bit, a truncated copy, a tensor or metadata changed by accident), not a
    deliberate edit: anyone who changes the file can store the new digest beside it. A checkpoint that
    names another method is still refused by `load_detector`; other edited values are not detected."""
    digest = hashlib.sha256(metadata_json.encode())
    for name in sorted(tensors):
        values = tensors[name].detach().cpu().contiguous()
        digest.update(f";{name}:{values.dtype}:{tuple(values.shape)}:".encode())
        digest.update(values.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_detector(detector: AnomalyDetector, path: str | Path, image_size: int = 224, resize: int = 256,
                  calibration: Calibration | None = None, train_colour_mode: str | None = None) -> Path:
    """One file: the fitted tensors (prototypes, memory bank, Gaussians) and what rebuilds the network."""
    path = Path(path)
    text = json.dumps(checkpoint_metadata(detector, image_size, resize, calibration, train_colour_mode))
    tensors = {name: value.contiguous() for name, value in detector.state_tensors().items()}
    metadata = {"protoad": text, DIGEST_KEY: content_digest(text, tensors)}
    with atomic_output(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return path


def read_checkpoint(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The metadata and tensors of a checkpoint file, verified against the digest stored in it; clear errors
    for a missing, foreign, damaged or too new file (the digest is a check for damage, not a signature:
    see `content_digest`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            stored = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        raw = stored.get("protoad")
        metadata = json.loads(raw) if raw is not None else None
    except Exception as error:  # noqa: BLE001 - safetensors raises several kinds on a bad file
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({error}).") from error
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path} has no ProtoAD metadata; it was not written by save_detector.")
    version = metadata.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer protoad_lib (checkpoint format {version}; this one "
                              f"reads formats {OLDEST_READABLE_VERSION}-{FORMAT_VERSION}): upgrade protoad_lib.")
    if version < OLDEST_READABLE_VERSION:
        raise CheckpointError(f"{path} has the old checkpoint format {version}; fit it again with `protoad fit`.")
    if version >= 3 and stored.get(DIGEST_KEY) != content_digest(raw, tensors):
        raise CheckpointError(f"{path} is damaged: its tensors or metadata do not match the SHA-256 stored in it. "
                              "Restore a good copy or fit it again.")
    if version < 3:
        warnings.warn(f"{path} (format {version}) carries no digest, so it cannot be checked for damage; "
                      "save it again to add one.", stacklevel=2)
    return metadata, tensors


def load_detector(path: str | Path, backbone: Backbone | None = None) -> tuple[AnomalyDetector, dict]:
    """Rebuild a detector from a checkpoint; a given backbone must match the one it was fitted with, and the
    config and tensors must be those of the method the metadata names (an edited label is refused)."""
    metadata, tensors = read_checkpoint(path)
    if backbone is None:
        backbone = load_backbone(metadata["backbone"], weights=metadata["weights"], layers=metadata["layers"])
    if backbone.name != metadata["backbone"] or backbone.channels != metadata["channels"]:
        raise CheckpointError(
            f"Checkpoint {path} was fitted with {metadata['backbone']} (channels {metadata['channels']}), "
            f"not {backbone.name} (channels {backbone.channels}); use the same backbone and layers."
        )
    detector_class = checkpoint_class(metadata["method"])
    if detector_class is None:
        raise CheckpointError(f"Checkpoint {path} holds an unknown method {metadata['method']!r}.")
    try:
        detector = detector_class.from_state(backbone, metadata["config"], tensors)
    except (TypeError, KeyError, ValueError, RuntimeError) as error:  # a config or tensor another method wrote
        raise CheckpointError(
            f"Checkpoint {path} is labelled {metadata['method']!r}, but its config or tensors are not that "
            f"method's ({type(error).__name__}: {error}): was its metadata edited? Restore the original or fit "
            "it again."
        ) from error
    return detector.eval(), metadata


def export_torchscript(detector: AnomalyDetector, path: str | Path, image_size: int = 224) -> Path:
    """A traced TorchScript module mapping images in 0..1 [B, 3, S, S] to (maps, scores)."""
    example = torch.rand(1, 3, image_size, image_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(detector.eval(), example, check_trace=False)
    with atomic_output(path) as temporary:
        traced.save(str(temporary))
    return Path(path)


#: What ONNX export and its check need: the optional `export` extra (`pip install -e '.[export]'`).
EXPORT_MODULES = ("onnx", "onnxruntime")


def missing_export_modules() -> list[str]:
    """The modules of the `export` extra that are not installed (empty: ONNX export works)."""
    return [name for name in EXPORT_MODULES if importlib.util.find_spec(name) is None]


def export_onnx(detector: AnomalyDetector, path: str | Path, image_size: int = 224, opset: int = 18) -> Path:
    """An ONNX graph with input `images` (0..1) and outputs `anomaly_map`, `score`; dynamic batch size."""
    example = torch.rand(1, 3, image_size, image_size)
    with atomic_output(path) as temporary, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            detector.eval(), (example,), str(temporary), input_names=["images"],
            output_names=["anomaly_map", "score"], opset_version=opset, dynamo=False,
            dynamic_axes={"images": {0: "batch"}, "anomaly_map": {0: "batch"}, "score": {0: "batch"}},
        )
    return Path(path)
