"""The notebooks' entry points (experiments/*_study.py) on tiny data, and the views that draw their results."""

import ast
from pathlib import Path

import pandas as pd
import pytest
import torch
from matplotlib import pyplot as plt

from protoad_lib.data import example_indices
from protoad_lib.embeddings import as_embeddings
from protoad_lib.experiments import data_study, evaluation_study, network_study, prototype_study
from protoad_lib.experiments.ablation_plan import ablation_plan
from protoad_lib.experiments.ablations import fit_baselines
from protoad_lib.experiments.comparison import EXAMPLE_DEFECTS, Evaluation, MethodResult
from protoad_lib.methods.protoad import ProtoAD
from protoad_lib.report import data_views, evaluation_views, model_views
from protoad_lib.session import setup

REPORT = Path(__file__).resolve().parents[1] / "protoad_lib" / "report"
#: What a view never needs: it draws from results (tables, arrays), never reads data or runs a network.
NOT_FOR_VIEWS = {"session", "data", "backbones", "features", "evaluation", "checkpoint", "calibration"}


@pytest.fixture(scope="module")
def run(paper_layout, tmp_path_factory):
    """The paper layouts' `bottle` and BTAD `01` at smoke size, with a random-weight backbone."""
    return setup(profile="paper", categories=["bottle", "01"], backbone="efficientnet_lite0@random",
                 data_root=paper_layout, results_dir=tmp_path_factory.mktemp("results"), smoke=True)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize("path", sorted(REPORT.glob("*.py")), ids=lambda p: p.name)
def test_views_import_nothing_that_reads_data_or_runs_a_network(path):
    tree = ast.parse(path.read_text())
    imported = {node.module.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.level == 2 and node.module}
    assert not imported & NOT_FOR_VIEWS, f"report/{path.name} imports {imported & NOT_FOR_VIEWS}"


def test_counts_and_sample_grid(run):
    counts = data_study.count_table(run)
    assert set(counts["category"]) == {"bottle", "01"}
    summary = data_views.count_summary(counts)
    assert list(summary["category"]) == ["bottle", "01"] and (summary["test anomalous"] > 0).all()
    samples = data_study.sample_images(run, max_defects=1)
    kinds = [[kind for kind, _ in picks] for _, picks in samples]
    assert all(k[:2] == ["train/good", "test/good"] and len(k) == 3 for k in kinds)
    fig = data_views.sample_grid(samples, run.profile.name)
    assert len(fig.axes) == 2 * 2 * 3 and "paper profile" in fig.texts[0].get_text()
    assert fig.axes[1 * 3].get_xlabel().endswith(f"({run.profile.image_size} px)")  # the mask row under bottle


def test_backbone_shapes_cache_entries_and_layer_maps(run):
    net = run.backbone
    layers = data_study.backbone_table(net, run.profile.image_size)
    assert list(layers["layer"]) == [*net.layers, "embedding (concatenated)"]
    assert layers["channels"].iloc[-1] == sum(layers["channels"].iloc[:-1])
    shapes = data_study.embedding_shapes(net, data_study.first_test_images(run, 2))
    assert shapes["shape"].iloc[0] == str([2, 3, run.profile.image_size, run.profile.image_size])
    entries = data_study.cache_entries(run)
    table = data_views.cache_table(entries)
    assert [(r.category, r.split) for r in table.itertuples()] == [("bottle", "train"), ("bottle", "test"),
                                                                    ("01", "train"), ("01", "test")]
    assert all(size == path.stat().st_size for *_, path, size in entries)
    examples = data_study.defective_examples(run)
    assert all(sample["label"] == 1 for _, sample in examples)
    rows = data_study.layer_maps(net, examples)
    assert [name for name, _, _ in rows[0][2]] == net.layers
    assert all(isinstance(m, torch.Tensor) and m.device.type == "cpu" and m.dim() == 3 for _, _, m in rows[0][2])
    fig = data_views.layer_maps_figure(rows, net.name)
    assert len(fig.axes) >= 2 * 2 * (1 + len(net.layers)) and net.name in fig.texts[0].get_text()


def refuse_to_compute(*args, **kwargs):
    raise AssertionError("a stored unit was computed again")


def test_notebook_03_and_04_read_their_stored_units_back(run, monkeypatch):
    """Each category of notebooks 03 and 04 is a stored unit: a second pass (the serial pass after a spread run)
    computes none and shows the same hierarchy, usage, comparison, networks and proof."""
    clustering, networks = prototype_study.study_clustering(run), network_study.build_networks(run)
    monkeypatch.setattr(prototype_study, "clustering_unit", refuse_to_compute)
    monkeypatch.setattr(network_study, "proved_network", refuse_to_compute)
    clustering_again, networks_again = prototype_study.study_clustering(run), network_study.build_networks(run)
    pd.testing.assert_frame_equal(model_views.hierarchy_table(clustering_again.finch),
                                  model_views.hierarchy_table(clustering.finch))
    pd.testing.assert_frame_equal(clustering_again.comparison, clustering.comparison)
    assert all((clustering_again.usage[c] == clustering.usage[c]).all() for c in clustering.usage)
    assert clustering_again.describe() == clustering.describe()
    for (_, vectors, hierarchy, level), (_, first_vectors, _, first_level) in zip(clustering_again.panels,
                                                                                 clustering.panels):
        assert (vectors == first_vectors).all() and level == first_level and len(hierarchy.labels) == len(vectors)
    pd.testing.assert_frame_equal(networks_again.equivalence, networks.equivalence)
    assert networks_again.describe() == networks.describe()
    for category, detector in networks.detectors.items():
        assert torch.equal(networks_again.detectors[category].head.prototypes, detector.head.prototypes)
        assert torch.equal(networks_again.images(category), networks.images(category))


