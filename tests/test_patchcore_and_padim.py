"""PatchCore (methods/patchcore.py) and PaDiM (methods/padim.py): equivalence with slow references, end to end,
persistence."""

import gc
import json
import math

import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from protoad_lib.backbones import load_backbone
from protoad_lib.methods import PaDiM, PatchCore
from protoad_lib.methods.padim import default_n_features, random_channel_subset
from protoad_lib.methods.patchcore import patchcore_embedding
from protoad_lib.features import combine_layers


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return load_backbone("resnet18", weights="random")


def striped_images(count: int, size: int, seed: int) -> torch.Tensor:
    """Diagonal stripes with a random phase and a little noise: a simple regular texture."""
    generator = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = []
    for _ in range(count):
        phase = torch.rand(1, generator=generator).item() * 2 * math.pi
        stripes = 0.5 + 0.35 * torch.sin(2 * math.pi * (xs + ys) / 8 + phase)
        image = stripes.expand(3, size, size) + 0.03 * torch.randn(3, size, size, generator=generator)
        images.append(image.clamp(0, 1))
    return torch.stack(images)


# --- PatchCore feature aggregation -------------------------------------------------------------------


def reference_patchcore_embedding(maps, pretrain_dim, target_dim, patch_size=3):
    """A literal re-statement of patchcore-inspection's `_embed`: unfold, resize patches, MeanMapper, Aggregator."""
    padding = (patch_size - 1) // 2
    patches, shapes = [], []
    for feature_map in maps:
        batch, channels, height, width = feature_map.shape
        unfolded = F.unfold(feature_map, kernel_size=patch_size, padding=padding)
        unfolded = unfolded.reshape(batch, channels, patch_size, patch_size, -1).permute(0, 4, 1, 2, 3)
        patches.append(unfolded)  # [B, L, C, p, p]
        shapes.append((height, width))
    ref_h, ref_w = shapes[0]
    for i in range(1, len(patches)):
        h, w = shapes[i]
        x = patches[i].reshape(patches[i].shape[0], h, w, *patches[i].shape[2:])
        x = x.permute(0, 3, 4, 5, 1, 2)  # [B, C, p, p, h, w]
        base = x.shape
        x = F.interpolate(x.reshape(-1, 1, h, w), size=(ref_h, ref_w), mode="bilinear", align_corners=False)
        x = x.reshape(*base[:-2], ref_h, ref_w).permute(0, 4, 5, 1, 2, 3)
        patches[i] = x.reshape(x.shape[0], -1, *x.shape[-3:])
    flat = [x.reshape(-1, *x.shape[-3:]) for x in patches]  # [B*L, C, p, p]
    mapped = [F.adaptive_avg_pool1d(x.reshape(len(x), 1, -1), pretrain_dim).squeeze(1) for x in flat]
    stacked = torch.stack(mapped, dim=1)
    aggregated = F.adaptive_avg_pool1d(stacked.reshape(len(stacked), 1, -1), target_dim).reshape(len(stacked), -1)
    batch = maps[0].shape[0]
    return aggregated.reshape(batch, ref_h, ref_w, target_dim).permute(0, 3, 1, 2)


@pytest.mark.parametrize("pretrain_dim,target_dim", [(1024, 1024), (16, 12), (40, 7)])
def test_patchcore_embedding_equals_reference(pretrain_dim, target_dim):
    generator = torch.Generator().manual_seed(0)
    layer2 = torch.randn(2, 5, 4, 4, generator=generator)
    layer3 = torch.randn(2, 7, 2, 2, generator=generator)
    ours = patchcore_embedding([layer2, layer3], pretrain_dim, target_dim)
    assert ours.shape == (2, target_dim, 4, 4)
    torch.testing.assert_close(ours, reference_patchcore_embedding([layer2, layer3], pretrain_dim, target_dim),
                               rtol=1e-5, atol=1e-6)


def test_patchcore_per_layer_projection_is_3x3_average_pooling_when_channels_divide():
    """C*9 == 9 * out (wide_resnet50_2 layer3: 1024 channels -> 1024) is a zero-padded 3x3 mean per channel."""
    x = torch.randn(1, 4, 5, 5, generator=torch.Generator().manual_seed(1))
    single = patchcore_embedding([x], pretrain_embed_dimension=4, target_embed_dimension=4)
    torch.testing.assert_close(single, F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True))


def test_patchcore_features_use_the_stride_8_and_16_maps(backbone):
    detector = PatchCore(backbone)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    maps = backbone(images)
    features = detector.features_from_maps(maps)
    assert features.shape == (2, 1024, 8, 8)
    torch.testing.assert_close(features, patchcore_embedding(maps[1:]))
    torch.testing.assert_close(detector.features_from_embedding(combine_layers(maps)), features)


