"""ProtoAD ablations on a tiny synthetic category (real backbone pass, real FINCH, real metrics)."""


from dataclasses import replace

import pandas as pd
import pytest
import torch

from protoad_lib.experiments import ablations
from protoad_lib.experiments.ablations import METRIC_COLUMNS
from protoad_lib.categories import load_category
from protoad_lib.embeddings import as_embeddings
from protoad_lib.features import combine_layers
from protoad_lib.methods.base import split_layers
from protoad_lib.methods.protoad import ProtoADConfig, nearest_prototype_distance
from protoad_lib.profiles import get_profile
from protoad_lib.report import ablation_views
from protoad_lib.report import published as published_tables

SIZE, RESIZE = 64, 73


@pytest.fixture(scope="module")
def root(tiny_benchmark):
    return tiny_benchmark


@pytest.fixture(scope="module")
def backbone(random_lite0):
    return random_lite0


@pytest.fixture(scope="module")
def data(root, backbone):
    return load_category(backbone, root, "weave", resize=RESIZE, image_size=SIZE, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def config():
    return ProtoADConfig(max_vectors=800, seed=0)


@pytest.fixture(scope="module")
def fits(backbone, data, config):
    return ablations.fit_baselines(backbone, [data], config)


def assert_metrics(table: pd.DataFrame, rows: int) -> None:
    assert len(table) == rows
    assert {"ablation", "setting", "category", "K", *METRIC_COLUMNS} <= set(table.columns)
    values = table[list(METRIC_COLUMNS)].to_numpy(dtype=float)
    assert ((values >= 0) & (values <= 1)).all()


def test_finch_levels_one_row_each_with_k_decreasing(backbone, data, config, fits):
    table = ablations.finch_level_ablation(backbone, [data], config, fits)
    hierarchy = fits["weave"].prototype_set.hierarchy
    assert_metrics(table, len(hierarchy.num_clusters))
    assert list(table["level"]) == list(range(len(hierarchy.num_clusters)))
    assert list(table["K"]) == hierarchy.num_clusters
    assert table["K"].is_monotonic_decreasing and table["K"].is_unique
    assert table["default"].sum() == 1
    assert int(table.loc[table["default"], "K"].iloc[0]) == fits["weave"].k
    # the default level reproduces the reference fit exactly
    reference = ablations.score(fits["weave"], data).metrics
    row = table[table["default"]].iloc[0]
    assert all(row[m] == pytest.approx(reference[m], abs=1e-12) for m in METRIC_COLUMNS)


def test_sigma_changes_the_maps_and_pixel_metrics(backbone, data, config, fits):
    table = ablations.sigma_ablation(backbone, [data], (0, 4), config, fits)
    assert_metrics(table, 2)
    assert list(table["sigma"]) == [0.0, 4.0]
    raw, smoothed = table.iloc[0], table.iloc[1]
    assert (raw["pixel_auroc"], raw["aupro"]) != (smoothed["pixel_auroc"], smoothed["aupro"])
    # sigma 4 is the reference model
    reference = ablations.score(fits["weave"], data).metrics
    assert smoothed["pixel_auroc"] == pytest.approx(reference["pixel_auroc"], abs=1e-12)
    assert fits["weave"].sigma == 4.0  # the reference fit is left untouched


def test_layer_subsets(backbone, data, config, fits):
    full = ablations.layer_subset(data.train_embeddings, backbone, (1, 2, 3))
    assert full is data.train_embeddings  # every layer: the embedding itself, no copy
    deep = ablations.layer_subset(data.test_embeddings, backbone, (2, 3))
    assert deep.shape[1] == backbone.channels[1] + backbone.channels[2]
    assert deep.shape[-1] == data.test_embeddings.shape[-1] // 2  # stride 8 grid
    with pytest.raises(ValueError):
        ablations.layer_subset(data.test_embeddings, backbone, (0,))
    table = ablations.layer_ablation(backbone, [data], ((1, 2, 3), (2, 3), (1,)), config, fits)
    assert_metrics(table, 3)
    assert list(table["setting"]) == ["1+2+3", "2+3", "1"]
    assert list(table["channels"]) == [sum(backbone.channels), deep.shape[1], backbone.channels[0]]
    assert table["grid"].iloc[1] == f"{deep.shape[-2]} x {deep.shape[-1]}"


@pytest.mark.parametrize("subset", [(1,), (1, 3), (2, 3), (3,)])
def test_a_layer_subset_view_reads_what_splitting_and_combining_the_whole_tensor_gives(backbone, data, subset):
    tensor = data.test_embeddings.to_tensor()  # a tiny category: the in-memory reference
    maps = split_layers(tensor, backbone.channels, backbone.strides)
    expected = combine_layers([maps[i - 1] for i in subset])
    view = ablations.layer_subset(data.test_embeddings, backbone, subset)
    assert view.shape == tuple(expected.shape)
    assert torch.equal(torch.cat(list(view.chunks(3))), expected)
    assert torch.equal(view.read([4, 0]), expected[[4, 0]])
    if subset[0] == 1:  # the stride-4 grid kept: windows and single patch vectors read through the view
        assert torch.equal(view.read([2, 1], rows=slice(3, 7), cols=slice(1, 5)), expected[[2, 1], :, 3:7, 1:5])
        flat = expected.permute(0, 2, 3, 1).reshape(-1, expected.shape[1])
        indices = [0, 17, len(flat) - 1, 5]
        assert torch.equal(view.gather(indices), flat[indices])


def test_a_fit_on_a_layer_subset_view_equals_the_fit_on_its_tensor(backbone, data, config):
    view = ablations.layer_subset(data.train_embeddings, backbone, (1, 2))
    streamed = ablations.fit_protoad(backbone, data, config, train_embeddings=view)
    in_memory = ablations.fit_protoad(backbone, data, config, train_embeddings=as_embeddings(view.to_tensor()))
    assert torch.equal(streamed.head.prototypes, in_memory.head.prototypes)


def test_the_held_out_distance_reads_the_normal_test_images_only(backbone, data, fits):
    normal = torch.nonzero(data.labels == 0).flatten()
    assert 0 < len(normal) < len(data.labels)
    table = ablations.clustering_method_ablation(backbone, [data], ("finch",), fits=fits)
    prototypes = fits["weave"].head.prototypes
    expected = nearest_prototype_distance(data.test_embeddings.to_tensor()[normal], prototypes).double().mean()
    assert table["held_out_distance"].iloc[0] == pytest.approx(float(expected), abs=1e-12)


def test_the_level_rule_reuses_the_reference_hierarchy_and_its_default_reproduces_the_reference(backbone, data,
                                                                                                   config, fits):
    from protoad_lib.experiments.level_rule import level_rule_ablation

    reference = fits["weave"]
    rules = {"budget only": {"level_rule": "budget"}, "default": {"level_rule": config.level_rule}}
    table = level_rule_ablation(backbone, [data], fits, rules=rules, repeats=1)
    assert_metrics(table, 2)
    hierarchy = reference.prototype_set.hierarchy
    assert table["level"].iloc[0] == hierarchy.default_level(config.max_prototypes)
    assert (table["level"].iloc[1], table["K"].iloc[1]) == (reference.prototype_set.level, reference.k)
    metrics = ablations.score(reference, data).metrics
    assert all(table[m].iloc[1] == pytest.approx(metrics[m], abs=1e-12) for m in METRIC_COLUMNS)


def test_clustering_methods_share_finch_k(backbone, data, config, fits):
    table = ablations.clustering_method_ablation(backbone, [data], config=config, fits=fits)
    assert_metrics(table, 4)
    assert list(table["setting"]) == ["finch", "kmeans", "coreset", "random"]
    k = fits["weave"].k
    assert (table.loc[table["setting"] != "coreset", "K"] == k).all()
    # clustering.build_prototypes asks the coreset sampler for the fraction k / n, and int(n * (k / n))
    # can truncate to k - 1 in floating point; the table reports the K actually built.
    assert k - 1 <= int(table.loc[table["setting"] == "coreset", "K"].iloc[0]) <= k


def test_subsampling_rows_and_budgets(backbone, data, config, fits):
    table = ablations.subsampling_ablation(backbone, [data], ("random", "stratified"), (400, 800), config, fits)
    # random@800, stratified@800 (reference), stratified@400; 800 is not repeated
    assert_metrics(table, 3)
    assert list(zip(table["strategy"], table["max_vectors"])) == [("random", 800), ("stratified", 800),
                                                                  ("stratified", 400)]
    assert (table["n_vectors"] <= table["max_vectors"]).all()


def test_image_score_rule_only_changes_image_scores(backbone, data, config, fits):
    table = ablations.image_score_ablation(backbone, [data], config=config, fits=fits)
    assert_metrics(table, 2)
    assert table["pixel_auroc"].nunique() == 1 and table["aupro"].nunique() == 1


def test_image_size_reextracts(root, backbone, config, tmp_path):
    from protoad_lib.features import FeatureCache

    cache = FeatureCache(tmp_path / "cache")
    table = ablations.image_size_ablation(backbone, root, "weave", sizes=(48, 64), config=config, cache=cache,
                                          dataset_name="mini", base_resize=RESIZE, base_crop=SIZE)
    assert_metrics(table, 2)
    assert list(table["grid"]) == ["12 x 12", "16 x 16"]
    assert list(table["resize"]) == [ablations.resize_for(48, RESIZE, SIZE), RESIZE]
    again = ablations.image_size_ablation(backbone, root, "weave", sizes=(48, 64), config=config, cache=cache,
                                          dataset_name="mini", base_resize=RESIZE, base_crop=SIZE)
    pd.testing.assert_frame_equal(table, again)  # cached re-run, same numbers


def test_ablations_are_deterministic(backbone, data, config):
    first = ablations.finch_level_ablation(backbone, [data], config)
    second = ablations.finch_level_ablation(backbone, [data], config)
    pd.testing.assert_frame_equal(first, second)


def test_ablation_plan_follows_the_profile_budget():
    plan = ablations.ablation_plan(get_profile("demo"))
    assert plan.max_vectors == get_profile("demo").max_vectors == plan.config().max_vectors
    assert plan.budgets[-1] == plan.max_vectors and "coreset" not in plan.strategies
    assert ablations.ablation_plan(get_profile("paper")).max_vectors > plan.max_vectors


def test_prn_ablation_follows_the_device_and_trains_once_per_paper_run():
    demo = ablations.ablation_plan(get_profile("demo"))
    assert (demo.prn_epochs, demo.prn_schedule, demo.prn_categories) == ((5, 15), "cpu", None)
    cpu = ablations.ablation_plan(get_profile("paper"))
    assert (cpu.prn_epochs, cpu.prn_seen, cpu.prn_schedule, cpu.prn_categories) == ((10, 30), (10,), "cpu", 1)
    gpu = ablations.ablation_plan(get_profile("paper"), "cuda:0")
    assert (gpu.prn_epochs, gpu.prn_schedule) == ((233, 700), "full")
    short = ablations.ablation_plan(replace(get_profile("paper"), prn_epochs=3), "cuda")
    assert short.prn_epochs == (1, 3) and short.prn_schedule == "full"
    one = ablations.ablation_plan(replace(get_profile("paper"), prn_epochs=1))
    assert one.prn_epochs == (1,) and one.prn_seen == (10,)  # one training length, not the same one twice


def test_the_paper_profile_runs_the_npad_and_prn_ablations_on_its_first_category_only():
    demo, paper = ablations.ablation_plan(get_profile("demo")), ablations.ablation_plan(get_profile("paper"))
    assert all(demo.ablates(name, 5) for name in ablations.ABLATIONS if name != "image_size")
    assert paper.ablates("npad", 0) and paper.ablates("prn", 0) and paper.ablates("image_size", 7)
    assert not paper.ablates("npad", 1) and not paper.ablates("prn", 1) and paper.ablates("layers", 17)
    assert not demo.ablates("image_size", 1)  # the demo re-extracts features at other sizes for one category


def test_ablation_table_adds_means(backbone, data, config, fits):
    table = ablations.sigma_ablation(backbone, [data], (0, 4), config, fits)
    two = pd.concat([table, table.assign(category="copy")], ignore_index=True)
    shown = ablation_views.ablation_table(two)
    assert list(shown["category"]) == ["weave", "copy", "mean", "weave", "copy", "mean"]
    assert shown.loc[2, "aupro"] == round(table.loc[0, "aupro"], 4)


# The cited published numbers the evaluation notebook compares with (data/paper_tables/).


def test_published_tables_cite_every_number():
    published = published_tables.load_published()
    assert published["source"].str.strip().str.len().gt(20).all()
    assert set(published["metric"]) <= {"image_auroc", "pixel_auroc", "aupro"}
    assert published["value"].between(0, 100).all()
    assert not published["method"].str.contains("ProtoAD", case=False).any()
    readme = published_tables.PUBLISHED_DIR / "README.md"
    for name in published["file"].unique():
        assert name in readme.read_text(), f"{name} is not listed in {readme.name}"


def test_comparison_table_difference_in_points():
    published = published_tables.load_published()
    ours = pd.DataFrame([{"dataset": "mvtec", "category": "bottle", "method": "patchcore", "image_auroc": 0.99,
                          "pixel_auroc": 0.98, "aupro": 0.95, "image_f1": 1.0, "pixel_f1": 0.7, "k": 10}])
    table = published_tables.comparison_table(ours, published)
    bottle = table[(table["metric"] == "image AUROC")]
    assert len(bottle) == 1  # patchcore-inspection results.csv: 100.00
    assert bottle["difference (pp)"].iloc[0] == pytest.approx(99.0 - 100.0)
    assert (table["category"] == "bottle").all()  # no mean row: the run is not complete
    synthetic = ours.assign(dataset="synthetic_mini")
    assert published_tables.comparison_table(synthetic, published, complete=["synthetic_mini"]).empty


def test_npad_ablation_shares_its_gaussians_and_matches_fitting_each_setting_alone(backbone, data):
    from protoad_lib.evaluation import fit_and_score
    from protoad_lib.experiments.npad_ablations import npad_ablation
    from protoad_lib.methods import get_method, make_detector

    sweeps = (("radius", (0, 1)), ("n_centroids", (0, 16)), ("test_neighbourhood", ("pooled",)),
              ("fusion", ("max", {"fusion": "weighted", "centroid_weight": 0.8})))
    table = npad_ablation(backbone, data, sweeps)
    assert_metrics(table, 7)
    assert list(table["ablation"]) == ["npad_radius"] * 2 + ["npad_n_centroids"] * 2 + ["npad_test_neighbourhood"] \
        + ["npad_fusion"] * 2
    assert list(table["K"]) == [64, 64, 0, 16, 64, 64, 64]
    for (option, value), row in zip([(o, v) for o, values in sweeps for v in values], table.itertuples()):
        changed = value if isinstance(value, dict) else {option: value}
        alone = fit_and_score(make_detector("npad", backbone, **{**get_method("npad").options, **changed}), data)
        for metric in ("image_auroc", "pixel_auroc", "aupro"):
            assert getattr(row, metric) == pytest.approx(alone.metrics[metric], abs=1e-6), (option, value, metric)


def test_npad_ablation_holds_one_group_of_fitted_gaussians_at_a_time(backbone, data, monkeypatch):
    import gc
    import weakref

    from protoad_lib.experiments import npad_ablations

    fit_together, fitted = npad_ablations.fit_and_score_together, []

    def recording(category_data, detectors):
        gc.collect()
        alive = [reference() for reference in fitted if reference() is not None]
        assert alive == [], "an earlier group's Gaussians are still held"
        results = fit_together(category_data, detectors)
        fitted.extend(weakref.ref(detector.gaussian.cov_inv) for detector in detectors)
        return results

    monkeypatch.setattr(npad_ablations, "fit_and_score_together", recording)
    table = npad_ablations.npad_ablation(backbone, data, (("radius", (0, 1)), ("n_centroids", (0, 16))))
    assert len(table) == 4 and len(fitted) == 4  # radius 0; radius 1 with the default 64, 0 and 16 centroids


def test_a_categorical_ablation_plot_places_each_row_at_its_setting_even_when_a_setting_repeats():
    table = pd.DataFrame({"ablation": "prn", "category": "bottle", "setting": ["15 epochs", "5 epochs", "15 epochs"],
                          "image_auroc": [0.9, 0.8, 0.7], "pixel_auroc": 0.9, "aupro": 0.8})
    figure = ablation_views.ablation_plot(table, title="PRN", xlabel="training setting")
    line = figure.axes[0].lines[0]
    assert list(line.get_xdata()) == [0, 0, 1] and list(line.get_ydata()) == [0.9, 0.7, 0.8]
    assert [label.get_text() for label in figure.axes[0].get_xticklabels()] == ["15 epochs", "5 epochs"]