def test_networks_equal_brute_force_map_export_and_reload(run, tmp_path):
    networks = network_study.build_networks(run)
    assert list(networks.detectors) == ["bottle", "01"]
    assert networks.describe().splitlines()[0].startswith(f"bottle: K = {networks.detectors['bottle'].k} prototypes")
    assert networks.worst_difference < 1e-5
    shown = model_views.equivalence_table(networks.equivalence)
    assert list(shown.columns) == ["category", "K", "patches compared", "mean patch score", "below 1e-5"]
    assert shown["below 1e-5"].all()
    rows, scores = network_study.example_maps(networks)
    assert len(rows) == len(scores) == sum(len(examples) for examples in networks.examples.values())
    assert scores["image"].iloc[0].startswith("bottle/test/good/")
    assert rows[0][3].shape == rows[0][1].shape[-2:] and scores["image score"].iloc[0] == round(rows[0][4], 4)
    fig = model_views.anomaly_map_figure(rows)
    assert len(fig.axes) == 4 * len(rows) + 1  # four panels per example and the shared colour bar
    detector, batch = networks.detectors["bottle"], networks.images("bottle")
    exported = network_study.export_network(detector, batch, tmp_path, "protoad_bottle", run.profile.image_size)
    assert exported.torchscript.is_file() and exported.torchscript_diff < 1e-4
    assert (exported.onnx is None) == bool(exported.missing)
    if exported.onnx is not None:
        assert exported.onnx_diff < 1e-4
    reloaded, metadata, round_trip = network_study.checkpoint_round_trip(
        detector, batch, tmp_path / "bottle.safetensors", run.profile.image_size, run.profile.resize)
    assert metadata["method"] == "protoad" and reloaded.k == detector.k and round_trip < 1e-6


def test_head_equivalence_reads_the_embeddings_in_chunks_and_compares_every_patch(random_lite0):
    channels = sum(random_lite0.channels)
    embeddings = as_embeddings(torch.randn(5, channels, 6, 7, generator=torch.Generator().manual_seed(0)))
    detector = ProtoAD(random_lite0, prototypes=torch.randn(9, channels, generator=torch.Generator().manual_seed(1)))
    with torch.inference_mode():
        whole = detector.patch_scores(embeddings.to_tensor())
    rows = [network_study.head_equivalence("x", detector, embeddings, batch_size) for batch_size in (1, 2, 8)]
    assert all(row["patches compared"] == 5 * 6 * 7 and row["K"] == 9 for row in rows)
    assert all(row["max |difference|"] < 1e-5 for row in rows)
    assert {row["mean patch score"] for row in rows} == {round(float(whole.double().mean()), 4)}


def test_overlay_examples_carry_every_methods_map_scale_and_score(run):
    spec, category = run.categories[0]
    test = run.dataset(spec, category, "test")
    size = run.profile.image_size
    outcomes = {(category, method): MethodResult({}, {}, torch.linspace(0, 1, len(test)),
                                                 {i: torch.full((size, size), float(i)) for i in range(len(test))},
                                                 (0.0, float(len(test))))
                for method in ("protoad", "padim")}
    evaluation = Evaluation(pd.DataFrame(), pd.DataFrame(), {category: test}, outcomes)
    examples = evaluation_study.overlay_examples(evaluation, ("protoad", "padim"))
    indices = example_indices(test, EXAMPLE_DEFECTS)
    assert [example.sample["path"] for example in examples] == [test.samples[i].path for i in indices]
    anomaly_map, scale, score = examples[1].maps["padim"]
    assert float(anomaly_map[0, 0]) == indices[1] and scale == (0.0, len(test))
    assert score == float(outcomes[(category, "padim")].scores[indices[1]])
    fig = evaluation_views.overlay_grid(examples)
    assert len(fig.axes) == len(examples) * (1 + 2) + len(examples) * 2  # panels and one colour bar per map
    assert evaluation_study.complete_datasets(run) == []  # two categories of MVTec AD and BTAD: neither is whole


def test_clustering_study_runs_the_recipe_once_per_category(run):
    study = prototype_study.study_clustering(run)
    assert list(study.finch) == list(study.usage) == ["bottle", "01"]
    config = ablation_plan(run.profile, run.device).config(seed=run.seed)
    for (category, found), (_, vectors, hierarchy, level) in zip(study.finch.items(), study.panels):
        assert found.n_vectors == len(vectors) <= config.max_vectors and hierarchy is found.hierarchy
        fitted = fit_baselines(run.backbone, [run.load(*run.categories[list(study.finch).index(category)])], config)
        assert level == found.level == next(iter(fitted.values())).prototype_set.level  # the fit's own level
        n, _, h, w = run.load(*run.categories[list(study.finch).index(category)]).train_embeddings.shape
        assert study.usage[category].sum() == n * h * w  # every training patch, not only the clustered ones
        assert len(study.usage[category]) == found.hierarchy.num_clusters[found.level]
    assert study.describe().splitlines()[1].startswith("01: ")
    levels = model_views.hierarchy_table(study.finch)
    assert (levels.groupby("category")["used by ProtoAD"].apply(lambda s: (s == "yes").sum()) == 1).all()
    assert list(model_views.cost_table(study.finch)["category"]) == ["bottle", "01"]
    assert list(study.comparison["setting"]) == [*prototype_study.COMPARED] * 2
