"""Peak memory and time of each method's fit as the training set grows (100, 300, 1,000 images), and of a whole
`protoad evaluate` under a memory limit.

Usage: python benchmarks/memory_scaling.py [--sizes 100 300 1000] [--n-test 200] [--methods protoad padim ...]
       [--backbone wide_resnet50_2] [--limit-gib 10] [--work-dir DIR] [--json OUT] [--skip-evaluate]

A synthetic category (MVTec layout, 256 px, resized 256 / cropped 224 as the paper) with max(sizes) training and
`--n-test` test images is embedded once into a feature cache by the first `protoad evaluate` run (random weights:
the same network, the same bytes, as ImageNet's; with `--skip-evaluate`, the training split by this script). Then,
one fresh process per measurement, each in its own memory cgroup limited to `--limit-gib` where the kernel allows one
(cgroup v1 or v2; otherwise unlimited, and the table says so):

- `evaluate`: `protoad evaluate --weights random --cache-dir ...` of every method on the whole category (the
  training and test splits read from the cache, the metrics computed);
- `fit`: the method fitted on the first n cached training images. Its peak is the process's VmHWM (resident
  memory, never file pages: the cache is read with plain reads); `working` = peak - resident memory before the
  fit - the fitted model's own bytes (`state_tensors`), what the issue's "grows by at most 10 %" is about.

Results are written to `--json` as each measurement ends; a rerun with the same --json skips what it holds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CATEGORY = "weave"


def make_category(root: Path, n_train: int, n_test: int) -> Path:
    """The synthetic category with `n_train` good training images and about `n_test` test images (a fifth good)."""
    from protoad_lib.data import generate_mini_benchmark

    if (root / CATEGORY / "train" / "good").is_dir():
        return root
    per_defect = max(1, (n_test - n_test // 5) // 3)
    generate_mini_benchmark(root, n_train=n_train, n_test_good=n_test // 5, n_test_per_defect=per_defect, size=256,
                            categories=[CATEGORY])
    return root


class MemoryCgroup:
    """A memory cgroup (v1 or v2) of this name limited to `limit` bytes, or None where the kernel refuses one."""

    def __init__(self, name: str, limit: int) -> None:
        self.path = self.limit_file = None
        for base, limit_file in ((Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"),
                                 (Path("/sys/fs/cgroup"), "memory.max")):
            if (base / limit_file).exists() or (base / "cgroup.controllers").exists():
                try:
                    path = base / name
                    path.mkdir(exist_ok=True)
                    (path / limit_file).write_text(str(limit))
                    self.path, self.limit_file = path, limit_file
                    return
                except OSError:
                    continue

    def enter(self) -> None:
        """Move the calling process (a child, before exec) into the cgroup."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak_bytes(self) -> int | None:
        """The cgroup's peak charge (page cache included), if the kernel reports it."""
        for name in ("memory.max_usage_in_bytes", "memory.peak"):
            if self.path is not None and (self.path / name).exists():
                return int((self.path / name).read_text().split()[0])
        return None

    def remove(self) -> None:
        if self.path is not None:
            try:
                self.path.rmdir()
            except OSError:
                pass


