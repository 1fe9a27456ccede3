"""One short check for a machine with a GPU: is stage 1 ready for it, and what limits it?

    python bench/gpu_check.py [--device cuda] [--steps 30] [--batch 128] [--compile]

1. ResNet-50 at 224 px, stage-1 training steps with bfloat16 autocast and channels_last (as
   ``longtail run`` trains on CUDA): images per second and peak GPU memory; with
   ``--compile`` the same with ``torch.compile`` (``stage1.compile: true``), to measure it.
2. The input pipeline on generated JPEGs (bench/loader.py's), with as many DataLoader workers
   as the machine has CPUs: images per second.
3. Which of the two is the bottleneck.

``--device cpu --steps 2 --batch 4 --images 64`` is a smoke run for machines without a GPU
(the test suite runs it so that this script cannot rot).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from loader import images_per_second, write_jpegs

from longtail.models import build_model
from longtail.stages.joint import native_bf16


def train_steps(device: torch.device, batch: int, steps: int, compile: bool) -> tuple[float, float]:
    """Return (images per second, peak memory in GiB) of ResNet-50 training steps."""
    model = build_model("resnet50", 1000, 3, 224).to(device).to(memory_format=torch.channels_last)
    net = torch.compile(model) if compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224, device=device).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    amp = native_bf16(device)  # as stage1.amp: bf16 where the GPU has it natively
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warmup = 3
    for i in range(steps + warmup):
        if i == warmup:
            if amp:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if amp:
        torch.cuda.synchronize(device)
    rate = batch * steps / (time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if amp else float("nan")
    return rate, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--images", type=int, default=1024, help="JPEGs for the loader test")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    model_rate, peak = train_steps(device, args.batch, args.steps, compile=False)
    print(f"ResNet-50 224 px, batch {args.batch}, bf16 autocast, channels_last: "
          f"{model_rate:.0f} img/s, peak memory {peak:.1f} GiB")
    if args.compile:
        rate, peak = train_steps(device, args.batch, args.steps, compile=True)
        print(f"  with torch.compile: {rate:.0f} img/s ({rate / model_rate:.2f}x), peak memory "
              f"{peak:.1f} GiB")
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    with tempfile.TemporaryDirectory() as tmp:
        paths, labels = write_jpegs(Path(tmp), args.images)
        loader_rate = images_per_second(paths, labels, workers, min(args.batch, 64), epochs=2)
    print(f"input pipeline (JPEG decode, RandomResizedCrop, flip, ColorJitter), {workers} "
          f"workers, 2 epochs of {args.images} images: {loader_rate:.0f} img/s")
    slower = "the input pipeline" if loader_rate < model_rate else "the model"
    print(f"bottleneck: {slower} ({min(loader_rate, model_rate):.0f} img/s of stage 1 at most)")


if __name__ == "__main__":
    main()
