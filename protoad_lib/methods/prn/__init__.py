"""PRN (Prototypical Residual Networks, Zhang et al., CVPR 2023): a trained peer method on prototype residuals."""

from .detector import PRN, SCHEDULES, schedule_for, training_epochs
from .network import PRNetwork
from .prototypes import PROTOTYPE_LEVELS, fit_prototypes, prototype_count, residuals
from .synthesis import AnomalySynthesiser, blend_region, paste_seen, perlin_noise, procedural_texture
from .training import TrainSettings, focal_loss, prn_loss, train_network

__all__ = ["PROTOTYPE_LEVELS", "PRN", "PRNetwork", "SCHEDULES", "AnomalySynthesiser", "TrainSettings", "blend_region",
           "fit_prototypes", "focal_loss", "paste_seen", "perlin_noise", "prn_loss", "procedural_texture",
           "prototype_count", "residuals", "schedule_for", "train_network",
           "training_epochs"]