def run_limited(command: list[str], limit_gib: float, name: str) -> dict:
    """Run `command` in a fresh memory cgroup; its exit status, wall time, VmHWM (MB) and the cgroup's peak."""
    group = MemoryCgroup(f"protoad_{name}_{os.getpid()}", int(limit_gib * 2**30))
    started = time.perf_counter()
    process = subprocess.Popen(command, preexec_fn=group.enter, cwd=REPO, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    peak = group.peak_bytes()
    group.remove()
    return {"returncode": process.returncode, "wall_s": round(time.perf_counter() - started, 1),
            "vmhwm_mb": round(usage.ru_maxrss / 1024, 1), "cgroup_peak_mb": None if peak is None else round(peak / 2**20, 1),
            "limit_gib": limit_gib if group.path is not None else None, "output": output}


def training_split(backbone_name: str, data_root: str | Path):
    """The backbone (random weights), the training split at the paper geometry and its feature-cache key."""
    from protoad_lib.backbones import load_backbone
    from protoad_lib.data import AnomalyDataset
    from protoad_lib.features import CacheKey

    backbone = load_backbone(backbone_name, weights="random")
    train = AnomalyDataset(data_root, CATEGORY, "train", resize=256, crop=224)
    return backbone, train, CacheKey.of("dataset", CATEGORY, "train", backbone, train)


def fit_once(args: argparse.Namespace) -> None:
    """Child: fit `--child-method` on the first `--child-n` cached training images; print one JSON line."""
    import torch

    from protoad_lib.features import FeatureCache
    from protoad_lib.measure import current_rss_mb, peak_rss_mb, reset_peak_rss
    from protoad_lib.methods import make_detector

    backbone, train, key = training_split(args.backbone, args.data_root)
    stored = FeatureCache(args.cache_dir).load(key)
    if stored is None:
        raise SystemExit("the training split is not in the cache: run the embed step first")
    detector = make_detector(args.child_method, backbone)
    detector.progress = False
    embeddings = stored.subset(range(args.child_n))
    before = current_rss_mb()
    reset_peak_rss()
    started = time.perf_counter()
    detector.fit_embeddings(embeddings)
    fit_s = time.perf_counter() - started
    model = sum(t.numel() * t.element_size() for t in detector.state_tensors().values()) / 2**20
    peak = peak_rss_mb()
    print(json.dumps({"fit_s": round(fit_s, 1), "before_mb": round(before, 1), "peak_mb": round(peak, 1),
                      "model_mb": round(model, 1), "working_mb": round(peak - before - model, 1),
                      "fitted_size": detector.fitted_size(), "threads": torch.get_num_threads()}))


def embed_training_split(backbone_name: str, data_root: Path, cache_dir: Path) -> None:
    """Embed the training split into the cache in this process, where no evaluate run has put it there yet."""
    from protoad_lib.features import FeatureCache

    backbone, train, key = training_split(backbone_name, data_root)
    FeatureCache(cache_dir).get_or_extract(key, backbone, train)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[100, 300, 1000])
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--methods", nargs="+", default=["protoad", "padim", "patchcore", "npad"])
    parser.add_argument("--backbone", default="wide_resnet50_2")
    parser.add_argument("--limit-gib", type=float, default=10.0)
    parser.add_argument("--work-dir", default="/tmp/protoad_memory_scaling")
    parser.add_argument("--json", default="benchmarks/memory_scaling.json")
    parser.add_argument("--skip-evaluate", action="store_true",
                        help="only the fits (the training split is embedded into the cache first where it is missing)")
    parser.add_argument("--child-method", help=argparse.SUPPRESS)
    parser.add_argument("--child-n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-root", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_method:
        fit_once(args)
        return
    work = Path(args.work_dir)
    data_root = make_category(work / "data", max(args.sizes), args.n_test)
    cache_dir = work / "cache"
    out = Path(args.json)
    results = json.loads(out.read_text()) if out.exists() else {}

    def record(name: str, entry: dict) -> None:
        results[name] = entry
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(name, {k: v for k, v in entry.items() if k != "output"}, flush=True)

    cli = [sys.executable, "-m", "protoad_lib.cli"]
    if not args.skip_evaluate:
        for method in args.methods:
            name = f"evaluate/{method}/{max(args.sizes)}"
            if name in results and results[name]["returncode"] == 0:
                continue
            metrics = work / f"evaluate_{method}.json"
            run = run_limited(cli + ["evaluate", "--data-root", str(data_root), "--category", CATEGORY, "--method",
                                     method, "--backbone", args.backbone, "--weights", "random", "--cache-dir",
                                     str(cache_dir), "--json", str(metrics)], args.limit_gib, "evaluate")
            run["metrics"] = json.loads(metrics.read_text()) if run["returncode"] == 0 else None
            run.pop("output")
            record(name, run)
    embed_training_split(args.backbone, data_root, cache_dir)
    for method in args.methods:
        for n in args.sizes:
            name = f"fit/{method}/{n}"
            if name in results and results[name]["returncode"] == 0:
                continue
            run = run_limited([sys.executable, __file__, "--child-method", method, "--child-n", str(n), "--backbone",
                               args.backbone, "--data-root", str(data_root), "--cache-dir", str(cache_dir)],
                              args.limit_gib, "fit")
            lines = run.pop("output").strip().splitlines()
            if run["returncode"] == 0 and lines:
                run |= json.loads(lines[-1])
            record(name, run)


if __name__ == "__main__":
    main()
