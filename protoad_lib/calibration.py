"""Decision thresholds and a fixed colour scale for a fitted detector, from good images held out of the fit.

`fit_calibrated` fits on part of the good images, scores the held-out rest, fits again on all of them,
and returns a `Calibration` that `protoad fit` stores in the checkpoint:

- image threshold: the largest image score among the n held-out good images. Under exchangeability a
  new good image exceeds the largest of n with probability 1 / (n + 1) (the stated false-alarm rate);
  the final detector is fitted on more images than the one that scored them, so on good images its
  scores are, if anything, lower and the rate is an upper estimate.
- pixel threshold: the `PIXEL_QUANTILE` (0.999) quantile of the held-out good images' pixel scores:
  about 0.1 % of a good image's pixels exceed it; the anomalous area of an image is the fraction of
  its pixels above it.
- colour scale: from the median held-out pixel score (bottom of the colour bar) to twice the image
  threshold's distance above it (top), so the image threshold sits in the middle of the bar and the
  same score has the same colour in every image and every run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch.utils.data import Dataset, Subset

from .methods import AnomalyDetector
from .methods.components import holdout_split

PIXEL_QUANTILE = 0.999
DEFAULT_FRACTION = 0.2
MIN_FIT_IMAGES = 2  # the fewest training images a fit takes (PaDiM's covariance needs two); `protoad fit` refuses fewer
QUANTILE_SAMPLE = 2**24
SCORE_BATCH = 8


@dataclass(frozen=True)
class Calibration:
    """Thresholds and colour scale of one fitted detector (all in the detector's score units)."""

    image_threshold: float
    pixel_threshold: float
    colour_low: float
    colour_high: float
    held_out: int
    fraction: float
    seed: int

    @property
    def false_alarm_rate(self) -> float:
        """Chance that a new good image scores above the image threshold (1 / (held_out + 1))."""
        return 1.0 / (self.held_out + 1)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Calibration":
        return cls(**{name: values[name] for name in cls.__dataclass_fields__})

    def describe(self) -> str:
        return (f"image threshold {self.image_threshold:.4g} (largest of {self.held_out} held-out good images: "
                f"false alarms about 1 in {self.held_out + 1}); pixel threshold {self.pixel_threshold:.4g} "
                f"({PIXEL_QUANTILE:.1%} of good pixels below); colour scale {self.colour_low:.4g}..{self.colour_high:.4g}")


def calibration_from_scores(image_scores: torch.Tensor, maps: torch.Tensor, fraction: float, seed: int) -> Calibration:
    """The `Calibration` of held-out good images' image scores [n] and anomaly maps [n, H, W]."""
    image_threshold = float(image_scores.max())
    pixels = maps.flatten().double()
    if len(pixels) > QUANTILE_SAMPLE:  # torch.quantile takes at most 2**24 values: a seeded sample of them
        pixels = pixels[torch.randperm(len(pixels), generator=torch.Generator().manual_seed(seed))[:QUANTILE_SAMPLE]]
    low = float(pixels.median())
    pixel_threshold = float(torch.quantile(pixels, PIXEL_QUANTILE))
    high = image_threshold + max(image_threshold - low, 1e-12)
    return Calibration(image_threshold, pixel_threshold, low, high, int(len(image_scores)), float(fraction), int(seed))


def held_out_indices(count: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A seeded split of `count` images into (fit, held-out); None when too few images for both parts."""
    held = round(count * fraction)
    if fraction <= 0 or held < 1 or count - held < MIN_FIT_IMAGES:
        return None
    return holdout_split(count, fraction, seed)


@torch.inference_mode()
def fit_calibrated(detector: AnomalyDetector, data: Dataset, batch_size: int = 8, device: str = "cpu",
                   fraction: float = DEFAULT_FRACTION, seed: int = 0, progress: bool = True,
                   ) -> tuple[AnomalyDetector, Calibration | None]:
    """Fit on all good images of `data`, calibrated on a held-out `fraction` of them first (see the module).

    The features are extracted once; the method is fitted twice (held-out fit, then all). Returns the
    detector fitted on everything and its calibration, or None when `fraction` is 0 or the images are
    too few to hold any out (at least `MIN_FIT_IMAGES` must stay in the fit).
    """
    if detector.fits_on_images:
        return _fit_trained_calibrated(detector, data, batch_size, device, fraction, seed, progress)
    features = detector.method_features(data, batch_size, device, progress)
    split = held_out_indices(len(features), fraction, seed)
    calibration = None
    if split is not None:
        fit, held_out = split
        detector.fit_features(features.subset(fit))
        size = tuple(data[0]["image"].shape[-2:])
        scored = [detector.maps_and_scores(detector.patch_scores(features.read(batch).to(device)), size)
                  for batch in held_out.split(SCORE_BATCH)]
        maps, scores = (torch.cat([part[i].cpu() for part in scored]) for i in (0, 1))
        calibration = calibration_from_scores(scores, maps, fraction, seed)
    return detector.fit_features(features), calibration


def _fit_trained_calibrated(detector: AnomalyDetector, data: Dataset, batch_size: int, device: str, fraction: float,
                            seed: int, progress: bool) -> tuple[AnomalyDetector, Calibration | None]:
    """A trained method (PRN) is trained once, on the images not held out, and calibrated on the held-out
    ones; it is not trained again on all of them (that would double hours of training)."""
    split = held_out_indices(len(data), fraction, seed)
    if split is None:
        return detector.fit(data, batch_size, device, progress), None
    fit, held_out = split
    detector.fit(Subset(data, fit.tolist()), batch_size, device, progress)
    predictions = detector.predict(Subset(data, held_out.tolist()), batch_size, device, progress=False)
    return detector, calibration_from_scores(predictions.scores, predictions.maps, fraction, seed)
