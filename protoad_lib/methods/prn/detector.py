"""PRN (Zhang et al., CVPR 2023, arXiv 2212.02031) as a detector: frozen backbone, prototypes, trained network.

How `xcyao00/PRNet` builds it and what we do differently is in docs/peer_methods.md ("PRN") and in
the docstrings of `prototypes`, `network`, `synthesis` and `training`; this module puts them together:
- a frozen pretrained backbone, kept in eval mode even while the network trains (PRNet lets the
  encoder's BatchNorm statistics drift in `train()` mode; not copied);
- prototypes of the normal training images' feature maps per tapped layer, residuals to the nearest;
- the network trained on synthesised (and optionally a few real, "seen") anomalies;
- scores: the sigmoid map, no smoothing (sigma 0, as PRNet), image score = mean of the top 100 pixels
  of the map at the input size.

Schedules (`SCHEDULES`): "full" is PRNet's (700 epochs, batch 48, Adam lr 1e-4 constant, weight decay
1e-2, 3 attention blocks per scale, width 64 = ResNet18's layer-1 width), for a GPU. "cpu" [ours] is a
narrow (width 16, 1 attention block), short (30 epochs of batch 8) schedule; with so few steps weight
decay 1e-2 holds training back, so it uses lr 2e-3 with cosine decay and no weight decay. Measured with
ImageNet efficientnet_lite0 on the real `mvtec_bottle_mini` (40 train / 13 test images, 224 px, one
torch thread on a busy 2-core machine), image / pixel AUROC: "cpu" 1.0 / 0.965 for seeds 0 and 1 (fit
233-262 s, peak RSS 1.8 GB); at 20 epochs 1.0 / 0.952 and 0.973; 20 epochs of constant lr 1e-3 with
weight decay 0: 1.0 / 0.956 and 0.945, with weight decay 1e-2: 0.972 / 0.928 (seed 0).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch.utils.data import Dataset

from ...backbones import Backbone
from ...features import combine_layers
from ...machine import thread_count
from ...measure import stopwatch
from ...progress import progress_bar
from ..base import AnomalyDetector, as_loader, split_layers
from .network import PRNetwork
from .prototypes import PROTOTYPE_LEVELS, fit_prototypes, residuals
from .synthesis import AnomalySynthesiser
from .training import LR_DECAYS, TrainSettings, train_network

#: Threads a fit uses whatever the process has (`PRN.fit`): a one-thread worker and a serial run train alike.
FIT_THREADS = 2

SCHEDULES: dict[str, dict] = {
    "cpu": {"epochs": 30, "train_batch_size": 8, "width": 16, "attention_blocks": 1, "lr": 2e-3,
            "weight_decay": 0.0, "lr_decay": "cosine"},
    "full": {"epochs": 700, "train_batch_size": 48, "width": 64, "attention_blocks": 3, "lr": 1e-4,
             "weight_decay": 1e-2, "lr_decay": "none"},
}

SeenAnomalies = Sequence[tuple[torch.Tensor, torch.Tensor]]


def schedule_for(device: str | torch.device) -> str:
    """The schedule a run on `device` trains with: "full" on a CUDA device, "cpu" elsewhere."""
    return "full" if str(device).startswith("cuda") else "cpu"


def training_epochs(device: str | torch.device, epochs: int | None = None) -> int:
    """How long PRN trains on `device`: `epochs` when given, else the length of `schedule_for(device)`."""
    return int(epochs or SCHEDULES[schedule_for(device)]["epochs"])


def stacked_images(data: Dataset | Iterable, batch_size: int) -> torch.Tensor:
    """Every image [N, 3, H, W] (0..1, on the CPU) of a dataset or an iterable of batches (dicts or tensors)."""
    batches = [(batch["image"] if isinstance(batch, dict) else batch).float().cpu()
               for batch in as_loader(data, batch_size)]
    if not batches:
        raise ValueError("PRN needs at least one training image.")
    return torch.cat(batches)


class PRN(AnomalyDetector):
    """Prototypical Residual Network: residuals of backbone features to normal prototypes, segmented by a
    network trained on synthesised anomalies (see the module docstring and docs/peer_methods.md).

    Options (in `config()`, all resolved, so a checkpoint rebuilds the same detector):
    - `schedule` "cpu" | "full": preset of `epochs`, `train_batch_size`, `width`, `attention_blocks`, `lr`,
      `weight_decay` (Adam's) and `lr_decay` ("none" | "cosine") (see `SCHEDULES`); each of these given
      explicitly overrides the preset;
    - `focal_weight` 5.0; `seed` 0 (network init, prototypes, shuffling, synthesis);
    - `prototype_level` "image" (PRNet) | "patch" (ablation [ours]); `prototype_ratio` 0.1 (K = max(1,
      floor(0.1 N)) image prototypes per layer); `patch_prototypes` 64 (K for "patch" [ours]);
    - synthesis: `texture_dir` None (procedural textures [ours]) or a folder of texture images,
      `anomaly_fraction` 0.5, `beta_max` 0.8, `perlin_threshold` 0.5, `seen_fraction` 0.5 (share of the
      anomalous samples that are pasted seen anomalies, when `fit(..., seen=...)` gives some);
    - `top_k` 100: pixels averaged into the image score; `sigma` 0.0: no smoothing (as PRNet).

    Training needs images: `fit(data, ..., seen=[(image, mask), ...])`; `fit_features` raises.
    Inference works from images (`forward`, `predict`) and from cached stride-4 embeddings
    (`predict_embeddings`): PRN's features are that embedding, split back into the layers' maps.
    `history` holds the mean training loss of every epoch (saved with the state).
    """

    method = "prn"
    fits_on_images = True

    def __init__(self, backbone: Backbone, sigma: float = 0.0, schedule: str = "cpu", epochs: int | None = None,
                 train_batch_size: int | None = None, width: int | None = None, attention_blocks: int | None = None,
                 lr: float | None = None, weight_decay: float | None = None, lr_decay: str | None = None,
                 prototype_level: str = "image",
                 prototype_ratio: float = 0.1, patch_prototypes: int = 64, texture_dir: str | Path | None = None,
                 anomaly_fraction: float = 0.5, beta_max: float = 0.8, perlin_threshold: float = 0.5,
                 seen_fraction: float = 0.5, focal_weight: float = 5.0, top_k: int = 100, seed: int = 0,
                 fit_threads: int = FIT_THREADS) -> None:
        super().__init__(backbone, sigma)
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {tuple(SCHEDULES)}, got {schedule!r}")
        if prototype_level not in PROTOTYPE_LEVELS:
            raise ValueError(f"prototype_level must be one of {PROTOTYPE_LEVELS}, got {prototype_level!r}")
        preset = SCHEDULES[schedule]
        self.schedule = schedule
        self.epochs = int(preset["epochs"] if epochs is None else epochs)
        self.train_batch_size = int(preset["train_batch_size"] if train_batch_size is None else train_batch_size)
        self.width = int(preset["width"] if width is None else width)
        self.attention_blocks = int(preset["attention_blocks"] if attention_blocks is None else attention_blocks)
        self.lr = float(preset["lr"] if lr is None else lr)
        self.weight_decay = float(preset["weight_decay"] if weight_decay is None else weight_decay)
        self.lr_decay = str(preset["lr_decay"] if lr_decay is None else lr_decay)
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"lr_decay must be one of {LR_DECAYS}, got {self.lr_decay!r}")
        self.focal_weight, self.seed, self.fit_threads = float(focal_weight), int(seed), int(fit_threads)
        self.prototype_level, self.prototype_ratio = prototype_level, float(prototype_ratio)
        self.patch_prototypes, self.top_k = int(patch_prototypes), int(top_k)
        self.texture_dir = None if texture_dir is None else str(texture_dir)
        self.anomaly_fraction, self.beta_max = float(anomaly_fraction), float(beta_max)
        self.perlin_threshold, self.seen_fraction = float(perlin_threshold), float(seen_fraction)
        backbone.eval().requires_grad_(False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.network = PRNetwork(backbone.channels, backbone.strides, self.width, self.attention_blocks)
        for layer in range(len(backbone.channels)):
            self.register_buffer(f"prototypes_{layer}", None)
        self.history: list[float] = []
        self.train_s: float | None = None  # seconds the last fit spent training the network (after features, prototypes)

    # --- modes and state ------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "PRN":
        """Train mode for the network only: the backbone stays in eval mode (frozen BatchNorm statistics)."""
        super().train(mode)
        self.backbone.eval()
        return self

    @property
    def prototypes(self) -> list[torch.Tensor] | None:
        """The prototypes per tapped layer ([K, C, h, w] image prototypes or [K, C] patch prototypes), or None."""
        stored = [getattr(self, f"prototypes_{layer}") for layer in range(len(self.backbone.channels))]
        return None if any(p is None for p in stored) else stored

    def set_prototypes(self, prototypes: list[torch.Tensor]) -> None:
        for layer, tensor in enumerate(prototypes):
            setattr(self, f"prototypes_{layer}", tensor.float().contiguous())

    def fitted_prototypes(self) -> list[torch.Tensor]:
        prototypes = self.prototypes
        if prototypes is None:
            raise RuntimeError("PRN is not fitted: call fit(dataset) or load a state first.")
        return prototypes

    # --- features and scores --------------------------------------------------------------------
    def features_from_maps(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """The stride-4 embedding of the tapped maps (`combine_layers`); `patch_scores` splits it back."""
        return combine_layers(maps)

    def features_from_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        """A cached stride-4 embedding is already PRN's features."""
        return embedding

    def logits_from_maps(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Anomaly logits [B, 1, H, W] from the backbone's maps (residuals computed without gradient)."""
        with torch.no_grad():
            residual_maps = residuals(maps, self.fitted_prototypes(), self.prototype_level)
        return self.network(maps, residual_maps)

    def patch_scores_from_maps(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """The sigmoid map [B, H, W] at the input resolution (finest map size times its stride)."""
        return torch.sigmoid(self.logits_from_maps(maps)).squeeze(1)

    def patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        """The sigmoid map from a stride-4 embedding, split into the layers' maps with `split_layers`."""
        return self.patch_scores_from_maps(split_layers(features, self.backbone.channels, self.backbone.strides))

    def image_scores(self, patch_scores: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """Mean of the `top_k` (100) highest pixel scores of each anomaly map (PRNet's image score)."""
        flat = maps.flatten(1)
        return flat.topk(min(self.top_k, flat.shape[1]), dim=1).values.mean(dim=1)

    # --- fit ------------------------------------------------------------------------------------
    def fit_features(self, features: torch.Tensor) -> "PRN":
        raise NotImplementedError(
            "PRN cannot be fitted from features: it synthesises anomalies in image space and trains a network "
            "on them. Call fit(dataset) with the training images instead."
        )

    @torch.no_grad()
    def layer_maps(self, images: torch.Tensor, batch_size: int, device: str | torch.device,
                   progress: bool) -> list[torch.Tensor]:
        """The backbone's maps of every image [N, 3, H, W], per tapped layer, on the CPU."""
        per_batch = [[m.cpu() for m in self.backbone(chunk.to(device))]
                     for chunk in progress_bar(images.split(batch_size), enabled=progress, desc="prn: features")]
        return [torch.cat(layer) for layer in zip(*per_batch)]

    def fit(self, data: Dataset | Iterable, batch_size: int = 8, device: str | torch.device = "cpu",
            progress: bool = True, seen: SeenAnomalies | None = None) -> "PRN":
        """Fit on the good training images: prototypes from their backbone maps, then the network trained
        on synthesised anomalies (`epochs` x ceil(N / `train_batch_size`) steps). `batch_size` is the
        feature-extraction batch; `seen` optional real anomalies [(image [3, H, W], mask [1, H, W]), ...]
        at the training images' size (take them with `categories.choose_seen` and remove them from the test set).
        It runs with `fit_threads` torch/faiss threads whatever the process has (default 2), so a fit in a
        one-thread Dask worker trains the very weights of a fit in a serial run (same CPU): training amplifies
        the float differences of another thread count into other numbers [ours]."""
        with thread_count(self.fit_threads):
            self._fit(data, batch_size, device, progress and self.progress, seen)
        return self.eval()

    def _fit(self, data: Dataset | Iterable, batch_size: int, device: str | torch.device, progress: bool,
             seen: SeenAnomalies | None) -> None:
        """`fit`'s steps, run with `fit_threads` threads."""
        images = stacked_images(data, batch_size)
        self.to(device).eval()
        maps = self.layer_maps(images, batch_size, device, progress)
        self.set_prototypes([p.to(device) for p in fit_prototypes(
            maps, self.prototype_level, self.prototype_ratio, self.patch_prototypes, self.seed)])
        synthesiser = AnomalySynthesiser(self.texture_dir, self.anomaly_fraction, self.beta_max,
                                         self.perlin_threshold, seen or (), self.seen_fraction)
        settings = TrainSettings(self.epochs, self.train_batch_size, self.lr, self.weight_decay,
                                 self.focal_weight, self.seed, self.lr_decay)
        with stopwatch(device) as watch, torch.inference_mode(False), torch.enable_grad():
            self.train()
            logits_of = partial(self.training_logits, maps)
            self.history = train_network(self.network, logits_of, images, synthesiser, settings, device, progress)
        self.train_s = watch.seconds

    def training_logits(self, normal_maps: list[torch.Tensor], images01: torch.Tensor, index: torch.Tensor,
                        changed: torch.Tensor) -> torch.Tensor:
        """Logits of a training batch: the backbone runs on the changed (anomalous) images only; the others
        reuse their maps from `normal_maps` (per layer, [N, C, h, w], computed once for the prototypes) [ours]."""
        maps = [layer[index].to(images01.device) for layer in normal_maps]
        if changed.any():
            with torch.no_grad():
                fresh = self.backbone(images01[changed.to(images01.device)])
            for layer, update in zip(maps, fresh):
                layer[changed.to(layer.device)] = update
        return self.logits_from_maps(maps)

    # --- declarations (see AnomalyDetector) ----------------------------------------------------
    @classmethod
    def add_cli_options(cls, parser: Any) -> None:
        parser.add_argument("--schedule", choices=tuple(SCHEDULES), default="cpu",
                            help="PRN: 'cpu' (minutes on 2 cores) or 'full' (700 epochs, batch 48: a GPU)")
        parser.add_argument("--epochs", type=int, default=None, help="PRN: epochs instead of the schedule's")

    @classmethod
    def options_from_cli(cls, args: Any) -> dict:
        return {"schedule": args.schedule, "seed": args.seed} | ({"epochs": args.epochs} if args.epochs else {})

    @classmethod
    def run_options(cls, profile: Any, device: str) -> dict:
        """The schedule of the run's device (`schedule_for`), the profile's seed, and its training length
        (`Profile.prn_epochs`, when set; else the schedule's)."""
        return {"seed": profile.seed, "schedule": schedule_for(device)} | cls.training_options(profile.prn_epochs)

    @classmethod
    def training_options(cls, epochs: int | None) -> dict:
        return {} if epochs is None else {"epochs": int(epochs)}

    @classmethod
    def run_notes(cls, profile: Any, device: str) -> dict[str, str]:
        return {"PRN": f"{training_epochs(device, profile.prn_epochs)} epochs, {schedule_for(device)} schedule"}

    def fit_report(self) -> dict:
        return {"schedule": self.schedule, "epochs": self.epochs, "final_loss": self.history[-1]}

    # --- persistence ----------------------------------------------------------------------------
    def options(self) -> dict:
        return {
            "schedule": self.schedule, "epochs": self.epochs, "train_batch_size": self.train_batch_size,
            "width": self.width, "attention_blocks": self.attention_blocks, "lr": self.lr,
            "weight_decay": self.weight_decay, "lr_decay": self.lr_decay, "prototype_level": self.prototype_level,
            "prototype_ratio": self.prototype_ratio, "patch_prototypes": self.patch_prototypes,
            "texture_dir": self.texture_dir, "anomaly_fraction": self.anomaly_fraction, "beta_max": self.beta_max,
            "perlin_threshold": self.perlin_threshold, "seen_fraction": self.seen_fraction,
            "focal_weight": self.focal_weight, "top_k": self.top_k, "seed": self.seed,
            "fit_threads": self.fit_threads,
        }

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Prototypes (`prototypes_<layer>`), network weights and BatchNorm statistics (`network.*`), and the
        per-epoch loss `history`."""
        tensors = {f"prototypes_{layer}": p.detach().cpu().contiguous()
                   for layer, p in enumerate(self.fitted_prototypes())}
        tensors |= {f"network.{name}": value.detach().cpu().contiguous()
                    for name, value in self.network.state_dict().items()}
        tensors["history"] = torch.tensor(self.history, dtype=torch.float64)
        return tensors

    @classmethod
    def from_state(cls, backbone: Backbone, config: dict, tensors: dict[str, torch.Tensor]) -> "PRN":
        """Rebuild a fitted PRN from `config()` (options and sigma) and `state_tensors()`."""
        detector = cls(backbone, **config)
        detector.set_prototypes([tensors[f"prototypes_{layer}"] for layer in range(len(backbone.channels))])
        detector.network.load_state_dict({name.removeprefix("network."): value
                                          for name, value in tensors.items() if name.startswith("network.")})
        detector.history = [float(v) for v in tensors.get("history", torch.zeros(0)).tolist()]
        return detector.eval()
