"""ProtoAD network (methods/protoad/network.py): equals brute-force nearest-prototype search; smoothing matches scipy;
fits from embeddings read a few images at a time."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from protoad_lib.backbones import load_backbone
from protoad_lib.embeddings import TensorEmbeddings
from protoad_lib.methods.protoad import ProtoAD, ProtoADConfig, PrototypeHead, nearest_prototype_distance
from protoad_lib.postprocess import AnomalyMapHead, GaussianBlur


def test_prototype_head_equals_brute_force_nearest_prototype_distance():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(3, 40, 12, 12, generator=generator)
    prototypes = torch.randn(57, 40, generator=generator)
    head = PrototypeHead(prototypes)
    torch.testing.assert_close(head(features), nearest_prototype_distance(features, prototypes), atol=1e-5, rtol=0)
    whole = nearest_prototype_distance(features, prototypes, batch_size=len(features))
    assert torch.equal(nearest_prototype_distance(features, prototypes, batch_size=1), whole)


@pytest.mark.parametrize("sigma", [1.0, 4.0])
def test_gaussian_blur_matches_scipy(sigma):
    maps = torch.rand(2, 56, 48, generator=torch.Generator().manual_seed(1))
    ours = GaussianBlur(sigma)(maps).numpy()
    reference = np.stack([gaussian_filter(m, sigma=sigma, mode="reflect") for m in maps.double().numpy()])
    np.testing.assert_allclose(ours, reference, atol=1e-6)


def test_gaussian_blur_wider_than_the_map_matches_scipy():
    maps = torch.rand(1, 9, 7, generator=torch.Generator().manual_seed(2))
    ours = GaussianBlur(4.0)(maps).numpy()
    np.testing.assert_allclose(ours[0], gaussian_filter(maps[0].double().numpy(), sigma=4.0), atol=1e-6)


def test_map_head_is_bilinear_upsampling_then_smoothing():
    patch = torch.zeros(1, 4, 4)
    patch[0, 1, 2] = 1.0
    maps = AnomalyMapHead(sigma=0)(patch, (16, 16))
    assert maps.shape == (1, 16, 16)
    assert maps[0].argmax().item() // 16 in (5, 6) and maps[0].argmax().item() % 16 in (9, 10)


@pytest.mark.parametrize("sigma", [0.0, 4.0])
@pytest.mark.parametrize("grid, size", [((56, 56), (224, 224)), ((7, 12), (30, 50)), ((5, 5), (9, 9))])
def test_map_head_matrices_equal_upsampling_then_blur(sigma, grid, size):
    patch = torch.rand(3, *grid, generator=torch.Generator().manual_seed(4))
    upsampled = torch.nn.functional.interpolate(patch.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
    reference = GaussianBlur(sigma)(upsampled.squeeze(1))
    torch.testing.assert_close(AnomalyMapHead(sigma)(patch, size), reference, atol=2e-6, rtol=1e-5)


def test_protoad_fit_predict_end_to_end_and_defect_scores_higher():
    backbone = load_backbone("efficientnet_lite0")
    rng = torch.Generator().manual_seed(3)
    stripes = (torch.arange(96).view(1, 96) // 6 % 2).float().expand(96, 96)
    good = torch.stack([0.3 + 0.4 * stripes.expand(3, 96, 96) + 0.02 * torch.rand(3, 96, 96, generator=rng)
                        for _ in range(6)])
    model = ProtoAD(backbone, config=ProtoADConfig(max_vectors=2000))
    model.fit([{"image": good}], progress=False)
    assert 1 < model.k <= 1000
    defect = good[:1].clone()
    defect[:, :, 40:56, 40:56] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    maps, scores = model(torch.cat([good[:1], defect]))
    assert maps.shape == (2, 96, 96)
    assert scores[1] > scores[0] + 0.05
    peak = maps[1].argmax().item()
    assert 30 <= peak // 96 <= 66 and 30 <= peak % 96 <= 66


@pytest.mark.parametrize("band_bytes", [1, 40_000, 2**30])  # one coarse row per band, a few rows, the whole grid
@pytest.mark.parametrize("grid", [(16, 16), (15, 13)])
def test_per_layer_head_equals_the_concatenated_network(grid, band_bytes, monkeypatch):
    from protoad_lib.methods.protoad import network

    monkeypatch.setattr(network, "BAND_BYTES", band_bytes)
    generator = torch.Generator().manual_seed(4)
    height, width = grid
    maps = [torch.randn(2, 6, height, width, generator=generator),
            torch.randn(2, 10, (height + 1) // 2, (width + 1) // 2, generator=generator),
            torch.randn(2, 14, (height + 3) // 4, (width + 3) // 4, generator=generator)]
    head = PrototypeHead(torch.randn(33, 30, generator=generator))
    from protoad_lib.features import combine_layers

    torch.testing.assert_close(head.forward_maps(maps), head(combine_layers(maps)), atol=1e-5, rtol=0)


def test_prototype_usage_counts_every_patch_once_whatever_the_batch():
    import torch.nn.functional as F

    from protoad_lib.methods.protoad import prototype_usage

    generator = torch.Generator().manual_seed(0)
    features, prototypes = torch.randn(5, 6, 4, 3, generator=generator), torch.randn(7, 6, generator=generator)
    patches = F.normalize(features.permute(0, 2, 3, 1).reshape(-1, 6), dim=1)
    expected = np.bincount((patches @ F.normalize(prototypes, dim=1).T).argmax(dim=1).numpy(), minlength=7)
    assert expected.sum() == 5 * 4 * 3
    for batch_size in (1, 2, 5, 8):
        assert (prototype_usage(features, prototypes, batch_size) == expected).all()


def test_reference_distance_and_usage_read_stored_embeddings_to_the_same_numbers(tmp_path):
    from protoad_lib.embeddings import StoredEmbeddings, write_embeddings
    from protoad_lib.methods.protoad import prototype_usage

    generator = torch.Generator().manual_seed(5)
    features, prototypes = torch.randn(7, 12, 5, 6, generator=generator), torch.randn(9, 12, generator=generator)
    on_disk = StoredEmbeddings(write_embeddings(tmp_path / "e.safetensors", features.split(3), len(features)))
    for batch_size in (1, 3, 8):
        assert torch.equal(nearest_prototype_distance(on_disk, prototypes, batch_size),
                           nearest_prototype_distance(features, prototypes, batch_size))
        assert np.array_equal(prototype_usage(on_disk, prototypes, batch_size), prototype_usage(features, prototypes))


class FewImagesAtATime(TensorEmbeddings):
    """Embeddings that refuse to be read whole: more than 8 images in one read, or `to_tensor`, raise."""

    def _read(self, images, rows, cols):
        if len(images) > 8:
            raise AssertionError(f"{len(images)} images read at once")
        return super()._read(images, rows, cols)

    def to_tensor(self):
        raise AssertionError("the whole split was materialised")


@pytest.mark.parametrize("config", [ProtoADConfig(max_vectors=300), ProtoADConfig(max_vectors=300, level_rule="budget"),
                                    ProtoADConfig(max_vectors=300, subsampling="coreset"),
                                    ProtoADConfig(max_vectors=300, method="kmeans", k=6)])
def test_protoad_fits_from_embeddings_read_a_few_images_at_a_time(config, tmp_path):
    """ProtoAD's features are the embedding itself (`method_view` maps nothing); its fit reads at most 8 images
    at once and gives the prototypes of the fit on the whole tensor, also from a stored file."""
    from protoad_lib.embeddings import StoredEmbeddings, write_embeddings

    backbone = load_backbone("efficientnet_lite0")
    features = torch.randn(30, 16, 6, 5, generator=torch.Generator().manual_seed(7))
    narrow = FewImagesAtATime(features)
    with pytest.raises(AssertionError, match="9 images"):
        narrow.read(np.arange(9))
    model = ProtoAD(backbone, config=config)
    assert model.method_view(narrow) is narrow
    expected = ProtoAD(backbone, config=config).fit_features(features).head.prototypes
    assert torch.equal(model.fit_embeddings(narrow).head.prototypes, expected)
    on_disk = StoredEmbeddings(write_embeddings(tmp_path / "e.safetensors", features.split(4), len(features)))
    assert torch.equal(ProtoAD(backbone, config=config).fit_features(on_disk).head.prototypes, expected)
