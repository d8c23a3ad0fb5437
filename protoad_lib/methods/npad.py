"""N-pad (Jang, Hwang, Park, CVPRW 2023), reconstructed from its abstract: PaDiM with neighbour-pooled Gaussians.

No code of N-pad is public and only the abstract is readable, so this module is a reconstruction
from the abstract (see `docs/peer_methods.md`, "N-pad"); every design decision below not stated in
the abstract is marked [ours]. What the abstract states: features of an ImageNet network; pixel-wise
nominal distributions estimated from the features of the target pixel *and its neighbours*, to
tolerate small misalignment; centroids of clusters of nominal features as a representative nominal
set; anomaly scores from Mahalanobis distances (to the distributions) and Euclidean distances (to the
centroids); the neighbourhood used in training and in evaluation.

- Features [ours]: exactly PaDiM's (`PaDiM.features_from_maps`: the stride-4 `combine_layers`
  embedding and the seeded random channel subset of d channels, the same subset as PaDiM for the
  same seed), so the pooled Gaussians are comparable with PaDiM's.
- Pooled Gaussian per position [ours: radius, box window, unbiased covariance, epsilon as PaDiM]:
  for position p the mean and unbiased covariance (+ epsilon * I) of x_n(p + delta) over every
  training image n and every in-bounds offset |delta|_inf <= radius. `pooled_moments` computes them
  from per-row moment sums S1 = sum_n x_n, S2 = sum_n x_n x_n^T, box-filtered over 2r+1 rows then
  2r+1 columns: one pass over the images, in float64, the features centred by a constant (the mean
  of the first chunk read in that column window, so E[xx^T] - mu mu^T does not cancel badly). The
  grid is processed in blocks (bands of rows, and column windows with an r-column halo when d is
  large), each read from the `Embeddings` source as a window of the grid for a few images at a time
  (never all images' features at once); their row sums are accumulated over the chunks of images,
  computed once and kept while a halo needs them; covariances are inverted per block in float64
  (Cholesky, `spd_inverse`) and stored in float32, as PaDiM. With radius 0 and no centroid term the
  detector is PaDiM (same channels, same Gaussians, same scores; tested).
- Test neighbourhood [ours]: "pooled" scores x(p) against p's own pooled Gaussian; "min" (default)
  takes the minimum Mahalanobis distance over the Gaussians of every in-bounds position within the
  radius, (2r+1)^2 times PaDiM's scoring cost (the abstract's "neighbourhood in evaluation"); both
  agree at radius 0.
- Centroid score [ours: k-means, K, subsample, Euclidean]: faiss k-means (seeded, 25 iterations)
  on at most `centroid_vectors` randomly drawn (seeded) nominal patch vectors of the same d
  channels; patch score = Euclidean distance to the nearest centroid (faiss `IndexFlatL2` finds it,
  the distance is recomputed as ||x - c|| in float32). `n_centroids=0` switches the term off.
- Fusion [ours]: each term is standardised with the mean and standard deviation of its patch scores
  on held-out *normal training* images, never test statistics: a seeded fraction `holdout` of the
  training images (at least 1, leaving at least 2 to fit) is held out, both terms are fitted on the
  rest and the held-out images scored; then both terms are refitted on all training images, so no
  image is wasted. The statistics therefore come from the held-out fit, a slight mismatch (the refit
  scores normal patches a little lower), accepted to use every image. With fewer than 3 training
  images all images serve for both the fit and the statistics (in-sample, biased low). Rules: "sum"
  z_gauss + z_centroid (default), "weighted" (1 - w) z_gauss + w z_centroid, "max". Without the
  centroid term the score is the raw Mahalanobis distance (PaDiM's).
- Map: bilinear upsampling + Gaussian sigma 4; image score = max of the map (base class, as PaDiM).

Memory: the model, h*w*d^2*4 bytes of inverse covariances (56*56*550^2*4 = 3.8 GB at d = 550 with
wide_resnet50_2, 0.13 GB at d = 100, 37 MB at efficientnet_lite0's default d = 54) plus h*w*d*4 of
means and K*d*4 of centroids, is the floor. Working memory does not grow with the number N of
training images: the pooling reads a window of at most max(P, 2r+1) + 2r(2r+1) grid positions, P =
`block_positions()` = BLOCK_BYTES / (8 d max(d, 8)), of b = max(8, d) images at a time, so (halo aside)
a read's float64 copy (8 b d P bytes) and one float64 block of d x d moments (8 d^2 P bytes) are each
at most `BLOCK_BYTES` (64 MB); the pooling holds about eight such blocks, a few hundred MB whatever d
and N (N only sets how many reads a block takes); k-means holds its `centroid_vectors` x d float32
sample; scoring the held-out images reads 8 of them at a time (8 d h w float32 and the "min"
neighbourhood's shifted copy), keeping only their [n, h, w] maps.

Defaults [ours], measured with efficientnet_lite0 (ImageNet weights, d = 54) on the real
`mvtec_bottle_mini` (40 train / 13 test images; pixel AUROC, AUPRO): PaDiM 0.985 / 0.958 (= N-pad
at radius 0 without centroids); radius 1 or 2 with "pooled" Gaussians is *worse* (0.963-0.980
whatever K and fusion rule), "min" recovers most of it, and radius 2 + "min" + K = 64 + "sum" is the
best N-pad setting (0.9825 / 0.946; image AUROC 1.0 everywhere). So on this small, well-aligned
category N-pad does not beat PaDiM at the pixel level; on a 200-image synthetic weave it is level
with it (0.9907 vs 0.9895). Weighted (w 0.3, 0.7) and max fusion were no better than sum.
Cost of the defaults, 200 training + 22 test images of 224 px, cached embeddings, 2 busy cores:
fit + score 41-43 s against ProtoAD's 95-124 s (PaDiM 10-15 s), peak RSS 1.75-1.78 GB of which
1.29 GB are the embeddings. At d = 550 (56 x 56, 50 images, radius 1): peak 5.0 GB, 3.6 GiB of it the
inverse covariances and about 0.3 GB the pooling's temporaries.
"""

