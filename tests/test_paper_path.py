"""The paper path on tiny data in the real layouts: resumable evaluation, and all seven notebooks end to end."""

from dataclasses import replace
from functools import partial

import pandas as pd
import pytest

from protoad_lib.experiments import comparison
from protoad_lib.run import run_notebooks
from protoad_lib.session import RunSetup, setup

CATEGORIES = ["bottle", "grid", "01", "02"]


def paper_run(paper_layout, results_dir, **options):
    return setup(profile="paper", categories=CATEGORIES, backbone="efficientnet_lite0", data_root=paper_layout,
                 results_dir=results_dir, smoke=True, **options)


def test_an_interrupted_run_restarted_redoes_no_finished_category(paper_layout, tmp_path, monkeypatch):
    """One method (PaDiM, the quickest) is enough: what is stored and skipped does not depend on the method."""
    calls, loads = [], []
    original_score, original_load = comparison.score_method, RunSetup.load
    evaluate = partial(comparison.evaluate_run, methods=("padim",))

    def counting_score(backbone, data, dataset, method, options, device=None):
        calls.append((data.name, method))
        if data.name == "01" and interrupt[0]:
            raise KeyboardInterrupt  # the machine goes away in the middle of category 01
        return original_score(backbone, data, dataset, method, options, device)

    def counting_load(self, spec, category):
        loads.append(category)
        return original_load(self, spec, category)

    monkeypatch.setattr(comparison, "score_method", counting_score)
    monkeypatch.setattr(RunSetup, "load", counting_load)
    interrupt = [True]
    with pytest.raises(KeyboardInterrupt):
        evaluate(paper_run(paper_layout, tmp_path))
    assert {category for category, _ in calls} == {"bottle", "grid", "01"}

    calls.clear(), loads.clear()
    interrupt[0] = False
    resumed = evaluate(paper_run(paper_layout, tmp_path))
    assert {category for category, _ in calls} == {"01", "02"}  # bottle and grid came from the store
    assert loads == ["01", "02"]  # finished categories are not even loaded
    assert len(resumed.results) == 4 and set(resumed.results["category"]) == set(CATEGORIES)

    calls.clear()
    redone = evaluate(paper_run(paper_layout, tmp_path, redo=True))
    assert len(calls) == 4
    pd.testing.assert_frame_equal(redone.results.drop(columns="k"), resumed.results.drop(columns="k"))

    calls.clear()
    evaluate(paper_run(paper_layout, tmp_path), options={"padim": {"epsilon": 0.02}})
    assert len(calls) == 4  # other method options: nothing stored is reused


def test_an_interrupted_ablation_run_resumes_after_its_last_finished_ablation(paper_layout, tmp_path, monkeypatch):
    """Interrupted in the sigma ablation of its first category: the rerun redoes neither that category's
    earlier ablations nor the reference fit they share when nothing left needs it."""
    from protoad_lib.experiments import ablations

    calls, fits = [], []
    original_sigma, original_fit = ablations.sigma_ablation, ablations.fit_baselines

    def counting_sigma(*args, **kwargs):
        calls.append("sigma")
        if interrupt[0]:
            raise KeyboardInterrupt
        return original_sigma(*args, **kwargs)

    def counting_fit(*args, **kwargs):
        fits.append(1)
        return original_fit(*args, **kwargs)

    monkeypatch.setattr(ablations, "sigma_ablation", counting_sigma)
    monkeypatch.setattr(ablations, "fit_baselines", counting_fit)
    run = setup(profile="paper", categories=["bottle"], backbone="efficientnet_lite0", data_root=paper_layout,
                results_dir=tmp_path, smoke=True)
    plan = ablations.ablation_plan(run.profile, run.device)
    plan = replace(plan, npad_categories=0, prn_categories=0, image_size_categories=0)  # not needed here
    interrupt = [True]
    with pytest.raises(KeyboardInterrupt):
        ablations.run_ablations(run, plan, plan.config(seed=run.seed))
    stored = sorted(path.name.split("__")[1] for path in (tmp_path / "cache" / "ablations").glob("*.safetensors"))
    assert stored == sorted(["layers", "finch_level", "level_rule", "clustering", "subsampling"])

    interrupt[0], fits[:] = False, []
    resumed = ablations.run_ablations(run, plan, plan.config(seed=run.seed))
    assert calls == ["sigma", "sigma"] and len(fits) == 1  # sigma needs the reference fit again
    assert list(resumed["seconds"]["ablation"]) == ["layers", "finch_level", "level_rule", "clustering",
                                                     "subsampling", "sigma", "image_score"]
    fits[:] = []
    again = ablations.run_ablations(run, plan, plan.config(seed=run.seed))
    assert calls == ["sigma", "sigma"] and fits == []  # all stored: nothing loaded, nothing fitted
    pd.testing.assert_frame_equal(again["layers"], resumed["layers"])


def test_all_seven_notebooks_run_on_the_paper_layouts(paper_layout, tmp_path):
    results = run_notebooks("paper", results_dir=tmp_path, stream=False, log=lambda text: None,
                            parameters={"categories": CATEGORIES, "backbone": "efficientnet_lite0",
                                        "data_root": str(paper_layout), "smoke": True})
    assert [r.name[:2] for r in results] == ["01", "02", "03", "04", "05", "06", "07"]
    out = tmp_path / "paper"
    table = pd.read_csv(out / "05_results.csv", dtype={"category": str})
    assert set(table["category"]) == {*CATEGORIES, "mean of 2 categories"}
    assert table["image_auroc"].between(0, 1).all()
    counts = pd.read_csv(out / "01_counts.csv", dtype={"category": str})
    assert set(counts["category"]) == set(CATEGORIES)
    assert (out / "05_overlays.png").is_file() and (out / "07_summary.csv").is_file()
    prn = pd.read_csv(out / "07_prn.csv", dtype={"category": str})
    assert set(prn["category"]) == {"bottle"}  # PRN's ablation trains on the first category only
    seconds = pd.read_csv(out / "07_ablation_seconds.csv", dtype={"category": str})
    ablated = seconds.groupby("ablation")["category"].agg(set)
    assert ablated["npad"] == ablated["prn"] == ablated["image_size"] == {"bottle"}  # the costly ones: first only
    assert ablated["layers"] == set(CATEGORIES) and (seconds["seconds"] >= 0).all()
    assert (out / "html" / "index.html").read_text().count("<li>") == 7


def test_prn_training_length_is_a_run_setting(paper_layout, tmp_path):
    default, short = paper_run(paper_layout, tmp_path), paper_run(paper_layout, tmp_path, prn_epochs=3)
    # smoke: one epoch unless asked; the method reads the profile (`PRN.run_options`), the run asks the method
    assert default.method_options("prn")["epochs"] == 1 and short.method_options("prn")["epochs"] == 3
    assert "PRN        : 3 epochs, cpu schedule" in short.describe()
    assert comparison.method_options(short.profile, short.device)["prn"]["epochs"] == 3
    on_cuda = setup(profile="paper", categories=["bottle"], device="cuda")
    assert on_cuda.method_options("prn") == {"seed": 0, "schedule": "full"}  # the full schedule's 700 epochs
    assert "PRN        : 700 epochs, full schedule" in on_cuda.describe()
    with pytest.raises(ValueError, match="prn_epochs"):
        paper_run(paper_layout, tmp_path, prn_epochs=0)
