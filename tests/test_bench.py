"""Benchmark harness: timing primitive, result JSON shape, scaling tables (no wall-clock assertions)."""

import json
import math
import sys

import pytest
import torch

from protoad_lib import measure
from protoad_lib.experiments import bench, bench_json, bench_memory, bench_text, scaling
from protoad_lib.methods import bench_names

ROW_KEYS = {"method", "batch_size", "images_per_s", "p50_ms", "p95_ms", "min_ms", "head_ms", "peak_mem_mb", "fit_s",
            "k", "state_mb", "infer_peak_mb", "fit_peak_mem_mb"}
ENV_KEYS = {"cpu", "torch", "torch_threads", "device", "python", "platform", "date", "anomalib"}


def positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def tiny_root(tiny_benchmark):
    return tiny_benchmark


@pytest.fixture(scope="module")
def result(tiny_root):
    torch.manual_seed(0)
    threads_before = torch.get_num_threads()
    out = bench.run_benchmark(
        "efficientnet_lite0", weights="random", batch_sizes=(1, 2), data_root=tiny_root, category="weave", image_size=64,
        n_images=4, repeats=2, warmup=1, threads=1, progress=False,
    )
    assert torch.get_num_threads() == threads_before  # the thread count is restored afterwards
    assert out["env"]["torch_threads"] == 1 and out["env"]["threads_requested"] == 1
    return out


def test_time_callable_runs_warmup_then_repeats():
    calls = []
    times = measure.time_callable(lambda: calls.append(1), warmup=3, repeats=5)
    assert len(calls) == 8
    assert len(times) == 5 and all(t >= 0 for t in times)
    with pytest.raises(ValueError):
        measure.time_callable(lambda: None, repeats=0)


def test_time_interleaved_runs_each_callable_warmup_plus_repeats_round_robin():
    order = []
    times = measure.time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                                   warmup=1, repeats=3)
    assert order == ["a", "b"] + ["a", "b"] * 3
    assert {name: len(t) for name, t in times.items()} == {"a": 3, "b": 3}


def test_a_time_budget_stops_only_the_slow_callable_after_its_minimum_runs():
    import time
    order = []

    def slow():
        order.append("slow")
        time.sleep(0.02)

    times = measure.time_interleaved({"fast": lambda: order.append("fast"), "slow": slow}, warmup=1, repeats=10,
                                     budget_s=0.05, min_repeats=3)
    assert {name: len(t) for name, t in times.items()} == {"fast": 10, "slow": 3}
    assert order[:8] == ["fast", "slow"] * 4  # warm-up, then round-robin while both are in
    assert order.count("slow") == 1 + 3
    assert len(measure.time_callable(slow, warmup=0, repeats=2, budget_s=0.0, min_repeats=5)) == 2  # never past repeats


def test_percentiles():
    times = [0.1, 0.2, 0.3, 0.4, 0.5]
    assert measure.p50(times) == pytest.approx(0.3)
    assert measure.p95(times) == pytest.approx(0.48)


PEAK_PROBE = """
import torch
from protoad_lib import measure
with measure.PeakMemory("cpu") as memory:
    block = torch.ones(64 * 2**20 // 4)  # 64 MB, touched
    block += 1
print(memory.peak_mb, memory.reset)
"""


def test_peak_memory_is_non_negative_and_counts_a_large_allocation():
    # A fresh process: in a long test session other threads' memory churn moves the process-wide peak.
    import subprocess

    output = subprocess.run([sys.executable, "-c", PEAK_PROBE], capture_output=True, text=True, check=True).stdout
    peak_mb, reset = output.split()
    assert float(peak_mb) >= 0
    if reset == "True":
        assert float(peak_mb) > 32


def test_benchmark_json_shape(result):
    assert set(result) >= {"env", "results"}
    assert ENV_KEYS <= set(result["env"])
    assert result["env"]["device"] == "cpu"
    rows = result["results"]
    registered = ["backbone", *bench_names()]
    expected_methods = registered + (["anomalib_patchcore", "anomalib_padim"] if result["env"]["anomalib"] else [])
    pairs = [(r["method"], r["batch_size"]) for r in rows]
    assert len(pairs) == len(set(pairs))
    assert {m for m, _ in pairs} <= set(expected_methods)
    for method in registered:
        assert [b for m, b in pairs if m == method] == [1, 2]
    for row in rows:
        assert ROW_KEYS <= set(row)
        for key in ("images_per_s", "p50_ms", "p95_ms"):
            assert positive_finite(row[key]), (row["method"], key, row[key])
        assert row["p95_ms"] >= row["p50_ms"] >= row["min_ms"] > 0
        assert math.isfinite(row["peak_mem_mb"]) and row["peak_mem_mb"] >= row["infer_peak_mb"] >= 0
        # images_per_s = batch_size / median per-batch latency
        assert row["images_per_s"] == pytest.approx(row["batch_size"] / (row["p50_ms"] / 1000), rel=1e-9)
        if row["method"] == "backbone":
            assert row["fit_s"] is None and row["head_ms"] is None and row["k"] is None and row["state_mb"] is None
        else:
            assert positive_finite(row["fit_s"]) and positive_finite(row["head_ms"]) and positive_finite(row["state_mb"])
            assert row["peak_mem_mb"] == pytest.approx(row["state_mb"] + row["infer_peak_mb"])
    k = {r["method"]: r["k"] for r in rows}
    assert k["padim"] is None
    assert isinstance(k["protoad"], int) and k["protoad"] >= 1
    # 4 images of 64 px: stride-8 grid 8 x 8 -> 256 patches; 10 % and 1 % coresets
    assert k["patchcore_10"] == 25 and k["patchcore_1"] == 2
    state = {r["method"]: r["state_mb"] for r in rows}
    assert state["patchcore_10"] == pytest.approx(2 * 25 * 1024 * 4 / 2**20)  # bank + faiss copy
    assert result["env"]["cpu_peak_reset"] in (True, False)


