"""Embed a list-format dataset with a frozen timm model, for ``longtail run`` on the features.

    python examples/embed_timm.py --model vit_base_patch16_224 --weights vit_b16.safetensors \
        --root /data/imagenet --train train.txt --val val.txt --test test.txt --out feats

Each list has one ``relative/path label`` per line (ImageNet-LT's format; paths relative to
``--root``). The model runs in eval mode with timm's own test-time preprocessing for it (its
resize, crop, mean and std); its classifier is removed, so each image gives the pooled
embedding. Writes ``OUT/SPLIT.npz`` (or ``.safetensors``) with ``features`` and ``labels``,
class names when ``--class-names`` is given, and ``OUT/config.yaml`` for
``longtail run OUT/config.yaml``. Weights come from a local file (a timm .safetensors or .pth
file); without ``--weights`` the model is randomly initialised (for trying the script out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml
from PIL import Image

from longtail.data import write_feature_file
from longtail.data.listfile import parse_list_file, read_class_names
from longtail.errors import LongtailError


def build_model(name: str, weights: Path | None) -> torch.nn.Module:
    """Return timm model ``name`` without its classifier, from ``weights`` when given."""
    import timm

    overlay = {"file": str(weights)} if weights is not None else None
    model = timm.create_model(name, pretrained=weights is not None, num_classes=0,
                              pretrained_cfg_overlay=overlay)
    return model.eval()


@torch.no_grad()
def embed(model: torch.nn.Module, paths: list[Path], batch_size: int) -> torch.Tensor:
    """Return the (N, D) embeddings of the images at ``paths``, in order."""
    import timm.data

    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    rows = []
    for start in range(0, len(paths), batch_size):
        batch = [transform(Image.open(p).convert("RGB")) for p in paths[start:start + batch_size]]
        rows.append(model(torch.stack(batch)).float())
        print(f"\r{min(start + batch_size, len(paths))}/{len(paths)} images", end="",
              file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return torch.cat(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="timm model name, e.g. convnext_tiny")
    parser.add_argument("--weights", type=Path, help="local weights file (default: random init)")
    parser.add_argument("--root", type=Path, required=True, help="folder the list paths are in")
    for split in ("train", "val", "test"):
        parser.add_argument(f"--{split}", type=Path, required=split != "val",
                            help=f"{split} list ('relative/path label' lines)")
    parser.add_argument("--class-names", type=Path, help="class names, one per line")
    parser.add_argument("--format", choices=["npz", "safetensors"], default="npz")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, required=True, help="folder for the feature files")
    args = parser.parse_args(argv)
    if args.weights is not None and not args.weights.is_file():  # timm: an empty traceback
        parser.error(f"--weights {args.weights}: file not found")
    try:
        model = build_model(args.model, args.weights)
        lists = {s: parse_list_file(getattr(args, s), args.root)
                 for s in ("train", "val", "test") if getattr(args, s) is not None}
        num_classes = max(max(lst.labels) for lst in lists.values()) + 1
        names = read_class_names(args.class_names, num_classes) if args.class_names else None
        files = {}
        for split, listed in lists.items():
            features = embed(model, listed.paths, args.batch_size)
            files[split] = f"{split}.{args.format}"
            write_feature_file(args.out / files[split], features, torch.tensor(listed.labels),
                               names)
            print(f"wrote {args.out / files[split]}: {tuple(features.shape)}")
    except LongtailError as e:
        print(f"embed_timm: error: {e}", file=sys.stderr)
        return 2
    config = {"data": {"kind": "features", "root": str(args.out.resolve()), **files}}
    (args.out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"run stage 2 on them: longtail run {args.out / 'config.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
