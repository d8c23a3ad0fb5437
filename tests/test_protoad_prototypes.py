"""ProtoAD prototypes (methods/protoad/prototypes.py): FINCH hierarchy equals finch-clust's own, subsampling and
alternatives behave, and the recipe reads stored embeddings to the same numbers as a tensor."""

import os

import faiss
import numpy as np
import pytest
import torch
from finch.finch import FINCH

from protoad_lib.embeddings import StoredEmbeddings, TensorEmbeddings, write_embeddings
from protoad_lib.methods.protoad.prototypes import (
    build_prototypes, cluster_prototypes, finch_hierarchy, first_neighbours, l2_normalise, rerank_exactly,
    subsample_indices,
)


def blobs(n_per_blob: int, n_blobs: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_blobs, dim))
    points = np.concatenate([c + 0.3 * rng.normal(size=(n_per_blob, dim)) for c in centres])
    return l2_normalise(points.astype(np.float32))


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finch_hierarchy_equals_finch_clust(seed):
    vectors = blobs(60, 12, 16, seed)
    ours = finch_hierarchy(vectors, progress=False)
    labels, counts, _ = FINCH(vectors, initial_rank=first_neighbours(vectors, progress=False), distance="cosine",
                              ann_threshold=len(vectors) + 1, verbose=False)
    labels = labels.reshape(len(vectors), -1)
    assert ours.num_clusters == [int(k) for k in counts]
    for level in range(len(counts)):
        assert same_partition(ours.level_labels(level), labels[:, level])


def test_first_neighbours_are_the_most_similar_other_vector():
    vectors = blobs(20, 5, 8, 3)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    np.testing.assert_array_equal(first_neighbours(vectors, progress=False), similarity.argmax(axis=1))


def test_default_level_is_the_finest_within_the_prototype_budget():
    hierarchy = finch_hierarchy(blobs(40, 10, 16, 4), progress=False)
    level = hierarchy.default_level(max_prototypes=hierarchy.num_clusters[1])
    assert level == 1
    assert hierarchy.default_level(max_prototypes=0) == len(hierarchy.num_clusters) - 1


def test_prototypes_are_unit_cluster_means():
    vectors = blobs(10, 3, 4, 5)
    labels = np.repeat([2, 0, 1], 10)
    prototypes = cluster_prototypes(vectors, labels)
    expected = l2_normalise(vectors[labels == 0].mean(axis=0, keepdims=True))
    np.testing.assert_allclose(prototypes[0:1], expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(prototypes, axis=1), 1.0, atol=1e-6)


def test_stratified_subsampling_takes_the_same_number_from_every_image():
    chosen = subsample_indices(n_vectors=10 * 100, n_images=10, max_vectors=200, strategy="stratified", seed=0)
    assert len(chosen) == 200
    assert np.bincount(chosen // 100, minlength=10).tolist() == [20] * 10
    again = subsample_indices(n_vectors=1000, n_images=10, max_vectors=200, strategy="stratified", seed=0)
    np.testing.assert_array_equal(chosen, again)


@pytest.mark.parametrize("method", ["kmeans", "coreset", "random"])
def test_alternatives_give_exactly_k_unit_prototypes(method):
    features = torch.randn(4, 8, 6, 6, generator=torch.Generator().manual_seed(6))
    result = build_prototypes(features, method=method, k=17, progress=False)
    assert result.k == 17
    np.testing.assert_allclose(np.linalg.norm(result.prototypes, axis=1), 1.0, atol=1e-5)


def test_unknown_method_and_missing_k_are_clear_errors():
    features = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="needs k"):
        build_prototypes(features, method="kmeans")
    with pytest.raises(ValueError, match="Unknown prototype method"):
        build_prototypes(features, method="dbscan")


def test_hnsw_first_neighbours_agree_with_exact_search_on_clustered_data():
    vectors = blobs(100, 10, 16, 7)
    exact = first_neighbours(vectors, index="exact", progress=False)
    approximate = first_neighbours(vectors, index="hnsw", progress=False)
    assert (exact == approximate).mean() > 0.95
    with pytest.raises(ValueError, match="hnsw"):
        first_neighbours(vectors, index="ivf", progress=False)


