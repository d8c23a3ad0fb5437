"""Paper-scale cost: wall time and peak memory of each notebook on one category of MVTec AD's largest size.

Usage: python benchmarks/paper_scale.py [--backbone wide_resnet50_2@random] [--n-train 391] [--prn-epochs 1]
       [--json OUT] [--work-dir DIR] [--notebooks 02 05 ...]

A synthetic category in the MVTec layout with the train/test sizes of MVTec AD's largest category (391
train / 110 test images, 256 px) goes through every notebook of the paper profile, one runner process
per notebook under `/usr/bin/time -v` (peak resident memory of the notebook's kernel included). Random
weights time the same network as ImageNet weights. PRN trains `--prn-epochs` long in the notebooks (its
CPU schedule's 30 epochs would take hours here); one epoch of PRN on the same category is then timed on
its own (`PRN.train_s`), and the projection adds the epochs the real run trains on top.

Interrupted (Ctrl-C, SIGTERM), it stops the running notebook and records what it measured; run it again
with the same --json and --work-dir and it goes on from that notebook, which resumes after its last stored
unit (see `run_notebook`).

The projection to the whole paper run on a CPU is an estimate, not a measurement: notebooks 01 and 06
(one category) once; the other notebooks' time per image, without their PRN training and without notebook
07's first-category-only ablations (N-pad, PRN: `07_ablation_seconds.csv`), times every image of the 18
categories (`PAPER_CATEGORY_SIZES`); those ablations once, scaled to the first category (MVTec AD's bottle;
N-pad by its images, PRN by its training images, as its training dominates);
PRN's missing epochs at the measured time per training image (notebook 05: every category; notebook 07:
its first category). Work an interrupted attempt did and the finished attempt redid (`lost_s`, see
`lost_seconds`) is left out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from protoad_lib.backbones import load_backbone
from protoad_lib.atomic import write_text_atomically
from protoad_lib.data import AnomalyDataset, generate_mini_benchmark
from protoad_lib.experiments.ablations import ablation_plan
from protoad_lib.methods import make_detector
from protoad_lib.methods.prn import SCHEDULES
from protoad_lib.profiles import get_profile
from protoad_lib.resume import SUFFIX as RESULT_SUFFIX
from protoad_lib.run import stop_on_sigterm

NOTEBOOKS = ("01", "02", "03", "04", "05", "06", "07")
#: (train, test) images of the 15 MVTec AD categories and the 3 BTAD products (MVTec AD paper, BTAD paper).
PAPER_CATEGORY_SIZES = {
    "bottle": (209, 83), "cable": (224, 150), "capsule": (219, 132), "carpet": (280, 117), "grid": (264, 78),
    "hazelnut": (391, 110), "leather": (245, 124), "metal_nut": (220, 115), "pill": (267, 167),
    "screw": (320, 160), "tile": (230, 117), "toothbrush": (60, 42), "transistor": (213, 100),
    "wood": (247, 79), "zipper": (240, 151), "01": (400, 70), "02": (399, 230), "03": (1000, 441),
}


def category(root: Path, n_train: int, n_test_good: int, n_test_per_defect: int) -> Path:
    """A synthetic `weave` category renamed `hazelnut` (a category name the paper profile knows)."""
    source = generate_mini_benchmark(root / "source", n_train=n_train, n_test_good=n_test_good,
                                     n_test_per_defect=n_test_per_defect, categories=["weave"])
    data = root / "data"
    if not (data / "hazelnut").is_dir():  # copied with its files' times, so the feature cache stays valid
        shutil.copytree(source / "weave", data / "hazelnut")
    return data


def run_notebook(number: str, data: Path, results: Path, backbone: str, prn_epochs: int,
                 interrupted: list[dict]) -> dict:
    """One notebook's wall time and peak memory. Interrupted (Ctrl-C, SIGTERM), it stops the notebook's runner
    (which shuts its kernel down; what the notebook stored stays stored) and appends the seconds it ran to
    `interrupted`; the row of a later, finished run adds them (`interrupted_s`): the notebook resumed after
    its last stored unit, and the unit that was cut off is counted twice, so the row is an upper bound."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "protoad_lib.run", "--profile", "paper", "--quiet",
               "--notebooks", number, "--results-dir", str(results), "--param", "categories=hazelnut",
               "--param", f"backbone={backbone}", "--param", f"data_root={data}",
               "--param", f"prn_epochs={prn_epochs}"]
    started_unix, start = round(time.time()), time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate()
        except BaseException:
            interrupted.append({"notebook": number, "seconds": round(time.perf_counter() - start, 1)})
            stop(process)
            raise
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"notebook {number} failed:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1))
    earlier = sum(row["seconds"] for row in interrupted if row["notebook"] == number)
    return {"notebook": number, "seconds": round(seconds + earlier, 1), "peak_rss_gib": round(peak_kb / 2**20, 2)} \
        | ({"interrupted_s": round(earlier, 1), "started_unix": started_unix} if earlier else {})


