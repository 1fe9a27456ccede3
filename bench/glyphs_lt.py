"""Build Glyphs-LT: a 100-class long-tailed list dataset of rendered characters (28x28 gray).

A second dataset, besides the Fashion-MNIST-LT demo, on which longtail's defaults are chosen
(docs/results.md). Nothing of it is kept in the repository: this script renders a balanced
image folder (digits, Latin and Greek letters, symbols; DejaVu fonts in several styles, random
size, rotation, shift, stroke and noise), then ``longtail make-split`` draws the long-tailed
train list (ImageNet-LT-like range) and balanced val/test lists from it:

    python bench/glyphs_lt.py --out /tmp/glyphs_lt
    longtail run configs/fmnist_lt.yaml data.kind=list data.root=/tmp/glyphs_lt/images \\
        data.train=/tmp/glyphs_lt/split/train.txt data.val=/tmp/glyphs_lt/split/val.txt \\
        data.test=/tmp/glyphs_lt/split/test.txt

Characters that flip into another class (b/d, p/q, </>) are in it on purpose: horizontal
flips are not label-preserving here, unlike Fashion-MNIST.
"""

from __future__ import annotations

import argparse
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
         "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf", "DejaVuSansCondensed.ttf",
         "DejaVuSerifCondensed-Italic.ttf"]
GREEK = "αβγδεζηθλμξπρσφχψωΓΔΘΛΞΠΣΦΨΩ"
SYMBOLS = "#$%&@?+=<>"
CHARACTERS = string.digits + string.ascii_uppercase + string.ascii_lowercase + GREEK + SYMBOLS
SIDE = 28


def render(char: str, font: ImageFont.FreeTypeFont, rng: np.random.Generator) -> Image.Image:
    """Return one 28x28 grayscale rendering of ``char`` with random pose, stroke and noise."""
    canvas = Image.new("L", (3 * SIDE, 3 * SIDE), 0)
    stroke = int(rng.integers(0, 2))
    ImageDraw.Draw(canvas).text((1.5 * SIDE, 1.5 * SIDE), char, fill=255, font=font,
                                anchor="mm", stroke_width=stroke, stroke_fill=255)
    canvas = canvas.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR,
                           translate=tuple(rng.uniform(-3, 3, size=2)))
    lo, hi = int(1.5 * SIDE - SIDE / 2), int(1.5 * SIDE + SIDE / 2)
    pixels = np.asarray(canvas.crop((lo, lo, hi, hi)), dtype=np.float32)
    pixels = pixels * rng.uniform(0.6, 1.0) + rng.normal(0, 12, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--per-class", type=int, default=400,
                        help="balanced images rendered per class (default 400)")
    parser.add_argument("--n-max", type=int, default=320, help="largest training class")
    parser.add_argument("--n-min", type=int, default=5, help="smallest training class")
    parser.add_argument("--seed", type=int, default=0, help="rendering and split seed")
    args = parser.parse_args()
    missing = [f for f in FONTS if not (FONT_DIR / f).is_file()]
    if missing:
        print(f"glyphs_lt: fonts {missing} not in {FONT_DIR}; install Debian's "
              f"fonts-dejavu-core and fonts-dejavu-extra", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    images = args.out / "images"
    for label, char in enumerate(CHARACTERS):
        folder = images / f"{label:03d}_U{ord(char):04X}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(args.per_class):
            font = ImageFont.truetype(str(FONT_DIR / FONTS[rng.integers(len(FONTS))]),
                                      int(rng.integers(15, 23)))
            render(char, font, rng).save(folder / f"{i:04d}.png")
    print(f"rendered {len(CHARACTERS)} classes x {args.per_class} images into {images}")
    longtail = Path(sys.executable).parent / "longtail"
    return subprocess.call([str(longtail), "make-split", "image_folder", "--root", str(images),
                            "--out", str(args.out / "split"), "--n-max", str(args.n_max),
                            "--n-min", str(args.n_min), "--val-per-class", "20",
                            "--test-per-class", "50", "--seed", str(args.seed),
                            "--overwrite"])  # a re-run of the bench redraws the same split


if __name__ == "__main__":
    sys.exit(main())