# --- PatchCore scoring ---------------------------------------------------------------------------


def test_patchcore_patch_scores_equal_brute_force_nearest_distance(backbone):
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(3, 32, 4, 4, generator=generator)
    queries = torch.randn(2, 32, 4, 4, generator=generator)
    detector = PatchCore(backbone, coreset_fraction=0.5, distance="l2")
    detector.progress = False
    detector.fit_features(train)
    bank = detector.memory_bank
    patches = train.permute(0, 2, 3, 1).reshape(-1, 32)
    assert bank.shape == (24, 32)
    assert (bank[:, None] - patches[None]).abs().amax(dim=2).min(dim=1).values.max() == 0  # training rows

    flat_queries = queries.permute(0, 2, 3, 1).reshape(-1, 32).double()
    distances = torch.cdist(flat_queries, bank.double())
    expected = distances.min(dim=1).values.view(2, 4, 4).float()
    torch.testing.assert_close(detector.patch_scores(queries), expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(detector.image_scores(detector.patch_scores(queries), None), expected.amax(dim=(1, 2)))

    detector.n_neighbors = 3
    expected_k = distances.topk(3, largest=False).values.mean(dim=1).view(2, 4, 4).float()
    torch.testing.assert_close(detector.patch_scores(queries), expected_k, rtol=0, atol=1e-4)
    detector.n_neighbors, detector.distance = 1, "squared_l2"
    torch.testing.assert_close(detector.patch_scores(queries), expected.square(), rtol=1e-5, atol=1e-4)

    # A training patch is its own nearest neighbour at distance 0 (no cancellation error).
    detector.distance = "l2"
    full = PatchCore(backbone, coreset_fraction=1.0)
    full.fit_features(train)
    assert full.patch_scores(train).abs().max() < 1e-6



def test_patchcore_holds_its_bank_once_in_the_faiss_index_and_a_view_outlives_the_detector(backbone):
    bank = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    detector = PatchCore(backbone)
    detector.set_memory_bank(bank)
    stored = faiss.rev_swig_ptr(detector._index.get_xb(), 64 * 64)
    assert detector.memory_bank.data_ptr() == stored.ctypes.data  # the index's own vectors, not a second copy
    assert torch.equal(detector.memory_bank, bank)
    rows = detector.memory_bank[10:20]
    del detector, stored
    gc.collect()
    filler = [np.full(64 * 64, 7.0, np.float32) for _ in range(100)]  # would reuse the vectors' memory, were it freed
    assert torch.equal(rows, bank[10:20])

# --- PaDiM ---------------------------------------------------------------------------------------


def test_padim_mahalanobis_equals_numpy_per_position(backbone):
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(10, 6, 3, 4, generator=generator)
    test = torch.randn(3, 6, 3, 4, generator=generator) * 1.5
    detector = PaDiM(backbone, n_features=6, chunk_size=5).fit_features(train)
    ours = detector.patch_scores(test)
    assert ours.shape == (3, 3, 4)

    vectors = train.reshape(10, 6, 12).double().numpy()
    queries = test.reshape(3, 6, 12).double().numpy()
    expected = np.zeros((3, 12))
    for position in range(12):
        mean = vectors[:, :, position].mean(axis=0)
        inverse = np.linalg.inv(np.cov(vectors[:, :, position], rowvar=False) + 0.01 * np.eye(6))
        for b in range(3):
            delta = queries[b, :, position] - mean
            expected[b, position] = np.sqrt(delta @ inverse @ delta)
    np.testing.assert_allclose(ours.reshape(3, 12).numpy(), expected, rtol=1e-3, atol=1e-4)
    # Chunking over positions does not change anything.
    single_chunk = PaDiM(backbone, n_features=6, chunk_size=1000).fit_features(train)
    torch.testing.assert_close(single_chunk.patch_scores(test), ours, rtol=1e-5, atol=1e-5)


def test_padim_channel_subset_is_seeded_and_follows_the_paper_sizes(backbone):
    subset = random_channel_subset(448, 100, seed=7)
    assert torch.equal(subset, random_channel_subset(448, 100, seed=7))
    assert not torch.equal(subset, random_channel_subset(448, 100, seed=8))
    assert len(set(subset.tolist())) == 100 and torch.equal(subset, subset.sort().values) and subset.max() < 448

    assert default_n_features("resnet18", 448) == 100
    assert default_n_features("wide_resnet50_2", 1792) == 550
    assert default_n_features("efficientnet_lite0", 176) == 54  # round(176 * 550 / 1792)
    assert default_n_features("resnet18", 384) == 118  # other layers: the ratio rule
    assert default_n_features("tiny", 2) == 1

    detector = PaDiM(backbone)
    assert detector.n_features == 100 and detector.config()["n_features"] == 100
    assert torch.equal(detector.channel_index, random_channel_subset(448, 100, seed=1024))
    maps = backbone(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    features = detector.features_from_maps(maps)
    assert features.shape == (1, 100, 16, 16)
    torch.testing.assert_close(features, combine_layers(maps)[:, detector.channel_index])


# --- both, end to end ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", [PatchCore, PaDiM])
def test_end_to_end_defect_detection_and_round_trip(method, backbone, tmp_path):
    size = 64
    train = striped_images(8, size, seed=0)
    test = striped_images(2, size, seed=1)
    test[1, :, 24:40, 24:40] = torch.tensor([0.9, 0.1, 0.1]).view(3, 1, 1)  # an obvious red square
    detector = method(backbone)
    detector.progress = False
    detector.fit([{"image": train[:4]}, {"image": train[4:]}], progress=False)

    with torch.inference_mode():
        maps, scores = detector(test)
    assert maps.shape == (2, size, size) and scores.shape == (2,)
    assert torch.isfinite(maps).all() and torch.isfinite(scores).all()
    assert scores[1] > 1.5 * scores[0]
    inside = torch.zeros(size, size, dtype=torch.bool)
    inside[24:40, 24:40] = True
    assert maps[1][inside].mean() > maps[1][~inside].mean()

    predictions = detector.predict([{"image": test}], progress=False)
    torch.testing.assert_close(predictions.maps, maps)
    torch.testing.assert_close(predictions.scores, scores)
    with torch.inference_mode():
        cached = detector.predict_embeddings(combine_layers(backbone(test)), (size, size))
    torch.testing.assert_close(cached.scores, scores)

    path = tmp_path / "state.safetensors"
    save_file(detector.state_tensors(), str(path))
    config = json.loads(json.dumps(detector.config()))
    restored = method.from_state(backbone, config, load_file(str(path)))
    assert restored.config() == detector.config()
    with torch.inference_mode():
        restored_maps, restored_scores = restored(test)
    assert torch.equal(restored_maps, maps) and torch.equal(restored_scores, scores)


# --- fitting from embeddings read a few images at a time ------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 3, 9, 1000])
def test_padim_fits_block_by_block_from_a_split_it_never_reads_whole(backbone, tmp_path, chunk_size):
    """Blocks of whole rows (9, 1000), pieces of one row (3) or the default budget: the Gaussians of a
    stored split read 8 images at a time are bit-identical to those of the tensor."""
    from test_embeddings import PieceByPiece

    from protoad_lib.embeddings import StoredEmbeddings, write_embeddings

    train = torch.randn(11, 6, 3, 4, generator=torch.Generator().manual_seed(5))
    reference = PaDiM(backbone, n_features=6, chunk_size=1000).fit_features(train)
    stored = StoredEmbeddings(write_embeddings(tmp_path / "t.safetensors", train.split(4), 11))
    for source in (stored, PieceByPiece(train, limit=8)):
        detector = PaDiM(backbone, n_features=6, chunk_size=chunk_size)
        detector.progress = False
        detector.fit_features(source)
        assert torch.equal(detector.mean, reference.mean) and torch.equal(detector.cov_inv, reference.cov_inv)


def test_padim_block_budget_does_not_grow_with_the_training_set(backbone):
    detector = PaDiM(backbone)
    d = detector.n_features
    for count in (100, 1000, 10000):
        block = detector.positions_per_block(count)
        assert 2 * 8 * d * (count + d) * block <= 256 * 2**20 < 2 * 8 * d * (count + d) * (block + 1)


def test_patchcore_fits_from_a_split_it_never_reads_whole_with_the_same_bank(backbone):
    from test_embeddings import PieceByPiece

    train = torch.randn(20, 32, 4, 4, generator=torch.Generator().manual_seed(6))
    reference = PatchCore(backbone, coreset_fraction=0.3)
    reference.progress = False
    streamed = PatchCore(backbone, coreset_fraction=0.3)
    streamed.progress = False
    reference.fit_features(train)
    streamed.fit_features(PieceByPiece(train, limit=8))
    assert torch.equal(streamed.memory_bank, reference.memory_bank)
    whole = PatchCore(backbone, coreset_fraction=1.0).fit_features(PieceByPiece(train, limit=8))
    assert torch.equal(whole.memory_bank, train.permute(0, 2, 3, 1).reshape(-1, 32))
