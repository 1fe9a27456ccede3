"""Cross-entropy and its long-tail variants, one object for stage 1 and the stage-2 heads.

With class counts n_y and prior p_y = n_y / sum(n), logits z and label y:

- ``ce``: ``-log softmax(z)_y``.
- ``logit_adjusted`` (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021):
  ``-log softmax(z + tau * log p)_y`` in training; the plain logits z at test time.
- ``balanced_softmax`` (Ren et al., "Balanced Meta-Softmax for long-tailed visual
  recognition", NeurIPS 2020): ``-log softmax(z + log n)_y``. Softmax ignores a constant shift,
  so this is ``logit_adjusted`` with tau = 1 exactly.

Two optional terms on top of any of the three:

- label smoothing per class ``eps_y``: the target becomes ``(1 - eps_y) onehot(y) + eps_y / C``;
  ``las_epsilons`` gives MiSLAS's label-aware smoothing (Zhong et al., "Improving calibration
  for long-tailed recognition", CVPR 2021).
- a weight per class ``w_y``: the loss is ``sum_i w_yi l_i / sum_i w_yi``, as
  ``F.cross_entropy(weight=...)`` averages; ``class_balanced_weights`` gives Cui et al.'s
  effective-number weights (CVPR 2019) used by weight balancing's second stage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from longtail.config import LOSSES


def log_prior(counts: Sequence[int] | Tensor) -> Tensor:
    """Return ``log(n_y / sum(n))`` of the class counts (a class of count 0 gets log 1e-12)."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    return (n / n.sum()).clamp(min=1e-12).log().float()


def logit_offset(counts: Sequence[int] | Tensor, loss: str, tau: float = 1.0) -> Tensor | None:
    """Return what ``loss`` adds to the logits in training: ``tau * log prior`` for
    logit_adjusted, ``log n`` for balanced_softmax, None for ce."""
    if loss not in LOSSES:
        raise ValueError(f"loss: expected one of {', '.join(LOSSES)}, found {loss!r}")
    if loss == "ce":
        return None
    if loss == "balanced_softmax":
        return torch.as_tensor(counts, dtype=torch.float64).clamp(min=1e-12).log().float()
    return tau * log_prior(counts)


