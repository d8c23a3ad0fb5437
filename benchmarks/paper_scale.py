"""Paper-scale cost: wall time and peak memory of each notebook on one category of MVTec AD's largest size.

Usage: python benchmarks/paper_scale.py [--backbone wide_resnet50_2@random] [--n-train 391] [--json OUT]

A synthetic category in the MVTec layout with the train/test sizes of MVTec AD's largest category (391
train / 110 test images, 256 px) goes through every notebook of the paper profile, one runner process
per notebook under `/usr/bin/time -v` (peak resident memory of the notebook's kernel included). Random
weights time the same network as ImageNet weights. The projection to the whole paper run multiplies
each notebook's per-category time by the 18 categories, scaled by each category's number of images
(`PAPER_CATEGORY_SIZES`), which is an estimate, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from protoad_lib.data import generate_mini_benchmark

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
    shutil.copytree(source / "weave", data / "hazelnut")
    return data


def run_notebook(number: str, data: Path, results: Path, backbone: str) -> dict:
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "protoad_lib.run", "--profile", "paper", "--quiet",
               "--notebooks", number, "--results-dir", str(results), "--param", "categories=hazelnut",
               "--param", f"backbone={backbone}", "--param", f"data_root={data}"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"notebook {number} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return {"notebook": number, "seconds": round(seconds, 1), "peak_rss_gib": round(peak_kb / 2**20, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="wide_resnet50_2@random")
    parser.add_argument("--n-train", type=int, default=391)
    parser.add_argument("--n-test-good", type=int, default=20)
    parser.add_argument("--n-test-per-defect", type=int, default=30)
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    n_images = args.n_train + args.n_test_good + 3 * args.n_test_per_defect
    with tempfile.TemporaryDirectory() as folder:
        data = category(Path(folder), args.n_train, args.n_test_good, args.n_test_per_defect)
        for number in NOTEBOOKS:
            rows.append(run_notebook(number, data, Path(folder) / "results", args.backbone))
            print(json.dumps(rows[-1]), flush=True)
            if args.json:  # what is measured so far survives an interruption
                Path(args.json).write_text(json.dumps({"backbone": args.backbone, "notebooks": rows}, indent=2) + "\n")
    per_image = sum(r["seconds"] for r in rows if r["notebook"] not in ("01", "06")) / n_images
    fixed = sum(r["seconds"] for r in rows if r["notebook"] in ("01", "06"))
    projected = fixed + per_image * sum(train + test for train, test in PAPER_CATEGORY_SIZES.values())
    result = {"backbone": args.backbone, "n_train": args.n_train, "n_test": n_images - args.n_train,
              "notebooks": rows, "total_s": round(sum(r["seconds"] for r in rows), 1),
              "projected_paper_run_h": round(projected / 3600, 1),
              "projection": "notebooks 02-05 and 07 scaled by images per category over the 18 categories; "
                            "01 and 06 (one category) counted once"}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
