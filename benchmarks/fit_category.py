"""Fit time and peak memory of ProtoAD on one MVTec-sized category (synthetic, 256 px, N train images).

Usage: python benchmarks/fit_category.py --backbone efficientnet_lite0 --n-train 300 [--weights random]
Random weights time the same network as ImageNet weights (speed does not depend on their values).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from protoad_lib.backbones import load_backbone
from protoad_lib.data import AnomalyDataset
from protoad_lib.data.synthetic import generate_mini_benchmark
from protoad_lib.measure import peak_rss_mb
from protoad_lib.features import extract_features
from protoad_lib.methods import ProtoAD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = generate_mini_benchmark(Path(folder), n_train=args.n_train, n_test_good=1, n_test_per_defect=1,
                                       categories=["weave"])
        train = AnomalyDataset(root, "weave", "train")
        backbone = load_backbone(args.backbone, weights=args.weights)
        start = time.perf_counter()
        features = extract_features(backbone, train, batch_size=8)
        features_s = time.perf_counter() - start
        model = ProtoAD(backbone).fit_embeddings(features)
        total_s = time.perf_counter() - start
    height, width = features.grid
    result = {
        "backbone": args.backbone, "n_train": args.n_train, "patch_vectors": len(features) * height * width,
        "features_s": round(features_s, 1), "fit_total_s": round(total_s, 1), "k": model.k,
        "finch_levels": model.prototype_set.hierarchy.num_clusters,
        "peak_rss_gib": round(peak_rss_mb() / 1024, 2),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
