"""anomalib's own PatchCore and PaDiM torch models behind our backbone, for the optional speed comparison."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..backbones import Backbone
from ..methods.coreset import GreedyCoresetSampler

CORESET_SAMPLERS = ("anomalib", "ours")


class _BackboneAsTimmExtractor(nn.Module):
    """Presents our Backbone as anomalib's feature extractor: {"layer1": stride 4, "layer2": 8, "layer3": 16}."""

    def __init__(self, backbone: Backbone, layers: Sequence[str]) -> None:
        super().__init__()
        self.backbone = backbone
        self.layers = list(layers)

    def forward(self, images01: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.backbone(images01)
        named = {f"layer{i + 1}": m for i, m in enumerate(maps)}
        return {name: named[name] for name in self.layers}


class AnomalibDetector(nn.Module):
    """anomalib's own torch model (`PatchcoreModel` / `PadimModel`, anomalib 2.7) with our backbone swapped in.

    The same backbone object and taps as our methods (PatchCore: the 2nd and 3rd tapped maps, PaDiM: all
    three with our seeded channel subset), so a speed difference is anomalib's head and fitting code.
    Fitting follows anomalib's training loop: forward passes in train mode collect embeddings, then
    `subsample_embedding` (PatchCore's coreset) or `fit` (PaDiM's Gaussians). The `peers` extra pins
    the anomalib version this is written against.

    `coreset_sampler` (PatchCore): "anomalib" (its `KCenterGreedy`) or "ours" (`GreedyCoresetSampler`, the
    same greedy k-center rule on a 128-dimensional projection) choosing the memory bank among anomalib's own
    embeddings. "ours" times anomalib's *inference* at category scale where its selection does not fit in
    memory (on this 24 GiB machine it was killed at 25 training images); its fit time is then not anomalib's.
    """

    def __init__(self, kind: str, backbone: Backbone, coreset_fraction: float = 0.1,
                 coreset_sampler: str = "anomalib") -> None:
        super().__init__()
        if coreset_sampler not in CORESET_SAMPLERS:
            raise ValueError(f"coreset_sampler must be one of {CORESET_SAMPLERS}, got {coreset_sampler!r}")
        self.kind = kind
        self.coreset_fraction = coreset_fraction
        self.coreset_sampler = coreset_sampler
        if kind == "patchcore":
            from anomalib.models.image.patchcore.torch_model import PatchcoreModel

            layers = ["layer2", "layer3"]
            self.model = PatchcoreModel(layers=layers, backbone="resnet18", pre_trained=False)
        elif kind == "padim":
            from anomalib.models.image.padim.torch_model import PadimModel

            from ..methods.padim import default_n_features, random_channel_subset

            layers = ["layer1", "layer2", "layer3"]
            self.model = PadimModel(layers=layers, backbone="resnet18", pre_trained=False)
            total = sum(backbone.channels)
            self.model.idx = random_channel_subset(total, default_n_features(backbone.name, total), 1024)
        else:
            raise ValueError(f"anomalib kind must be 'patchcore' or 'padim', got {kind!r}")
        self.model.feature_extractor = _BackboneAsTimmExtractor(backbone, layers)
        self.model.layers = layers

    @property
    def memory_bank(self) -> torch.Tensor | None:
        return getattr(self.model, "memory_bank", None) if self.kind == "patchcore" else None

    @torch.inference_mode()
    def fit(self, batches: Iterable[dict], device: str | torch.device = "cpu", **_: Any) -> "AnomalibDetector":
        self.to(device)
        self.model.train()
        for batch in batches:
            self.model(batch["image"].to(device))
        if self.kind == "patchcore" and self.coreset_sampler == "ours":
            embeddings = torch.vstack(self.model.embedding_store)
            self.model.embedding_store.clear()
            chosen = GreedyCoresetSampler(fraction=self.coreset_fraction, progress=False).select(embeddings)
            self.model.memory_bank = embeddings[chosen.to(embeddings.device)]
        elif self.kind == "patchcore":
            self.model.subsample_embedding(self.coreset_fraction)
        else:
            self.model.fit()
        self.model.eval()
        return self

    @torch.inference_mode()
    def forward(self, images01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(anomaly maps [B, H, W], image scores [B]) as our detectors return them."""
        output = self.model(images01)
        return output.anomaly_map.reshape(len(images01), *images01.shape[-2:]), output.pred_score.reshape(-1)
