"""PRN: network shapes, frozen backbone, exact synthetic masks, seeded training, seen anomalies, persistence."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from protoad_lib.backbones import load_backbone
from protoad_lib.checkpoint import read_checkpoint, save_detector
from protoad_lib.categories import choose_seen
from protoad_lib.data import AnomalyDataset
from protoad_lib.machine import set_threads
from protoad_lib.features import embed
from protoad_lib.methods.prn import (PRN, SCHEDULES, AnomalySynthesiser, PRNetwork, blend_region, paste_seen,
                                     perlin_noise, procedural_texture, prototype_count)
from protoad_lib.methods.prn.prototypes import fit_prototypes, residuals
from protoad_lib.methods.prn.synthesis import TextureSource

SIZE = 64
TINY = {"epochs": 3, "train_batch_size": 3, "width": 4, "attention_blocks": 1, "fit_threads": 1}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread avoids thread hand-offs, which dominate on a busy 2-core machine."""
    previous = set_threads(1)
    yield
    set_threads(*previous)


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return load_backbone("resnet18", weights="random")


@pytest.fixture(scope="module")
def weave(tiny_benchmark):
    """The tiny synthetic category at 64 px: 6 good training images, 5 test images (3 anomalous)."""
    train = AnomalyDataset(tiny_benchmark, "weave", "train", resize=SIZE, crop=SIZE)
    test = AnomalyDataset(tiny_benchmark, "weave", "test", resize=SIZE, crop=SIZE)
    return train, test


def quiet(detector: PRN) -> PRN:
    detector.progress = False
    return detector


@pytest.fixture(scope="module")
def fitted(random_lite0, weave):
    return quiet(PRN(random_lite0, **TINY)).fit(weave[0], progress=False)


def test_network_shapes_for_two_backbones(random_lite0, resnet18):
    images = torch.rand(2, 3, SIZE, SIZE)
    for backbone in (random_lite0, resnet18):
        maps = backbone(images)
        net = PRNetwork(backbone.channels, backbone.strides, width=4, attention_blocks=2)
        logits = net(maps, [m.square() for m in maps])
        assert logits.shape == (2, 1, SIZE, SIZE)
        odd = backbone(torch.rand(1, 3, 72, 56))  # non-square, not a power of two
        assert net(odd, [m.square() for m in odd]).shape == (1, 1, 72, 56)


def test_detector_maps_and_scores_for_two_backbones(random_lite0, resnet18, weave):
    images = torch.stack([weave[1][i]["image"] for i in range(2)])
    for backbone in (random_lite0, resnet18):
        detector = quiet(PRN(backbone, **{**TINY, "epochs": 1})).fit(weave[0], progress=False)
        maps, scores = detector(images)
        assert maps.shape == (2, SIZE, SIZE) and scores.shape == (2,)
        assert 0 <= maps.min() and maps.max() <= 1
        assert torch.allclose(scores, maps.flatten(1).topk(100).values.mean(1))
        assert len(detector.history) == 1


def test_backbone_stays_frozen_and_in_eval_mode(random_lite0, weave):
    before = {name: value.clone() for name, value in random_lite0.state_dict().items()}
    detector = quiet(PRN(random_lite0, **{**TINY, "epochs": 1}))
    assert not detector.train().backbone.training and detector.network.training
    detector.fit(weave[0], progress=False)
    after = random_lite0.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # BatchNorm running stats included
    assert all(not p.requires_grad and p.grad is None for p in random_lite0.parameters())
    assert any(p.grad is not None for p in detector.network.parameters())


def test_blended_mask_marks_exactly_the_changed_pixels():
    rng = np.random.default_rng(0)
    image = torch.rand(3, 32, 32)
    texture = torch.from_numpy(procedural_texture((32, 32), rng, "checker")).float()
    texture[:, :, :8] = image[:, :, :8]  # the texture equals the image on the left columns
    region = torch.zeros(32, 32, dtype=torch.bool)
    region[4:20, 2:30] = True
    for beta in (0.0, 0.3, 0.79):
        changed, mask = blend_region(image, texture, region, beta)
        assert torch.equal(mask[0].bool(), (changed != image).any(dim=0))
        assert torch.equal(changed[:, ~region], image[:, ~region])
        assert not mask[0, :, :8].any() and mask[0, 4:20, 8:30].all()
        assert torch.allclose(changed[:, region], ((1 - beta) * texture + beta * image)[:, region], atol=1e-6)


