"""Grid of the new stage-2 methods' settings on the cached features of finished runs.

    python bench/tune_stage2.py --method wb demo=runs/d0,runs/d1 glyphs=runs/g0,runs/g1

Prints one Markdown row per setting: top-1 / Few / ECE (%), the mean over each dataset's runs.
This is how the defaults of balms, las and wb were chosen (docs/results.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from longtail.checkpoint import load_checkpoint
from longtail.metrics import evaluate
from longtail.stages import rebalance as R
from longtail.stages.features import load_features


def load(run: Path):
    features = load_features(run / "features")
    state = load_checkpoint(run / "stage1" / "last.pt")["model"]
    dataset = json.loads((run / "metrics.json").read_text())["dataset"]
    groups = dataset.get("group_counts") or dataset["train_counts"]
    return features, state["fc.weight"], state["fc.bias"], groups, dataset["train_counts"]


def settings(method: str, weight, bias, counts, seed: int) -> dict[str, R.Rebalancer]:
    common = dict(batch_size=128, seed=seed, class_counts=counts)
    norm = float(weight.norm(dim=1).mean())
    out: dict[str, R.Rebalancer] = {}
    if method == "balms":
        for lr in (0.02, 0.05, 0.2):
            out[f"balms lr {lr}"] = R.BALMS(len(weight), epochs=10, lr=lr, **common)
        out["crt lr 0.02"] = R.CRT(len(weight), epochs=10, lr=0.02, **common)
        out["logit_adjust"] = R.LogitAdjust(weight, bias, counts=counts)
    elif method == "las":
        for head, tail in ((0.4, 0.1), (0.3, 0.0), (0.2, 0.0), (0.1, 0.0)):
            out[f"las {head} .. {tail}"] = R.LAS(len(weight), epochs=10, lr=0.02,
                                                 las_head=head, las_tail=tail, **common)
    elif method == "wb":
        for lr, wd, radius in itertools.product((0.02, 0.05), (5e-4, 5e-3, 5e-2), (1.0, 0.8)):
            out[f"wb lr {lr} wd {wd} max_norm {radius} x mean"] = R.WB(
                weight, bias, max_norm=radius * norm, epochs=10, lr=lr, weight_decay=wd,
                **common)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=("balms", "las", "wb"), required=True)
    parser.add_argument("datasets", nargs="+", metavar="NAME=RUN,RUN,...")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    names: list[str] = []
    for item in args.datasets:
        dataset, _, runs = item.partition("=")
        names.append(dataset)
        for seed, run in enumerate(runs.split(",")):
            features, weight, bias, groups, counts = load(Path(run))
            train, val, test = features["train"], features["val"], features["test"]
            for label, method in settings(args.method, weight, bias, counts, seed).items():
                method.fit(train.features, train.labels, val.features, val.labels)
                scores = method.logits(test.features)
                r = evaluate(scores.argmax(1), test.labels, groups, scores=scores)
                results.setdefault((dataset, label), []).append((r["top1"], r["few"], r["ece"]))
    print("| setting | " + " | ".join(f"{d}: top-1 / few / ECE" for d in names) + " |")
    print("|---|" + "---|" * len(names))
    for label in dict.fromkeys(label for _, label in results):
        cells = []
        for d in names:
            top1, few, ece = torch.tensor(results[(d, label)]).mean(0).tolist()
            cells.append(f"{top1:.1f} / {few:.1f} / {ece:.1f}")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