from __future__ import annotations

import faiss
import torch

from ..backbones import Backbone
from ..embeddings import CHUNK_IMAGES, Embeddings, as_embeddings
from ..progress import progress_bar
from .base import AnomalyDetector
from .components import holdout_split, kmeans
from .npad_pooling import column_windows, pooled_moments, spd_inverse
from .padim import PaDiM

NEIGHBOURHOODS = ("pooled", "min")
FUSIONS = ("sum", "weighted", "max")
BLOCK_BYTES = 64 * 2**20  # float64 moments of one block of positions; the pooling holds about six


def neighbourhood_minimum(features: torch.Tensor, mean: torch.Tensor, cov_inv: torch.Tensor, radius: int,
                          block_bytes: int = BLOCK_BYTES) -> torch.Tensor:
    """min over the Gaussians q of every in-bounds position within `radius` of p of the Mahalanobis distance of
    x(p) to (mean[q], cov_inv[q]): [B, h, w] for features [B, d, h, w], mean [d, h, w], cov_inv [h*w, d, d].

    Gaussian by Gaussian, not shift by shift: a block of positions q takes the (2r+1)^2 x B vectors around it in
    one product with its own inverse covariance, so each inverse covariance is read once per batch instead of
    (2r+1)^2 times (at d = 550 they are 3.8 GB), and each product has (2r+1)^2 x B rows instead of B."""
    batch, channels, height, width = features.shape
    offsets = torch.arange(-radius, radius + 1, device=features.device)
    offset_rows, offset_cols = (o.reshape(1, -1) for o in torch.meshgrid(offsets, offsets, indexing="ij"))
    by_position = features.reshape(batch, channels, height * width).permute(2, 0, 1).contiguous()  # [h*w, B, d]
    centre = mean.to(features.device, features.dtype).reshape(channels, -1).T  # [h*w, d]
    window = offset_rows.shape[1]
    squared = torch.full((batch, height * width), float("inf"), device=features.device, dtype=features.dtype)
    step = max(1, block_bytes // (4 * window * batch * channels))
    for start in range(0, height * width, step):
        block = slice(start, min(start + step, height * width))
        gaussians = torch.arange(block.start, block.stop, device=features.device)
        rows, cols = gaussians[:, None] // width + offset_rows, gaussians[:, None] % width + offset_cols  # [Q, w2]
        inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
        patches = (rows.clamp(0, height - 1) * width + cols.clamp(0, width - 1)).flatten()  # [Q * w2]
        difference = by_position[patches].view(len(gaussians), window * batch, channels)
        difference -= centre[block, None, :]
        inverse = cov_inv[block].to(features.device, features.dtype)
        distances = torch.bmm(difference, inverse).mul_(difference).sum(-1)
        distances = distances.view(len(gaussians), window, batch).masked_fill_(~inside[..., None], float("inf"))
        squared.scatter_reduce_(1, patches.expand(batch, -1), distances.flatten(0, 1).T, reduce="amin")
    return squared.clamp_min_(0).sqrt_().view(batch, height, width)


def fuse(z_gauss: torch.Tensor, z_centroid: torch.Tensor, rule: str, weight: float) -> torch.Tensor:
    """Combine two standardised score maps: "sum", "weighted" ((1-w) z_gauss + w z_centroid) or "max"."""
    if rule == "sum":
        return z_gauss + z_centroid
    if rule == "weighted":
        return (1 - weight) * z_gauss + weight * z_centroid
    if rule == "max":
        return torch.maximum(z_gauss, z_centroid)
    raise ValueError(f"fusion must be one of {FUSIONS}, got {rule!r}")


def standardisation(gauss: torch.Tensor, centroid: torch.Tensor) -> torch.Tensor:
    """`score_stats` [[mean, std] of the Mahalanobis term, [mean, std] of the centroid term] of held-out scores."""
    return torch.stack([torch.stack([s.mean(), s.std(unbiased=False).clamp_min(1e-12)])
                        for s in (gauss, centroid)]).float().cpu()


def kmeans_centroids(vectors: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """faiss k-means centroids [min(k, M), d] of vectors [M, d] (`components.kmeans`: seeded, 25 iterations,
    all vectors used, no faiss subsampling)."""
    return torch.from_numpy(kmeans(vectors, k, seed).centroids).clone()


class NPad(AnomalyDetector):
    """N-pad (reconstructed from the abstract, see the module docstring): pooled per-position Gaussians
    (Mahalanobis) plus the Euclidean distance to k-means centroids, standardised on held-out normal
    images and fused. With radius 0 and `n_centroids=0` it equals PaDiM.

    Options (in `config()`): `n_features` (None: PaDiM's default), `seed` 1024 (channel subset,
    k-means, subsample and hold-out split), `epsilon` 0.01, `radius` 2, `test_neighbourhood`
    "min" | "pooled", `n_centroids` 64 (0: off), `centroid_vectors` 100000, `fusion` "sum" |
    "weighted" | "max", `centroid_weight` 0.5 (for "weighted"), `holdout` 0.2, `chunk_size`
    (positions per float64 block when fitting, and PaDiM's chunk when scoring; None: ~64 MB blocks).
    """

    method = "npad"

    def __init__(self, backbone: Backbone, sigma: float = 4.0, n_features: int | None = None, seed: int = 1024,
                 epsilon: float = 0.01, radius: int = 2, test_neighbourhood: str = "min", n_centroids: int = 64,
                 centroid_vectors: int = 100_000, fusion: str = "sum", centroid_weight: float = 0.5,
                 holdout: float = 0.2, chunk_size: int | None = None) -> None:
        super().__init__(backbone, sigma)
        if test_neighbourhood not in NEIGHBOURHOODS:
            raise ValueError(f"test_neighbourhood must be one of {NEIGHBOURHOODS}, got {test_neighbourhood!r}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if radius < 0 or n_centroids < 0 or centroid_vectors < 1 or not 0 < holdout < 1:
            raise ValueError("need radius >= 0, n_centroids >= 0, centroid_vectors >= 1 and 0 < holdout < 1")
        self.gaussian = PaDiM(backbone, sigma, n_features, seed, epsilon, chunk_size)  # features, Mahalanobis
        self.radius, self.test_neighbourhood, self.fusion = int(radius), test_neighbourhood, fusion
        self.n_centroids, self.centroid_vectors = int(n_centroids), int(centroid_vectors)
        self.centroid_weight, self.holdout = float(centroid_weight), float(holdout)
        self.centroids = torch.zeros(0, self.gaussian.n_features)
        self.score_stats = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # rows: (mean, std) of gauss, centroid
        self._index: faiss.Index | None = None

    @property
    def seed(self) -> int:
        return self.gaussian.seed

    # --- features -------------------------------------------------------------------------------
    def method_view(self, embeddings: Embeddings | torch.Tensor) -> Embeddings:
        """PaDiM's channel subset of stride-4 embeddings, read window by window of the grid when fitting."""
        return self.gaussian.method_view(embeddings)

    def features_from_maps(self, maps: list[torch.Tensor]) -> torch.Tensor:
        return self.gaussian.features_from_maps(maps)

    def features_from_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.gaussian.features_from_embedding(embedding)

    # --- fit ------------------------------------------------------------------------------------
    def fit_features(self, features: Embeddings | torch.Tensor) -> "NPad":
        """Fit on features [N, d, h, w] (an `Embeddings`, read a few images or a window of the grid at a
        time, or a tensor); with the centroid term, first the held-out standardisation."""
        fit_sharing_gaussians([self], features)
        return self

    def gaussian_options(self) -> dict:
        """The options the pooled Gaussians (and the hold-out split) depend on."""
        return {**self.gaussian.options(), "radius": self.radius, "holdout": self.holdout}

    def images_per_read(self) -> int:
        """Images whose window of the grid the pooling reads together: max(8, d), so each read's product
        S2 += X^T X is a rank-b update large enough to be efficient."""
        return max(CHUNK_IMAGES, self.gaussian.n_features)

    def block_positions(self) -> int:
        """Grid positions pooled at once: `chunk_size`, or as many as keep a float64 d x d block and a float64
        read of `images_per_read` images within `BLOCK_BYTES` each (BLOCK_BYTES / (8 d max(d, 8))), whatever N."""
        if self.gaussian.chunk_size is not None:
            return max(1, int(self.gaussian.chunk_size))
        channels = self.gaussian.n_features
        return max(1, BLOCK_BYTES // (8 * channels * self.images_per_read()))

    def fit_gaussians(self, features: Embeddings | torch.Tensor, images: torch.Tensor | None, description: str) -> None:
        """Per-position pooled mean and inverse regularised covariance, block by block of the grid: a column
        window of at most P / (2r+1) columns (plus the r-column halo) and bands of rows, P = `block_positions`,
        so a read covers at most max(P, 2r+1) + 2r(2r+1) positions of `images_per_read` images."""
        features = as_embeddings(features)
        _, channels, height, width = features.shape
        self.gaussian.mean = self.gaussian.cov_inv = None  # free the previous fit first
        budget, halo = self.block_positions(), 2 * self.radius
        windows = column_windows(width, self.radius, budget // (halo + 1))
        band_rows = max(1, budget // max(b - a for _, _, a, b in windows) - halo)
        mean = torch.empty(channels, height, width)
        cov_inv = torch.empty(height, width, channels, channels)
        identity = torch.eye(channels, dtype=torch.float64)
        with progress_bar(total=len(windows) * -(-height // band_rows), desc=description, enabled=self.progress) as bar:
            for x0, x1, a, b in windows:
                bands = pooled_moments(features, self.radius, images, band_rows, slice(a, b), self.images_per_read())
                for y0, band_mean, covariance in bands:
                    y1, keep = y0 + len(band_mean), slice(x0 - a, x1 - a)
                    mean[:, y0:y1, x0:x1] = band_mean[:, keep].permute(2, 0, 1).float()
                    regularised = covariance[:, keep] + self.gaussian.epsilon * identity.to(covariance.device)
                    cov_inv[y0:y1, x0:x1] = spd_inverse(regularised).float()
                    bar.update()
        self.gaussian.mean, self.gaussian.cov_inv = mean, cov_inv.view(height * width, channels, channels)

    def sample_vectors(self, features: Embeddings | torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
        """At most `centroid_vectors` patch vectors [M, d] of the chosen images, drawn at random (seeded)."""
        features = as_embeddings(features)
        chosen = torch.arange(len(features)) if images is None else images.cpu()
        positions = features.shape[2] * features.shape[3]
        total = len(chosen) * positions
        generator = torch.Generator().manual_seed(self.seed)
        picks = torch.randperm(total, generator=generator)[: self.centroid_vectors].sort().values
        return features.gather((chosen[picks // positions] * positions + picks % positions).numpy())

    def set_centroids(self, centroids: torch.Tensor) -> None:
        """Install centroids [K, d] (CPU, float32) and their exact faiss index (empty: the term is off)."""
        self.centroids = centroids.detach().to("cpu", torch.float32).contiguous()
        self._index = None
        if len(self.centroids):
            self._index = faiss.IndexFlatL2(self.centroids.shape[1])
            self._index.add(self.centroids.numpy())

    # --- scoring --------------------------------------------------------------------------------
    def mahalanobis(self, features: torch.Tensor, neighbourhood: str | None = None) -> torch.Tensor:
        """Mahalanobis scores [B, h, w]: to each position's own pooled Gaussian, or ("min") the minimum
        over the Gaussians of every in-bounds position within the radius (`neighbourhood_minimum`).
        `neighbourhood`: "pooled" or "min" instead of `test_neighbourhood`."""
        if (neighbourhood or self.test_neighbourhood) == "pooled" or self.radius == 0:
            return self.gaussian.patch_scores(features)
        self.gaussian.check_fitted_grid(features)
        return neighbourhood_minimum(features, self.gaussian.mean, self.gaussian.cov_inv, self.radius)

    def centroid_distances(self, features: torch.Tensor) -> torch.Tensor:
        """Euclidean distance [B, h, w] of every patch vector to its nearest centroid."""
        if self._index is None:
            raise RuntimeError("N-pad has no centroids (n_centroids=0 or not fitted).")
        batch, channels, height, width = features.shape
        queries = features.detach().permute(0, 2, 3, 1).reshape(-1, channels).to("cpu", torch.float32).contiguous()
        _, nearest = self._index.search(queries.numpy(), 1)
        distances = (queries - self.centroids[torch.from_numpy(nearest[:, 0]).long()]).norm(dim=1)
        return distances.view(batch, height, width).to(features.device, features.dtype)

    def term_scores(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The raw Mahalanobis map and the centroid-distance map (None without centroid term)."""
        gauss = self.mahalanobis(features)
        return gauss, (self.centroid_distances(features) if self.n_centroids > 0 else None)

    def patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        return self.fused(*self.term_scores(features))

    def fused(self, gauss: torch.Tensor, centroid: torch.Tensor | None) -> torch.Tensor:
        """The patch scores from the two raw terms: standardised and fused (the raw Mahalanobis map alone
        without the centroid term)."""
        if centroid is None:
            return gauss
        stats = self.score_stats.to(gauss.device, gauss.dtype)
        return fuse((gauss - stats[0, 0]) / stats[0, 1], (centroid - stats[1, 0]) / stats[1, 1],
                    self.fusion, self.centroid_weight)

    # --- persistence ----------------------------------------------------------------------------
    def options(self) -> dict:
        return {
            **self.gaussian.options(), "radius": self.radius, "test_neighbourhood": self.test_neighbourhood,
            "n_centroids": self.n_centroids, "centroid_vectors": self.centroid_vectors, "fusion": self.fusion,
            "centroid_weight": self.centroid_weight, "holdout": self.holdout,
        }

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**self.gaussian.state_tensors(), "centroids": self.centroids.contiguous(),
                "score_stats": self.score_stats.contiguous()}

    @classmethod
    def from_state(cls, backbone: Backbone, config: dict, tensors: dict[str, torch.Tensor]) -> "NPad":
        """Rebuild a fitted N-pad from `config()` (options and sigma) and `state_tensors()`."""
        detector = cls(backbone, **config)
        gaussian_tensors = {name: tensors[name] for name in ("channel_index", "mean", "cov_inv")}
        detector.gaussian = PaDiM.from_state(backbone, detector.gaussian.config(), gaussian_tensors)
        detector.set_centroids(tensors["centroids"])
        detector.score_stats = tensors["score_stats"].float().clone()
        return detector


def fit_sharing_gaussians(detectors: list[NPad], features: Embeddings | torch.Tensor) -> None:
    """Fit N-pad detectors that differ only in their centroid term, test neighbourhood or fusion on the same
    features [N, d, h, w] (an `Embeddings` or a tensor), as each `fit_features` would, but with the pooled
    Gaussians fitted once for all: on the held-out split's fit images (when a detector has centroids),
    scored on the held-out images (a chunk of them at a time) once per test neighbourhood, then on all
    images, installed in every detector (one shared `gaussian`, fitted anew: refitting a detector alone
    later leaves the others' untouched). Per detector only its standardisation is computed, and k-means
    once per centroid setting."""
    first = detectors[0]
    if any(detector.gaussian_options() != first.gaussian_options() for detector in detectors):
        raise ValueError("detectors fitted together must share their Gaussians' options")
    features = as_embeddings(features)
    if features.shape[1] != first.gaussian.n_features:
        raise ValueError(f"expected {first.gaussian.n_features} channels, got {features.shape[1]}")
    first.gaussian = PaDiM(first.backbone, **first.gaussian.config())  # not one an earlier joint fit shares
    kmeans: dict[tuple, torch.Tensor] = {}

    def install_centroids(detector: NPad, images: torch.Tensor | None) -> None:
        key = (detector.n_centroids, detector.centroid_vectors, images is None)
        if key not in kmeans:
            kmeans[key] = kmeans_centroids(detector.sample_vectors(features, images), detector.n_centroids,
                                           detector.seed)
        detector.set_centroids(kmeans[key])

    standardised = [detector for detector in detectors if detector.n_centroids > 0]
    if standardised:
        fit, held_out = holdout_split(len(features), first.holdout, first.seed)
        first.fit_gaussians(features, fit, "npad: held-out fit")
        for detector in standardised:
            install_centroids(detector, fit)
        rules = sorted({detector.test_neighbourhood for detector in standardised})
        gauss: dict[str, list[torch.Tensor]] = {rule: [] for rule in rules}
        centroid: list[list[torch.Tensor]] = [[] for _ in standardised]
        for held in features.subset(held_out).chunks():
            for rule in rules:
                gauss[rule].append(first.mahalanobis(held, rule))
            for maps, detector in zip(centroid, standardised):
                maps.append(detector.centroid_distances(held))
        for maps, detector in zip(centroid, standardised):
            detector.score_stats = standardisation(torch.cat(gauss[detector.test_neighbourhood]), torch.cat(maps))
    first.fit_gaussians(features, None, "npad: Gaussians")
    for detector in detectors:
        detector.gaussian = first.gaussian
        if detector.n_centroids > 0:
            install_centroids(detector, None)
