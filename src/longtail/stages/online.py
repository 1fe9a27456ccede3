"""Stage 2 on images instead of cached features: the authors' online cRT / LWS, and fine-tuning.

- ``stage2.features: online``: cRT and LWS (and the other trained methods: balms, las, wb) draw
  batches of *augmented* training images every epoch and run the frozen backbone on them, as
  the authors' code does. With
  ``stage2.bn: train`` the backbone stays in train mode, so its BatchNorm running statistics
  drift toward class-balanced batches (the authors' behaviour); the test features are then
  extracted again with the drifted backbone (with ``las``, this is MiSLAS's BatchNorm shift of
  the statistics). ``bn: eval`` keeps them as stage 1 left them.
- ``finetune`` / ``finetune_last``: the whole network (or its last stage and classifier)
  re-trained from the stage-1 weights with ``stage2.finetune.sampler`` (class-balanced by
  default): the paper's comparison
  showing that re-training the classifier alone is better (its finding 4).

Each method gets its own copy of the stage-1 model, so none sees another's drift.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from longtail.config import Config, Stage1Config
from longtail.data import LongTailData, build_sampler
from longtail.data.datasets import SeededDraws
from longtail.models import Classifier
from longtail.scalars import ScalarLog
from longtail.stages.inference import infer
from longtail.stages.joint import train_joint


class OnlineBatches:
    """Batches of features of augmented training images from a frozen backbone.

    ``bn="train"`` runs the backbone in train mode (BatchNorm statistics update, parameters do
    not: no gradient reaches them), ``bn="eval"`` in eval mode.
    """

    def __init__(self, model: Classifier, data: LongTailData, sampler, batch_size: int, *,
                 bn: str, seed: int, device: torch.device, num_workers: int) -> None:
        self.model, self.bn, self.device = model, bn, device
        self.layout = model.layout(device)
        self.draws = SeededDraws(sampler, seed)
        view, collate = data.training_view()
        self.loader = DataLoader(view, batch_size=batch_size,
                                 sampler=self.draws, drop_last=True, num_workers=num_workers,
                                 collate_fn=collate)
        self.feature_dim = model.backbone.feature_dim

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.draws.set_epoch(epoch)

    def __iter__(self):
        # nn.Module.train, not Classifier.train: the latter keeps frozen BatchNorm in eval.
        torch.nn.Module.train(self.model, self.bn == "train")
        # A batch that undecodable images (data.on_bad_image=skip) left too small is skipped:
        # BatchNorm in train mode needs two images, any step one.
        least = 2 if self.bn == "train" else 1
        for images, labels in self.loader:
            if len(labels) < least:
                continue
            images = images.to(self.device).contiguous(memory_format=self.layout)
            with torch.no_grad():
                features = self.model.features(images)
            yield features, labels.to(self.device)
        self.model.eval()


class NetworkStage2:
    """What the image-based stage-2 methods need: the stage-1 model, the data and the run."""

    def __init__(self, model: Classifier, data: LongTailData, cfg: Config, device: torch.device,
                 run_dir: Path, log: ScalarLog) -> None:
        self.model, self.data, self.cfg, self.device = model, data, cfg, device
        self.run_dir, self.log = run_dir, log

    def online_batches(self, method) -> tuple[OnlineBatches, Classifier]:
        """Return the batch source of an online trained ``method`` (its own sampler and epoch
        count draw the images) and the model copy it runs."""
        model = copy.deepcopy(self.model).to(self.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        sampler = build_sampler(method.sampler, self.data.train.labels, seed=self.cfg.seed,
                                total_epochs=max(method.epochs, 1),
                                samples_per_class=method.samples_per_class, num_replicas=1,
                                rank=0)
        batches = OnlineBatches(model, self.data, sampler, method.batch_for(len(sampler)),
                                bn=self.cfg.stage2.bn, seed=self.cfg.seed, device=self.device,
                                num_workers=self.data.num_workers)
        return batches, model

    def features(self, model: Classifier, split: str) -> torch.Tensor:
        """Return the features of ``split`` (val or test) under ``model``, test transform."""
        dataset = self.data.eval_view(self.data.splits()[split])
        model.eval()
        feats, _ = infer(model.features, dataset, batch_size=self.cfg.eval.batch_size,
                         device=self.device, num_workers=self.data.num_workers,
                         layout=model.layout(self.device))
        return feats

    def finetune(self, name: str) -> Classifier:
        """Return a copy of the stage-1 model fine-tuned as ``name`` (finetune: everything,
        finetune_last: the last stage and the classifier) with ``stage2.finetune.sampler``."""
        ft = self.cfg.stage2.finetune
        model = copy.deepcopy(self.model)
        for p in model.parameters():
            p.requires_grad_(True)
        if name == "finetune_last":
            model.freeze([_last_stage(model), "fc"])
        s2 = self.cfg.stage2
        stage = Stage1Config(epochs=ft.epochs, batch_size=ft.batch_size, lr=ft.lr,
                             momentum=s2.momentum, weight_decay=ft.weight_decay,
                             sampler=ft.sampler, samples_per_class=s2.samples_per_class,
                             min_steps=1,  # the batch as given (at most one epoch)
                             amp=self.cfg.stage1.amp, select=s2.select, lr_schedule="cosine")
        train_joint(model, self.data, stage, seed=self.cfg.seed, device=self.device,
                    num_workers=self.data.num_workers, eval_batch_size=self.cfg.eval.batch_size,
                    checkpoint_path=self.run_dir / "stage2" / name / "last.pt", log=self.log,
                    stage_name=f"stage 2 {name}",
                    config_keys=("stage2.finetune.batch_size", "stage2.select", ""))
        return model


def _last_stage(model: Classifier) -> str:
    """Return the name of the backbone's last stage (layer4, or layer3 of the CIFAR ResNet)."""
    names = [n for n, _ in model.backbone.named_children() if n.startswith("layer")]
    return names[-1]
