"""The sampler family of the paper, in one place.

Class j is drawn with probability ``p_j = n_j^q / sum_i n_i^q``, then a uniformly random image
of that class:

- ``instance`` (q=1): a plain shuffle of the training set, no replacement;
- ``class`` (q=0): every class equally likely;
- ``sqrt`` (q=1/2);
- a number: any q in [0, 1];
- ``progressive``: ``p_j(t) = (1 - s) p_j^IB + s p_j^CB`` with ``s = t / (T - 1)``, t the
  0-based epoch and T the number of epochs, so the first epoch is instance-balanced and the
  last one class-balanced, as the paper describes (its formula with t/T would stop 1/T short);
- ``class_aware``: the authors' variant: classes come from a shuffled list of all classes,
  reshuffled each time it is used up, and each pick yields ``samples_per_class`` consecutive
  images of the class from its own shuffled list, reshuffled each time it is used up.

Every sampler is deterministic in (seed, epoch) through its own ``torch.Generator``; nothing
touches Python's, NumPy's or torch's global RNG. An epoch has ``num_samples`` draws (default:
the training set size). With ``num_replicas`` processes, one global stream of
``ceil(num_samples / R) * R`` draws is cut as ``stream[rank::R]``, so ranks get disjoint,
equal-length shards whose union has the class mix of a single process. A draw costs O(1):
per-class index arrays are computed once.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from longtail import distributed
from longtail.arrays import class_indices
from longtail.config import SAMPLER_PRESETS, parse_sampler_spec


def class_probabilities(class_counts: torch.Tensor | Sequence[int], q: float) -> torch.Tensor:
    """Return ``n_j^q / sum_i n_i^q`` (float64); classes with no images get probability 0."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    weights = torch.where(counts > 0, counts.clamp(min=1) ** q, torch.zeros_like(counts))
    return weights / weights.sum()


