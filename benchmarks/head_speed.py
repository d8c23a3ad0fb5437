"""ProtoAD against the backbone alone at batch 1 and 8 after a category-scale fit (issue: the head's cost).

Usage: python benchmarks/head_speed.py [--n-train 200] [--repeats 30] [--json OUT]

ProtoAD is fitted on N synthetic `weave` training images (`bench_images.load_images`, 224 px) with each FINCH level
rule: the default (`bound`, ratio 2.0), the held-out margin rule of before (`margin`, 0.5) and the prototype budget
alone (`budget`).
The backbone alone and both models are then timed round-robin (`measure.time_interleaved`, warm-up
discarded) on the same random batch; ratio = backbone p50 / ProtoAD p50 (1.0: the head is free).
"""

from __future__ import annotations

import argparse
import json

import torch

from protoad_lib.atomic import write_text_atomically
from protoad_lib.backbones import load_backbone
from protoad_lib.experiments.bench_images import load_images
from protoad_lib.machine import environment
from protoad_lib.measure import p50, time_interleaved
from protoad_lib.methods.protoad import ProtoAD, ProtoADConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json")
    args = parser.parse_args()
    backbone = load_backbone(args.backbone)
    images, info = load_images(None, None, 224, args.n_train)
    probe = ProtoAD(backbone)
    features = probe.method_features([{"image": images[i : i + 8]} for i in range(0, len(images), 8)], progress=False)
    models = {}
    for name, rule in (("default (bound)", "bound"), ("margin (before)", "margin"), ("budget only", "budget")):
        model = ProtoAD(backbone, config=ProtoADConfig(level_rule=rule))
        model.progress = False
        models[name] = model.fit_features(features).eval()
    del features
    rows = []
    for batch_size in (1, 8):
        batch = torch.rand(batch_size, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            calls = {"backbone": lambda: backbone(batch)} | {n: (lambda m=m: m(batch)) for n, m in models.items()}
            times = time_interleaved(calls, 3, args.repeats)
        base = p50(times["backbone"])
        for name, model in models.items():
            rows.append({"batch_size": batch_size, "rule": name, "K": model.k, "backbone_ms": base * 1000,
                         "protoad_ms": p50(times[name]) * 1000, "ratio": base / p50(times[name])})
            print(f"batch {batch_size}  {name:<15} K {model.k:>4}  backbone {base * 1000:6.1f} ms  "
                  f"ProtoAD {p50(times[name]) * 1000:6.1f} ms  ProtoAD / backbone speed {rows[-1]['ratio']:.2f}")
    if args.json:
        write_text_atomically(args.json, json.dumps({"env": environment("cpu", None) | info, "results": rows},
                                                    indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