def unit_rows(features: torch.Tensor) -> np.ndarray:
    """The whole [N*h*w, C] matrix of unit patch vectors, image-major (the in-memory reference)."""
    return torch.nn.functional.normalize(features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]), dim=1).numpy()


def stored(features: torch.Tensor, tmp_path) -> StoredEmbeddings:
    return StoredEmbeddings(write_embeddings(tmp_path / "train.safetensors", features.split(2), len(features)))


@pytest.mark.parametrize("subsampling", ["stratified", "random", "none"])
def test_training_vectors_gather_the_same_rows_as_the_full_flattening(subsampling, tmp_path):
    from protoad_lib.methods.protoad.prototypes import training_vectors

    features = torch.randn(5, 6, 4, 3, generator=torch.Generator().manual_seed(8))
    expected = unit_rows(features)[subsample_indices(60, 5, 25, subsampling, seed=3)]
    for source in (features, TensorEmbeddings(features), stored(features, tmp_path)):
        assert np.array_equal(training_vectors(source, 25, subsampling, seed=3), expected)


def test_coreset_subsampling_projects_chunk_by_chunk_and_picks_what_the_whole_matrix_gives(tmp_path):
    from protoad_lib.methods.coreset import GreedyCoresetSampler
    from protoad_lib.methods.protoad.prototypes import training_indices

    features = torch.randn(20, 8, 5, 4, generator=torch.Generator().manual_seed(9))
    whole = GreedyCoresetSampler(seed=4, progress=False).select(torch.from_numpy(unit_rows(features)), n_samples=70)
    expected = np.sort(whole.numpy())
    assert np.array_equal(training_indices(features, 70, "coreset", seed=4), expected)
    assert np.array_equal(training_indices(stored(features, tmp_path), 70, "coreset", seed=4), expected)


def test_unseen_indices_are_the_seeded_draw_from_the_set_difference():
    """The draw of positions among the unused indices, mapped back without listing them, is the draw from the
    list itself (what it was before)."""
    from protoad_lib.methods.protoad.level_choice import unseen_indices

    rng = np.random.default_rng(0)
    for n_vectors, n_used, count in [(7, 3, 100), (100, 30, 20), (400_000, 60_000, 20_000), (50, 50, 10), (50, 0, 10)]:
        used = np.sort(rng.choice(n_vectors, size=n_used, replace=False))
        unused = np.setdiff1d(np.arange(n_vectors), used)
        if len(unused) > count:
            unused = np.sort(np.random.default_rng(3 + 1).choice(unused, size=count, replace=False))
        assert np.array_equal(unseen_indices(n_vectors, used, 3, count), unused)


