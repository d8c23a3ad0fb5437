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

The exact head's floor, against the speed target (ProtoAD / backbone >= 0.9, so the head may take at most 1/9 of the
backbone's time): the backbone is timed in the same rounds, and beside it the head's three per-layer products alone
(band by band as the head runs them, into buffers made once: no allocation, nothing added, no max), their floating-
point operations per image, and this machine's rate on a large square product (what the BLAS reaches at best). And
whether a bound could skip prototypes exactly: a prototype k cannot win at a stride-4 patch p when the coarser
layers' similarity plus the Cauchy-Schwarz bound on the finest layer's, g_k(p) + |f_p| |w_k|, falls below a score p
already reaches (the exact score of argmax_k g_k(p)); the fraction of (patch, prototype) pairs the bound does not
rule out is what such a search would still have to compute.
"""

from __future__ import annotations

import argparse
import json
from typing import Callable

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
from protoad_lib.methods.protoad.network import BAND_BYTES
from protoad_lib.methods.protoad.hierarchy import cluster_prototypes
from protoad_lib.methods.protoad.prototypes import training_vectors

NPROBES = (1, 4, 8)
SQUARE = 2048


def layer_products(head_weights: list[torch.Tensor], maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """The head's per-layer similarity products [B, h, w, K] (position-major), nothing added, no max."""
    return [layer.permute(0, 2, 3, 1) @ weight.T for layer, weight in zip(maps, head_weights)]


def products_into(head_weights: list[torch.Tensor], maps: list[torch.Tensor]) -> Callable[[], None]:
    """A call that computes the per-layer products alone, band by band of rows as the head does (`BAND_BYTES` of
    scores, so they stay in cache), into one buffer per layer made once, from position-major copies of the maps
    made once: the arithmetic any exact head must do, with no allocation, addition or max."""
    k = head_weights[0].shape[0]
    band_rows = max(1, BAND_BYTES // (4 * k))
    rows = [layer.permute(0, 2, 3, 1).reshape(-1, layer.shape[1]).contiguous() for layer in maps]
    bands = [list(r.split(band_rows)) for r in rows]
    transposed = [weight.T.contiguous() for weight in head_weights]
    outputs = [torch.empty(min(band_rows, len(r)), k) for r in rows]

    def run() -> None:
        for layer_bands, w, out in zip(bands, transposed, outputs):
            for band in layer_bands:
                torch.matmul(band, w, out=out[: len(band)])
    return run


def head_flops(maps: list[torch.Tensor], k: int) -> int:
    """Floating-point operations of the head's products for one image: 2 K C h w summed over the layers."""
    return 2 * k * sum(layer[0].numel() for layer in maps)


def square_product_gflops(repeats: int) -> float:
    """This machine's rate on a [2048, 2048] x [2048, 2048] float32 product (median of `repeats`)."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(SQUARE, SQUARE, generator=generator) for _ in range(2))
    times = time_interleaved({"square": lambda: a @ b}, 2, repeats)["square"]
    return 2 * SQUARE**3 / p50(times) / 1e9


def bound_survival(head_weights: list[torch.Tensor], maps: list[torch.Tensor]) -> float:
    """Fraction of (stride-4 patch, prototype) pairs that the Cauchy-Schwarz bound on the finest layer leaves
    to compute (see the module's docstring); the maps' grids must nest (56 = 2 x 28 = 4 x 14)."""
    products = layer_products(head_weights, maps)
    coarser = products[0].new_zeros(products[0].shape)
    for part in products[1:]:
        ratio = products[0].shape[1] // part.shape[1]
        coarser += part.repeat_interleave(ratio, 1).repeat_interleave(ratio, 2)
    total = products[0] + coarser
    reached = total.gather(-1, coarser.argmax(-1, keepdim=True))
    fine_norm = maps[0].permute(0, 2, 3, 1).norm(dim=-1, keepdim=True)
    bound = coarser + fine_norm * head_weights[0].norm(dim=1)
    return float((bound >= reached).float().mean())


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
        weights = list(model.head.prototypes.split([layer.shape[1] for layer in maps], dim=1))
        floor = {"flops_per_image": head_flops(maps, model.k), "bound_survival": bound_survival(weights, maps),
                 "square_product_gflops": square_product_gflops(args.repeats)}
        agreement = {}
        for nprobe, index in indexes.items():
            difference = (two_stage_scores(index, maps) - exact).abs()
            agreement[nprobe] = {"differing_fraction": float((difference > 1e-5).float().mean()),
                                 "largest_difference": float(difference.max())}
        for batch_size in (1, 8):
            batch_maps = backbone(queries[:batch_size])
            batch = queries[:batch_size]
            calls = {"backbone": lambda: backbone(batch), "exact": lambda: model.head.forward_maps(batch_maps),
                     "products alone": products_into(weights, batch_maps)} | {
                f"two-stage nprobe {n}": (lambda i=i: two_stage_scores(i, batch_maps)) for n, i in indexes.items()}
            times = time_interleaved(calls, 3, args.repeats)
            backbone_ms, products_ms = p50(times.pop("backbone")) * 1000, p50(times.pop("products alone")) * 1000
            floor[f"batch {batch_size}"] = {
                "backbone_ms": backbone_ms, "head_budget_ms": backbone_ms / 9, "products_ms": products_ms,
                "products_gflops": floor["flops_per_image"] * batch_size / products_ms / 1e6}
            print(f"batch {batch_size}  backbone {backbone_ms:6.1f} ms, so the head may take "
                  f"{backbone_ms / 9:5.2f} ms; its products alone take {products_ms:5.2f} ms "
                  f"({floor[f'batch {batch_size}']['products_gflops']:.0f} GFLOPS; a {SQUARE}-square product: "
                  f"{floor['square_product_gflops']:.0f})")
            for name, durations in times.items():
                nprobe = None if name == "exact" else int(name.rsplit(" ", 1)[1])
                rows.append({"batch_size": batch_size, "head": name, "K": model.k, "coarse_K": len(coarse),
                             "ms": p50(durations) * 1000, **(agreement[nprobe] if nprobe else {})})
                print(f"batch {batch_size}  {name:<22} {rows[-1]['ms']:7.2f} ms  "
                      + (f"patches differing {rows[-1]['differing_fraction']:.3f}  largest difference "
                         f"{rows[-1]['largest_difference']:.4f}" if nprobe else f"K {model.k}, coarse K {len(coarse)}"))
    print(f"head: {floor['flops_per_image'] / 1e6:.0f} MFLOP per image at K {model.k}; pairs the finest layer's "
          f"bound leaves to compute: {floor['bound_survival']:.1%}")
    if args.json:
        write_text_atomically(args.json, json.dumps({"env": environment("cpu", None) | info, "results": rows,
                                                     "floor": floor}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