def las_epsilons(counts: Sequence[int] | Tensor, head: float, tail: float) -> Tensor:
    """Return MiSLAS's label-aware smoothing per class (its 'concave' form):
    ``eps_y = tail + (head - tail) * sin(pi/2 * (n_y - n_min) / (n_max - n_min))``, so the
    largest class is smoothed by ``head`` and the smallest by ``tail``."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    spread = (n.max() - n.min()).item()
    if spread == 0:
        return torch.full(n.shape, float(head))
    return (tail + (head - tail) * torch.sin(math.pi / 2 * (n - n.min()) / spread)).float()


def class_balanced_weights(counts: Sequence[int] | Tensor, beta: float = 0.9999) -> Tensor:
    """Return Cui et al.'s class-balanced weights ``(1 - beta) / (1 - beta^n_y)``, scaled to
    sum to the number of classes (beta -> 1: inverse frequency; beta = 0: all ones)."""
    n = torch.as_tensor(counts, dtype=torch.float64).clamp(min=1)
    w = (1 - beta) / (1 - torch.pow(beta, n)) if beta > 0 else torch.ones_like(n)
    return (w * len(n) / w.sum()).float()


class ClassifierLoss:
    """Cross-entropy with an optional logit offset, per-class label smoothing and class weights
    (see the module docstring). ``loss(logits, labels)`` is differentiable; ``value_and_grad``
    gives the loss and its gradient with respect to the logits without autograd."""

    def __init__(self, offset: Tensor | None = None, smoothing: Tensor | None = None,
                 weight: Tensor | None = None) -> None:
        self.offset, self.smoothing, self.weight = offset, smoothing, weight

    @classmethod
    def build(cls, counts: Sequence[int] | Tensor, loss: str = "ce", tau: float = 1.0,
              smoothing: Tensor | None = None, weight: Tensor | None = None) -> ClassifierLoss:
        """Return the loss ``loss`` (ce, logit_adjusted, balanced_softmax) for these counts."""
        return cls(logit_offset(counts, loss, tau), smoothing, weight)

    @property
    def is_plain(self) -> bool:
        """True when this is plain cross-entropy."""
        return self.offset is None and self.smoothing is None and self.weight is None

    def to(self, device: torch.device) -> ClassifierLoss:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return ClassifierLoss(move(self.offset), move(self.smoothing), move(self.weight))

    def _targets(self, labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
        eps = self.smoothing[labels].to(dtype).unsqueeze(1)
        target = (eps / num_classes).expand(-1, num_classes).clone()
        target[torch.arange(len(labels), device=labels.device), labels] += 1 - eps.squeeze(1)
        return target

    def __call__(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.is_plain:
            return F.cross_entropy(logits, labels)
        if self.offset is not None:
            if logits.dtype in (torch.bfloat16, torch.float16):  # autocast's logits: the offset
                logits = logits.float()  # (log p, about -10) would lose 0.03 in bfloat16
            logits = logits + self.offset.to(logits.dtype)
        log_probs = torch.log_softmax(logits, dim=1)
        if self.smoothing is None:
            per_row = -log_probs.gather(1, labels.unsqueeze(1)).squeeze(1)
        else:
            per_row = -(self._targets(labels, logits.shape[1], log_probs.dtype)
                        * log_probs).sum(1)
        if self.weight is None:
            return per_row.mean()
        w = self.weight[labels].to(per_row.dtype)
        return (w * per_row).sum() / w.sum()

    @torch.no_grad()
    def value_and_grad(self, logits: Tensor, labels: Tensor,
                       out: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Return the loss and d loss / d logits: ``(softmax(z + offset) - target) * w_y /
        sum(w)`` row by row (``1 / batch`` in place of ``w_y / sum(w)`` without weights).

        The gradient is written into ``out`` (a tensor of the logits' shape, allocated when
        None; it may be ``logits`` itself), so a training loop can reuse one buffer: fresh
        batch-sized temporaries every step cost cRT a third of its time in page faults.
        """
        loss, d, scale = self.value_and_scaled_grad(logits, labels, out)
        return loss, d if scale == 1 else d.mul_(scale)

    @torch.no_grad()
    def value_and_scaled_grad(self, logits: Tensor, labels: Tensor,
                              out: Tensor | None = None) -> tuple[Tensor, Tensor, float]:
        """Return the loss, ``d`` and a number ``scale`` with d loss / d logits = ``scale *
        d`` (see ``value_and_grad``): without class weights the 1 / batch is left to the
        caller, whose weight-gradient product can apply it for free (``addmm``'s alpha)
        instead of a pass over the batch's logits."""
        out = torch.empty_like(logits) if out is None else out
        index = labels.unsqueeze(1)
        if self.offset is not None:
            logits = torch.add(logits, self.offset, out=out)
        if self.smoothing is None:
            # One softmax pass, no log-softmax: the loss only needs log p_y (clamped so that
            # a hopeless row reports -log(1e-38), not inf).
            d = torch.softmax(logits, 1, out=out)
            per_row = d.gather(1, index).squeeze(1).clamp_(min=1e-38).log_().neg_()
            d.scatter_add_(1, index, torch.full_like(per_row, -1.0).unsqueeze(1))
        else:
            num_classes = logits.shape[1]
            log_probs = torch.log_softmax(logits, 1, out=out)
            eps = self.smoothing[labels].to(log_probs.dtype)
            # target: eps / C everywhere plus 1 - eps at the label, never built as a matrix.
            per_row = -(eps / num_classes * log_probs.sum(1)
                        + (1 - eps) * log_probs.gather(1, index).squeeze(1))
            d = log_probs.exp_().sub_((eps / num_classes).unsqueeze(1))
            d.scatter_add_(1, index, (eps - 1).unsqueeze(1))
        if self.weight is None:
            return per_row.mean(), d, 1.0 / len(labels)
        w = self.weight[labels]
        total = w.sum()
        d *= (w / total).unsqueeze(1)  # a tensor: as alpha it would cost a host sync
        return (w * per_row).sum() / total, d, 1.0
