"""benchmarks/paper_scale.py's accounting: the work an interruption lost is left out of the projection."""

import importlib.util
import os
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_scale.py"
spec = importlib.util.spec_from_file_location("paper_scale", SCRIPT)
paper_scale = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paper_scale)


def stored(folder: Path, name: str, unix_time: float) -> None:
    path = folder / f"{name}.pt"
    path.write_bytes(b"")
    os.utime(path, (unix_time, unix_time))


def test_only_what_the_finished_attempt_redid_is_lost(tmp_path):
    store = tmp_path / "paper" / "cache" / "ablations"
    store.mkdir(parents=True)
    started = 1_000_000
    stored(store, "hazelnut__layers__new", started - 100)  # stored by an interrupted attempt, read back
    stored(store, "hazelnut__finch_level__old", started - 5000)  # other settings: not read back
    stored(store, "hazelnut__finch_level__new", started + 50)
    stored(store, "hazelnut__sigma__new", started + 900)
    pd.DataFrame({"category": ["hazelnut"] * 3, "ablation": ["layers", "finch_level", "sigma"],
                  "seconds": [300.0, 40.0, 70.0]}).to_csv(tmp_path / "paper" / "07_ablation_seconds.csv", index=False)
    row = {"notebook": "07", "seconds": 2000.0, "interrupted_s": 782.6, "started_unix": started}
    assert paper_scale.lost_seconds(row, tmp_path) == 482.6
    assert paper_scale.lost_seconds({"notebook": "05", "seconds": 900.0, "interrupted_s": 120.0}, tmp_path) == 120.0
    assert paper_scale.lost_seconds({"notebook": "07", "seconds": 900.0}, tmp_path) == 0.0


def test_the_projection_leaves_lost_seconds_out():
    rows = [{"notebook": number, "seconds": 100.0} for number in paper_scale.NOTEBOOKS]
    prn = {"fit_s": 10.0, "epoch_s": 5.0, "n_train": 391}
    once = {"npad": 20.0, "prn": 30.0}
    whole = paper_scale.projection(rows, prn, once, 1, 501)
    rows[-1] |= {"interrupted_s": 60.0, "lost_s": 50.0}
    without_lost = paper_scale.projection(rows, prn, once, 1, 501)
    images = sum(train + test for train, test in paper_scale.PAPER_CATEGORY_SIZES.values())
    assert without_lost["prn_h"] == whole["prn_h"]
    assert abs((whole["without_prn_h"] - without_lost["without_prn_h"]) - 50.0 * images / 501 / 3600) < 0.06
