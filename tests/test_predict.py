"""`protoad predict` on people's own images: own geometry, a calibrated decision, output written as it goes."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from protoad_lib import predict as predict_module
from protoad_lib.calibration import PIXEL_QUANTILE, calibration_from_scores, held_out_indices
from protoad_lib.checkpoint import read_checkpoint
from protoad_lib.cli import main
from protoad_lib.data import generate_mini_benchmark, load_rgb
from protoad_lib.methods import method_names


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    """Synthetic `weave` at 128 px: 20 good training images, 4 good and 3 defective test images."""
    root = generate_mini_benchmark(tmp_path_factory.mktemp("predict_data"), seed=3, n_train=20, n_test_good=4,
                                   n_test_per_defect=1, size=128, categories=["weave"])
    return root / "weave"


@pytest.fixture(scope="module")
def model(category, tmp_path_factory):
    path = tmp_path_factory.mktemp("predict_model") / "weave.safetensors"
    assert main(["fit", "--train-dir", str(category / "train" / "good"), "--method", "padim", "--image-size", "128",
                 "--out", str(path)]) == 0
    return path


def read_rows(out):
    with open(out / "scores.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_fit_stores_whole_image_geometry_and_a_calibration(model):
    metadata, _ = read_checkpoint(model)
    assert metadata["resize"] == metadata["image_size"] == 128
    calibration = metadata["calibration"]
    assert calibration["held_out"] == 4 and calibration["fraction"] == 0.2
    assert calibration["colour_low"] < calibration["pixel_threshold"] <= calibration["image_threshold"]
    assert calibration["colour_high"] - calibration["image_threshold"] == pytest.approx(
        calibration["image_threshold"] - calibration["colour_low"])


def test_threshold_flags_defects_and_not_good_images(model, category, tmp_path):
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model), str(category / "test"), "--recursive", "--out", str(out),
                 "--workers", "0"]) == 0
    rows = read_rows(out)
    assert len(rows) == 7
    for row in rows:
        is_good = "/good/" in row["image"]
        assert row["anomalous"] == ("no" if is_good else "yes"), row
        assert (float(row["score"]) > float(row["threshold"])) == (not is_good)
        assert (float(row["anomalous_area"]) > 0.001) == (not is_good)


def test_non_square_image_gets_a_map_of_its_own_size_and_a_border_defect_is_found(model, category, tmp_path):
    good = Image.open(sorted((category / "test" / "good").glob("*.png"))[0]).convert("RGB")
    wide = good.resize((200, 128))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    wide.save(inputs / "wide_good.png")
    defect = wide.copy()
    ImageDraw.Draw(defect).rectangle((186, 50, 199, 70), fill=(250, 20, 200))  # touches the right border
    defect.save(inputs / "wide_border_defect.png")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model), str(inputs), "--out", str(out), "--save-maps", "--workers", "0"]) == 0
    rows = {row["image"].rsplit("/", 1)[-1]: row for row in read_rows(out)}
    assert rows["wide_border_defect.png"]["anomalous"] == "yes" and rows["wide_good.png"]["anomalous"] == "no"
    anomaly_map = np.load(out / "wide_border_defect_map.npy")
    assert anomaly_map.shape == (128, 200) and anomaly_map.dtype == np.float32
    peak_row, peak_column = np.unravel_index(anomaly_map.argmax(), anomaly_map.shape)
    assert peak_column >= 170 and 35 <= peak_row <= 85
    overlay = Image.open(out / "wide_border_defect_heatmap.png")
    assert overlay.height == 128 and overlay.width > 200  # the image at its own size + a colour bar


def test_interrupted_predict_keeps_what_it_finished(model, category, tmp_path, monkeypatch):
    written = predict_module.save_image_result
    calls = {"n": 0}

    def fail_after_three(*args, **kwargs):
        if calls["n"] == 3:
            raise KeyboardInterrupt
        calls["n"] += 1
        written(*args, **kwargs)

    monkeypatch.setattr(predict_module, "save_image_result", fail_after_three)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        main(["predict", "--model", str(model), str(category / "test"), "--recursive", "--out", str(out),
              "--batch-size", "4", "--workers", "0"])
    assert len(read_rows(out)) == 3
    assert len(list(out.glob("*_heatmap.png"))) == 3
    assert not list(out.glob(".*.tmp"))


def test_unreadable_files_are_listed_not_fatal_and_empty_folders_name_the_flag(model, category, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    (inputs / "sub").mkdir(parents=True)
    source = sorted((category / "test" / "good").glob("*.png"))[0]
    (inputs / "sub" / "cut.png").write_bytes(source.read_bytes()[:150])
    (inputs / "sub" / "fine.png").write_bytes(source.read_bytes())
    assert main(["predict", "--model", str(model), str(inputs), "--out", str(tmp_path / "o")]) == 2
    assert "--recursive" in capsys.readouterr().err
    assert main(["predict", "--model", str(model), str(inputs), "--recursive", "--out", str(tmp_path / "o"),
                 "--workers", "1"]) == 0
    assert "1 unreadable" in capsys.readouterr().out
    assert [row["image"].rsplit("/", 1)[-1] for row in read_rows(tmp_path / "o")] == ["fine.png"]
    with open(tmp_path / "o" / "unreadable.csv", newline="") as handle:
        assert [row["image"].rsplit("/", 1)[-1] for row in csv.DictReader(handle)] == ["cut.png"]


def test_threshold_override(model, category, tmp_path):
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model), str(category / "test" / "good"), "--out", str(out),
                 "--threshold=-1e9", "--workers", "0"]) == 0
    assert {row["anomalous"] for row in read_rows(out)} == {"yes"}
    assert {float(row["threshold"]) for row in read_rows(out)} == {-1e9}


def test_calibration_rule_and_hold_out_split():
    scores = torch.tensor([0.2, 0.5, 0.3])
    maps = torch.arange(3 * 100, dtype=torch.float32).reshape(3, 10, 10) / 300
    calibration = calibration_from_scores(scores, maps, 0.2, 0)
    assert calibration.image_threshold == pytest.approx(0.5)
    assert calibration.pixel_threshold == pytest.approx(float(torch.quantile(maps.flatten().double(), PIXEL_QUANTILE)))
    assert calibration.false_alarm_rate == pytest.approx(1 / 4)
    fit, held = held_out_indices(20, 0.2, seed=0)
    assert len(held) == 4 and sorted(fit.tolist() + held.tolist()) == list(range(20))
    assert torch.equal(held, held_out_indices(20, 0.2, seed=0)[1])
    assert held_out_indices(2, 0.2, seed=0) is None and held_out_indices(20, 0.0, seed=0) is None


def test_exif_orientation_is_respected(tmp_path):
    image = Image.new("RGB", (60, 40), (10, 200, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "phone.jpg", exif=exif)
    assert load_rgb(tmp_path / "phone.jpg").size == (40, 60)


@pytest.mark.parametrize("method", method_names())
def test_every_method_fits_calibrated_and_predicts_in_the_image_geometry(method, tiny_benchmark, tmp_path):
    model = tmp_path / f"{method}.safetensors"
    assert main(["fit", "--train-dir", str(tiny_benchmark / "weave" / "train" / "good"), "--method", method,
                 "--image-size", "64", "--out", str(model)]) == 0
    assert read_checkpoint(model)[0]["calibration"]["held_out"] == 1
    source = sorted((tiny_benchmark / "weave" / "test" / "good").glob("*.png"))[0]
    Image.open(source).resize((90, 60)).save(tmp_path / "wide.png")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model), str(tmp_path / "wide.png"), "--out", str(out), "--save-maps",
                 "--workers", "0"]) == 0
    assert np.load(out / "wide_map.npy").shape == (60, 90)
    assert read_rows(out)[0]["anomalous"] in ("yes", "no")
