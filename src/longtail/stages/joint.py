"""Stage 1: joint training of backbone and linear classifier with cross-entropy (or its
logit-adjusted / Balanced Softmax forms, ``longtail.losses``), optionally on mixup batches.

SGD with momentum, a cosine schedule to 0, and a sampler of the family in
``longtail.data.samplers`` (instance-balanced by default). One epoch at a time: progress bar,
loss, val accuracy and images per second logged, a checkpoint written after every epoch.
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from longtail import distributed
from longtail.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from longtail.config import Stage1Config
from longtail.data import LongTailData, build_sampler
from longtail.data.datasets import SeededDraws
from longtail.errors import LongtailError, UnreadableFile
from longtail.losses import ClassifierLoss
from longtail.models import Classifier
from longtail.scalars import ScalarLog
from longtail.stages.inference import infer


def cosine_factor(step: int, steps_per_epoch: int, epochs: int, schedule: str,
                  warmup_epochs: int = 0) -> float:
    """Return the LR multiplier at optimizer ``step``.

    A linear warm-up over ``warmup_epochs`` (from 1/warm-up steps to 1), then:
    ``cosine``: per step, from 1 down to 0 at the end of training;
    ``cosine_epoch``: the authors' schedule, stepped at the start of each epoch, so epoch e
    (0-based) runs at ``0.5 * (1 + cos(pi * (e + 1) / epochs))`` and the last epoch at 0.
    """
    warmup = warmup_epochs * steps_per_epoch
    if epochs <= 0:  # no training (stage1.epochs=0 with model.weights)
        return 1.0
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine_epoch":
        return 0.5 * (1 + math.cos(math.pi * (step // steps_per_epoch + 1) / epochs))
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps_per_epoch * epochs - warmup)))


def mixup(images: torch.Tensor, alpha: float, seed: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                 float]:
    """Return (mixed images, the permutation each image was mixed with, lam): mixup (Zhang et
    al., ICLR 2018) ``lam x + (1 - lam) x[perm]`` with lam ~ Beta(alpha, alpha), drawn from
    ``seed`` alone so that a resumed run mixes as an uninterrupted one."""
    lam = random.Random(seed).betavariate(alpha, alpha)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    perm = perm.to(images.device)
    return images.mul(lam).add_(images[perm], alpha=1 - lam), perm, lam


# Steps between checks of the loss for NaN or infinity, by device type (1 elsewhere): on a
# GPU each check waits for the queued work.
NAN_CHECK_EVERY = {"cuda": 10}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` is a GPU with native bfloat16 (Ampere on, compute capability 8.0):
    the autocast of ``stage1.amp``; emulated (Volta, Turing) it is slower than float32. (Not
    ``torch.cuda.is_bf16_supported``: it asks the current GPU, not ``device``.)"""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def train_joint(
    model: Classifier,
    data: LongTailData,
    cfg: Stage1Config,
    *,
    seed: int,
    device: torch.device,
    num_workers: int,
    eval_batch_size: int,
    checkpoint_path: Path,
    log: ScalarLog,
    resume: bool = False,
    stage_name: str = "stage 1",
    config_keys: tuple[str, str, str] = ("stage1.batch_size", "stage1.select",
                                         "stage1.min_steps"),
) -> list[dict[str, float]]:
    """Train ``model`` in place on ``data.train``; return one record per epoch.

    ``stage_name`` names the training in progress bars and messages, ``config_keys`` the keys
    of ``cfg.batch_size``, ``cfg.select`` and ``cfg.min_steps`` in notes (fine-tuning has its
    own, and no min_steps key: "").

    With ``cfg.select == "best_val"`` the model ends with the weights of the epoch of best val
    top-1 (kept in ``best.pt`` beside the checkpoint), else with the last epoch's.

    After every epoch ``checkpoint_path`` holds everything needed to continue (model,
    optimizer, scheduler, epoch, history, best val accuracy, RNG state). With ``resume`` and
    a checkpoint present, training continues after its last complete epoch; since sampling
    and augmentation depend only on (seed, epoch, position), the continued run computes what
    an uninterrupted one would have.
    """
    layout = model.layout(device)
    model.to(device).to(memory_format=layout)
    sampler = build_sampler(cfg.sampler, data.train.labels, seed=seed, total_epochs=cfg.epochs,
                            samples_per_class=cfg.samples_per_class)
    draws = SeededDraws(sampler, seed)  # augmentation seeded per draw: resumable, worker-proof
    world = distributed.world_size()  # the config check made the batch a multiple of it
    global_batch = cfg.real_batch_size(len(data.train.labels), world)
    batch_size = global_batch // world  # per process
    if global_batch < cfg.batch_size and distributed.is_main():
        # a small dataset: the batch shrinks to give min_steps steps an epoch; say so, as lr
        # may follow it
        scaled = ", lr scaled to it" if cfg.lr is None else ""
        print(f"note: {config_keys[0]} {cfg.batch_size} would leave fewer than "
              f"{cfg.min_steps} step{'s' * (cfg.min_steps != 1)} an epoch over the "
              f"{len(data.train.labels)} training images; batches of {global_batch}{scaled}"
              + (f" ({config_keys[2]})" if config_keys[2] else ""), flush=True)
    view, collate = data.training_view()
    loader = DataLoader(
        view, batch_size=batch_size, sampler=draws, num_workers=num_workers,
        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=num_workers > 0,
        collate_fn=collate,
    )
    steps_per_epoch = len(loader)
    net = model
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if cfg.compile:
        # its import says "No CUDA runtime is found" on every CPU machine: not news here
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        net = torch.compile(net)
    lr = cfg.resolved_lr(global_batch)
    head = [p for p in model.fc.parameters() if p.requires_grad]
    body = [p for p in model.backbone.parameters() if p.requires_grad]
    groups = [{"params": ps, "lr": group_lr} for ps, group_lr in
              ((body, lr), (head, cfg.classifier_lr or lr)) if ps]
    if not groups:
        raise LongtailError("config key model.trainable: leaves no parameter to train")
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_factor(s, steps_per_epoch, cfg.epochs, cfg.lr_schedule,
                                           cfg.warmup_epochs))
    history: list[dict[str, float]] = []
    best: dict[str, float] = {}
    best_path = checkpoint_path.parent / "best.pt"
    best_state: dict[str, torch.Tensor] | None = None
    if resume and checkpoint_path.is_file():
        try:
            state = load_checkpoint(checkpoint_path, map_location=device, keys=(
                "model", "optimizer", "scheduler", "epoch", "history", "best", "rng"))
        except UnreadableFile as e:  # written atomically, so damaged after the fact
            raise LongtailError(f"{e}; delete it and --resume trains stage 1 again from "
                                f"the start") from None
        load_model_state(model, state["model"], checkpoint_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"].cpu())  # map_location moved it to device
        history, best = state["history"], state["best"]
        if cfg.select == "best_val" and best_path.is_file():
            best_state = load_checkpoint(best_path, map_location=device, keys=("model",)
                                         )["model"]
        if distributed.is_main():
            print(f"resuming stage 1 after epoch {state['epoch']} of {cfg.epochs} "
                  f"({checkpoint_path})", flush=True)
    elif resume and distributed.is_main():  # stopped within the first epoch
        print(f"resuming stage 1 from its start: no epoch had finished ({checkpoint_path} "
              f"not written yet)", flush=True)
    amp = cfg.amp and native_bf16(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: choose kernels once
    # A finiteness check is a host sync on a GPU: there, every 10 steps and at the end of
    # each epoch, before its checkpoint; on a CPU, every step before the backward pass.
    check_every = NAN_CHECK_EVERY.get(device.type, 1)

    def diverged(epoch: int, step: int) -> LongtailError:
        last = (f"the last good checkpoint is {checkpoint_path} (epoch {len(history)})"
                if history else "no checkpoint was written yet")
        where = (f"at epoch {epoch + 1}, step {step + 1}" if check_every == 1 else
                 f"by epoch {epoch + 1}, step {step + 1} (checked every {check_every} steps)")
        return LongtailError(f"{stage_name}: loss is {totals[0].item()} {where}; lower the "
                             f"learning rate (now {lr:g}); {last}")

    loss_fn = ClassifierLoss.build(data.train_counts, cfg.loss, cfg.loss_tau).to(device)
    val_set = data.eval_view(data.val) if data.val else None
    main = distributed.is_main()
    # Under torchrun with data.on_bad_image=skip, the ranks agree each step whether to skip it
    # (one small all-reduce a step, paid only then).
    agree = distributed.world_size() > 1 and getattr(data.train, "skip_bad", False)
    for epoch in range(len(history), cfg.epochs):
        draws.set_epoch(epoch)
        net.train()
        epoch_lr = optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        totals = torch.zeros(3, device=device)  # loss sum, images, images skipped
        bar = tqdm(loader, desc=f"{stage_name} epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   leave=False, disable=None if main else True)
        for step, (images, labels) in enumerate(bar):
            totals[2] += batch_size - len(labels)
            short = len(labels) < 2  # undecodable images skipped: BatchNorm needs two
            if agree:  # a rank skipping alone would pair its next all-reduce with this one's
                short = bool(distributed.all_reduce_sum(
                    torch.tensor([float(short)], device=device)).item())
            if short:
                continue
            images = images.to(device, non_blocking=True).contiguous(memory_format=layout)
            labels = labels.to(device, non_blocking=True)
            if cfg.mixup_alpha > 0:
                images, perm, lam = mixup(images, cfg.mixup_alpha,
                                          seed * 1_000_003 + epoch * 100_003 + step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                try:
                    logits = net(images)
                except RuntimeError as e:  # torch.compile's own failure: one line
                    failure = _compile_failure(e, device) if cfg.compile else None
                    if failure is None:
                        raise
                    raise failure from None
                loss = loss_fn(logits, labels)
                if cfg.mixup_alpha > 0:
                    loss = lam * loss + (1 - lam) * loss_fn(logits, labels[perm])
            totals[0] += loss.detach() * len(labels)
            totals[1] += len(labels)
            if step % check_every == 0 and not torch.isfinite(totals[0]):
                raise diverged(epoch, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        if check_every > 1 and not torch.isfinite(totals[0]):  # before the checkpoint
            raise diverged(epoch, steps_per_epoch - 1)
        elapsed = time.perf_counter() - start
        distributed.broadcast_buffers(model)  # rank 0's BatchNorm statistics everywhere
        totals = distributed.all_reduce_sum(totals)
        record = {"epoch": epoch + 1, "loss": (totals[0] / totals[1].clamp(min=1)).item(),
                  "lr": epoch_lr, "images_per_s": totals[1].item() / elapsed}
        due = epoch + 1 == cfg.epochs or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0)
        if val_set is not None and due:
            record["val_top1"] = accuracy(model, val_set, device, eval_batch_size, num_workers)
            if record["val_top1"] > best.get("val_top1", -1.0):
                best = {"val_top1": record["val_top1"], "epoch": epoch + 1}
                if cfg.select == "best_val":  # every rank keeps it: val top-1 is gathered
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    if main:
                        save_checkpoint({"model": best_state, "epoch": epoch + 1,
                                         "val_top1": record["val_top1"]}, best_path)
        history.append(record)
        if main:
            log.log(stage_name.replace(" ", ""), epoch + 1,
                    **{k: v for k, v in record.items() if k != "epoch"})
            tqdm.write(_epoch_line(record, cfg.epochs))
            if totals[2]:
                tqdm.write(f"warning: skipped {int(totals[2])} undecodable images in epoch "
                           f"{epoch + 1} (data.on_bad_image=skip)")
            save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "epoch": epoch + 1,
                             "history": history, "best": best,
                             "rng": {"torch": torch.get_rng_state()}}, checkpoint_path)
    if cfg.select == "best_val" and best_state is not None:
        model.load_state_dict(best_state)
        if main:
            print(f"{config_keys[1]}=best_val: the weights of epoch {best['epoch']} (val top-1 "
                  f"{best['val_top1']:.1f}%) are the result of {stage_name}", flush=True)
    model.eval()
    return history


def _compile_failure(error: RuntimeError, device: torch.device) -> LongtailError | None:
    """Return a LongtailError for a failure of torch.compile's compilers (no C++ compiler
    on a CPU machine, no Triton on a GPU one), else None."""
    if not type(error).__module__.startswith(("torch._dynamo", "torch._inductor")):
        return None
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    why = next((line for line in lines if "Error" in line or "Compiler" in line), lines[0]
               if lines else type(error).__name__)
    return LongtailError(f"stage1.compile=true: torch.compile failed on {device.type} ({why}); "
                         f"set stage1.compile=false to train without it")


def accuracy(model: Classifier, dataset, device: torch.device, batch_size: int,
             num_workers: int) -> float:
    """Return the top-1 accuracy (%) of ``model`` on ``dataset`` (eval mode)."""
    was_training = model.training
    model.eval()
    logits, labels = infer(model, dataset, batch_size=batch_size, device=device,
                           num_workers=num_workers, layout=model.layout(device))
    model.train(was_training)
    return 100.0 * (logits.argmax(1) == labels).float().mean().item()


def _epoch_line(record: dict[str, float], epochs: int) -> str:
    parts = [f"epoch {record['epoch']:>3}/{epochs}", f"loss {record['loss']:.4f}"]
    if "val_top1" in record:
        parts.append(f"val top-1 {record['val_top1']:5.1f}%")
    parts += [f"lr {record['lr']:.4f}", f"{record['images_per_s']:.0f} img/s"]
    return "  ".join(parts)
