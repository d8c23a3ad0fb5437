"""Numerics several methods share, one function each (as anomalib's `models/components`): k-means, the seeded
hold-out split of good images, the nearest unit prototype by cosine similarity, feature maps as patch rows."""

from .holdout import holdout_split
from .kmeans import KMEANS_ITERATIONS, kmeans
from .nearest import nearest_cosine
from .patches import patch_rows

__all__ = ["KMEANS_ITERATIONS", "holdout_split", "kmeans", "nearest_cosine", "patch_rows"]
