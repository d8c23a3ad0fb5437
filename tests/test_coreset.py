"""The greedy k-center coreset sampler (methods/coreset.py): size, determinism, coverage."""

import math

import pytest
import torch

from protoad_lib.methods import GreedyCoresetSampler


def covering_radius(points: torch.Tensor, centres: torch.Tensor) -> float:
    return torch.cdist(points.double(), centres.double()).min(dim=1).values.max().item()


def test_coreset_size_uniqueness_and_determinism():
    features = torch.randn(500, 64, generator=torch.Generator().manual_seed(0))
    sampler = GreedyCoresetSampler(fraction=0.1, seed=3, progress=False)
    first = sampler.select(features)
    assert first.dtype == torch.long and first.shape == (50,)
    assert len(set(first.tolist())) == 50 and 0 <= first.min() and first.max() < 500
    assert torch.equal(first, GreedyCoresetSampler(fraction=0.1, seed=3, progress=False).select(features))
    assert not torch.equal(first, GreedyCoresetSampler(fraction=0.1, seed=4, progress=False).select(features))
    assert GreedyCoresetSampler(fraction=0.01, progress=False).select(features).shape == (5,)
    assert sampler.select(features, n_samples=7).shape == (7,)
    assert torch.equal(GreedyCoresetSampler(fraction=1.0).select(features), torch.arange(500))


def test_coreset_indices_stay_unique_with_duplicated_points():
    features = torch.randn(5, 8, generator=torch.Generator().manual_seed(0)).repeat(4, 1)
    chosen = GreedyCoresetSampler(fraction=0.5, progress=False).select(features)
    assert len(set(chosen.tolist())) == 10


def test_coreset_covers_every_well_separated_cluster():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 32, generator=generator) * 50
    labels = torch.arange(8).repeat_interleave(100)
    points = centres[labels] + torch.randn(800, 32, generator=generator)
    chosen = GreedyCoresetSampler(fraction=0.01, seed=0, progress=False).select(points)
    assert chosen.shape == (8,)
    assert sorted(labels[chosen].tolist()) == list(range(8))


def test_greedy_coreset_covers_much_better_than_a_random_subset():
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(2000, 2, generator=generator)
    chosen = GreedyCoresetSampler(fraction=0.025, projection_dim=None, seed=0, progress=False).select(points)
    random_subset = torch.randperm(2000, generator=generator)[: len(chosen)]
    greedy_radius = covering_radius(points, points[chosen])
    random_radius = covering_radius(points, points[random_subset])
    assert greedy_radius < 0.6 * random_radius


def test_selection_follows_the_algorithm_step_by_step():
    """The sampler picks, in order, what the three steps of its docstring give when written out directly in float64
    (same seeded projection and starting points, `torch.cdist` for every distance)."""
    features = torch.randn(500, 64, generator=torch.Generator().manual_seed(3))
    chosen = GreedyCoresetSampler(fraction=0.1, projection_dim=32, seed=5, progress=False).select(features)

    generator = torch.Generator().manual_seed(5)
    matrix = torch.randn(64, 32, generator=generator) / math.sqrt(32)
    points = (features @ matrix).double()
    starts = torch.randperm(500, generator=generator)[:10]
    distance = torch.cdist(points, points[starts]).mean(dim=1)
    expected = []
    for _ in range(50):
        index = int(torch.argmax(distance))
        expected.append(index)
        distance = torch.minimum(distance, torch.cdist(points, points[index : index + 1])[:, 0])
        distance[index] = -1.0
    assert chosen.tolist() == expected


def test_chunks_select_what_the_whole_matrix_selects_and_must_hold_the_rows_announced():
    features = torch.randn(300, 48, generator=torch.Generator().manual_seed(1))
    sampler = GreedyCoresetSampler(fraction=0.1, seed=2, progress=False)
    uneven = [features[:7], features[7:150], features[150:]]
    assert torch.equal(sampler.select_from_chunks(uneven, 300), sampler.select(features))
    with pytest.raises(ValueError, match="hold 299 rows, not the 300"):
        sampler.select_from_chunks([features[:299]], 300)
    with pytest.raises(ValueError, match="more than the 200 rows"):
        sampler.select_from_chunks(uneven, 200)
