"""anomalib's own PatchCore and PaDiM torch models behind our backbone: the peers of the speed comparison.

They are registry entries (`anomalib_patchcore`, `anomalib_padim`, `MethodSpec.peer`) present when the
`peers` extra is installed (`available()`); anomalib itself is imported only when one is built.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..backbones import Backbone
from .coreset import GreedyCoresetSampler
from .padim import default_n_features, random_channel_subset

CORESET_SAMPLERS = ("anomalib", "ours")


def available() -> bool:
    """Whether anomalib can be imported (the `peers` extra): its entries are registered only then."""
    return importlib.util.find_spec("anomalib") is not None


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


class AnomalibModel(nn.Module):
    """anomalib's own torch model (anomalib 2.7) with our backbone swapped in; a subclass builds the model
    (`build`) and ends the fit (`finish_fit`).

    The same backbone object and taps as our methods, so a speed difference is anomalib's head and
    fitting code. Fitting follows anomalib's training loop: forward passes in train mode collect
    embeddings, then the subclass's last step. The `peers` extra pins the anomalib version this is
    written against. Not a checkpointable `AnomalyDetector`: it is only timed.
    """

    method = "anomalib"
    fits_on_images = True
    layers: tuple[str, ...] = ()

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.model = self.build(backbone)
        self.model.feature_extractor = _BackboneAsTimmExtractor(backbone, self.layers)
        self.model.layers = list(self.layers)

    def build(self, backbone: Backbone) -> nn.Module:
        raise NotImplementedError

    def finish_fit(self) -> None:
        raise NotImplementedError

    def fitted_size(self) -> int | None:
        return None

    @torch.inference_mode()
    def fit(self, batches: Iterable[dict], device: str | torch.device = "cpu", **_: Any) -> "AnomalibModel":
        self.to(device)
        self.model.train()
        for batch in batches:
            self.model(batch["image"].to(device))
        self.finish_fit()
        self.model.eval()
        return self

    @torch.inference_mode()
    def forward(self, images01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(anomaly maps [B, H, W], image scores [B]) as our detectors return them."""
        output = self.model(images01)
        return output.anomaly_map.reshape(len(images01), *images01.shape[-2:]), output.pred_score.reshape(-1)


class AnomalibPatchCore(AnomalibModel):
    """anomalib's `PatchcoreModel` on the 2nd and 3rd tapped maps.

    `coreset_sampler`: "anomalib" (its `KCenterGreedy`) or "ours" (`GreedyCoresetSampler`, the same greedy
    k-center rule on a 128-dimensional projection) choosing the memory bank among anomalib's own
    embeddings. "ours" times anomalib's *inference* at category scale where its selection does not fit in
    memory (on this 24 GiB machine it was killed at 25 training images); its fit time is then not anomalib's.
    """

    method = "anomalib_patchcore"
    layers = ("layer2", "layer3")

    def __init__(self, backbone: Backbone, coreset_fraction: float = 0.1, coreset_sampler: str = "anomalib") -> None:
        if coreset_sampler not in CORESET_SAMPLERS:
            raise ValueError(f"coreset_sampler must be one of {CORESET_SAMPLERS}, got {coreset_sampler!r}")
        self.coreset_fraction = coreset_fraction
        self.coreset_sampler = coreset_sampler
        super().__init__(backbone)

    def build(self, backbone: Backbone) -> nn.Module:
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        return PatchcoreModel(layers=list(self.layers), backbone="resnet18", pre_trained=False)

    @property
    def memory_bank(self) -> torch.Tensor | None:
        return getattr(self.model, "memory_bank", None)

    def fitted_size(self) -> int | None:
        bank = self.memory_bank
        return int(bank.shape[0]) if isinstance(bank, torch.Tensor) and bank.ndim == 2 and bank.numel() else None

    def finish_fit(self) -> None:
        if self.coreset_sampler == "ours":
            embeddings = torch.vstack(self.model.embedding_store)
            self.model.embedding_store.clear()
            chosen = GreedyCoresetSampler(fraction=self.coreset_fraction, progress=False).select(embeddings)
            self.model.memory_bank = embeddings[chosen.to(embeddings.device)]
        else:
            self.model.subsample_embedding(self.coreset_fraction)


class AnomalibPaDiM(AnomalibModel):
    """anomalib's `PadimModel` on all three tapped maps with our seeded channel subset."""

    method = "anomalib_padim"
    layers = ("layer1", "layer2", "layer3")

    def build(self, backbone: Backbone) -> nn.Module:
        from anomalib.models.image.padim.torch_model import PadimModel

        model = PadimModel(layers=list(self.layers), backbone="resnet18", pre_trained=False)
        total = sum(backbone.channels)
        model.idx = random_channel_subset(total, default_n_features(backbone.name, total), 1024)
        return model

    def finish_fit(self) -> None:
        self.model.fit()