def test_level_choice_takes_the_coarsest_level_within_each_rule_of_held_out_distance():
    from protoad_lib.methods.protoad import ProtoADConfig
    from protoad_lib.methods.protoad.level_choice import choose_level, mean_distance
    from protoad_lib.methods.protoad.prototypes import (
        build_prototypes, cluster_prototypes, finch_hierarchy, held_out_vectors, training_indices, training_vectors,
    )

    features = torch.randn(4, 16, 10, 10, generator=torch.Generator().manual_seed(5))
    used = training_indices(features, 150, "stratified", seed=0)
    held_out = held_out_vectors(features, used, seed=0)
    assert len(held_out) == 400 - len(used)
    all_vectors = training_vectors(features, 10_000, "none")
    assert not (held_out[:, None, :] == all_vectors[used][None]).all(-1).any()  # none was clustered

    vectors = training_vectors(features, 150, "stratified", seed=0)
    hierarchy = finch_hierarchy(vectors, progress=False)
    distances = [mean_distance(held_out, cluster_prototypes(vectors, hierarchy.level_labels(level)))
                 for level in range(len(hierarchy.num_clusters))]
    bound = float((1 - (held_out @ vectors.T).max(axis=1).astype(np.float64)).mean())
    assert bound <= min(distances)  # every clustered vector a prototype: no level comes closer

    def coarsest_within(limit):
        within = [lv for lv, d in enumerate(distances) if d <= limit]
        return max((lv for lv in within if all(l2 in within for l2 in range(lv + 1))), default=0)

    for margin in (0.0, 0.05, 0.3, 10.0):
        chosen = choose_level(hierarchy, vectors, held_out, 0, ProtoADConfig(level_rule="margin", level_margin=margin))
        assert chosen.level == coarsest_within(distances[0] * (1 + margin)) and chosen.bound is None
        assert chosen.distances[chosen.level] == pytest.approx(distances[chosen.level])
    levels = set()
    for ratio in (1.0, 1.2, 1.5, 2.0, 50.0):
        chosen = choose_level(hierarchy, vectors, held_out, 0, ProtoADConfig(level_rule="bound", bound_ratio=ratio))
        assert chosen.bound == pytest.approx(bound) and chosen.limit == pytest.approx(ratio * bound)
        assert chosen.level == coarsest_within(ratio * bound)
        levels.add(chosen.level)
    assert len(levels) >= 2  # the ratios above move the level
    assert choose_level(hierarchy, vectors, held_out, 1, ProtoADConfig(level_rule="budget")).level == 1
    fitted = build_prototypes(features, max_vectors=150, level_rule="bound", bound_ratio=50.0, progress=False)
    assert fitted.level == len(hierarchy.num_clusters) - 1
    assert fitted.info["every_vector_distance"] == pytest.approx(bound) and fitted.info["held_out_distance"]
    assert choose_level(hierarchy, vectors, held_out[:0], 1, ProtoADConfig()).level == 1
    with pytest.raises(ValueError, match="level rule"):
        ProtoADConfig(level_rule="fastest")


def test_prototype_inputs_are_what_the_fit_clustered_and_the_level_rule_measured():
    """The one recipe (`prototype_inputs`) gives the subsample, hierarchy and held-out vectors that the steps
    spelled out by hand give (as `ablations` and `level_rule` did before), and `build_prototypes` uses it."""
    from dataclasses import replace

    from protoad_lib.methods.protoad import ProtoADConfig
    from protoad_lib.methods.protoad.level_choice import choose_level
    from protoad_lib.methods.protoad.prototypes import (
        gather_vectors, held_out_vectors, prototype_inputs, training_indices,
    )

    features = torch.randn(5, 16, 9, 9, generator=torch.Generator().manual_seed(2))
    config = ProtoADConfig(max_vectors=200, seed=3)
    inputs = prototype_inputs(features, config, progress=False)
    used = training_indices(features, 200, "stratified", seed=3)
    vectors = gather_vectors(features, used)
    assert np.array_equal(inputs.used, used) and np.array_equal(inputs.vectors, vectors)
    assert np.array_equal(inputs.held_out, held_out_vectors(features, used, 3))
    hierarchy = finch_hierarchy(vectors, progress=False)
    assert np.array_equal(inputs.hierarchy.labels, hierarchy.labels)
    assert inputs.hierarchy.num_clusters == hierarchy.num_clusters
    finest = hierarchy.default_level(config.max_prototypes)
    for rule in ({"level_rule": "budget"}, {"level_rule": "margin", "level_margin": 0.0},
                 {"level_rule": "margin", "level_margin": 10.0}, {"level_rule": "bound", "bound_ratio": 1.5},
                 {"level_rule": "bound", "bound_ratio": 3.0}):
        ruled = replace(config, **rule)
        expected = choose_level(hierarchy, vectors, inputs.held_out, finest, ruled).level
        assert inputs.level_for(ruled).level == expected
    assert inputs.level_for(replace(config, level=0)).level == 0
    fitted = build_prototypes(features, max_vectors=200, seed=3, level_rule="bound", progress=False)
    choice = inputs.level_for(config)
    assert fitted.level == choice.level and fitted.info["held_out_distance"] == choice.distances
    assert fitted.info["every_vector_distance"] == choice.bound
    assert np.array_equal(fitted.prototypes, cluster_prototypes(vectors, hierarchy.level_labels(choice.level)))
    reused = prototype_inputs(features, config, fitted.hierarchy, held_out=False)
    assert reused.hierarchy is fitted.hierarchy and reused.held_out is None
    assert prototype_inputs(features, replace(config, method="kmeans", k=4)).hierarchy is None


