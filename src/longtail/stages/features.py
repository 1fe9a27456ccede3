"""Features of every split, extracted once with the frozen backbone and cached on disk.

Each ``features/SPLIT.pt`` carries a key: a SHA-256 of the backbone's weights, the split's
list (its SHA-256) and the test-time transform. A cached file is reused only when its key is
the one the current model and data would give, so a changed input means new features.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from longtail import distributed
from longtail.checkpoint import load_checkpoint, save_checkpoint, state_digest
from longtail.errors import UnreadableFile

if TYPE_CHECKING:  # reading cached features (rebalance) needs neither, nor torchvision
    from longtail.data import LongTailData
    from longtail.models import Classifier


@dataclass
class FeatureSet:
    """Features (N, D) float32 and labels (N,) of one split, and the key they were made with."""

    features: torch.Tensor
    labels: torch.Tensor
    key: str = ""
    weights: str = ""  # SHA-256 of the backbone weights that produced them


def feature_keys(weights: str, data: LongTailData) -> dict[str, str]:
    """Return the cache key of each split's features for backbone digest ``weights``."""
    transform = repr(data.transform(train=False))
    return {split: hashlib.sha256("|".join([weights, data.split_sha256.get(split, ""),
                                            transform]).encode()).hexdigest()
            for split in data.splits()}


def backbone_digest(model_state: dict[str, torch.Tensor]) -> str:
    """Return the SHA-256 of the backbone part of a Classifier state dict."""
    return state_digest({k: v for k, v in model_state.items() if k.startswith("backbone.")})


def extract_features(
    model: Classifier,
    data: LongTailData,
    *,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    out_dir: Path,
) -> dict[str, FeatureSet]:
    """Return the features of every split of ``data``, from ``out_dir/SPLIT.pt`` when its key
    matches, else extracted (and saved there).

    The backbone runs in eval mode with the test-time transform, training split included (as
    NCM and tau-norm need, and as cRT and LWS use here: stage 2 never runs the backbone again).
    """
    from longtail.stages.inference import infer

    # the layout stage 1 leaves it in: a model loaded from its checkpoint (a resume after
    # stage 1, rebalance --online) would otherwise take the inputs' layout as a mismatch
    model.to(device).to(memory_format=model.layout(device)).eval()
    weights = backbone_digest(model.state_dict())
    keys = feature_keys(weights, data)
    result = {}
    for split, dataset in data.splits().items():
        path = out_dir / f"{split}.pt"
        if path.is_file():
            try:
                cached = load_checkpoint(path, keys=("features", "labels", "key"))
            except UnreadableFile as e:  # only a cache: a miss, extracted again and replaced
                cached = {}
                if distributed.is_main():
                    print(f"note: {e}; extracting these features again", flush=True)
            if cached.get("key") == keys[split]:
                result[split] = FeatureSet(cached["features"], cached["labels"], keys[split],
                                           weights)
                continue
        feats, labels = infer(model.features, data.eval_view(dataset),
                              batch_size=batch_size, device=device, num_workers=num_workers,
                              desc=f"features {split}", layout=model.layout(device))
        result[split] = FeatureSet(feats, labels, keys[split], weights)
        if distributed.is_main():
            save_checkpoint({"features": feats, "labels": labels, "key": keys[split],
                             "weights": weights, "split": split}, path)
    return result


def load_features(out_dir: Path) -> dict[str, FeatureSet]:
    """Return the feature sets saved by ``extract_features`` in ``out_dir``; a file that holds
    another split than its name says (test.pt copied over train.pt) is an UnreadableFile."""
    result = {}
    for path in sorted(out_dir.glob("*.pt")):
        blob = load_checkpoint(path, keys=("features", "labels"))
        if blob.get("split", path.stem) != path.stem:  # (files of older runs do not say)
            raise UnreadableFile(f"{path}: holds the {blob['split']} split's features, not "
                                 f"{path.stem}'s (copied over it?)", path)
        result[path.stem] = FeatureSet(blob["features"], blob["labels"], blob.get("key", ""),
                                       blob.get("weights", ""))
    return result
