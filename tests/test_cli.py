"""`protoad fit | predict | evaluate` end to end on the synthetic mini benchmark."""

import argparse
import csv
import json
import shutil
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image

from protoad_lib.checkpoint import read_checkpoint
from protoad_lib.cli import build_parser, main


@pytest.fixture(scope="module")
def benchmark(tiny_benchmark):
    return tiny_benchmark


def test_fit_then_predict_writes_checkpoint_heatmaps_and_scores(benchmark, tmp_path, capsys):
    model = tmp_path / "weave.safetensors"
    common = ["--resize", "128", "--image-size", "112"]
    assert main(["fit", "--data-root", str(benchmark), "--category", "weave", "--out", str(model), *common]) == 0
    assert model.is_file() and "K:" in capsys.readouterr().out

    test_dir = benchmark / "weave" / "test" / "good"
    broken = tmp_path / "inputs"
    broken.mkdir()
    (broken / "truncated.png").write_bytes((test_dir / "000.png").read_bytes()[:200])
    Image.open(test_dir / "001.png").save(broken / "fine.png")
    out = tmp_path / "out"
    code = main(["predict", "--model", str(model), str(test_dir / "000.png"), str(broken), "--out", str(out)])
    assert code == 0
    with open(out / "scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["image"].rsplit("/", 1)[-1] for row in rows) == ["000.png", "fine.png"]
    assert all(float(row["score"]) >= 0 for row in rows)
    assert sorted(p.name for p in out.glob("*.png")) == ["000_heatmap.png", "fine_heatmap.png"]
    assert Image.open(out / "fine_heatmap.png").height == 96  # the image's own size (a colour bar beside it)
    assert "1 unreadable" in capsys.readouterr().out


def test_fit_from_plain_folder(benchmark, tmp_path):
    model = tmp_path / "folder.safetensors"
    train_dir = benchmark / "weave" / "train" / "good"
    assert main(["fit", "--train-dir", str(train_dir), "--out", str(model), "--image-size", "96"]) == 0
    assert model.is_file()


def test_missing_model_or_inputs_exit_2_with_a_message(tmp_path, capsys):
    assert main(["predict", "--model", str(tmp_path / "absent.safetensors"), str(tmp_path), "--out",
                 str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["fit", "--data-root", str(tmp_path), "--category", "nothing", "--out", str(tmp_path / "m")]) == 2
    assert "nothing" in capsys.readouterr().err


def test_evaluate_writes_all_metric_keys(benchmark, tmp_path, capsys):
    report = tmp_path / "metrics.json"
    code = main(["evaluate", "--data-root", str(benchmark), "--category", "weave", "--method", "protoad",
                 "--resize", "128", "--image-size", "112", "--json", str(report)])
    assert code == 0
    metrics = json.loads(report.read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1", "pixel_f1"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["n_train"] == 6 and metrics["n_test"] == 5
    assert metrics["fit_s"] > 0 and metrics["infer_s"] > 0
    assert metrics["weights"] == "imagenet" and metrics["K"] == metrics["fitted_size"] > 0
    assert metrics["K"] == metrics["finch_levels"][metrics["finch_level"]]  # the model size, truthfully
    assert "image_auroc" in capsys.readouterr().out


def test_evaluate_with_random_weights_says_so(benchmark, tmp_path):
    report = tmp_path / "metrics.json"
    code = main(["evaluate", "--data-root", str(benchmark), "--category", "weave", "--method", "padim",
                 "--weights", "random", "--resize", "128", "--image-size", "112", "--json", str(report)])
    assert code == 0 and json.loads(report.read_text())["weights"] == "random"


def test_evaluate_wrong_category_exits_2(benchmark, capsys):
    assert main(["evaluate", "--data-root", str(benchmark), "--category", "bottle"]) == 2
    assert "bottle" in capsys.readouterr().err


def test_evaluate_prn_with_seen_anomalies_lists_them_and_scores_without_them(benchmark, tmp_path, capsys):
    report = tmp_path / "prn.json"
    code = main(["evaluate", "--data-root", str(benchmark), "--category", "weave", "--method", "prn", "--epochs", "1",
                 "--seen-anomalies", "1", "--resize", "64", "--image-size", "64", "--json", str(report)])
    assert code == 0
    metrics = json.loads(report.read_text())
    assert metrics["n_test"] == 4 and metrics["epochs"] == 1 and metrics["schedule"] == "cpu"
    assert metrics["seen_anomalies"].endswith(".png") and "/good/" not in metrics["seen_anomalies"]
    assert main(["evaluate", "--data-root", str(benchmark), "--category", "weave", "--method", "padim",
                 "--seen-anomalies", "1"]) == 2


def _subcommands() -> list[str]:
    """Every subcommand the parser defines, read from the parser itself (new ones are tested too)."""
    actions = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    return [name for action in actions for name in action.choices]


@pytest.mark.parametrize("argv", [["--help"]] + [[name, "--help"] for name in _subcommands()], ids=" ".join)
def test_every_help_prints_usage_and_exits_0(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: protoad")


def test_method_help_keeps_a_percent_sign_of_a_summary(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert "10 % greedy coreset" in " ".join(capsys.readouterr().out.split())


@pytest.fixture
def no_embedding(monkeypatch):
    """Fails a test that reaches the embedding (and so the fit) of a category."""
    def refuse(*args, **kwargs):
        raise AssertionError("the category was embedded and fitted before its test split was checked")

    monkeypatch.setattr("protoad_lib.categories.load_category", refuse)


def test_evaluate_refuses_a_test_split_of_good_images_only_before_fitting(benchmark, tmp_path, capsys, no_embedding):
    for split in ("train", "test"):
        shutil.copytree(benchmark / "weave" / split / "good", tmp_path / "weave" / split / "good")
    assert main(["evaluate", "--data-root", str(tmp_path), "--category", "weave"]) == 2
    error = capsys.readouterr().err
    assert "2 good and 0 anomalous" in error and "AUROC needs both classes" in error and len(error.splitlines()) == 1


def test_evaluate_refuses_seen_anomalies_that_leave_none_to_score(benchmark, capsys, no_embedding):
    assert main(["evaluate", "--data-root", str(benchmark), "--category", "weave", "--method", "prn",
                 "--seen-anomalies", "3"]) == 2
    assert "3 of them trained on by --seen-anomalies" in capsys.readouterr().err


def _train_folder(benchmark: Path, folder: Path, broken: int = 0, keep: int | None = None,
                  convert: Callable[[Image.Image, Path], Image.Image] | None = None) -> Path:
    """A copy of weave's good training images (the first `keep`, each through `convert`) and `broken`
    truncated ones."""
    folder.mkdir(parents=True)
    sources = sorted((benchmark / "weave" / "train" / "good").glob("*.png"))
    for path in sources[:keep]:
        image = Image.open(path)
        (convert(image, path) if convert else image).save(folder / path.name)
    for index in range(broken):
        (folder / f"broken_{index}.png").write_bytes(sources[0].read_bytes()[:200])
    return folder


def test_fit_skips_unreadable_training_images_lists_them_and_counts_the_rest(benchmark, tmp_path, capsys):
    _train_folder(benchmark, tmp_path / "data" / "weave" / "train" / "good", broken=1)
    model = tmp_path / "model.safetensors"
    assert main(["fit", "--data-root", str(tmp_path / "data"), "--category", "weave", "--out", str(model),
                 "--image-size", "64"]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 unreadable training images" in captured.out and "fitting on 6" in captured.out
    assert "images: 6" in captured.out and model.is_file()
    assert "unreadable: " in captured.err and "broken_0.png" in captured.err


def test_fit_on_error_fail_stops_with_one_line_naming_the_image(benchmark, tmp_path, capsys):
    folder = _train_folder(benchmark, tmp_path / "train", broken=1)
    assert main(["fit", "--train-dir", str(folder), "--out", str(tmp_path / "m.safetensors"), "--image-size", "64",
                 "--on-error", "fail"]) == 2
    error = capsys.readouterr().err
    last = error.splitlines()[-1]  # after the feature extraction's progress bar
    assert last.startswith("protoad fit: error: cannot read image") and "broken_0.png" in last
    assert "--on-error skip" in last and not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize(("keep", "broken", "message"), [
    (1, 2, "1 readable training image(s) (2 unreadable, skipped); a fit needs at least 2"),
    (0, 2, "all 2 are unreadable"),
])
def test_fit_refuses_fewer_than_two_readable_images_in_one_line(benchmark, tmp_path, capsys, keep, broken, message):
    folder = _train_folder(benchmark, tmp_path / "train", broken=broken, keep=keep)
    assert main(["fit", "--train-dir", str(folder), "--out", str(tmp_path / "m.safetensors")]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and message in error


@pytest.mark.parametrize(("convert", "mode"), [
    (None, "colour"),
    (lambda image, path: image.convert("L"), "grayscale"),
    (lambda image, path: image.convert("L") if path.stem < "003" else image, "mixed"),
])
def test_fit_records_the_training_images_colour_mode(benchmark, tmp_path, convert, mode):
    folder = _train_folder(benchmark, tmp_path / "train", convert=convert)
    model = tmp_path / "m.safetensors"
    assert main(["fit", "--train-dir", str(folder), "--out", str(model), "--image-size", "64"]) == 0
    assert read_checkpoint(model)[0]["train_colour_mode"] == mode
