"""Batched inference over a dataset, sharded across processes under torchrun."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from longtail import distributed
from longtail.data.datasets import collate_skipping
from longtail.errors import LongtailError


@torch.no_grad()
def infer(
    fn: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    *,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    desc: str | None = None,
    layout: torch.memory_format = torch.channels_last,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (outputs of ``fn`` on every image, labels), on the CPU, in dataset order.

    Each process handles indices ``rank::world_size``; the results are gathered in every process.
    ``desc`` names the work in a progress bar and in a warning about images left out
    (data.on_bad_image=skip); without it (the val check of every epoch) both stay silent.
    ``layout``: the memory format of the images, the model's (``Classifier.layout``).
    """
    world, rank = distributed.world_size(), distributed.rank()
    n = len(dataset)
    # A view that transforms whole batches (LongTailData.eval_view) brings its own collate.
    collate = getattr(dataset, "collate", collate_skipping)
    shard = Subset(dataset, range(rank, n, world)) if world > 1 else dataset
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda", collate_fn=collate)
    outputs, labels = [], []
    bar = tqdm(loader, desc=desc, unit="batch", leave=False,
               disable=None if desc is not None and distributed.is_main() else True)
    for images, targets in bar:
        if not len(targets):  # every image of the batch was undecodable (and skipped)
            continue
        images = images.to(device, non_blocking=True).contiguous(memory_format=layout)
        outputs.append(fn(images).float())
        labels.append(targets.to(device))
    if not outputs:
        raise LongtailError(f"{desc or 'inference'}: no image could be decoded")
    out = distributed.gather_rows(torch.cat(outputs)).cpu()
    lab = distributed.gather_rows(torch.cat(labels)).cpu()
    if len(out) < n and desc is not None and distributed.is_main():
        # data.on_bad_image=skip, said once per split's features (not at each val check)
        print(f"warning: {desc}: {n - len(out)} of {n} images could not be decoded and are "
              f"left out (data.on_bad_image=skip)", flush=True)
    if world > 1 and len(out) == n:  # undo the rank-strided order (rows keep their labels)
        order = torch.cat([torch.arange(r, n, world) for r in range(world)])
        out[order], lab[order] = out.clone(), lab.clone()
    return out, lab