def test_save_json_round_trip(result, tmp_path):
    path = bench_json.save_json(result, tmp_path / "out" / "bench.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(result))
    assert [p.name for p in path.parent.iterdir()] == ["bench.json"]  # no temporary left behind
    bench_json.save_json({"a": 1}, path)  # overwrite in place
    assert json.loads(path.read_text()) == {"a": 1}
    assert "backbone" in bench_text.speed_ratios(result)[1]
    assert "protoad" in bench_text.format_table(result)


def test_fit_table_text_has_a_column_per_method():
    rows = [{"method": "protoad", "n_images": 2, "fit_s": 0.5}, {"method": "padim", "n_images": 2, "fit_s": 0.25},
            {"method": "protoad", "n_images": 4, "fit_s": 1.0}]
    header, first, second = bench_text.format_fit_table(rows).splitlines()
    assert "protoad fit s" in header and "padim fit s" in header
    assert first.split() == ["2", "0.50", "0.25"] and second.split() == ["4", "1.00", "-"]


def test_head_cost_vs_k_rows():
    rows = scaling.head_cost_vs_k(channels=(4, 6, 8), ks=(3, 30), grid=(8, 8), repeats=2, warmup=1, progress=False)
    assert [r["k"] for r in rows] == [3, 30]
    assert all(positive_finite(r["ms_per_image"]) and positive_finite(r["p50_ms"]) for r in rows)


def test_memory_bank_cost_rows():
    rows = scaling.memory_bank_cost(bank_sizes=(10, 1e2), dim=16, grid=(4, 4), repeats=2, warmup=1, progress=False)
    assert [r["bank_size"] for r in rows] == [10, 100]
    assert all(positive_finite(r["ms_per_image"]) and positive_finite(r["bank_mb"]) for r in rows)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_benchmark_runs_on_cuda(tiny_root):
    out = bench.run_benchmark(
        "efficientnet_lite0", weights="random", methods=("protoad", "padim"), batch_sizes=(2,), device="cuda",
        data_root=tiny_root, category="weave", image_size=64, n_images=4, repeats=2, warmup=1, progress=False,
    )
    assert out["env"]["device"] == "cuda" and out["env"]["cpu_peak_reset"] is None
    assert [r["method"] for r in out["results"]] == ["backbone", "protoad", "padim"]
    assert all(positive_finite(r["p50_ms"]) and r["peak_mem_mb"] >= 0 for r in out["results"])


def test_fit_time_vs_images_rows_table_and_figure(random_lite0):
    from protoad_lib.experiments.fit_scaling import fit_time_vs_images
    from protoad_lib.report import speed_views

    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    rows = fit_time_vs_images(random_lite0, images, counts=(2, 4, 9), methods=("patchcore_10", "padim"),
                              include_anomalib=False, progress=False)
    assert [(r["method"], r["n_images"]) for r in rows] == [("patchcore_10", 2), ("padim", 2), ("patchcore_10", 4),
                                                            ("padim", 4)]
    assert all(positive_finite(r["fit_s"]) and r["fit_peak_mem_mb"] >= 0 for r in rows)
    assert [r["size"] for r in rows if r["method"] == "patchcore_10"] == [12, 25]  # 10 % of 2 x 64 and 4 x 64 patches
    table = speed_views.fit_time_table(rows)
    assert list(table["training images"]) == [2, 4] and "PaDiM fit s" in table.columns
    figure = speed_views.fit_time_figure(rows)
    assert figure.axes[0].get_xlabel() == "training images" and figure.axes[0].get_title()


def test_a_failing_peer_row_is_warned_about():
    with pytest.warns(RuntimeWarning, match="anomalib_patchcore was left out: ValueError: broken"):
        assert bench_memory.peer_failure("anomalib_patchcore", ValueError("broken")) == "ValueError: broken"


def test_paper_profile_benchmarks_prn_after_one_epoch(random_lite0):
    from protoad_lib.profiles import get_profile

    assert bench.bench_options(get_profile("paper").bench) == {"prn": {"epochs": 1}}
    assert bench.bench_options(get_profile("demo").bench) == {}
    images = torch.rand(2, 3, 64, 64)
    fitted = bench_memory.fit_method("prn", random_lite0, images, "cpu", options={"epochs": 1, "width": 4})
    assert fitted.detector.epochs == 1 and len(fitted.detector.history) == 1


def test_the_speed_study_runs_notebook_06_section_by_section(tmp_path):
    from protoad_lib.experiments.speed_study import speed_study
    from protoad_lib.session import setup

    run = setup(profile="demo", categories=["weave"], backbone="efficientnet_lite0@random", smoke=True,
                data_root=tmp_path, results_dir=tmp_path / "results")
    study = speed_study(run)
    assert study.settings == run.profile.bench and study.category == "weave"
    assert "benchmark category: synthetic_mini/weave" in study.describe()
    rows = study.bank_size()
    assert [r["bank_size"] for r in rows] == list(study.settings.bank_sizes)
    assert study.bank_size() == rows  # stored: the second call reads what the first measured
    assert [r["k"] for r in study.head_vs_k()] == list(study.settings.head_ks)
