"""Every method's metrics with the feature cache stored as float32 and as float16, on the same data.

Usage: python benchmarks/cache_precision.py [--data-root ../shared/data/mvtec_bottle_mini --category bottle]
       [--methods protoad patchcore padim npad] [--backbone efficientnet_lite0] [--json OUT]

Without --data-root it uses the demo's synthetic mini benchmark (weave and disc). The embeddings are extracted
once per precision into a fresh feature cache (`FeatureCache(dtype=...)`); each method (its default options,
seeded) is then fitted and scored on both, and each row gives the metrics side by side with their largest
difference. PRN trains on images, not on the cache, so it is not affected and not listed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from protoad_lib.backbones import load_backbone
from protoad_lib.categories import load_category
from protoad_lib.data.synthetic import ensure_mini_benchmark
from protoad_lib.evaluation import fit_and_score
from protoad_lib.features import FeatureCache
from protoad_lib.methods import make_detector
from protoad_lib.metrics import HEADLINE_METRICS

PRECISIONS = {"float32": torch.float32, "float16": torch.float16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root")
    parser.add_argument("--category", nargs="+", default=None)
    parser.add_argument("--methods", nargs="+", default=["protoad", "patchcore", "padim", "npad"])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--json")
    args = parser.parse_args()
    root = Path(args.data_root) if args.data_root else ensure_mini_benchmark()
    categories = args.category or (["bottle"] if args.data_root else ["weave", "disc"])
    backbone = load_backbone(args.backbone)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for category in categories:
            data = {name: load_category(backbone, root, category, cache=FeatureCache(Path(folder) / name, dtype),
                                        progress=False)
                    for name, dtype in PRECISIONS.items()}
            for method in args.methods:
                metrics = {}
                for name in PRECISIONS:
                    detector = make_detector(method, backbone)
                    detector.progress = False
                    metrics[name] = fit_and_score(detector, data[name], progress=False).metrics
                row = {"category": category, "method": method}
                for metric in HEADLINE_METRICS:
                    row |= {f"{metric} {name}": round(metrics[name][metric], 6) for name in PRECISIONS}
                row["largest difference"] = max(abs(metrics["float32"][m] - metrics["float16"][m])
                                                for m in HEADLINE_METRICS)
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
