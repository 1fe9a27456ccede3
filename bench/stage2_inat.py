"""Stage 2 at iNaturalist 2018's shape within one machine's memory.

    python bench/stage2_inat.py [--steps 40] [--store float16]

Synthetic features of iNaturalist 2018's shape: 437,513 training features of 2,048 dimensions
(ResNet-50's) over 8,142 classes (1,000 down to 2 per class), one val and three test features
per class. They are stored in ``--store`` precision (float16 halves the 3.6 GB) and given to
the estimators, which compute in float32.

A full cRT epoch is 854 steps of batch 512 (about 30 TFLOP on CPU: minutes per epoch), so cRT
and LWS are timed on ``--steps`` steps over a class-balanced subset and the epoch time is
extrapolated; tau-norm (val logits) and NCM run whole. Prints seconds, the matrix-product bound
of the same work, and the peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from longtail.stages.rebalance import CRT, LWS, NCM, TauNorm
from shapes import shape_counts


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="cRT / LWS steps timed")
    parser.add_argument("--store", choices=["float16", "float32"], default="float16")
    parser.add_argument("--dim", type=int, default=2048)
    args = parser.parse_args()
    dtype = getattr(torch, args.store)
    counts = shape_counts("inat2018")
    classes, batch = len(counts), 512
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(classes, args.dim, generator=g)

    def features(per_class: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.repeat_interleave(torch.arange(classes), per_class)
        out = torch.empty(len(labels), args.dim, dtype=dtype)
        for i in range(0, len(labels), 65536):  # built in chunks: no float32 copy of it all
            rows = labels[i : i + 65536]
            noise = torch.randn(len(rows), args.dim, generator=g)
            out[i : i + 65536] = (centres[rows] + 2 * noise).relu().to(dtype)
        return out, labels

    start = time.perf_counter()
    train_x, train_y = features(counts)
    val_x, val_y = features(torch.ones(classes, dtype=torch.long))
    test_x, test_y = features(torch.full((classes,), 3))
    weight = torch.nn.functional.normalize(centres, dim=1) * (counts.float() ** 0.3)[:, None]
    print(f"iNaturalist-2018-shaped features: train {tuple(train_x.shape)} {args.store} "
          f"({train_x.numel() * train_x.element_size() / 2**30:.1f} GiB), {classes} classes, "
          f"built in {time.perf_counter() - start:.0f} s; {torch.get_num_threads()} threads")

    # The steps timed: a class-balanced subset of steps x batch rows.
    pick = torch.randint(0, len(train_y), (args.steps * batch,), generator=g)
    sub_x, sub_y = train_x[pick].float(), train_y[pick]
    steps_per_epoch = len(train_y) // batch

    w = torch.randn(classes, args.dim)
    grad = torch.randn(batch, classes)
    start = time.perf_counter()
    for s in range(args.steps):
        x = sub_x[s * batch : (s + 1) * batch]
        x @ w.T
        grad.T @ x
    bound_step = (time.perf_counter() - start) / args.steps

    start = time.perf_counter()
    CRT(classes, epochs=1, batch_size=batch, sampler="instance").fit(sub_x, sub_y)
    crt_step = (time.perf_counter() - start) / args.steps
    start = time.perf_counter()
    LWS(weight, None, epochs=1, batch_size=batch, sampler="instance").fit(sub_x, sub_y)
    lws_step = (time.perf_counter() - start) / args.steps
    print(f"cRT: {crt_step:.3f} s/step, {crt_step * steps_per_epoch:.0f} s per epoch of "
          f"{steps_per_epoch} steps (bound {bound_step * steps_per_epoch:.0f} s: forward and "
          f"weight-gradient products; ratio {crt_step / bound_step:.2f})")
    print(f"LWS: {lws_step:.3f} s/step, {lws_step * steps_per_epoch:.0f} s per epoch (the "
          f"joint logits, 437,513 x 8,142, would take 13 GiB: each batch's product instead)")
    val_logits, val_float = torch.empty(len(val_y), classes), val_x.float()
    start = time.perf_counter()
    torch.mm(val_float, weight.T, out=val_logits)
    bound_tau = time.perf_counter() - start
    del val_logits, val_float
    start = time.perf_counter()
    TauNorm(weight).fit(None, None, val_x, val_y)
    tau_s = time.perf_counter() - start
    print(f"tau-norm: {tau_s:.1f} s (41 taus on {len(val_y)} val features; bound "
          f"{bound_tau:.1f} s: the val logits product; ratio {tau_s / bound_tau:.2f})")
    start = time.perf_counter()
    ncm = NCM("cosine").fit(train_x, train_y)
    ncm.predict(test_x)
    print(f"NCM cosine: {time.perf_counter() - start:.1f} s (class means of all training "
          f"features, {len(test_y)} test predictions)")
    print(f"peak resident memory: {peak_gb():.1f} GiB")


if __name__ == "__main__":
    main()