@pytest.mark.parametrize("subsampling", ["stratified", "random", "coreset"])
def test_the_recipe_reads_stored_embeddings_to_the_same_numbers_as_the_whole_tensor(subsampling, tmp_path):
    """Subsample, held-out vectors (gathered in the same pass), hierarchy and prototypes are identical whether
    the features are a tensor, wrapped, or a file; the vectors are the rows of the whole unit matrix."""
    from protoad_lib.methods.protoad import ProtoADConfig
    from protoad_lib.methods.protoad.level_choice import unseen_indices
    from protoad_lib.methods.protoad.prototypes import prototype_inputs

    features = torch.randn(6, 16, 9, 9, generator=torch.Generator().manual_seed(1))
    config = ProtoADConfig(max_vectors=200, seed=3, subsampling=subsampling)
    reference = prototype_inputs(features, config, progress=False)
    rows = unit_rows(features)
    assert np.array_equal(reference.vectors, rows[reference.used])
    assert np.array_equal(reference.held_out, rows[unseen_indices(len(rows), reference.used, 3)])
    fitted = build_prototypes(features, max_vectors=200, subsampling=subsampling, seed=3, progress=False)
    for source in (TensorEmbeddings(features), stored(features, tmp_path)):
        inputs = prototype_inputs(source, config, progress=False)
        for name in ("used", "vectors", "held_out"):
            assert np.array_equal(getattr(inputs, name), getattr(reference, name))
        assert np.array_equal(inputs.hierarchy.labels, reference.hierarchy.labels)
        again = build_prototypes(source, max_vectors=200, subsampling=subsampling, seed=3, progress=False)
        assert again.level == fitted.level and np.array_equal(again.prototypes, fitted.prototypes)


def test_level_choice_and_the_recipe_import_one_way():
    """`level_choice` works on plain arrays and never imports the recipe (`prototypes` imports it)."""
    import ast
    from pathlib import Path

    import protoad_lib.methods.protoad.level_choice as level_choice

    tree = ast.parse(Path(level_choice.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "prototypes" not in imported and "network" not in imported


def test_first_neighbours_break_exact_ties_by_the_lowest_index():
    base = l2_normalise(np.random.default_rng(0).normal(size=(6, 16)).astype(np.float32))
    vectors = np.concatenate([base, base[[2]], base[[2]]])  # 6 and 7 repeat 2: the three tie exactly
    neighbours = first_neighbours(vectors, progress=False)
    assert neighbours[2] == 6 and neighbours[6] == 2 and neighbours[7] == 2


def test_finch_gives_the_same_hierarchy_with_one_thread_as_with_two():
    vectors = l2_normalise(np.random.default_rng(3).normal(size=(3000, 64)).astype(np.float32))
    vectors[1::7] = vectors[::7][: len(vectors[1::7])] + 1e-7  # near-ties that float32 sums may order either way
    vectors = l2_normalise(vectors)
    hierarchies = []
    for threads in (1, 2):
        faiss.omp_set_num_threads(threads)
        hierarchies.append(finch_hierarchy(vectors, progress=False))
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    assert hierarchies[0].num_clusters == hierarchies[1].num_clusters
    np.testing.assert_array_equal(hierarchies[0].labels, hierarchies[1].labels)


def test_reranking_picks_the_float64_best_candidate_other_than_the_row():
    vectors = np.array([[1, 0], [0.6, 0.8], [0.8, 0.6], [0, 1]], dtype=np.float32)
    found = np.array([[0, 1, 2], [1, 3, 2], [2, -1, -1], [3, -1, -1]])  # rows 2 and 3: no other candidate
    assert rerank_exactly(vectors, np.arange(4), found).tolist() == [2, 2, 2, 3]
