"""ProtoAD's exact head at the fine FINCH level against a two-stage search through FINCH's hierarchy (issue 28).

Usage: OMP_WAIT_POLICY=PASSIVE python benchmarks/head_alternatives.py [--n-train 200] [--repeats 20] [--json OUT]
(passive: faiss's OpenMP threads otherwise spin after each search and slow the exact head timed beside it)

ProtoAD is fitted (prototype budget alone: the finest FINCH level within 1,000 clusters) on N synthetic `weave`
training images (224 px, `efficientnet_lite0`). The two-stage search is faiss's inverted-file index
(`IndexIVFFlat`, inner product) whose coarse quantizer holds the prototypes of the next coarser FINCH level and
whose lists hold the fine prototypes: each stride-4 patch vector is compared with the coarse prototypes, then
exactly with the fine prototypes listed under its `nprobe` nearest ones. Timed round-robin with the exact head
(`PrototypeHead.forward_maps`) on the same backbone maps at batch 1 and 8; agreement measured on the demo's
`weave` test images (normal and defective): the fraction of patches whose score differs from the exact
`1 - max cos` by more than 1e-5, and the largest difference.
"""

from __future__ import annotations

import argparse
import json

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from protoad_lib.atomic import write_text_atomically
from protoad_lib.backbones import load_backbone
from protoad_lib.data.datasets import AnomalyDataset
from protoad_lib.data.synthetic import DEFAULT_SYNTHETIC_DIR, ensure_mini_benchmark
from protoad_lib.experiments.bench_images import load_images
from protoad_lib.features import combine_layers
from protoad_lib.machine import environment
from protoad_lib.measure import p50, time_interleaved
from protoad_lib.methods.protoad import ProtoAD, ProtoADConfig
from protoad_lib.methods.protoad.hierarchy import cluster_prototypes
from protoad_lib.methods.protoad.prototypes import training_vectors

NPROBES = (1, 4, 8)


def two_stage_index(fine: np.ndarray, coarse: np.ndarray, nprobe: int) -> faiss.IndexIVFFlat:
    """An inverted-file index over the fine prototypes with the coarse ones as its (already trained) quantizer."""
    quantizer = faiss.IndexFlatIP(coarse.shape[1])
    quantizer.add(coarse)
    index = faiss.IndexIVFFlat(quantizer, fine.shape[1], len(coarse), faiss.METRIC_INNER_PRODUCT)
    index.is_trained = True
    index.add(fine)
    index.nprobe = nprobe
    return index


def two_stage_scores(index: faiss.IndexIVFFlat, maps: list[torch.Tensor]) -> torch.Tensor:
    """`1 - max cos` per stride-4 patch [B, h, w] as the two-stage search finds it."""
    embedding = combine_layers(maps)
    batch, channels, height, width = embedding.shape
    rows = F.normalize(embedding.permute(0, 2, 3, 1).reshape(-1, channels), dim=1).contiguous().numpy()
    similarity, _ = index.search(rows, 1)
    return 1.0 - torch.from_numpy(similarity[:, 0]).view(batch, height, width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args()
    backbone = load_backbone("efficientnet_lite0")
    images, info = load_images(None, None, 224, args.n_train)
    model = ProtoAD(backbone, config=ProtoADConfig(level_rule="budget"))
    model.progress = False
    features = model.method_features([{"image": images[i : i + 8]} for i in range(0, len(images), 8)], progress=False)
    model.fit_features(features).eval()
    found, settings = model.prototype_set, model.settings
    vectors = training_vectors(features, settings.max_vectors, settings.subsampling, settings.seed)  # what FINCH saw
    coarse = cluster_prototypes(vectors, found.hierarchy.level_labels(found.level + 1))
    del features
    indexes = {nprobe: two_stage_index(found.prototypes, coarse, nprobe) for nprobe in NPROBES}
    test = AnomalyDataset(ensure_mini_benchmark(DEFAULT_SYNTHETIC_DIR), "weave", "test", resize=256, crop=224)
    queries = torch.stack([test[i]["image"] for i in range(len(test))])
    rows = []
    with torch.inference_mode():
        maps = backbone(queries)
        exact = model.head.forward_maps(maps)
        agreement = {}
        for nprobe, index in indexes.items():
            difference = (two_stage_scores(index, maps) - exact).abs()
            agreement[nprobe] = {"differing_fraction": float((difference > 1e-5).float().mean()),
                                 "largest_difference": float(difference.max())}
        for batch_size in (1, 8):
            batch_maps = backbone(queries[:batch_size])
            calls = {"exact": lambda: model.head.forward_maps(batch_maps)} | {
                f"two-stage nprobe {n}": (lambda i=i: two_stage_scores(i, batch_maps)) for n, i in indexes.items()}
            times = time_interleaved(calls, 3, args.repeats)
            for name, durations in times.items():
                nprobe = None if name == "exact" else int(name.rsplit(" ", 1)[1])
                rows.append({"batch_size": batch_size, "head": name, "K": model.k, "coarse_K": len(coarse),
                             "ms": p50(durations) * 1000, **(agreement[nprobe] if nprobe else {})})
                print(f"batch {batch_size}  {name:<22} {rows[-1]['ms']:7.2f} ms  "
                      + (f"patches differing {rows[-1]['differing_fraction']:.3f}  largest difference "
                         f"{rows[-1]['largest_difference']:.4f}" if nprobe else f"K {model.k}, coarse K {len(coarse)}"))
    if args.json:
        write_text_atomically(args.json, json.dumps({"env": environment("cpu", None) | info, "results": rows},
                                                    indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