def lost_seconds(row: dict, results: Path) -> float:
    """Seconds of a resumed notebook's interrupted attempts that it redid (`interrupted_s` less what they stored
    and the finished attempt read back). Only notebook 07 records what its stored units took (its
    ablations' seconds); for the others every interrupted second counts as lost, an upper bound."""
    interrupted = row.get("interrupted_s", 0.0)
    if not interrupted or row["notebook"] != "07":
        return interrupted
    folder = results / "paper" / "cache" / "ablations"
    stored = [path for pattern in ("*.pt", f"*{RESULT_SUFFIX}") for path in folder.glob(pattern)]  # .pt: earlier versions
    if not stored:
        return interrupted
    digest = max(stored, key=lambda path: path.stat().st_mtime).stem.rsplit("__", 1)[1]  # the finished attempt's settings
    read_back = {tuple(path.stem.split("__")[:2]) for path in stored
                 if path.stem.endswith(f"__{digest}") and path.stat().st_mtime < row["started_unix"]}
    table = ablation_seconds(results)
    reused = sum(float(item.seconds) for item in table.itertuples() if (item.category, item.ablation) in read_back)
    return round(max(interrupted - reused, 0.0), 1)


def stop(process: subprocess.Popen, grace_s: float = 120.0) -> None:
    """Stop a notebook's process group (/usr/bin/time and the runner; /usr/bin/time forwards no signal): SIGTERM,
    so the runner shuts its kernel down, then SIGKILL if it has not ended within `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:  # it has ended already
            return
        try:
            process.communicate(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def prn_epoch_seconds(data: Path, backbone: str) -> dict:
    """PRN fitted for one epoch of its CPU schedule on the category: the whole fit and the epoch alone."""
    name, _, weights = backbone.partition("@")
    profile = get_profile("paper")
    train = AnomalyDataset(data, "hazelnut", "train", resize=profile.resize, crop=profile.image_size)
    detector = make_detector("prn", load_backbone(name, weights=weights or "imagenet"), epochs=1)
    start = time.perf_counter()
    detector.fit(train)
    return {"fit_s": round(time.perf_counter() - start, 1), "epoch_s": round(detector.train_s, 1),
            "n_train": len(train)}


def ablation_epochs(prn_epochs: int | None) -> int:
    """Epochs notebook 07's PRN ablation trains on its one category (three settings, see `ablation_plan`)."""
    plan = ablation_plan(replace(get_profile("paper"), prn_epochs=prn_epochs))
    return sum(plan.prn_epochs) + plan.prn_epochs[-1] * len([n for n in plan.prn_seen if n])


def ablation_seconds(results: Path) -> pd.DataFrame:
    """Notebook 07's `07_ablation_seconds.csv` (category, ablation, seconds)."""
    path = results / "paper" / "07_ablation_seconds.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: notebook 07 ran with a library that did not record its "
                                "ablations' seconds; remove its row from the --json file and rerun to redo it")
    return pd.read_csv(path)


def first_category_seconds(results: Path) -> dict[str, float]:
    """Seconds of notebook 07's ablations that the paper profile runs on its first category only."""
    plan = ablation_plan(get_profile("paper"))
    return {row.ablation: float(row.seconds) for row in ablation_seconds(results).itertuples()
            if not plan.ablates(row.ablation, 1)}


