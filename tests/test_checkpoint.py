"""Checkpoints round-trip, refuse a mismatched backbone or an edited method, and export to TorchScript and ONNX
faithfully."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from protoad_lib.backbones import load_backbone
from protoad_lib.checkpoint import (
    DIGEST_KEY, CheckpointError, content_digest, export_onnx, export_torchscript, load_detector, read_checkpoint,
    save_detector,
)
from protoad_lib.methods import REGISTRY
from protoad_lib.methods.protoad import ProtoAD, ProtoADConfig


@pytest.fixture(scope="module")
def fitted():
    backbone = load_backbone("efficientnet_lite0")
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model = ProtoAD(backbone, config=ProtoADConfig(max_vectors=800, max_prototypes=50))
    return model.fit([{"image": images}], progress=False), images


def test_checkpoint_round_trip_reproduces_outputs(fitted, tmp_path):
    model, images = fitted
    path = save_detector(model, tmp_path / "model.safetensors", image_size=64)
    metadata, tensors = read_checkpoint(path)
    assert metadata["backbone"] == "efficientnet_lite0" and metadata["config"]["sigma"] == 4.0
    assert metadata["config"]["level"] == model.prototype_set.level
    assert tensors["prototypes"].shape == (model.k, 176)
    loaded, _ = load_detector(path)
    for expected, actual in zip(model(images), loaded(images)):
        torch.testing.assert_close(actual, expected)
    assert not list(tmp_path.glob("*.tmp"))


def test_loading_with_another_backbone_is_refused(fitted, tmp_path):
    model, _ = fitted
    path = save_detector(model, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="efficientnet_lite0"):
        load_detector(path, backbone=load_backbone("resnet18", weights="random"))


@pytest.mark.parametrize("method", [name for name, spec in REGISTRY.items() if spec.detector is not ProtoAD])
def test_a_checkpoint_relabelled_as_another_method_is_refused(fitted, tmp_path, method):
    model, _ = fitted
    metadata, tensors = read_checkpoint(save_detector(model, tmp_path / "model.safetensors", image_size=64))
    text = json.dumps(metadata | {"method": method})  # a deliberate edit: the digest is stored anew beside it
    relabelled = tmp_path / "relabelled.safetensors"
    save_file(tensors, str(relabelled), metadata={"protoad": text, DIGEST_KEY: content_digest(text, tensors)})
    with pytest.raises(CheckpointError, match=f"labelled '{method}'.*metadata edited"):
        load_detector(relabelled, backbone=model.backbone)


def test_foreign_or_missing_files_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "absent.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        read_checkpoint(junk)


def test_torchscript_export_matches_eager(fitted, tmp_path):
    model, images = fitted
    scripted = torch.jit.load(str(export_torchscript(model, tmp_path / "model.pt", image_size=64)))
    for expected, actual in zip(model(images), scripted(images)):
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_onnx_export_matches_torch(fitted, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    model, images = fitted
    path = export_onnx(model, tmp_path / "model.onnx", image_size=64)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    maps, scores = session.run(None, {"images": images.numpy()})
    expected_maps, expected_scores = model(images)
    np.testing.assert_allclose(maps, expected_maps.numpy(), atol=1e-4)
    np.testing.assert_allclose(scores, expected_scores.numpy(), atol=1e-4)
