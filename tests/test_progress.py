"""Long steps show their progress on stderr: PRN's epochs, PatchCore's coreset steps, the methods of a category."""

from __future__ import annotations

import pytest

from protoad_lib.categories import load_category
from protoad_lib.evaluation import fit_and_score
from protoad_lib.methods import make_detector


@pytest.fixture()
def bars_on(monkeypatch):
    """Bars on, whatever an earlier test's quiet run set (`TQDM_DISABLE`)."""
    monkeypatch.delenv("TQDM_DISABLE", raising=False)


@pytest.fixture()
def weave(tiny_benchmark, random_lite0):
    return load_category(random_lite0, tiny_benchmark, "weave", resize=64, image_size=64, progress=False)


def test_prn_fitted_for_an_evaluation_shows_its_epochs(weave, random_lite0, bars_on, capsys):
    fit_and_score(make_detector("prn", random_lite0, epochs=2), weave)
    err = capsys.readouterr().err
    assert "prn: train" in err and "2/2" in err and "epoch" in err


def test_patchcore_fitted_for_an_evaluation_shows_its_coreset_steps(weave, random_lite0, bars_on, capsys):
    detector = make_detector("patchcore", random_lite0)
    fit_and_score(detector, weave)
    bank = detector.fitted_size()
    err = capsys.readouterr().err
    assert f"coreset:   0%|          | 0/{bank} [00:00<?, ?step/s]" in err  # one step per point of the bank


def test_an_evaluation_can_be_quiet(weave, random_lite0, bars_on, capsys):
    fit_and_score(make_detector("prn", random_lite0, epochs=1), weave, progress=False)
    assert capsys.readouterr().err == ""


def test_an_evaluation_run_names_the_method_at_work_in_each_category(paper_layout, tmp_path, bars_on, capsys):
    from protoad_lib.experiments.comparison import evaluate_run
    from protoad_lib.session import setup

    run = setup(profile="paper", categories=["bottle"], backbone="efficientnet_lite0", data_root=paper_layout,
                results_dir=tmp_path, smoke=True)
    evaluate_run(run, methods=("padim", "patchcore"))
    err = capsys.readouterr().err
    assert "bottle: PaDiM" in err and "bottle: PatchCore-10%" in err
    assert "bottle: PatchCore-10%:  50%|" in err and "| 1/2 [" in err and "method" in err


def test_protoad_evaluate_shows_prns_epochs_on_stderr(tiny_benchmark, bars_on, capsys):
    from protoad_lib.cli import main

    code = main(["evaluate", "--data-root", str(tiny_benchmark), "--category", "weave", "--method", "prn",
                 "--epochs", "2", "--resize", "64", "--image-size", "64"])
    assert code == 0
    captured = capsys.readouterr()
    assert "prn: train" in captured.err and "2/2" in captured.err and "epoch" in captured.err
    assert "image_auroc" in captured.out and "prn: train" not in captured.out