def test_synthesised_batch_masks_are_exact_and_about_half_anomalous():
    rng = np.random.default_rng(1)
    images = torch.rand(8, 3, 48, 40)
    seen = [(torch.rand(3, 48, 40), (torch.rand(1, 48, 40) > 0.9).float())]
    anomalous_counts = []
    for synthesiser in (AnomalySynthesiser(), AnomalySynthesiser(seen=seen, seen_fraction=0.5)):
        for _ in range(4):
            out, masks = synthesiser(images, rng)
            assert masks.shape == (8, 1, 48, 40)
            assert torch.equal(masks[:, 0].bool(), (out != images).any(dim=1))
            anomalous_counts.append(int(masks.flatten(1).any(1).sum()))
    assert all(3 <= count <= 5 for count in anomalous_counts)
    pasted, mask = paste_seen(images[0], *seen[0])
    assert torch.equal(mask[0].bool(), (pasted != images[0]).any(0)) and mask.sum() > 0


def test_perlin_noise_and_textures_are_seeded_and_in_range(tmp_path):
    noise = perlin_noise((50, 70), (4, 8), np.random.default_rng(3))
    assert noise.shape == (50, 70) and np.abs(noise).max() <= 1.5
    assert np.array_equal(noise, perlin_noise((50, 70), (4, 8), np.random.default_rng(3)))
    for kind in ("noise", "stripes", "checker", "perlin"):
        texture = procedural_texture((20, 30), np.random.default_rng(0), kind)
        assert texture.shape == (3, 20, 30) and 0 <= texture.min() and texture.max() <= 1
    Image.fromarray(np.full((10, 12, 3), 200, np.uint8)).save(tmp_path / "t.png")
    loaded = TextureSource(tmp_path)((20, 30), np.random.default_rng(0))
    assert loaded.shape == (3, 20, 30) and torch.allclose(loaded, torch.full_like(loaded, 200 / 255))


def test_prototypes_image_and_patch_level():
    assert [prototype_count(n) for n in (1, 9, 10, 40, 209)] == [1, 1, 1, 4, 20]
    maps = [torch.rand(12, 3, 8, 8), torch.rand(12, 5, 4, 4)]
    image = fit_prototypes(maps, "image", 0.25, 0, seed=0)
    assert [tuple(p.shape) for p in image] == [(3, 3, 8, 8), (3, 5, 4, 4)]
    patch = fit_prototypes(maps, "patch", 0.1, 6, seed=0)
    assert [tuple(p.shape) for p in patch] == [(6, 3), (6, 5)]
    prototype = [maps[0][:1]]  # one prototype equal to the first image: its residual is zero
    assert residuals([maps[0][:2]], prototype, "image")[0][0].abs().max() == 0
    for level, protos in (("image", image), ("patch", patch)):
        assert [r.shape for r in residuals(maps, protos, level)] == [m.shape for m in maps]


def test_fit_features_asks_for_images(random_lite0):
    with pytest.raises(NotImplementedError, match="images"):
        PRN(random_lite0).fit_features(torch.zeros(2, 176, 8, 8))


def test_schedules_and_explicit_options():
    assert SCHEDULES["full"]["epochs"] == 700 and SCHEDULES["full"]["train_batch_size"] == 48
    detector = PRN(load_backbone("resnet18", weights="random"), schedule="full", epochs=5)
    assert detector.epochs == 5 and detector.width == SCHEDULES["full"]["width"] and detector.sigma == 0
    assert (detector.weight_decay, detector.lr_decay, detector.lr) == (1e-2, "none", 1e-4)  # PRNet's
    with pytest.raises(ValueError, match="schedule"):
        PRN(detector.backbone, schedule="fast")
    with pytest.raises(ValueError, match="lr_decay"):
        PRN(detector.backbone, lr_decay="step")


def test_training_reduces_the_loss_and_is_reproducible(random_lite0, weave):
    first = quiet(PRN(random_lite0, **{**TINY, "epochs": 6})).fit(weave[0], progress=False)
    second = quiet(PRN(random_lite0, **{**TINY, "epochs": 6})).fit(weave[0], progress=False)
    assert first.history[-1] < first.history[0]
    assert first.history == second.history
    a, b = first.state_tensors(), second.state_tensors()
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_a_fit_trains_the_same_weights_whatever_threads_the_process_has(random_lite0, weave):
    """A fit runs with its own `fit_threads`, so a one-thread process (a Dask worker) and a two-thread one (a serial
    run) train the same weights; the thread count itself does change them (what the fixed count guards against)."""
    def weights(process_threads: int, fit_threads: int) -> dict[str, torch.Tensor]:
        previous = set_threads(process_threads)
        try:
            detector = quiet(PRN(random_lite0, **{**TINY, "width": 16, "fit_threads": fit_threads}))
            return detector.fit(weave[0], progress=False).state_tensors()
        finally:
            set_threads(*previous)

    one, two = weights(1, 2), weights(2, 2)
    assert all(torch.equal(one[name], two[name]) for name in one)
    other = weights(2, 1)
    assert not all(torch.equal(other[name], two[name]) for name in two)
    assert torch.get_num_threads() == 1  # the fits restored the count they found


