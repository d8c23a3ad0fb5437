"""Backbone registry: offline weights, downloads checked against their hash, explicit random weights, clear errors."""

import functools
import hashlib
import http.server
import io
import threading
from pathlib import Path

import pytest
import torch

from protoad_lib import backbones
from protoad_lib.backbones import WeightsUnavailableError, load_backbone


def test_efficientnet_lite0_loads_real_imagenet_weights():
    pretrained = load_backbone("efficientnet_lite0")
    state = torch.load(backbones.efficientnet_lite0_weights(), weights_only=True)
    stem = pretrained.body.stem[0].weight
    torch.testing.assert_close(stem, state["_conv_stem.weight"])


def test_random_weights_only_when_asked_for_by_name():
    random = load_backbone("efficientnet_lite0", weights="random")
    pretrained = load_backbone("efficientnet_lite0")
    assert random.weights == "random"
    assert not torch.equal(random.body.stem[0].weight, pretrained.body.stem[0].weight)


def test_missing_torchvision_weights_raise_error_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setenv("PROTOAD_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as error:
        load_backbone("wide_resnet50_2")
    message = str(error.value)
    assert "wide_resnet50_2-95faca4d.pth" in message and str(tmp_path) in message


def test_torchvision_weights_are_read_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    reference = load_backbone("resnet18", weights="random")
    full_state = {f"{name}": value for name, value in _resnet18_state(reference).items()}
    target = tmp_path / "checkpoints" / "resnet18-f37072fd.pth"
    target.parent.mkdir(parents=True)
    torch.save(full_state, target)
    loaded = load_backbone("resnet18")
    torch.testing.assert_close(loaded.body.stem[0].weight, reference.body.stem[0].weight)


def _resnet18_state(backbone):
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    net.conv1.weight.data.copy_(backbone.body.stem[0].weight)
    return net.state_dict()


def test_unknown_backbone_lists_known_names():
    with pytest.raises(KeyError, match="efficientnet_lite0"):
        load_backbone("no_such_net")


def test_wide_resnet50_2_shapes_with_random_weights():
    backbone = load_backbone("wide_resnet50_2", weights="random")
    maps = backbone(torch.rand(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == [256, 512, 1024] and backbone.out_channels == 1792
    assert [m.shape[-1] for m in maps] == [16, 8, 4]


def test_any_timm_model_by_name_taps_strides_4_8_16():
    backbone = load_backbone("timm:resnet18", weights="random")
    maps = backbone(torch.rand(1, 3, 64, 64))
    assert backbone.strides == [4, 8, 16]
    assert [m.shape[-1] for m in maps] == [16, 8, 4] and [m.shape[1] for m in maps] == backbone.channels


def test_random_weights_are_the_same_network_whatever_the_random_state():
    torch.manual_seed(5)
    first = load_backbone("resnet18", weights="random")
    torch.manual_seed(6)
    state = torch.random.get_rng_state()
    second = load_backbone("resnet18", weights="random")
    assert first.weights_digest() == second.weights_digest()
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is left alone


@pytest.fixture
def weights_server(tmp_path):
    """A local HTTP server for files in `tmp_path / "served"` (no internet is needed to test the download)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _serve(monkeypatch, tmp_path, weights_server, payload: bytes | None, name: str) -> Path:
    """Point resnet18's weights at `name` on the local server (serving `payload`; None: nothing, a 404) and
    torch hub at a fresh folder with no `checkpoints/` yet; returns where the weights should land."""
    served, address = weights_server
    if payload is not None:
        (served / name).write_bytes(payload)
    hub = tmp_path / "fresh_torch_home" / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.delenv("PROTOAD_OFFLINE", raising=False)
    monkeypatch.setitem(backbones.TORCHVISION_WEIGHTS, "resnet18", f"{address}/{name}")
    return hub / "checkpoints" / name


def test_torchvision_weights_download_into_a_fresh_hub_folder_and_load(tmp_path, monkeypatch, weights_server):
    reference = load_backbone("resnet18", weights="random")
    buffer = io.BytesIO()
    torch.save(_resnet18_state(reference), buffer)
    payload = buffer.getvalue()
    name = f"resnet18-{hashlib.sha256(payload).hexdigest()[:8]}.pth"
    target = _serve(monkeypatch, tmp_path, weights_server, payload, name)
    loaded = load_backbone("resnet18")
    assert target.read_bytes() == payload
    torch.testing.assert_close(loaded.body.stem[0].weight, reference.body.stem[0].weight)


def test_a_download_with_the_wrong_hash_is_refused_and_not_kept(tmp_path, monkeypatch, weights_server):
    target = _serve(monkeypatch, tmp_path, weights_server, b"not a checkpoint", "resnet18-f37072fd.pth")
    with pytest.raises(WeightsUnavailableError, match="SHA-256 does not start with f37072fd"):
        load_backbone("resnet18")
    assert list(target.parent.iterdir()) == []


def test_a_missing_download_names_the_failure_and_the_file(tmp_path, monkeypatch, weights_server):
    target = _serve(monkeypatch, tmp_path, weights_server, None, "resnet18-f37072fd.pth")
    with pytest.raises(WeightsUnavailableError, match="download failed .*HTTPError.*404") as error:
        load_backbone("resnet18")
    assert "resnet18-f37072fd.pth" in str(error.value) and str(target.parent) in str(error.value)
