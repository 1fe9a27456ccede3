"""Arrays given to the Python API (NumPy, torch tensors on any device, nested sequences),
turned into tensors and checked, with errors that name the argument."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch
from torch import Tensor

ArrayLike = Any  # torch.Tensor, numpy array or nested sequence


def as_tensor(x: ArrayLike, name: str, expected: str) -> Tensor:
    """Return ``x`` as a tensor (detached: a model's own parameters, ``fc.weight``, are data
    here, never trained through); TypeError naming ``name`` for what torch cannot convert."""
    if isinstance(x, Tensor):
        if x.layout != torch.strided:  # sparse: most operations fail deep inside torch
            raise TypeError(f"{name}: expected a dense tensor, found layout {x.layout} (pass "
                            f"x.to_dense())")
        if x.is_meta:  # shapes without data
            raise TypeError(f"{name}: expected a tensor with data, found one on the meta "
                            f"device")
        return _real(x.detach(), name, expected)
    try:
        with warnings.catch_warnings():  # a read-only (memory-mapped) array: never written
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            tensor = torch.as_tensor(x).detach()
    except (TypeError, ValueError, RuntimeError) as e:
        first = x
        with contextlib.suppress(Exception):  # the first element, however deeply nested
            while not isinstance(first, (str, bytes)) and len(first):
                first = first[0]
        strings = (isinstance(first, (str, bytes))
                   or getattr(getattr(x, "dtype", None), "kind", "") in ("U", "S"))
        found = "strings" if strings else f"{type(x).__name__} ({e})"
        raise TypeError(f"{name}: expected {expected}, found {found}") from None
    return _real(tensor, name, expected)


def _real(x: Tensor, name: str, expected: str) -> Tensor:
    """``x``, refused when complex: torch would drop the imaginary parts, with one warning per
    process at most."""
    if x.is_complex():
        raise TypeError(f"{name}: expected {expected}, found complex numbers ({x.dtype})")
    return x


def class_indices(y: ArrayLike, n: int | None, name: str = "labels",
                  num_classes: int | None = None, of: str = "the classifier") -> Tensor:
    """Return ``y`` as int64 class indices on the CPU after checking them: 1-d, ``n`` of them
    (any number when None), integers (integer-valued floats pass), >= 0, and below
    ``num_classes`` (the rows of the classifier, or the classes ``of`` says) when given."""
    y = as_tensor(y, name, "integer class indices")
    if y.ndim != 1 or (n is not None and len(y) != n):
        expected = f"{n} labels" if n is not None else "a 1-d array of labels"
        raise ValueError(f"{name}: expected {expected}, found shape {tuple(y.shape)}")
    if y.is_floating_point():  # 3.0 is class 3; 3.7 is no class (.long() would make it 3)
        bad = ~torch.isfinite(y) | (y != y.trunc())
        if bool(bad.any()):
            row = int(bad.nonzero()[0])
            raise ValueError(f"{name}: expected integer labels, found {y[row].item():g} in "
                             f"row {row}")
    # from 2^63 on, .long() wraps labels round to negative numbers (torch has few uint64
    # operations: the top bit set is a negative int64)
    huge = (y >= 2.0**63 if y.is_floating_point() else
            y.view(torch.int64) < 0 if y.dtype == torch.uint64 else None)
    if huge is not None and bool(huge.any()):
        row = int(huge.nonzero()[0])
        shown = (f"{y[row].item():g}" if y.is_floating_point()
                 else int(y.view(torch.int64)[row]) % 2**64)
        raise ValueError(f"{name}: expected labels below 2^63, found {shown} in row {row}")
    y = y.long()
    if len(y) and y.min() < 0:
        raise ValueError(f"{name}: expected labels >= 0, found {int(y.min())}")
    if num_classes is not None and len(y) and int(y.max()) >= num_classes:
        raise ValueError(f"{name}: expected labels below the {num_classes} classes of "
                         f"{of}, found {int(y.max())}")
    return y.cpu()  # small: the samplers and the fits on the CPU count them there
