"""Stage 1's speed against the model's own bound on this machine.

    python bench/stage1.py [--steps 20] [--resnet50-steps 3] [--repeats 3]

For each model, the same batch size and input size two ways:
- bare: a training loop on one batch already in memory as a float tensor (forward, loss,
  backward, SGD step, nothing else): the most this model can do here;
- longtail: ``train_joint`` (stage 1 of ``longtail run``) on uint8 images held in memory, with
  its sampler, per-draw seeded augmentation, DataLoader and bookkeeping: the second of two
  epochs (the bare loop, too, is timed after two warm-up steps).
The ratio longtail / bare is what the pipeline costs on top of the model. The same for
feature extraction (eval mode, no gradients): a bare forward pass of the backbone on one
in-memory batch against ``infer`` over the split as ``longtail run`` extracts it (test-time
transform, DataLoader, gathering the rows).

Models: the demo's (ResNet-10 width 32, torchvision stem, 28 px, 1 channel, batch 128) and
ResNet-50 at 224 px (batch 32, a few steps: CPUs are slow at it).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from longtail.config import Stage1Config
from longtail.data import LongTailData
from longtail.data.datasets import TensorImages
from longtail.models import build_model
from longtail.scalars import ScalarLog
from longtail.stages.inference import infer
from longtail.stages.joint import train_joint


def bare_loop(model, batch: int, channels: int, side: int, steps: int) -> float:
    """Return images per second of plain training steps on one in-memory batch."""
    layout = model.layout(torch.device("cpu"))  # as longtail's stage 1 takes it
    model.train().to(memory_format=layout)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, channels, side, side).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (batch,))
    for i in range(steps + 2):
        if i == 2:  # two warm-up steps
            start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return batch * steps / (time.perf_counter() - start)


def longtail_epoch(model, batch: int, channels: int, side: int, steps: int) -> float:
    """Return images per second of a stage-1 epoch of ``steps`` batches (longtail's loop):
    the second of two, as the bare loop times its steps after two warm-up steps (a fresh
    model's first steps pay for oneDNN's kernel choices and the allocator's first blocks)."""
    data = synthetic_data(batch, channels, side, steps)
    cfg = Stage1Config(epochs=2, batch_size=batch, lr=0.01)
    with tempfile.TemporaryDirectory() as folder:
        history = train_joint(model, data, cfg, seed=0, device=torch.device("cpu"),
                              num_workers=0, eval_batch_size=batch,
                              checkpoint_path=Path(folder) / "last.pt",
                              log=ScalarLog(Path(folder), enabled=False))
    return history[-1]["images_per_s"]


def synthetic_data(batch: int, channels: int, side: int, steps: int) -> LongTailData:
    """Return ``batch * steps`` random uint8 images of ``side`` px in memory, 10 classes."""
    n = batch * steps
    images = torch.randint(0, 256, (n, channels, side, side), dtype=torch.uint8)
    labels = torch.arange(n) % 10
    return LongTailData(name="synthetic", num_classes=10,
                        class_names=[str(c) for c in range(10)], channels=channels,
                        image_size=side, mean=(0.5,) * channels, std=(0.25,) * channels,
                        train=TensorImages(images, labels), val=None,
                        test=TensorImages(images, labels), in_memory=True, num_workers=0)


def bare_features(model, batch: int, channels: int, side: int, steps: int) -> float:
    """Return images per second of the backbone's forward pass on one in-memory batch."""
    layout = model.layout(torch.device("cpu"))
    model.eval().to(memory_format=layout)
    x = torch.randn(batch, channels, side, side).contiguous(memory_format=layout)
    with torch.no_grad():
        for i in range(steps + 2):
            if i == 2:
                start = time.perf_counter()
            model.features(x)
    return batch * steps / (time.perf_counter() - start)


def longtail_features(model, batch: int, channels: int, side: int, steps: int) -> float:
    """Return images per second of extracting one split's features as ``longtail run`` does."""
    data = synthetic_data(batch, channels, side, steps)
    model.eval().to(memory_format=model.layout(torch.device("cpu")))  # as stage 1 leaves it
    view = data.eval_view(data.test)
    first = TensorImages(data.test.images[:batch], data.test.labels[:batch])
    infer(model.features, data.eval_view(first), batch_size=batch,
          device=torch.device("cpu"))  # a warm-up batch, as the bare loop has
    start = time.perf_counter()
    infer(model.features, view, batch_size=batch, device=torch.device("cpu"))
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="steps of the demo model")
    parser.add_argument("--resnet50-steps", type=int, default=3, help="steps of ResNet-50")
    parser.add_argument("--repeats", type=int, default=3,
                        help="demo model: bare and longtail timed in turn this many times, the "
                             "best of each kept (ResNet-50: once)")
    args = parser.parse_args()
    models = (("resnet10 w32, 28 px, batch 128", 32, 1, 28, 128, args.steps, args.repeats),
              ("resnet50, 224 px, batch 32", 64, 3, 224, 32, args.resnet50_steps, 1))
    for what, bare_fn, ours_fn in (("training", bare_loop, longtail_epoch),
                                   ("features", bare_features, longtail_features)):
        print(f"{torch.get_num_threads()} threads; images per second, {what} (best of the "
              f"repeats: another process on the cores only slows a run down)")
        print(f"{'model':<36} {'repeats':>7} {'bare':>8} {'longtail':>9} {'ratio':>6}")
        for name, width, channels, side, batch, steps, repeats in models:
            arch = name.split()[0].rstrip(",")
            bare, ours = 0.0, 0.0
            for _ in range(repeats):  # in turn, so that a slow spell of the machine hits both
                torch.manual_seed(0)
                bare = max(bare, bare_fn(build_model(arch, 10, channels, side, width=width),
                                         batch, channels, side, steps))
                torch.manual_seed(0)
                ours = max(ours, ours_fn(build_model(arch, 10, channels, side, width=width),
                                         batch, channels, side, steps))
            print(f"{name:<36} {repeats:>7} {bare:>8.1f} {ours:>9.1f} {ours / bare:>6.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
