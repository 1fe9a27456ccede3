"""Features of every split, extracted once with the frozen backbone and kept on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from longtail import distributed
from longtail.checkpoint import load_checkpoint, save_checkpoint
from longtail.data import LongTailData
from longtail.models import Classifier
from longtail.stages.inference import infer


@dataclass
class FeatureSet:
    """Features (N, D) float32 and labels (N,) of one split."""

    features: torch.Tensor
    labels: torch.Tensor


def extract_features(
    model: Classifier,
    data: LongTailData,
    *,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    out_dir: Path,
) -> dict[str, FeatureSet]:
    """Return the features of every split of ``data`` and save them as ``out_dir/SPLIT.pt``.

    The backbone runs in eval mode with the test-time transform, training split included (as
    NCM and tau-norm need, and as cRT and LWS use here: stage 2 never runs the backbone again).
    """
    model.to(device).eval()
    transform = data.transform(train=False)
    result = {}
    for split, dataset in data.splits().items():
        feats, labels = infer(model.features, dataset.with_transform(transform),
                              batch_size=batch_size, device=device, num_workers=num_workers,
                              desc=f"features {split}")
        result[split] = FeatureSet(feats, labels)
        if distributed.is_main():
            save_checkpoint({"features": feats, "labels": labels}, out_dir / f"{split}.pt")
    return result


def load_features(out_dir: Path) -> dict[str, FeatureSet]:
    """Return the feature sets saved by ``extract_features`` in ``out_dir``."""
    result = {}
    for path in sorted(out_dir.glob("*.pt")):
        blob = load_checkpoint(path)
        result[path.stem] = FeatureSet(blob["features"], blob["labels"])
    return result
