"""Stage 1 of a features run (``data.kind: features``): the joint linear classifier.

With the representation given, "joint training" is training the linear classifier alone on
the training features with the stage-1 sampler (instance-balanced by default): the baseline
every re-balancer is compared against. It is the cRT estimator with ``stage1.sampler``, the
``stage1.*`` optimiser settings and ``stage1.loss`` instead of class-balanced sampling
(``stage1.mixup_alpha`` mixes images: the config check refuses it here). A training file that
carries ``joint_weight`` / ``joint_bias`` (as ``longtail extract`` writes) gives the joint
classifier itself, so a run's stage 2 can be repeated exactly on its extracted features.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch

from longtail.checkpoint import load_checkpoint, save_checkpoint
from longtail.config import Stage1Config
from longtail.data import FeatureData
from longtail.errors import LongtailError, UnreadableFile
from longtail.stages.rebalance import CRT


def joint_key(data: FeatureData, cfg: Stage1Config, seed: int) -> str:
    """SHA-256 of what the joint linear classifier depends on."""
    parts = [data.train.sha256, json.dumps(asdict(cfg), sort_keys=True), str(seed),
             data.val.sha256 if data.val is not None and cfg.select == "best_val" else ""]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def joint_on_features(data: FeatureData, cfg: Stage1Config, seed: int, device: torch.device,
                      path: Path) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """Return (weight, bias, how it was obtained) of the joint classifier of a features run.

    The training file's own classifier when it carries one; else ``path`` (stage1/joint.pt)
    when it holds one trained on the same inputs; else a linear classifier trained now and
    saved there.
    """
    train = data.train
    if train.joint_weight is not None:
        return train.joint_weight, train.joint_bias, f"from {train.source}"
    key = joint_key(data, cfg, seed)
    if path.is_file():
        try:  # only a cache: one that cannot be read is trained again
            saved = load_checkpoint(path, keys=("key", "fc.weight", "fc.bias"))
        except UnreadableFile:
            saved = {}
        if saved.get("key") == key:
            return saved["fc.weight"], saved["fc.bias"], f"reused {path}"
    if cfg.epochs < 1:
        raise LongtailError(f"config key stage1.epochs: {train.source} carries no joint "
                            f"classifier (joint_weight), so stage 1 trains one: expected an "
                            f"int >= 1, found {cfg.epochs}")
    val = data.val
    # A batch above the training rows is one epoch's rows: lr scaled to what is trained on.
    batch = cfg.real_batch_size(len(train.labels))
    linear = CRT(data.num_classes, epochs=cfg.epochs, lr=cfg.resolved_lr(batch),
                 batch_size=batch, momentum=cfg.momentum,
                 weight_decay=cfg.weight_decay, sampler=cfg.sampler,
                 samples_per_class=cfg.samples_per_class, seed=seed, device=device,
                 select=cfg.select, loss=cfg.loss, loss_tau=cfg.loss_tau)
    linear.fit(train.features, train.labels, val.features if val is not None else None,
               val.labels if val is not None else None)
    save_checkpoint({"fc.weight": linear.weight_, "fc.bias": linear.bias_, "key": key,
                     "loss_history": linear.loss_history_}, path)
    return (linear.weight_, linear.bias_,
            f"trained: linear classifier, {cfg.epochs} epoch{'s' * (cfg.epochs != 1)}, sampler "
            f"{cfg.sampler}, lr {cfg.resolved_lr(batch):g}, batch {batch}")
