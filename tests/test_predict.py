"""`protoad predict` on people's own images: own geometry, a calibrated decision, output written as it goes."""

import contextlib
import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import torch
from PIL import Image, ImageDraw

from protoad_lib import predict as predict_module
from protoad_lib.calibration import PIXEL_QUANTILE, calibration_from_scores, held_out_indices
from protoad_lib.checkpoint import read_checkpoint
from protoad_lib.cli import main
from protoad_lib.data import CorruptImageError, generate_mini_benchmark, load_rgb
from protoad_lib.data.images import load_bounded
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


def test_interrupted_predict_keeps_what_it_finished_and_a_rerun_resumes(model, category, tmp_path, monkeypatch,
                                                                        capsys):
    written = predict_module.save_image_result
    calls = {"n": 0}

    def fail_after_three(*args, **kwargs):
        if calls["n"] == 3:
            raise KeyboardInterrupt
        calls["n"] += 1
        written(*args, **kwargs)

    monkeypatch.setattr(predict_module, "save_image_result", fail_after_three)
    out = tmp_path / "out"
    command = ["predict", "--model", str(model), str(category / "test"), "--recursive", "--out", str(out),
               "--batch-size", "4", "--workers", "0"]
    assert main(command) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"protoad predict: interrupted; 3 images kept in {out / 'scores.csv'}; the same command resumes"
    first = read_rows(out)
    assert len(first) == 3
    assert len(list(out.glob("*_heatmap.png"))) == 3
    assert not list(out.glob(".*.tmp"))
    monkeypatch.setattr(predict_module, "save_image_result", written)
    assert main(command) == 0
    assert "scored 4 images" in capsys.readouterr().out
    rows = read_rows(out)
    assert rows[:3] == first and len({row["image"] for row in rows}) == len(rows) == 7


