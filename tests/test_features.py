"""Patch embeddings: equivalence with the official unfold/fold concatenation, shapes, cache."""

import torch
import torch.nn.functional as F

from protoad_lib.backbones import load_backbone
from protoad_lib.features import CacheKey, FeatureCache, combine_layers, extract_features


def unfold_fold_concat(fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """The official PaDiM/ProtoAD way: tile the coarse map over each s x s block of the fine map."""
    batch, fine_channels, height, width = fine.shape
    _, coarse_channels, coarse_h, coarse_w = coarse.shape
    step = height // coarse_h
    blocks = F.unfold(fine, kernel_size=step, stride=step).view(batch, fine_channels, -1, coarse_h, coarse_w)
    joined = torch.cat(
        [torch.cat([blocks[:, :, i], coarse], dim=1).unsqueeze(2) for i in range(blocks.shape[2])], dim=2
    )
    joined = joined.view(batch, -1, coarse_h * coarse_w)
    return F.fold(joined, kernel_size=step, output_size=(height, width), stride=step)


def test_combine_layers_equals_official_unfold_fold_concatenation():
    generator = torch.Generator().manual_seed(0)
    layer1 = torch.randn(2, 8, 16, 16, generator=generator)
    layer2 = torch.randn(2, 12, 8, 8, generator=generator)
    layer3 = torch.randn(2, 20, 4, 4, generator=generator)
    official = unfold_fold_concat(unfold_fold_concat(layer1, layer2), layer3)
    ours = combine_layers([layer1, layer2, layer3])
    assert ours.shape == (2, 40, 16, 16)
    torch.testing.assert_close(ours, official, rtol=0, atol=0)


def test_efficientnet_lite0_taps_and_embedding_shape():
    backbone = load_backbone("efficientnet_lite0")
    maps = backbone(torch.rand(1, 3, 224, 224))
    assert [tuple(m.shape[1:]) for m in maps] == [(24, 56, 56), (40, 28, 28), (112, 14, 14)]
    assert backbone.strides == [4, 8, 16] and backbone.out_channels == 176


def test_extract_features_batches_agree_and_cache_round_trips(tmp_path):
    backbone = load_backbone("resnet18", weights="random")
    images = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    dataset = [{"image": image} for image in images]
    by_two = extract_features(backbone, torch.utils.data.DataLoader(dataset, batch_size=2), progress=False)
    one_batch = extract_features(backbone, [{"image": images}], progress=False)
    assert by_two.shape == (5, 448, 16, 16)
    torch.testing.assert_close(by_two, one_batch, rtol=1e-4, atol=1e-5)

    cache = FeatureCache(tmp_path)
    key = CacheKey("toy", "cat", "train", "resnet18", "random", ("layer1", "layer2", "layer3"), 64, 5)
    assert cache.load(key) is None
    cache.save(key, by_two)
    torch.testing.assert_close(cache.load(key), by_two)
    assert not list(tmp_path.glob("*.tmp"))
    other = CacheKey("toy", "cat", "train", "resnet18", "random", ("layer2", "layer3"), 64, 5)
    assert cache.load(other) is None