def test_choose_seen_is_seeded_and_picks_anomalies(random_lite0, weave):
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 1, 1])
    chosen = choose_seen(labels, 3, seed=5)
    assert chosen == choose_seen(labels.tolist(), 3, seed=5) and len(set(chosen)) == 3
    assert all(labels[i] == 1 for i in chosen) and chosen == sorted(chosen)
    assert {tuple(choose_seen(labels, 2, seed)) for seed in range(10)} != {tuple(choose_seen(labels, 2, 0))}
    with pytest.raises(ValueError):
        choose_seen(labels, 6)
    test = weave[1]
    picked = choose_seen(test.labels, 2, seed=0)
    seen = [(test[i]["image"], test[i]["mask"]) for i in picked]
    detector = quiet(PRN(random_lite0, **{**TINY, "epochs": 1}, seen_fraction=1.0))
    assert len(detector.fit(weave[0], progress=False, seen=seen).history) == 1


def test_state_round_trip_and_cached_embeddings_give_identical_maps(fitted, random_lite0, weave, tmp_path):
    images = torch.stack([weave[1][i]["image"] for i in range(len(weave[1]))])
    with torch.inference_mode():
        maps, scores = fitted(images)
    restored = PRN.from_state(random_lite0, fitted.config(), fitted.state_tensors())
    with torch.inference_mode():
        again_maps, again_scores = restored(images)
    assert torch.equal(maps, again_maps) and torch.equal(scores, again_scores)
    assert restored.history == fitted.history and restored.config() == fitted.config()
    from_cache = fitted.predict_embeddings(embed(random_lite0, images), (SIZE, SIZE))
    assert torch.allclose(from_cache.maps, maps, atol=1e-6) and torch.allclose(from_cache.scores, scores, atol=1e-6)
    metadata, tensors = read_checkpoint(save_detector(fitted, tmp_path / "prn.safetensors", SIZE, SIZE))
    assert json.loads(json.dumps(metadata["config"])) == fitted.config()
    loaded = PRN.from_state(random_lite0, metadata["config"], tensors)
    with torch.inference_mode():
        assert torch.equal(loaded(images)[0], maps)


def test_patch_level_ablation_fits_and_scores(random_lite0, weave):
    detector = quiet(PRN(random_lite0, **{**TINY, "epochs": 1}, prototype_level="patch", patch_prototypes=8))
    detector.fit(weave[0], progress=False)
    assert tuple(detector.prototypes[0].shape) == (8, random_lite0.channels[0])
    with torch.inference_mode():
        assert detector(weave[1][0]["image"][None])[0].shape == (1, SIZE, SIZE)


def test_seen_anomalies_are_trained_on_and_absent_from_the_scored_test_set(tiny_benchmark, random_lite0):
    from protoad_lib.categories import load_category
    from protoad_lib.evaluation import fit_and_score
    from protoad_lib.methods import make_detector

    data = load_category(random_lite0, tiny_benchmark, "weave", resize=64, image_size=64, progress=False)
    detector = make_detector("prn", random_lite0, epochs=1)
    scored = fit_and_score(detector, data, seen=2, seed=3)
    chosen = choose_seen(data.labels, 2, seed=3)
    assert scored.seen == [data.test.samples[i].path for i in chosen] and len(scored.seen) == 2
    assert len(scored.predictions.scores) == len(data.test) - 2
    with pytest.raises(ValueError, match="training-free"):
        fit_and_score(make_detector("padim", random_lite0), data, seen=1)


def test_a_trained_method_trains_on_the_runs_device_and_is_scored_on_the_cpu(tiny_benchmark, random_lite0,
                                                                             monkeypatch):
    from protoad_lib.categories import load_category
    from protoad_lib.evaluation import fit_and_score
    from protoad_lib.methods import make_detector

    data = load_category(random_lite0, tiny_benchmark, "weave", resize=64, image_size=64, progress=False)
    devices = []
    original_fit = PRN.fit

    def recording_fit(self, *args, **kwargs):
        devices.append(kwargs.get("device"))
        return original_fit(self, *args, **kwargs)

    monkeypatch.setattr(PRN, "fit", recording_fit)
    detector = make_detector("prn", random_lite0, epochs=1)
    scored = fit_and_score(detector, data, device="cpu:0")
    assert devices == ["cpu:0"] and len(detector.history) == 1 and 0 < detector.train_s < scored.fit_s
    assert {p.device.type for p in detector.parameters()} == {"cpu"}
    assert len(scored.predictions.scores) == len(data.test)