def _generator(seed: int, epoch: int) -> torch.Generator:
    # SeedSequence mixes (seed, epoch) so that (0, 1) and (1, 0) give unrelated streams.
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _distributed_defaults(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """Return (num_replicas, rank), each this process group's where not given."""
    num_replicas = distributed.world_size() if num_replicas is None else num_replicas
    rank = distributed.rank() if rank is None else rank
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
    return num_replicas, rank


class LongTailSampler(Sampler[int]):
    """Base of the family: per-class index arrays, seeding, epochs and sharding.

    Subclasses implement ``_stream(generator, size)``: ``size`` dataset indices, the global
    stream of one epoch.
    """

    def __init__(
        self,
        labels: torch.Tensor | Sequence[int],
        num_samples: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        labels = class_indices(labels, None)  # 1-d integers >= 0 (0.5 is no class)
        if not len(labels):
            raise ValueError("labels: expected at least one label, found none")
        if num_samples is not None and (not isinstance(num_samples, numbers.Integral)
                                        or isinstance(num_samples, bool) or num_samples < 1):
            raise ValueError(f"num_samples: expected an int >= 1 or None (the training set "
                             f"size), found {num_samples!r}")
        self.labels = labels
        self.class_counts = torch.bincount(labels)
        # Dataset indices grouped by class: class j owns sorted_indices[offsets[j]:offsets[j+1]].
        self.sorted_indices = torch.argsort(labels, stable=True)
        self.offsets = torch.cumsum(self.class_counts, 0) - self.class_counts
        self.num_samples = len(labels) if num_samples is None else int(num_samples)
        self.seed = seed
        self.epoch = 0
        self.num_replicas, self.rank = _distributed_defaults(num_replicas, rank)
        self.total_size = math.ceil(self.num_samples / self.num_replicas) * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose stream the next iteration yields."""
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        """Return this rank's dataset indices for the current epoch (LongTensor)."""
        stream = self._stream(_generator(self.seed, self.epoch), self.total_size)
        return stream[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.total_size // self.num_replicas

    def _draw_in_classes(self, classes: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Return one uniformly random dataset index of each class in ``classes``."""
        within = (torch.rand(len(classes), generator=g, dtype=torch.float64)
                  * self.class_counts[classes]).long()
        return self.sorted_indices[self.offsets[classes] + within]

    def _stream(self, g: torch.Generator, size: int) -> torch.Tensor:
        raise NotImplementedError


class PowerSampler(LongTailSampler):
    """Class j with probability ``n_j^q / sum n_i^q``, then a uniform image of it.

    q=1 is a plain shuffle without replacement (repeated if more draws than images are asked).
    """

    def __init__(self, labels: torch.Tensor | Sequence[int], q: float, **kwargs) -> None:
        super().__init__(labels, **kwargs)
        self.q = float(q)

    def class_probabilities(self) -> torch.Tensor:
        return class_probabilities(self.class_counts, self.q)

    def _stream(self, g: torch.Generator, size: int) -> torch.Tensor:
        if self.q == 1.0:
            n = len(self.labels)
            perms = [torch.randperm(n, generator=g) for _ in range(math.ceil(size / n))]
            return torch.cat(perms)[:size]
        classes = torch.multinomial(self.class_probabilities().float(), size,
                                    replacement=True, generator=g)
        return self._draw_in_classes(classes, g)


class ProgressiveSampler(LongTailSampler):
    """Progressively-balanced: instance-balanced at epoch 0, class-balanced at the last epoch.

    ``p_j(t) = (1 - s) n_j / N + s / C`` with ``s = t / (T - 1)``, t the 0-based epoch and
    T = ``total_epochs`` (a single epoch is instance-balanced).
    """

    def __init__(self, labels: torch.Tensor | Sequence[int], total_epochs: int, **kwargs) -> None:
        super().__init__(labels, **kwargs)
        if total_epochs < 1:
            raise ValueError(f"progressive sampling needs total_epochs >= 1, found {total_epochs}")
        self.total_epochs = total_epochs

    def class_probabilities(self) -> torch.Tensor:
        s = min(self.epoch / max(self.total_epochs - 1, 1), 1.0)
        return ((1 - s) * class_probabilities(self.class_counts, 1.0)
                + s * class_probabilities(self.class_counts, 0.0))

    def _stream(self, g: torch.Generator, size: int) -> torch.Tensor:
        classes = torch.multinomial(self.class_probabilities().float(), size,
                                    replacement=True, generator=g)
        return self._draw_in_classes(classes, g)


class ClassAwareSampler(LongTailSampler):
    """The authors' class-aware sampling: runs of k images of one class, classes cycled.

    Classes come from a shuffled list of the non-empty classes, reshuffled at each wrap-around,
    so every class is picked equally often; each pick takes the next ``samples_per_class``
    images from the class's own shuffled list, reshuffled at each wrap-around.
    """

    def __init__(self, labels: torch.Tensor | Sequence[int], samples_per_class: int = 4,
                 **kwargs) -> None:
        super().__init__(labels, **kwargs)
        if samples_per_class < 1:
            raise ValueError(f"samples_per_class must be >= 1, found {samples_per_class}")
        self.samples_per_class = samples_per_class

    def class_probabilities(self) -> torch.Tensor:
        return class_probabilities(self.class_counts, 0.0)

    def _stream(self, g: torch.Generator, size: int) -> torch.Tensor:
        k = min(self.samples_per_class, size)  # a longer run than the epoch is the epoch
        present = torch.nonzero(self.class_counts > 0).flatten()
        picks = math.ceil(size / k)
        cycles = math.ceil(picks / len(present))
        classes = torch.cat([present[torch.randperm(len(present), generator=g)]
                             for _ in range(cycles)])[:picks]
        # Each class needs picks_c * k images from its reshuffled cycle; build them per class
        # (a loop over classes, not over draws) and scatter them back to the picks' slots.
        picks_per_class = torch.bincount(classes, minlength=len(self.class_counts))
        order = torch.argsort(classes, stable=True)
        chunks = []
        for c in torch.nonzero(picks_per_class).flatten().tolist():
            n_c = int(self.class_counts[c])
            need = int(picks_per_class[c]) * k
            start = int(self.offsets[c])
            members = self.sorted_indices[start : start + n_c]
            cycle = torch.cat([members[torch.randperm(n_c, generator=g)]
                               for _ in range(math.ceil(need / n_c))])
            chunks.append(cycle[:need].view(-1, k))
        runs = torch.empty(picks, k, dtype=torch.long)
        runs[order] = torch.cat(chunks)
        return runs.flatten()[:size]


def class_aware_problem(samples_per_class: int, counts: Sequence[int]) -> str | None:
    """Return why runs of ``samples_per_class`` images are too long for an epoch over a
    split of class ``counts`` (one draw per image), or None: an epoch that cannot visit half
    the classes trains on a few of them at a time (at 2^20, one class an epoch)."""
    draws, classes = sum(counts), sum(1 for n in counts if n > 0)
    most = max(1, 2 * draws // max(classes, 1))
    if samples_per_class <= most:
        return None
    return (f"expected at most {most}, so that an epoch of {draws} draws visits at least half "
            f"of the {classes} classes ({samples_per_class} of a class at a time visit "
            f"{max(draws // samples_per_class, 1)}), found {samples_per_class}")


def build_sampler(
    spec: str | float,
    labels: torch.Tensor | Sequence[int],
    *,
    seed: int = 0,
    total_epochs: int = 1,
    samples_per_class: int = 4,
    num_samples: int | None = None,
    num_replicas: int | None = None,
    rank: int | None = None,
) -> LongTailSampler:
    """Return the sampler named by ``spec`` (see the module docstring) over ``labels``."""
    spec = parse_sampler_spec(spec)
    common = dict(seed=seed, num_samples=num_samples, num_replicas=num_replicas, rank=rank)
    if spec == "progressive":
        return ProgressiveSampler(labels, total_epochs=total_epochs, **common)
    if spec == "class_aware":
        return ClassAwareSampler(labels, samples_per_class=samples_per_class, **common)
    q = SAMPLER_PRESETS[spec] if isinstance(spec, str) else spec
    return PowerSampler(labels, q=q, **common)
