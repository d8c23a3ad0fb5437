"""Patch embeddings: equivalence with the official unfold/fold concatenation, shapes, cache."""

import json

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
    torch.testing.assert_close(by_two.to_tensor(), one_batch.to_tensor(), rtol=1e-4, atol=1e-5)

    cache = FeatureCache(tmp_path)
    key = CacheKey("toy", "cat", "train", "resnet18", "random", ("layer1", "layer2", "layer3"), 64, 5)
    assert cache.load(key) is None
    cache.save(key, by_two)
    assert torch.equal(cache.load(key).to_tensor(), by_two.to_tensor())
    assert not list(tmp_path.glob("*.tmp"))
    other = CacheKey("toy", "cat", "train", "resnet18", "random", ("layer2", "layer3"), 64, 5)
    assert cache.load(other) is None


def test_extract_features_and_method_features_share_one_loop_with_the_former_results():
    """`embed_batches` is the one loop: both give exactly what their former loops computed (batch by batch,
    `combine_layers` resp. the method's `features_from_maps`, stacked)."""
    from protoad_lib.methods import PaDiM

    backbone = load_backbone("resnet18", weights="random").eval()
    images = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(2))

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, index):
            return {"image": images[index]}

    detector = PaDiM(backbone, n_features=20)
    with torch.inference_mode():
        former_embedding = torch.cat([combine_layers(backbone(images[i : i + 2])) for i in range(0, 5, 2)])
        former_method = torch.cat([detector.features_from_maps(backbone(images[i : i + 2])) for i in range(0, 5, 2)])
    assert torch.equal(extract_features(backbone, Images(), batch_size=2, progress=False).to_tensor(), former_embedding)
    assert torch.equal(detector.method_features(Images(), batch_size=2, progress=False).to_tensor(), former_method)


def test_the_cache_stores_float16_when_asked_and_reads_float32(tmp_path):
    key = CacheKey("toy", "cat", "train", "resnet18", "random", ("layer1",), 64, 3)
    features = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(3))
    full = FeatureCache(tmp_path / "fp32").write(key, features.split(2)).path.stat().st_size
    stored = FeatureCache(tmp_path / "fp16", dtype=torch.float16).write(key, features.split(2))
    assert stored.dtype == torch.float16 and full - stored.path.stat().st_size == 3 * 4 * 2 * 2 * 2
    assert torch.equal(stored.to_tensor(), features.half().float())


def test_a_damaged_cache_entry_is_reported_deleted_and_recomputed(tmp_path):
    import pytest

    from protoad_lib.atomic import CacheWarning

    from protoad_lib.embeddings import write_embeddings

    cache = FeatureCache(tmp_path)
    key = CacheKey("toy", "cat", "train", "resnet18", "random", ("layer1",), 64, 2)
    tmp_path.mkdir(exist_ok=True)
    metadata = {"key": json.dumps(key.as_dict(), sort_keys=True)}
    write_embeddings(cache.path(key), [torch.zeros(3, 4, 2, 2)], 3, metadata)  # 3 images under a key of 2
    with pytest.warns(CacheWarning, match="holds 3 images, not 2") as caught:
        assert cache.load(key) is None
    assert caught[0].filename == __file__ and not cache.path(key).exists()  # attributed to the caller
    cache.path(key).write_bytes(b"")
    with pytest.warns(CacheWarning, match="cannot be read"):
        assert cache.load(key) is None
    assert not cache.path(key).exists()
