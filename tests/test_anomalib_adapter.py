"""anomalib's own PatchCore and PaDiM behind our backbone (run by `make bench-peers`; skipped without anomalib)."""

import pytest
import torch

pytest.importorskip("anomalib", reason="the optional `peers` extra is not installed (make bench-peers installs it)")

from protoad_lib.experiments.bench import run_benchmark  # noqa: E402
from protoad_lib.methods import REGISTRY, make_detector, peer_names  # noqa: E402
from protoad_lib.methods.anomalib_peers import AnomalibPatchCore  # noqa: E402


def test_the_peers_are_registry_entries_when_anomalib_imports():
    assert peer_names() == ("anomalib_patchcore", "anomalib_padim")
    assert all(REGISTRY[name].peer and not REGISTRY[name].compared for name in peer_names())


@pytest.mark.parametrize("name", ["anomalib_patchcore", "anomalib_padim"])
def test_adapter_fits_and_returns_maps_and_scores(name, random_lite0):
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    detector = make_detector(name, random_lite0).fit([{"image": images[:2]}, {"image": images[2:]}])
    maps, scores = detector(images[:3])
    assert maps.shape == (3, 64, 64) and scores.shape == (3,)
    assert torch.isfinite(maps).all() and torch.isfinite(scores).all()
    if isinstance(detector, AnomalibPatchCore):
        assert len(detector.memory_bank) == int(0.1 * 4 * 8 * 8) == detector.fitted_size()  # our PatchCore keeps as many
    else:
        assert detector.fitted_size() is None


def test_benchmark_has_working_anomalib_rows(tiny_benchmark):
    result = run_benchmark("efficientnet_lite0", methods=("protoad",), weights="random", batch_sizes=(1,),
                           data_root=tiny_benchmark, category="weave", image_size=64, n_images=4, repeats=1,
                           warmup=0, progress=False)
    assert "anomalib_errors" not in result["env"]
    assert {r["method"] for r in result["results"]} == {"backbone", "protoad", "anomalib_patchcore", "anomalib_padim"}


def test_our_coreset_sampler_picks_anomalibs_own_embeddings(random_lite0):
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    batches = [{"image": images[:2]}, {"image": images[2:]}]
    every = AnomalibPatchCore(random_lite0, coreset_fraction=1.0).fit(batches).memory_bank
    ours = AnomalibPatchCore(random_lite0, coreset_sampler="ours").fit(batches)
    assert len(ours.memory_bank) == int(0.1 * len(every))
    distances = torch.cdist(ours.memory_bank, every, compute_mode="donot_use_mm_for_euclid_dist")
    assert distances.min(dim=1).values.max() < 1e-5  # a subset of anomalib's own embeddings
    maps, scores = ours(images[:3])
    assert maps.shape == (3, 64, 64) and torch.isfinite(scores).all()
    with pytest.raises(ValueError, match="coreset_sampler"):
        AnomalibPatchCore(random_lite0, coreset_sampler="random")
