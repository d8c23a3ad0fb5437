"""PRN's training: SmoothL1 + focal loss on the sigmoid map of synthesised anomalies, Adam, seeded loop.

As `xcyao00/PRNet` (docs/peer_methods.md, "PRN"): loss = SmoothL1(sigmoid(logit), mask) + 5 x focal
loss (alpha 0.5, gamma 4, 1e-5 added to p_t before the log), Adam (lr 1e-4, weight decay 1e-2; the
values come from the detector's schedule), a fresh synthetic batch every step, mean loss per epoch.
The optional cosine decay of the lr per step is for the short CPU schedule [ours]. Not copied: PRNet
has no seeds and picks the checkpoint on test AUC; here every random draw is seeded (shuffling from a
torch generator, synthesis from a numpy generator) and the last epoch's weights are kept [ours]. A last
batch smaller than the batch size is kept (PRNet drops it) [ours], so a tiny training set still trains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...progress import progress_bar
from .synthesis import AnomalySynthesiser

LR_DECAYS = ("none", "cosine")
FOCAL_EPSILON = 1e-5  # PRNet's FocalLoss adds its `smooth` 1e-5 to p_t


def focal_loss(probabilities: torch.Tensor, target: torch.Tensor, alpha: float = 0.5,
               gamma: float = 4.0) -> torch.Tensor:
    """Mean of -a_t (1 - p_t)^gamma log(p_t + 1e-5), p_t the probability of the true class; a_t = alpha for
    normal pixels and 1 - alpha for anomalous ones (PRNet's FocalLoss with balance index 0)."""
    anomalous = target > 0.5
    p_true = torch.where(anomalous, probabilities, 1 - probabilities) + FOCAL_EPSILON
    weight = torch.where(anomalous, 1 - alpha, alpha)
    return (-weight * (1 - p_true).clamp_min(0).pow(gamma) * p_true.log()).mean()


def prn_loss(logits: torch.Tensor, masks: torch.Tensor, focal_weight: float = 5.0) -> torch.Tensor:
    """SmoothL1(sigmoid(logits), masks) + focal_weight * focal loss; logits are resized to the masks if needed."""
    if logits.shape[-2:] != masks.shape[-2:]:
        logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    probabilities = torch.sigmoid(logits)
    return F.smooth_l1_loss(probabilities, masks) + focal_weight * focal_loss(probabilities, masks)


@dataclass(frozen=True)
class TrainSettings:
    """The optimisation schedule: epochs, batch size, Adam's lr and weight decay, focal weight, seed, and
    `lr_decay`: "none" (constant lr, as PRNet) or "cosine" (lr * (1 + cos(pi * step / steps)) / 2 per step,
    for short schedules [ours])."""

    epochs: int
    batch_size: int
    lr: float = 1e-4
    weight_decay: float = 1e-2
    focal_weight: float = 5.0
    seed: int = 0
    lr_decay: str = "none"


LogitsOf = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def train_network(network: nn.Module, logits_of: LogitsOf, images: torch.Tensor, synthesiser: AnomalySynthesiser,
                  settings: TrainSettings, device: str | torch.device = "cpu", progress: bool = True,
                  description: str = "prn: train") -> list[float]:
    """Train `network` on normal `images` [N, 3, H, W] in 0..1, kept on the CPU: each step takes a shuffled
    batch, synthesises anomalies in it and minimises `prn_loss` of `logits_of(batch images, their indices
    in images, which of them changed)` (so the caller may reuse the unchanged images' backbone maps [ours]).
    Returns the mean loss of every epoch; one progress bar over the epochs shows the latest."""
    if settings.lr_decay not in LR_DECAYS:
        raise ValueError(f"lr_decay must be one of {LR_DECAYS}, got {settings.lr_decay!r}")
    optimiser = torch.optim.Adam(network.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps = settings.epochs * math.ceil(len(images) / settings.batch_size)
    factors = {"none": lambda step: 1.0, "cosine": lambda step: 0.5 * (1 + math.cos(math.pi * step / steps))}
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, factors[settings.lr_decay])
    order_generator = torch.Generator().manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    history: list[float] = []
    bar = progress_bar(range(settings.epochs), enabled=progress, desc=description, unit="epoch")
    for _ in bar:
        losses = []
        for batch in torch.randperm(len(images), generator=order_generator).split(settings.batch_size):
            anomalous, masks = synthesiser(images[batch], rng)
            changed = masks.flatten(1).any(dim=1)
            logits = logits_of(anomalous.to(device), batch, changed)
            loss = prn_loss(logits, masks.to(device), settings.focal_weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(loss.item())
        history.append(float(np.mean(losses)))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    return history
