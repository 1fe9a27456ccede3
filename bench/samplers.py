"""Time one epoch of every sampler at ImageNet-LT and iNaturalist 2018 sizes.

    python bench/samplers.py [--json FILE]

ImageNet-LT: 115,846 draws over 1,000 classes (1280..5 per class); iNaturalist 2018: 437,513
draws over 8,142 classes (1000..2). For each sampler: the seconds to build it (per-class index
arrays, once), to draw one epoch as a tensor (``indices()``), and to iterate it as a
DataLoader does (``list(sampler)``); best of 5 epochs.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from longtail.data.samplers import build_sampler
from shapes import SHAPES, shape_counts

SAMPLERS = ("instance", "class", "sqrt", "progressive", "class_aware")


def best_of(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the timings to this JSON file")
    args = parser.parse_args()
    results = {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for shape in SHAPES:
        counts = shape_counts(shape)
        labels = torch.repeat_interleave(torch.arange(len(counts)), counts)
        labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
        print(f"\n{shape}: {len(labels):,} draws over {len(counts):,} classes "
              f"({int(counts.max())}..{int(counts.min())} per class)")
        print(f"{'sampler':<12} {'build s':>8} {'epoch s':>8} {'iterate s':>10} "
              f"{'M draws/s':>10}")
        results[shape] = {}
        for spec in SAMPLERS:
            start = time.perf_counter()
            sampler = build_sampler(spec, labels, seed=0, total_epochs=90)
            build_s = time.perf_counter() - start
            epochs = iter(range(1000))

            def draw(s=sampler, e=epochs) -> None:  # a new epoch each time
                s.set_epoch(next(e))
                s.indices()

            epoch_s = best_of(draw)
            iterate_s = best_of(lambda s=sampler: list(s))
            results[shape][spec] = {"build_s": build_s, "epoch_s": epoch_s,
                                    "iterate_s": iterate_s}
            print(f"{spec:<12} {build_s:>8.3f} {epoch_s:>8.3f} {iterate_s:>10.3f} "
                  f"{len(labels) / epoch_s / 1e6:>10.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
