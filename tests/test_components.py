"""The shared numerics (`methods/components`) give exactly what each caller computed with its own copy before.

The reference functions below are the callers' former implementations, copied verbatim."""

import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from protoad_lib.methods.components import holdout_split, kmeans, nearest_cosine


# --------------------------------------------------------------------------- the former copies


def old_npad_kmeans_centroids(vectors: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    k = min(k, vectors.shape[0])
    kmeans = faiss.Kmeans(vectors.shape[1], k, niter=25, seed=int(seed), verbose=False,
                          min_points_per_centroid=1, max_points_per_centroid=max(1, vectors.shape[0]))
    kmeans.train(vectors.to("cpu", torch.float32).contiguous().numpy())
    return torch.from_numpy(kmeans.centroids).clone()


def old_prn_kmeans(vectors: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    k = max(1, min(k, len(vectors)))
    clustering = faiss.Kmeans(vectors.shape[1], k, niter=25, seed=int(seed), verbose=False,
                              min_points_per_centroid=1, max_points_per_centroid=max(1, len(vectors)))
    clustering.train(vectors.detach().to("cpu", torch.float32).contiguous().numpy())
    return torch.from_numpy(clustering.centroids).clone()


def old_l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def old_kmeans_prototypes(vectors: np.ndarray, k: int, seed: int = 0, iterations: int = 25):
    kmeans = faiss.Kmeans(vectors.shape[1], k, niter=iterations, seed=seed, spherical=True, verbose=False,
                          min_points_per_centroid=1)
    kmeans.train(vectors)
    _, labels = kmeans.index.search(vectors, 1)
    return old_l2_normalise(kmeans.centroids), labels[:, 0]


def old_nearest_prototype_distance(features, prototypes, batch_size=4):
    units = F.normalize(prototypes.double(), dim=1)
    distances = []
    for chunk in features.split(batch_size):
        batch, channels, height, width = chunk.shape
        patches = F.normalize(chunk.permute(0, 2, 3, 1).reshape(-1, channels).double(), dim=1)
        distances.append((1.0 - (patches @ units.T).max(dim=1).values).view(batch, height, width).float())
    return torch.cat(distances)


def old_prototype_usage(features, prototypes, batch_size=8):
    units = F.normalize(prototypes, dim=1)
    counts = np.zeros(prototypes.shape[0], dtype=np.int64)
    for chunk in features.split(batch_size):
        patches = F.normalize(chunk.permute(0, 2, 3, 1).reshape(-1, chunk.shape[1]), dim=1)
        counts += np.bincount((patches @ units.T).argmax(dim=1).numpy(), minlength=prototypes.shape[0])
    return counts


def old_mean_distance(vectors: np.ndarray, prototypes: np.ndarray) -> float:
    units = torch.from_numpy(prototypes)
    best = [1.0 - (torch.from_numpy(vectors[i : i + 4096]) @ units.T).amax(dim=1)
            for i in range(0, len(vectors), 4096)]
    return float(torch.cat(best).double().mean())


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- k-means


@pytest.mark.parametrize("k, count", [(5, 200), (16, 1000), (40, 30)])
def test_npad_centroids_are_the_former_ones(k, count):
    from protoad_lib.methods.npad import kmeans_centroids

    vectors = torch.randn(count, 12, generator=generator(k))
    assert torch.equal(kmeans_centroids(vectors, k, 7), old_npad_kmeans_centroids(vectors, k, 7))


@pytest.mark.parametrize("k, count", [(0, 20), (3, 20), (30, 20)])
def test_prn_prototypes_are_the_former_ones(k, count):
    from protoad_lib.methods.prn import prototypes as prn

    vectors = torch.randn(count, 75, generator=generator(count + k))
    assert torch.equal(prn.kmeans(vectors, k, 2), old_prn_kmeans(vectors, k, 2))
    maps = torch.randn(count, 3, 5, 5, generator=generator(1))
    assert torch.equal(prn.image_prototypes(maps, k, 4), old_prn_kmeans(maps.flatten(1), k, 4).view(-1, 3, 5, 5))


@pytest.mark.parametrize("k, count", [(10, 6000), (20, 500)])  # 6000 > 256 * 10: faiss subsamples, as before
def test_spherical_prototypes_are_the_former_ones(k, count):
    from protoad_lib.methods.protoad.prototypes import kmeans_prototypes

    vectors = old_l2_normalise(torch.randn(count, 8, generator=generator(k)).numpy())
    centroids, labels = kmeans_prototypes(vectors, k, seed=3)
    old_centroids, old_labels = old_kmeans_prototypes(vectors, k, seed=3)
    assert np.array_equal(centroids, old_centroids) and np.array_equal(labels, old_labels)


def test_kmeans_takes_torch_or_numpy_and_clips_k():
    vectors = torch.randn(50, 6, generator=generator(0))
    assert np.array_equal(kmeans(vectors, 4, 1).centroids, kmeans(vectors.numpy(), 4, 1).centroids)
    assert kmeans(vectors, 500, 1).centroids.shape == (50, 6) and kmeans(vectors, 0, 1).centroids.shape == (1, 6)


# --------------------------------------------------------------------------- hold-out split


#: (count, fraction, seed) -> (fit, held-out) indices as the former N-pad split drew them (recorded).
FORMER_SPLITS = {
    (10, 0.2, 0): ([0, 2, 3, 5, 6, 7, 8, 9], [1, 4]),
    (7, 0.5, 3): ([0, 1, 2], [3, 4, 5, 6]),
    (2, 0.2, 0): ([0, 1], [0, 1]),
}


def test_holdout_split_is_the_former_one_for_npad_and_calibration():
    from protoad_lib.calibration import held_out_indices
    from protoad_lib.methods import npad

    assert npad.holdout_split is holdout_split  # N-pad and calibration share the component, not each other
    for (count, fraction, seed), (fit, held) in FORMER_SPLITS.items():
        assert [part.tolist() for part in holdout_split(count, fraction, seed)] == [fit, held]
    for count in (3, 4, 7, 20, 97):
        for fraction in (0.01, 0.2, 0.5, 0.9):
            for seed in (0, 1024):
                calibrated = held_out_indices(count, fraction, seed)
                if calibrated is not None:
                    assert all(torch.equal(a, b) for a, b in zip(calibrated, holdout_split(count, fraction, seed)))


def test_calibration_does_not_import_npad():
    import ast
    from pathlib import Path

    import protoad_lib.calibration as calibration

    tree = ast.parse(Path(calibration.__file__).read_text())
    assert not any(isinstance(node, ast.ImportFrom) and "npad" in (node.module or "") for node in ast.walk(tree))


# --------------------------------------------------------------------------- 1 - max cos


def test_nearest_prototype_distance_and_usage_are_the_former_ones():
    from protoad_lib.methods.protoad import nearest_prototype_distance, prototype_usage

    features = torch.randn(9, 12, 7, 6, generator=generator(0))
    prototypes = torch.randn(11, 12, generator=generator(1))
    tied = torch.cat([prototypes, prototypes[:4]])  # equal prototypes: the first one counts, as before
    for batch_size in (1, 4, 9):
        assert torch.equal(nearest_prototype_distance(features, prototypes, batch_size),
                           old_nearest_prototype_distance(features, prototypes, batch_size))
        assert np.array_equal(prototype_usage(features, tied, batch_size), old_prototype_usage(features, tied, batch_size))


def test_mean_distance_is_the_former_one():
    from protoad_lib.methods.protoad.level_choice import mean_distance

    vectors = old_l2_normalise(torch.randn(9000, 16, generator=generator(2)).numpy())
    prototypes = old_l2_normalise(torch.randn(30, 16, generator=generator(3)).numpy())
    assert mean_distance(vectors, prototypes) == old_mean_distance(vectors, prototypes)


def test_nearest_cosine_chunks_agree_up_to_rounding():
    units = F.normalize(torch.randn(1000, 8, generator=generator(4)), dim=1)
    prototypes = F.normalize(torch.randn(20, 8, generator=generator(5)), dim=1)
    whole = nearest_cosine(units, prototypes)
    for chunk in (1, 7, 4096):
        part = nearest_cosine(units, prototypes, chunk)
        torch.testing.assert_close(part[0], whole[0], atol=1e-6, rtol=0)
        assert torch.equal(part[1], whole[1])
    assert torch.equal(nearest_cosine(units, prototypes, 4096)[0], whole[0])  # one chunk: the very same product
    assert whole[0].dtype == torch.float32 and len(nearest_cosine(units[:0], prototypes)[0]) == 0
