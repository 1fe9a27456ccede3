"""Build Rotated-FMNIST-LT: a 100-class long-tailed list dataset (28x28 gray PNGs).

A fourth dataset on which longtail's stage-2 defaults are checked (docs/results.md), shaped
like a small user dataset in ImageNet-LT's list format: class 10 k + c is Fashion-MNIST class
c rotated by k x 36 degrees (no training image in two classes), so that 100 classes are
learnable from 10. ``longtail make-split`` then draws a long-tailed train list (100 down to 2
images, exponential) and balanced val (10) and test (20) lists from the balanced folder; with
these counts no class has over 100 training images, so the Many-shot group is empty:

    python bench/rotated_fmnist_lt.py --out /tmp/rotated_lt
    longtail run configs/fmnist_lt.yaml data.kind=list data.root=/tmp/rotated_lt/images \\
        data.train=/tmp/rotated_lt/split/train.txt data.val=/tmp/rotated_lt/split/val.txt \\
        data.test=/tmp/rotated_lt/split/test.txt
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from longtail.data.fmnist import DEFAULT_ROOT, load_fashion_mnist

ROTATIONS = 10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--root", default=DEFAULT_ROOT, help="Fashion-MNIST's IDX files")
    parser.add_argument("--per-class", type=int, default=130,
                        help="balanced images written per class (default 130)")
    parser.add_argument("--seed", type=int, default=0, help="image choice and split seed")
    args = parser.parse_args()
    arrays = load_fashion_mnist(args.root, root_key="--root")
    images, labels = arrays["train_images"], arrays["train_labels"]
    rng = np.random.default_rng(args.seed)
    folder = args.out / "images"
    for c in range(10):
        # each source image in one class only: the rotations of a class are other pictures
        chosen = rng.permutation(np.flatnonzero(labels == c))[: ROTATIONS * args.per_class]
        for k in range(ROTATIONS):
            target = folder / f"{10 * k + c:03d}"
            target.mkdir(parents=True, exist_ok=True)
            for i, index in enumerate(chosen[k * args.per_class : (k + 1) * args.per_class]):
                Image.fromarray(images[index]).rotate(36 * k).save(target / f"{i:04d}.png")
    print(f"wrote 100 classes x {args.per_class} images into {folder}")
    return subprocess.call([sys.executable, "-m", "longtail", "make-split", "image_folder",
                            "--root", str(folder),
                            "--out", str(args.out / "split"), "--n-max", "100", "--n-min", "2",
                            "--val-per-class", "10", "--test-per-class", "20", "--seed",
                            str(args.seed), "--overwrite"])


if __name__ == "__main__":
    sys.exit(main())
