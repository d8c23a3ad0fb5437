"""The paper run spread over a real Dask LocalCluster: same tables as the serial run, a killed worker survived,
folders the workers cannot see refused at once."""

from __future__ import annotations

import os
import signal
import threading
import time

import pandas as pd
import pytest

from protoad_lib.run import run_notebooks
from protoad_lib.spread import SharedStorageError, check_folder, connect, run_categories, run_spread

CATEGORIES = ["bottle", "grid", "02"]  # MVTec RGB, MVTec grayscale, BTAD .bmp (non-square)
NOTEBOOKS = "01,02,03,04,05"


def parameters(paper_layout) -> dict:
    return {"categories": CATEGORIES, "backbone": "efficientnet_lite0", "data_root": str(paper_layout), "smoke": True}


def table(folder, name: str) -> pd.DataFrame:
    """A table the run wrote (05's has every method's row, PRN's too: its fit runs with a fixed thread count)."""
    return pd.read_csv(folder / "paper" / name, dtype={"category": str})


#: The tables compared: clustering (03), the networks' example scores (04; its proof's exact differences depend on
#: the thread count by design), the evaluation (05).
COMPARED = ("03_finch_levels.csv", "03_method_comparison.csv", "04_example_scores.csv", "05_results.csv")


@pytest.fixture(scope="module")
def client():
    with connect(workers=2) as dask_client:
        yield dask_client


def test_a_spread_run_gives_the_serial_run_s_tables(paper_layout, tmp_path, client):
    serial, spread = tmp_path / "serial", tmp_path / "spread"
    run_notebooks("paper", NOTEBOOKS, results_dir=serial, parameters=parameters(paper_layout), stream=False,
                  log=lambda text: None)
    report = run_spread(client, "paper", NOTEBOOKS, results_dir=spread, parameters=parameters(paper_layout),
                        stream=False, log=lambda text: None)
    assert sorted(report.finished) == sorted(f"{n}/{c}" for n in ("02", "03", "04", "05") for c in CATEGORIES)
    assert not report.failed
    assert (spread / "paper" / "executed" / "units" / "05_evaluation_mvtec_btad" / "grid.ipynb").is_file()
    for name in COMPARED:
        pd.testing.assert_frame_equal(table(spread, name), table(serial, name))
    stored = sorted(p.name for p in (spread / "paper" / "cache" / "evaluation").iterdir())
    assert len(stored) == len(CATEGORIES) * 5  # every (category, method) unit stored by the fan-out


def test_a_worker_killed_mid_task_has_its_task_run_again(paper_layout, tmp_path, client):
    killed: list[int] = []

    def kill_a_busy_worker() -> None:
        while not killed:
            busy = [address for address, keys in client.processing().items() if keys]
            if busy:
                pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                time.sleep(3)  # mid-notebook: its kernel is running
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.2)

    killer = threading.Thread(target=kill_a_busy_worker, daemon=True)
    killer.start()
    report = run_spread(client, "paper", "02", results_dir=tmp_path, parameters=parameters(paper_layout),
                        stream=False, log=lambda text: None)
    killer.join(timeout=60)
    assert killed, "a worker was killed"
    assert not report.failed and len(report.finished) == len(CATEGORIES)


def test_a_folder_no_worker_sees_stops_the_run_before_any_task(paper_layout, tmp_path, client):
    missing = tmp_path / "not-shared"
    with pytest.raises(SharedStorageError, match="cannot see .*not-shared"):
        run_spread(client, "paper", NOTEBOOKS, results_dir=tmp_path / "results",
                   parameters={**parameters(paper_layout), "data_root": str(missing)}, log=lambda text: None)
    assert not (tmp_path / "results" / "paper" / "executed").exists()


def test_check_folder_says_what_a_worker_cannot_do(tmp_path):
    assert check_folder(str(tmp_path), writable=True) is None
    assert "cannot see" in check_folder(str(tmp_path / "absent"), writable=False)
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        if os.access(read_only, os.W_OK):
            pytest.skip("running as a user who writes anywhere (root)")
        assert "cannot write" in check_folder(str(read_only), writable=True)
    finally:
        read_only.chmod(0o700)


def test_run_categories_come_from_the_parameter_or_the_profile():
    assert run_categories("paper", {"categories": "bottle, 01"}) == ["bottle", "01"]
    assert run_categories("paper", {"categories": ["grid"]}) == ["grid"]
    every = run_categories("paper", {})
    assert len(every) == 18 and every[0] == "bottle" and every[-3:] == ["01", "02", "03"]