def projection(rows: list[dict], prn: dict, once: dict[str, float], prn_epochs: int, n_images: int) -> dict:
    """The whole paper run on a CPU, in hours, from one category's measurements (see the module docstring);
    `once`: notebook 07's first-category-only ablations, in seconds."""
    seconds = {row["notebook"]: row["seconds"] - row.get("lost_s", 0.0) for row in rows}
    full = SCHEDULES["cpu"]["epochs"]
    per_train_image = prn["epoch_s"] / prn["n_train"]
    # not per image: PRN's one-epoch fit in 05 (projected below with its full schedule), 07's first-category-only ablations
    not_per_image = {"05": prn["fit_s"], "07": sum(once.values())}
    per_image = sum(seconds[n] - not_per_image.get(n, 0.0) for n in seconds if n not in ("01", "06")) / n_images
    sizes = PAPER_CATEGORY_SIZES.values()
    first_train, first_test = PAPER_CATEGORY_SIZES["bottle"]
    n_train = prn["n_train"]
    total = seconds["01"] + seconds["06"] + per_image * sum(train + test for train, test in sizes)
    npad_07 = once.get("npad", 0.0) * (first_train + first_test) / n_images
    prn_05 = sum(train * (prn["fit_s"] / n_train + (full - 1) * per_train_image) for train, _ in sizes)
    prn_07 = once.get("prn", 0.0) * first_train / n_train + (ablation_epochs(None) - ablation_epochs(prn_epochs)) \
        * first_train * per_train_image
    return {"without_prn_h": round((total + npad_07) / 3600, 1), "prn_h": round((prn_05 + prn_07) / 3600, 1),
            "total_h": round((total + npad_07 + prn_05 + prn_07) / 3600, 1), "prn_epochs_full": full,
            "prn_epochs_measured": prn_epochs, "first_category_only_s": once}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="wide_resnet50_2@random")
    parser.add_argument("--n-train", type=int, default=391)
    parser.add_argument("--n-test-good", type=int, default=20)
    parser.add_argument("--n-test-per-defect", type=int, default=30)
    parser.add_argument("--prn-epochs", type=int, default=1)
    parser.add_argument("--json", help="results, written after every notebook; a rerun with the same settings "
                                        "and --work-dir skips the notebooks it holds")
    parser.add_argument("--work-dir", help="keep the data and results here (default: a temporary folder)")
    parser.add_argument("--notebooks", nargs="+", choices=NOTEBOOKS, default=list(NOTEBOOKS),
                        help="measure only these (in the order of the series; the projection needs them all)")
    args = parser.parse_args()
    n_images = args.n_train + args.n_test_good + 3 * args.n_test_per_defect
    result: dict = {"backbone": args.backbone, "n_train": args.n_train, "n_test": n_images - args.n_train,
                    "prn_epochs": args.prn_epochs, "notebooks": []}
    if args.json and args.work_dir and Path(args.json).is_file():
        earlier = json.loads(Path(args.json).read_text())
        if all(earlier.get(key) == value for key, value in result.items() if key != "notebooks"):
            result["notebooks"], result["interrupted"] = earlier["notebooks"], earlier.get("interrupted", [])

    def record() -> None:  # what is measured so far survives an interruption
        print(json.dumps(result, indent=2), flush=True)
        if args.json:
            write_text_atomically(args.json, json.dumps(result, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(args.work_dir or temporary)
        data = category(folder, args.n_train, args.n_test_good, args.n_test_per_defect)
        done = {row["notebook"] for row in result["notebooks"]}
        for number in [n for n in NOTEBOOKS if n in args.notebooks and n not in done]:
            try:
                row = run_notebook(number, data, folder / "results", args.backbone, args.prn_epochs,
                                   result.setdefault("interrupted", []))
            except BaseException:
                record()
                raise
            result["notebooks"].append(row)
            record()
        if {row["notebook"] for row in result["notebooks"]} != set(NOTEBOOKS):
            return
        result["prn_one_epoch"] = prn_epoch_seconds(data, args.backbone)
        for row in result["notebooks"]:
            if row.get("interrupted_s"):
                row["lost_s"] = lost_seconds(row, folder / "results")
        result["total_s"] = round(sum(row["seconds"] for row in result["notebooks"]), 1)
        result["projected_paper_run_cpu"] = projection(result["notebooks"], result["prn_one_epoch"],
                                                       first_category_seconds(folder / "results"), args.prn_epochs,
                                                       n_images)
    record()


if __name__ == "__main__":
    for stop_signal in (signal.SIGTERM, signal.SIGHUP):  # a closed terminal stops the notebook too, not only this script
        signal.signal(stop_signal, stop_on_sigterm)
    main()
