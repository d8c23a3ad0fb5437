"""N-pad (reconstructed): pooled moments against brute force, PaDiM at radius 0, centroids, fusion, persistence,
and fitting from stored or chunked embeddings."""

import json

import pytest
import torch

from protoad_lib.backbones import load_backbone
from protoad_lib.checkpoint import read_checkpoint, save_detector
from protoad_lib.data import AnomalyDataset
from protoad_lib.embeddings import CHUNK_IMAGES, StoredEmbeddings, TensorEmbeddings, write_embeddings
from protoad_lib.methods import PaDiM
from protoad_lib.methods.components import holdout_split
from protoad_lib.methods.npad import (BLOCK_BYTES, NPad, fit_sharing_gaussians, fuse, kmeans_centroids,
                                      neighbourhood_minimum)
from protoad_lib.methods.npad_pooling import column_windows, pooled_moments, row_windows, spd_inverse, window_sum


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return load_backbone("resnet18", weights="random")


def random_features(count: int, channels: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Features with a position-dependent mean and channel correlations, like a real embedding."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(channels, channels, generator=generator)
    noise = torch.einsum("ij,njhw->nihw", mixing, torch.randn(count, channels, height, width, generator=generator))
    return noise + 3 * torch.randn(1, channels, height, width, generator=generator)


def detector(backbone, **options) -> NPad:
    npad = NPad(backbone, n_features=6, **options)
    npad.progress = False
    return npad


# --- pooled Gaussians ----------------------------------------------------------------------------


def brute_force_moments(features: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [h, w, d] and unbiased covariance [h, w, d, d] of every in-bounds neighbour of every image, by loops."""
    _, channels, height, width = features.shape
    means = torch.zeros(height, width, channels, dtype=torch.float64)
    covariances = torch.zeros(height, width, channels, channels, dtype=torch.float64)
    for y in range(height):
        for x in range(width):
            pooled = [features[:, :, y + dy, x + dx] for dy in range(-radius, radius + 1)
                      for dx in range(-radius, radius + 1) if 0 <= y + dy < height and 0 <= x + dx < width]
            vectors = torch.cat(pooled).double()
            means[y, x] = vectors.mean(dim=0)
            covariances[y, x] = torch.cov(vectors.T)
    return means, covariances


def collect(features: torch.Tensor, radius: int, images=None, band_rows=None) -> tuple[torch.Tensor, torch.Tensor]:
    bands = list(pooled_moments(features, radius, images, band_rows))
    starts = [y0 for y0, _, _ in bands]
    assert starts == list(range(0, features.shape[2], band_rows or features.shape[2]))
    return torch.cat([mean for _, mean, _ in bands]), torch.cat([cov for _, _, cov in bands])


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_pooled_moments_equal_brute_force_over_neighbours(radius):
    features = random_features(3, 4, 5, 6, seed=0)
    expected_means, expected_covariances = brute_force_moments(features, radius)
    for band_rows in (None, 1, 2):  # bands of rows (with their halo) do not change anything
        means, covariances = collect(features, radius, band_rows=band_rows)
        torch.testing.assert_close(means, expected_means, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(covariances, expected_covariances, rtol=1e-5, atol=1e-5)
    # A subset of the images is the same as pooling that subset.
    subset = torch.tensor([0, 2])
    for ours, expected in zip(collect(features, radius, subset, 2), brute_force_moments(features[subset], radius)):
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_window_sum_and_column_windows():
    values = torch.arange(5.0)
    assert window_sum(values, 1, 0).tolist() == [1, 3, 6, 9, 7]
    assert window_sum(values, 9, 0).tolist() == [10] * 5
    assert torch.equal(window_sum(values, 0, 0), values)
    assert column_windows(7, 1, 3) == [(0, 3, 0, 4), (3, 6, 2, 7), (6, 7, 5, 7)]
    assert column_windows(7, 2, 100) == [(0, 7, 0, 7)]


@pytest.mark.parametrize("radius", [0, 1, 2, 4])
def test_a_band_sums_its_rows_with_the_window_sum_s_bits(radius):
    """`row_windows` (each output row sums its own rows, as a band needs) adds in `window_sum`'s order, so the
    pooled moments are bit for bit those of a window sum over every kept row."""
    values = torch.randn(7, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(radius)) * 1e6
    kept = {row: (values[row], values[row] * 3) for row in range(7)}
    for outputs in (range(0, 7), range(2, 3), range(5, 7)):
        expected = window_sum(values, radius, 0)[outputs.start : outputs.stop]
        assert torch.equal(row_windows(kept, outputs, radius, 7, 0), expected)


def test_radius_zero_without_centroids_is_padim(backbone):
    train = random_features(8, 6, 4, 5, seed=1)
    test = random_features(3, 6, 4, 5, seed=2) * 1.3
    padim = PaDiM(backbone, n_features=6).fit_features(train)
    npad = detector(backbone, radius=0, n_centroids=0).fit_features(train)
    assert torch.equal(npad.gaussian.channel_index, padim.channel_index)
    torch.testing.assert_close(npad.gaussian.mean, padim.mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(npad.patch_scores(test), padim.patch_scores(test), rtol=1e-4, atol=1e-5)
    with torch.inference_mode():
        maps, scores = npad.maps_and_scores(npad.patch_scores(test), (32, 40))
        padim_maps, padim_scores = padim.maps_and_scores(padim.patch_scores(test), (32, 40))
    torch.testing.assert_close(maps, padim_maps, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scores, padim_scores, rtol=1e-4, atol=1e-5)
    # Same default channel subset as PaDiM on the real embedding.
    assert torch.equal(NPad(backbone).gaussian.channel_index, PaDiM(backbone).channel_index)


def test_column_windows_do_not_change_the_fit(backbone):
    train = random_features(4, 6, 5, 7, seed=3)
    whole = detector(backbone, radius=1, n_centroids=0).fit_features(train)
    windowed = detector(backbone, radius=1, n_centroids=0, chunk_size=6).fit_features(train)  # 2 columns, 1 row a block
    assert windowed.block_positions() == 6 and whole.block_positions() > 35
    torch.testing.assert_close(windowed.gaussian.mean, whole.gaussian.mean)
    torch.testing.assert_close(windowed.gaussian.cov_inv, whole.gaussian.cov_inv, rtol=1e-5, atol=1e-6)


def test_min_neighbourhood(backbone):
    train = random_features(6, 6, 5, 5, seed=4)
    test = random_features(2, 6, 5, 5, seed=5)
    pooled0 = detector(backbone, radius=0, n_centroids=0, test_neighbourhood="pooled").fit_features(train)
    min0 = detector(backbone, radius=0, n_centroids=0, test_neighbourhood="min").fit_features(train)
    assert torch.equal(min0.patch_scores(test), pooled0.patch_scores(test))

    pooled = detector(backbone, radius=1, n_centroids=0, test_neighbourhood="pooled").fit_features(train)
    lowest = detector(backbone, radius=1, n_centroids=0, test_neighbourhood="min").fit_features(train)
    own, best = pooled.patch_scores(test), lowest.patch_scores(test)
    assert (best <= own).all() and (best < own).any()
    # Brute force at one interior and one corner position.
    for y, x in ((2, 2), (0, 4)):
        candidates = []
        for qy in range(max(0, y - 1), min(5, y + 2)):
            for qx in range(max(0, x - 1), min(5, x + 2)):
                difference = test[:, :, y, x] - pooled.gaussian.mean[:, qy, qx]
                inverse = pooled.gaussian.cov_inv[qy * 5 + qx]
                candidates.append(((difference @ inverse) * difference).sum(dim=1).sqrt())
        torch.testing.assert_close(best[:, y, x], torch.stack(candidates).min(dim=0).values, rtol=1e-4, atol=1e-5)



@pytest.mark.parametrize("block_bytes", [1, 10_000, 2**26])
def test_neighbourhood_minimum_is_the_brute_force_minimum_everywhere(block_bytes):
    """Every position of a non-square grid, radius 2, blocks of one Gaussian to all of them: the minimum over the
    in-bounds Gaussians within the radius of the Mahalanobis distance, computed one pair at a time in float64."""
    generator = torch.Generator().manual_seed(7)
    batch, channels, height, width, radius = 3, 4, 5, 7, 2
    features = torch.randn(batch, channels, height, width, generator=generator)
    mean = torch.randn(channels, height, width, generator=generator)
    factors = torch.randn(height * width, channels, channels, generator=generator)
    cov_inv = factors @ factors.transpose(1, 2) + torch.eye(channels)
    best = neighbourhood_minimum(features, mean, cov_inv, radius, block_bytes)
    expected = torch.empty(batch, height, width, dtype=torch.float64)
    for y in range(height):
        for x in range(width):
            candidates = []
            for qy in range(max(0, y - radius), min(height, y + radius + 1)):
                for qx in range(max(0, x - radius), min(width, x + radius + 1)):
                    difference = (features[:, :, y, x] - mean[:, qy, qx]).double()
                    candidates.append(((difference @ cov_inv[qy * width + qx].double()) * difference).sum(1).sqrt())
            expected[:, y, x] = torch.stack(candidates).min(dim=0).values
    torch.testing.assert_close(best.double(), expected, rtol=1e-5, atol=1e-5)

# --- fitting from embeddings read in pieces ------------------------------------------------------


class FewAtATime(TensorEmbeddings):
    """In-memory embeddings that refuse a read of more than `CHUNK_IMAGES` images, or a window of the grid
    (not the whole grid) larger than `window_limit` positions; the reads are recorded (images, positions)."""

    def __init__(self, tensor: torch.Tensor, window_limit: int) -> None:
        super().__init__(tensor)
        self.window_limit, self.reads = window_limit, []

    def _read(self, images, rows, cols):
        part = super()._read(images, rows, cols)
        positions = part.shape[2] * part.shape[3]
        self.reads.append((len(images), positions))
        whole_grid = positions == self.shape[2] * self.shape[3]
        if len(images) > CHUNK_IMAGES or (not whole_grid and positions > self.window_limit):
            raise AssertionError(f"read {len(images)} images x {positions} positions at once")
        return part


def assert_same_state(ours: NPad, expected: NPad) -> None:
    theirs = expected.state_tensors()
    for name, tensor in ours.state_tensors().items():
        torch.testing.assert_close(tensor, theirs[name], rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("options", [{"radius": 1, "n_centroids": 4}, {"radius": 2, "n_centroids": 3, "chunk_size": 10,
                                                                       "test_neighbourhood": "pooled"}])
def test_a_stored_fit_equals_the_in_memory_fit(backbone, options, tmp_path):
    train = random_features(13, 6, 5, 6, seed=20)
    path = write_embeddings(tmp_path / "train.safetensors", train.split(4), len(train))
    in_memory = detector(backbone, centroid_vectors=200, **options).fit_features(train)
    stored = detector(backbone, centroid_vectors=200, **options).fit_features(StoredEmbeddings(path))
    assert_same_state(stored, in_memory)
    assert (stored.score_stats[:, 1] > 0).all()


def test_a_source_read_a_few_images_and_a_window_at_a_time_still_fits(backbone):
    train = random_features(20, 6, 6, 7, seed=21)  # 20 images: a read of all of them is refused
    options = dict(radius=1, n_centroids=4, centroid_vectors=150, chunk_size=9)
    source = FewAtATime(train, window_limit=9 + 2 * 3)  # max(P, 2r+1) + 2r(2r+1) positions
    chunked = detector(backbone, **options).fit_features(source)
    assert_same_state(chunked, detector(backbone, **options).fit_features(train))
    windows = [positions for _, positions in source.reads if positions < 6 * 7]
    assert windows and max(windows) <= 15  # the pooling read windows of the grid, never the whole grid
    assert max(count for count, _ in source.reads) <= CHUNK_IMAGES


def test_fit_embeddings_reads_the_channel_subset_through_the_view(backbone):
    embedding = random_features(10, sum(backbone.channels), 4, 5, seed=22)
    npad = detector(backbone, radius=1, n_centroids=3, centroid_vectors=80, chunk_size=8)
    view = npad.method_view(FewAtATime(embedding, window_limit=8 + 2 * 3))
    torch.testing.assert_close(view.read([3, 1], rows=slice(1, 3), cols=slice(2, 4)),
                               npad.features_from_embedding(embedding)[[3, 1], :, 1:3, 2:4])
    npad.fit_embeddings(view.parent)
    expected = detector(backbone, radius=1, n_centroids=3, centroid_vectors=80, chunk_size=8)
    assert_same_state(npad, expected.fit_features(npad.features_from_embedding(embedding)))


def test_block_budget_does_not_depend_on_the_number_of_images(backbone):
    for channels in (6, 100):
        npad = NPad(backbone, n_features=channels)
        assert npad.images_per_read() == max(CHUNK_IMAGES, channels)
        assert npad.block_positions() == BLOCK_BYTES // (8 * channels * max(CHUNK_IMAGES, channels))


# --- centroids and fusion ------------------------------------------------------------------------


def test_centroid_score_is_the_nearest_centroid_distance(backbone):
    train = random_features(5, 6, 4, 4, seed=6)
    test = random_features(2, 6, 4, 4, seed=7)
    npad = detector(backbone, radius=0, n_centroids=7, centroid_vectors=50).fit_features(train)
    assert npad.centroids.shape == (7, 6)
    queries = test.permute(0, 2, 3, 1).reshape(-1, 6).double()
    expected = torch.cdist(queries, npad.centroids.double()).min(dim=1).values.view(2, 4, 4).float()
    torch.testing.assert_close(npad.centroid_distances(test), expected, rtol=1e-5, atol=1e-5)
    again = detector(backbone, radius=0, n_centroids=7, centroid_vectors=50).fit_features(train)
    assert torch.equal(again.centroids, npad.centroids)  # seeded subsample and k-means
    assert npad.sample_vectors(train, None).shape == (50, 6)
    assert detector(backbone, n_centroids=500).fit_features(train).centroids.shape == (80, 6)  # K <= vectors


def test_holdout_split_is_seeded_disjoint_and_never_empty():
    fit, held = holdout_split(10, 0.2, seed=3)
    assert len(held) == 2 and len(fit) == 8 and not set(fit.tolist()) & set(held.tolist())
    assert torch.equal(holdout_split(10, 0.2, seed=3)[1], held)
    assert not all(torch.equal(holdout_split(10, 0.2, seed=s)[1], held) for s in range(4, 8))
    assert len(holdout_split(3, 0.01, seed=0)[1]) == 1 and len(holdout_split(4, 0.9, seed=0)[0]) == 2
    assert all(torch.equal(part, torch.arange(2)) for part in holdout_split(2, 0.2, seed=0))


def test_standardisation_comes_from_the_held_out_images(backbone):
    train = random_features(6, 6, 4, 4, seed=8)
    npad = detector(backbone, radius=1, n_centroids=4, centroid_vectors=60).fit_features(train)
    fit, held = holdout_split(6, npad.holdout, npad.seed)
    reference = detector(backbone, radius=1, n_centroids=4, centroid_vectors=60)
    reference.fit_gaussians(train, fit, "")
    reference.set_centroids(kmeans_centroids(reference.sample_vectors(train, fit), 4, reference.seed))
    gauss, centroid = reference.term_scores(train[held])
    expected = torch.tensor([[gauss.mean(), gauss.std(unbiased=False)], [centroid.mean(), centroid.std(unbiased=False)]])
    torch.testing.assert_close(npad.score_stats, expected)
    # The final terms are refitted on every image: the k-means differs from the held-out fit's.
    assert not torch.equal(npad.centroids, reference.centroids)
    test = random_features(2, 6, 4, 4, seed=9)
    raw_gauss, raw_centroid = npad.term_scores(test)
    z_gauss = (raw_gauss - expected[0, 0]) / expected[0, 1]
    z_centroid = (raw_centroid - expected[1, 0]) / expected[1, 1]
    torch.testing.assert_close(npad.patch_scores(test), z_gauss + z_centroid)


def test_fitting_together_equals_fitting_each_alone(backbone):
    train, test = random_features(8, 6, 5, 5, seed=10), random_features(3, 6, 5, 5, seed=11)
    variants = [dict(n_centroids=0), dict(n_centroids=4), dict(n_centroids=3, test_neighbourhood="pooled"),
                dict(n_centroids=4, fusion="max"), dict(n_centroids=4, fusion="weighted", centroid_weight=0.3)]
    together = [detector(backbone, radius=1, centroid_vectors=100, **options) for options in variants]
    fit_sharing_gaussians(together, train)
    assert all(npad.gaussian is together[0].gaussian for npad in together)  # one copy of the Gaussians
    for options, shared in zip(variants, together):
        alone = detector(backbone, radius=1, centroid_vectors=100, **options).fit_features(train)
        torch.testing.assert_close(shared.score_stats, alone.score_stats)
        torch.testing.assert_close(shared.centroids, alone.centroids)
        torch.testing.assert_close(shared.patch_scores(test), alone.patch_scores(test))
    with pytest.raises(ValueError, match="share their Gaussians"):
        fit_sharing_gaussians([detector(backbone, radius=1), detector(backbone, radius=2)], train)


def test_fusion_rules():
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(2, 3, 4, generator=generator), torch.randn(2, 3, 4, generator=generator)
    assert torch.equal(fuse(first, second, "sum", 0.5), first + second)
    highest = fuse(first, second, "max", 0.5)
    assert (highest >= first).all() and (highest >= second).all() and torch.equal(highest, torch.maximum(first, second))
    torch.testing.assert_close(fuse(first, second, "weighted", 0.3), 0.7 * first + 0.3 * second)
    with pytest.raises(ValueError):
        fuse(first, second, "mean", 0.5)


# --- persistence and end to end ------------------------------------------------------------------


@pytest.mark.parametrize("options", [{"n_centroids": 5, "fusion": "max", "test_neighbourhood": "min"},
                                     {"n_centroids": 0, "radius": 2, "test_neighbourhood": "pooled"}])
def test_from_state_reproduces_maps_exactly(backbone, options, tmp_path):
    train, test = random_features(5, 6, 4, 4, seed=10), random_features(2, 6, 4, 4, seed=11)
    npad = detector(backbone, centroid_vectors=40, **options).fit_features(train)
    config = json.loads(json.dumps(npad.config()))
    assert config == npad.config() and config["n_features"] == 6
    _, tensors = read_checkpoint(save_detector(npad, tmp_path / "npad.safetensors"))
    assert tensors["centroids"].shape == (options["n_centroids"], 6)
    restored = NPad.from_state(backbone, config, tensors)
    assert restored.config() == npad.config()
    assert torch.equal(restored.patch_scores(test), npad.patch_scores(test))
    with torch.inference_mode():
        assert torch.equal(restored.maps_and_scores(restored.patch_scores(test), (16, 16))[0],
                           npad.maps_and_scores(npad.patch_scores(test), (16, 16))[0])


def test_default_options(backbone):
    assert NPad(backbone).options() == {
        "n_features": 100, "seed": 1024, "epsilon": 0.01, "chunk_size": None, "radius": 2, "test_neighbourhood": "min",
        "n_centroids": 64, "centroid_vectors": 100_000, "fusion": "sum", "centroid_weight": 0.5, "holdout": 0.2,
    }


def test_invalid_options_are_refused(backbone):
    for options in ({"fusion": "mean"}, {"test_neighbourhood": "all"}, {"radius": -1}, {"holdout": 1.0}):
        with pytest.raises(ValueError):
            NPad(backbone, **options)
    with pytest.raises(ValueError, match="at least 2"):
        detector(backbone, radius=0, n_centroids=0).fit_features(random_features(1, 6, 3, 3, seed=0))


def test_end_to_end_on_the_tiny_benchmark(tiny_benchmark, random_lite0):
    train = AnomalyDataset(tiny_benchmark, "weave", "train", resize=96, crop=96)
    test = AnomalyDataset(tiny_benchmark, "weave", "test", resize=96, crop=96)
    npad = NPad(random_lite0, n_centroids=8)
    npad.progress = False
    npad.fit(train, batch_size=4, progress=False)
    assert npad.gaussian.mean.shape == (npad.gaussian.n_features, 24, 24)
    assert npad.gaussian.cov_inv.shape == (24 * 24, npad.gaussian.n_features, npad.gaussian.n_features)
    predictions = npad.predict(test, batch_size=4, progress=False)
    assert predictions.maps.shape == (len(test), 96, 96) and predictions.scores.shape == (len(test),)
    assert torch.isfinite(predictions.maps).all() and torch.isfinite(predictions.scores).all()
    assert (npad.score_stats[:, 1] > 0).all()


def test_spd_inverse_equals_the_lu_inverse():
    generator = torch.Generator().manual_seed(12)
    factors = torch.randn(7, 5, 9, generator=generator, dtype=torch.float64)
    matrices = factors @ factors.transpose(1, 2) + 0.01 * torch.eye(5, dtype=torch.float64)
    torch.testing.assert_close(spd_inverse(matrices), torch.linalg.inv(matrices), rtol=1e-9, atol=1e-9)


def test_min_neighbourhood_refuses_features_of_another_grid(backbone):
    """The "min" neighbourhood checks the grid as PaDiM's own scoring does (it no longer goes through it)."""
    fitted = detector(backbone, radius=1, n_centroids=0, test_neighbourhood="min")
    fitted.fit_features(random_features(4, 6, 5, 5, seed=1))
    with pytest.raises(ValueError, match="do not match the fitted grid"):
        fitted.mahalanobis(random_features(1, 6, 5, 4, seed=2))