def test_a_rerun_keeps_earlier_rows_repairs_a_cut_line_and_overwrite_starts_afresh(model, category, tmp_path,
                                                                                   capsys):
    out = tmp_path / "out"
    run = ["predict", "--model", str(model), "--out", str(out), "--workers", "0"]
    assert main(run + [str(category / "test" / "good")]) == 0
    good = read_rows(out)
    assert main(run + [str(category / "test"), "--recursive"]) == 0  # a second folder: the good rows stay
    rows = read_rows(out)
    assert rows[:4] == good and len(rows) == 7
    scores = out / "scores.csv"
    scores.write_bytes(scores.read_bytes()[:-12])  # a kill mid-row
    capsys.readouterr()
    assert main(run + [str(category / "test"), "--recursive"]) == 0
    assert "scored 1 images" in capsys.readouterr().out
    repaired = read_rows(out)
    assert repaired[:6] == rows[:6] and repaired[6]["image"] == rows[6]["image"] and len(repaired) == 7
    assert all(None not in row.values() for row in repaired)
    assert main(run + [str(category / "test" / "good"), "--overwrite"]) == 0
    assert [row["image"] for row in read_rows(out)] == [row["image"] for row in good]
    scores.write_text("image,score\nold.png,0.5\n")
    assert main(run + [str(category / "test" / "good")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_nothing_scored_exits_non_zero_with_one_line(model, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "empty.png").write_bytes(b"")
    (inputs / "notes.jpg").write_text("not an image\n")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model), str(inputs), "--out", str(out), "--workers", "0"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("protoad predict: error: no image could be scored") and "unreadable.csv" in last
    with open(out / "unreadable.csv", newline="") as handle:
        assert sorted(row["image"].rsplit("/", 1)[-1] for row in csv.DictReader(handle)) == ["empty.png", "notes.jpg"]


def test_output_inside_an_input_folder_is_never_read(model, category, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for source in sorted((category / "test" / "good").glob("*.png"))[:2]:
        (inputs / source.name).write_bytes(source.read_bytes())
    out = inputs / "results"
    for _ in range(2):
        assert main(["predict", "--model", str(model), str(inputs), "--recursive", "--out", str(out),
                     "--workers", "0"]) == 0
    assert sorted(row["image"].rsplit("/", 1)[-1] for row in read_rows(out)) == sorted(
        path.name for path in inputs.glob("*.png"))
    capsys.readouterr()
    assert main(["predict", "--model", str(model), str(inputs), "--out", str(inputs), "--workers", "0"]) == 2
    assert "inside the output folder" in capsys.readouterr().err


def test_an_error_in_a_decoding_worker_ends_every_worker(model, category, tmp_path, monkeypatch):
    decode = predict_module.load_bounded

    def fail_on_one(path, *args):
        if path.name == "001.png":
            raise RuntimeError("disk gone")
        return decode(path, *args)

    monkeypatch.setattr(predict_module, "load_bounded", fail_on_one)
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    with pytest.raises(RuntimeError, match="disk gone") as kept:  # its traceback keeps the DataLoader iterator
        main(["predict", "--model", str(model), str(category / "test"), "--recursive", "--out", str(tmp_path / "o"),
              "--batch-size", "1", "--workers", "2"])
    assert kept.traceback
    assert [child for child in psutil.Process().children(recursive=True) if child.pid not in before] == []


def _wait_for(condition, what: str, limit_s: float = 120.0) -> None:
    """Poll `condition` until it holds; fail (not hang) if it never does."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def _default_interrupt() -> None:
    """In the child, before exec: Ctrl-C's signal as a terminal delivers it, also when the tests run as a background
    job (whose commands inherit SIGINT ignored: Python would then never raise KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sent, status, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_ends_predict_with_one_line_and_no_worker_left(sent, status, word, model, category, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    sources = sorted((category / "test").rglob("*.png"))
    for copy in range(30):
        for number, source in enumerate(sources):
            (inputs / f"{copy:02d}_{number}.png").write_bytes(source.read_bytes())
    out = tmp_path / "out"
    workers: list[psutil.Process] = []
    with open(tmp_path / "stderr.txt", "w") as err:  # a file, not a pipe: an orphan would hold a pipe open
        process = subprocess.Popen(
            [sys.executable, "-m", "protoad_lib.cli", "predict", "--model", str(model), str(inputs), "--out",
             str(out), "--workers", "2", "--batch-size", "2"],
            stdout=subprocess.DEVNULL, stderr=err, env=os.environ | {"TQDM_DISABLE": "1"},
            preexec_fn=_default_interrupt)
    try:
        parent = psutil.Process(process.pid)
        _wait_for(lambda: len(parent.children()) >= 2 and (out / "scores.csv").is_file()
                  and len((out / "scores.csv").read_text().splitlines()) > 1, "the first scored image")
        workers = parent.children(recursive=True)
        process.send_signal(sent)
        process.wait(timeout=120)
        survivors = [worker for worker in workers if worker.is_running()]
    finally:
        process.kill()
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
    assert process.returncode == status
    assert (tmp_path / "stderr.txt").read_text().strip().splitlines() == [
        f"protoad predict: {word}; {len(read_rows(out))} images kept in {out / 'scores.csv'}; the same command resumes"]
    assert len(read_rows(out)) < 30 * len(sources)
    assert survivors == []


def test_a_decoding_worker_dies_with_its_parent_however_that_ends(tmp_path):
    script = (
        "import multiprocessing, os, time\n"
        "from protoad_lib.predict import _end_with_parent\n"
        "def work(ready):\n"
        "    _end_with_parent(0)\n"
        "    ready.set()\n"
        "    time.sleep(120)\n"
        "if __name__ == '__main__':\n"
        "    context = multiprocessing.get_context('fork')\n"
        "    ready = context.Event()\n"
        "    child = context.Process(target=work, args=(ready,))\n"
        "    child.start()\n"
        "    print(child.pid, ready.wait(60), flush=True)\n"
        "    os._exit(0)  # no cleanup at all, as after SIGKILL\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    worker, ready = result.stdout.split()
    worker = int(worker)
    assert ready == "True"
    _wait_for(lambda: not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE,
              "the orphaned worker to end", limit_s=60)


def test_tiny_images_are_refused_with_the_minimum_size(model, category, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    good = Image.open(sorted((category / "test" / "good").glob("*.png"))[0]).convert("RGB")
    good.save(inputs / "fine.png")
    good.resize((1, 1)).save(inputs / "dot.png")
    good.resize((200, 20)).save(inputs / "strip.png")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model), str(inputs), "--out", str(out), "--workers", "0"]) == 0
    assert [row["image"].rsplit("/", 1)[-1] for row in read_rows(out)] == ["fine.png"]
    with open(out / "unreadable.csv", newline="") as handle:
        reasons = {row["image"].rsplit("/", 1)[-1]: row["reason"] for row in csv.DictReader(handle)}
    assert sorted(reasons) == ["dot.png", "strip.png"]
    assert "1 x 1 px, below the 32 px a side" in reasons["dot.png"]


def test_large_images_are_decoded_reduced_and_refused_above_max_pixels(model, category, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    good = Image.open(sorted((category / "test" / "good").glob("*.png"))[0]).convert("RGB")
    long = good.resize((4500, 100))  # over 4096 px a side: decoded at half size, 2250 x 50
    long.save(inputs / "long.png")
    long.save(inputs / "long.jpg", quality=95)
    out = tmp_path / "out"
    run = ["predict", "--model", str(model), "--workers", "0", "--save-maps"]
    assert main(run + [str(inputs / "long.png"), "--out", str(out)]) == 0
    assert np.load(out / "long_map.npy").shape == (50, 2250)
    assert "scored at 1/2 size" in read_rows(out)[0]["note"]
    assert main(run + [str(inputs), "--out", str(tmp_path / "limited"), "--max-pixels", "200000"]) == 0
    rows = read_rows(tmp_path / "limited")
    assert [row["image"].rsplit("/", 1)[-1] for row in rows] == ["long.jpg"]  # decoded at 1/2: 112,500 pixels
    (overlay,) = (tmp_path / "limited").glob("*_heatmap.png")
    assert Image.open(overlay).height == 50
    with open(tmp_path / "limited" / "unreadable.csv", newline="") as handle:
        (refused,) = list(csv.DictReader(handle))
    assert refused["image"].endswith("long.png") and "--max-pixels 450000" in refused["reason"]


def test_load_bounded_uses_its_own_pixel_limit_not_pils(tmp_path, monkeypatch):
    Image.new("L", (300, 200), 90).save(tmp_path / "gray.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL alone would call it a decompression bomb
    image = load_bounded(tmp_path / "gray.png", max_pixels=60_000)
    assert image.rgb.mode == "RGB" and image.rgb.size == (300, 200) and image.mode == "L"
    assert Image.MAX_IMAGE_PIXELS == 1000
    with pytest.raises(CorruptImageError, match="more than the 59,999 pixels"):
        load_bounded(tmp_path / "gray.png", max_pixels=59_999)


@pytest.mark.parametrize("train_mode, warned", [("colour", ["gray.png"]), ("grayscale", ["colour.png"]),
                                                ("mixed", [])])
def test_an_image_unlike_the_training_colour_mode_is_scored_with_a_warning(train_mode, warned, model, category,
                                                                           tmp_path, capsys):
    from protoad_lib.calibration import Calibration
    from protoad_lib.checkpoint import load_detector, save_detector

    detector, metadata = load_detector(model)
    marked = save_detector(detector, tmp_path / "marked.safetensors", image_size=128, resize=128,
                           calibration=Calibration.from_dict(metadata["calibration"]), train_colour_mode=train_mode)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    good = Image.open(sorted((category / "test" / "good").glob("*.png"))[0]).convert("RGB")
    good.save(inputs / "colour.png")
    good.convert("L").save(inputs / "gray.png")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(marked), str(inputs), "--out", str(out), "--workers", "0"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert [line.split(": ")[1].rsplit("/", 1)[-1] for line in warnings] == warned
    assert all(f"fitted on {train_mode} images" in line for line in warnings)
    notes = {row["image"].rsplit("/", 1)[-1]: row["note"] for row in read_rows(out)}
    assert sorted(name for name, note in notes.items() if note) == warned


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
