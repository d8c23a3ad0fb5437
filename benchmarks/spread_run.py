"""Wall time and peak memory of a paper-profile run in one process and spread over a Dask LocalCluster.

Usage: python benchmarks/spread_run.py [--workers 2] [--n-train 20] [--notebooks 01,02,05,07] [--json OUT]

Four MVTec-layout categories (bottle, cable, capsule, carpet: copies of the synthetic weave and disc at 256 px, so
every category costs about the same) are run with `efficientnet_lite0` and PRN trained one epoch, first serially
(`protoad run`), then with `--workers N`, each into its own results folder and feature cache. Memory is sampled
every 0.2 s: the resident memory of each process tree (the runner, and each Dask worker with its kernels), and
the peak of each is reported (a sampled peak: a spike shorter than 0.2 s may be missed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = {"bottle": "weave", "cable": "disc", "capsule": "weave", "carpet": "disc"}


def make_layout(root: Path, n_train: int) -> Path:
    """The four categories in MVTec AD's layout under `root`."""
    from protoad_lib.data.synthetic import generate_mini_benchmark

    if all((root / name).is_dir() for name in CATEGORIES):
        return root
    source = generate_mini_benchmark(root / "source", n_train=n_train, n_test_good=3, n_test_per_defect=2, size=256,
                                     categories=sorted(set(CATEGORIES.values())))
    for name, synthetic in CATEGORIES.items():
        shutil.copytree(source / synthetic, root / name, dirs_exist_ok=True)
    return root


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants (0 once it is gone)."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


def run_measured(command: list[str]) -> dict:
    """Run `command`; its wall time, and the sampled peak resident memory of its whole tree and of each Dask
    worker's tree (a worker: a process started by multiprocessing's `spawn_main`, as LocalCluster starts them)."""
    peaks: dict[str, int] = {}
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    runner = psutil.Process(process.pid)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                peaks["whole run"] = max(peaks.get("whole run", 0), tree_rss(runner))
                for child in runner.children(recursive=True):
                    if "spawn_main" in " ".join(child.cmdline()):
                        key = f"worker {child.pid}"
                        peaks[key] = max(peaks.get(key, 0), tree_rss(child))
            except psutil.Error:
                pass
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, errors = process.communicate()
    stop.set()
    sampler.join()
    return {"returncode": process.returncode, "wall_s": round(time.perf_counter() - started, 1),
            "peak_gib": {name: round(value / 2**30, 2) for name, value in sorted(peaks.items())},
            "stderr_tail": errors[-2000:] if process.returncode else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=20)
    parser.add_argument("--notebooks", default="01,02,05,07")
    parser.add_argument("--work-dir", default="/tmp/protoad_spread_run")
    parser.add_argument("--json", default="results/benchmarks/spread_run_efficientnet_lite0_4categories_cpu.json")
    args = parser.parse_args()
    work = Path(args.work_dir)
    data = make_layout(work / "data", args.n_train)
    results = {"categories": list(CATEGORIES), "n_train": args.n_train, "notebooks": args.notebooks,
               "cores": psutil.cpu_count(logical=False), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1)}
    for name, extra in (("serial", []), (f"workers={args.workers}", ["--workers", str(args.workers)])):
        folder = work / name.replace("=", "_")
        shutil.rmtree(folder, ignore_errors=True)
        command = [sys.executable, "-m", "protoad_lib.run", "--profile", "paper", "--quiet", "--notebooks",
                   args.notebooks, "--results-dir", str(folder), "--param", f"categories={','.join(CATEGORIES)}",
                   "--param", "backbone=efficientnet_lite0", "--param", f"data_root={data}",
                   "--param", "prn_epochs=1", *extra]
        # each run its own feature cache, so the spread run does not read what the serial run extracted
        cache = folder / "feature_cache"
        results[name] = run_measured(["env", f"PROTOAD_CACHE_DIR={cache}", *command])
        print(name, {k: v for k, v in results[name].items() if k != "stderr_tail"}, flush=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
