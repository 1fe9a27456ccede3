"""Time every stage-2 method on synthetic features of ImageNet-LT's shape.

    python bench/stage2.py [--device cpu|cuda] [--classes 1000] [--train 115846] [--dim 512]

Features: 115,846 x 512 training features over 1,000 classes with Pareto-like counts from
1280 down to 5 (ImageNet-LT's shape), 20 val and 50 test features per class, and a joint
classifier whose weight norms grow with class size. Prints the seconds each method takes to
fit and to score the test features, and its balanced test accuracy (a sanity check only: the
features are synthetic). Stage 2 never runs a backbone; this measures it alone.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from longtail.config import Config
from longtail.stages.rebalance import balanced_accuracy, build_rebalancer
from shapes import long_tail_counts


def synthetic_features(counts: torch.Tensor, dim: int, seed: int,
                       centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.repeat_interleave(torch.arange(len(counts)), counts)
    features = centres[labels] + 2.0 * torch.randn(len(labels), dim, generator=g)
    return features.relu(), labels  # non-negative, like pooled ReLU features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--train", type=int, default=115_846)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--json", help="also write the timings to this JSON file")
    args = parser.parse_args()
    device = torch.device(args.device)

    g = torch.Generator().manual_seed(0)
    counts = long_tail_counts(args.classes, args.train, 1280, 5)
    centres = torch.randn(args.classes, args.dim, generator=g)
    train_x, train_y = synthetic_features(counts, args.dim, 1, centres)
    val_x, val_y = synthetic_features(torch.full((args.classes,), 20), args.dim, 2, centres)
    test_x, test_y = synthetic_features(torch.full((args.classes,), 50), args.dim, 3, centres)
    # A joint-like classifier: class directions with norms growing with class size.
    weight = torch.nn.functional.normalize(centres, dim=1) * (counts.float() ** 0.3).unsqueeze(1)
    bias = 0.1 * counts.float().log()

    print(f"synthetic ImageNet-LT-shaped features: train {tuple(train_x.shape)} "
          f"(counts {int(counts.max())}..{int(counts.min())}), val {tuple(val_x.shape)}, "
          f"test {tuple(test_x.shape)}; device {device}, {torch.get_num_threads()} threads")
    cfg = Config().stage2  # the paper's settings: cRT 10 epochs, LWS 5, batch 512
    results = {}
    print(f"{'method':<14} {'fit s':>8} {'predict s':>10} {'bal. acc %':>11}")
    for name in cfg.methods:
        method = build_rebalancer(name, cfg, joint_weight=weight, joint_bias=bias,
                                  num_classes=args.classes, seed=0, device=device)
        start = time.perf_counter()
        method.fit(train_x, train_y, val_x, val_y)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        logits = method.logits(test_x)
        predict_s = time.perf_counter() - start
        acc = 100 * balanced_accuracy(logits, test_y)
        results[name] = {"fit_s": round(fit_s, 3), "predict_s": round(predict_s, 3),
                         "balanced_accuracy": round(acc, 2)}
        print(f"{name:<14} {fit_s:>8.2f} {predict_s:>10.2f} {acc:>11.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "threads": torch.get_num_threads(),
                       "train_shape": list(train_x.shape), "methods": results}, f, indent=2)


if __name__ == "__main__":
    main()
