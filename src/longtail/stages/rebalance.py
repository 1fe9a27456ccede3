"""Stage 2: re-balancing the classifier on frozen features.

Each method is one small estimator in the scikit-learn manner: the constructor stores
hyper-parameters (and the joint classifier where the method starts from it), ``fit`` learns
from features and returns ``self``, learned state ends in ``_``, and ``logits`` / ``predict``
work on any (N, D) features::

    TauNorm(model.fc.weight).fit(train_feats, train_labels, val_feats, val_labels).predict(x)

The methods:
- ``Joint``: the stage-1 classifier unchanged.
- ``NCM``: nearest class mean, by cosine similarity or Euclidean distance.
- ``CRT``: a new linear classifier trained with class-balanced sampling.
- ``TauNorm``: ``w_j / ||w_j||^tau``, bias dropped, tau chosen on a validation split.
- ``LWS``: one learned scale per class on the frozen joint classifier, class-balanced sampling.

Beyond the paper (each docstring gives its source and formula):
- ``LogitAdjust``: post-hoc logit adjustment, joint logits minus ``tau * log prior``.
- ``CRT(loss=...)``: cRT with the logit-adjusted or Balanced Softmax loss; ``BALMS`` is the
  latter with instance-balanced sampling.
- ``LAS``: cRT with MiSLAS's label-aware smoothing.
- ``WB``: weight balancing's second stage: class-balanced loss, weight decay and MaxNorm.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from longtail.arrays import ArrayLike, as_tensor, class_indices
from longtail.config import (
    MAX_RATE,
    MAX_TAU,
    SAMPLER_NAMES,
    Stage2Config,
    parse_sampler_spec,
    steps_batch,
)
from longtail.data.features import check_values
from longtail.data.samplers import build_sampler
from longtail.distributed import resolve_device
from longtail.losses import (
    LOSSES,
    ClassifierLoss,
    class_balanced_weights,
    las_epsilons,
    log_prior,
)
from longtail.metrics import balanced_accuracy

# The config's stage-2 defaults, which the classes' own defaults follow where they are not
# the paper's (stage2.min_steps, weight balancing's lr and weight decay).
_DEFAULTS = Stage2Config()


def _need_columns(found: int, name: str, columns: tuple[int, str] | None) -> None:
    """Refuse ``found`` columns unless ``columns`` is None or (expected count, why)."""
    if columns is not None and found != columns[0]:
        raise ValueError(f"{name}: expected {columns[0]} columns ({columns[1]}), found {found}")


def _like(matrix: Tensor, what: str = "the classifier's weight") -> tuple[int, str]:
    """Return the ``columns`` argument of ``_features`` for features multiplied by ``matrix``."""
    return matrix.shape[1], f"{what} is {matrix.shape[0]} x {matrix.shape[1]}"


def _features(x: ArrayLike, name: str = "features", *, fit: bool = False,
              columns: tuple[int, str] | None = None, finite: bool = True) -> Tensor:
    """Return ``x`` as a float32 (N, D) tensor after checking it: at least one row when a
    method fits on it, ``columns`` (D, why) when given, and with ``finite`` finite values of
    magnitude at most MAX_FEATURE (without: any value; a row is then scored as argmax scores
    its NaN or infinite logits)."""
    x = as_tensor(x, name, "numbers")
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d (N, D) array, found shape {tuple(x.shape)}")
    if fit and not len(x):
        raise ValueError(f"{name}: expected at least one row, found none (shape "
                         f"{tuple(x.shape)})")
    if fit and not x.shape[1]:  # no feature to tell classes apart (and cRT's init divides)
        raise ValueError(f"{name}: expected at least one column, found none (shape "
                         f"{tuple(x.shape)})")
    _need_columns(x.shape[1], name, columns)
    original = x
    x = x.float()
    if finite:  # float64 checked as given: beyond float32's range is too large, not inf
        check_values(original if original.dtype == torch.float64 else x, name)
    if x.data_ptr() % 64:
        # The BLAS's last bits depend on the input's alignment: features memory-mapped from
        # a file member at an odd offset are copied, so that the same features give the same
        # numbers wherever they come from (an extracted run reproduces its metrics exactly).
        x = x.clone()
    return x


def _class_counts_of(y: Tensor, num_classes: int | None = None, name: str = "labels",
                     transposable: int | None = None) -> Tensor:
    """Return the training count of each class, 0..``num_classes`` - 1 (the classifier's
    rows; None: up to the largest label), after checking that there are at least 2 classes
    and that each has a label: a class without one is a classifier row nothing trained (a
    weight with more rows than the labels' classes, a gap in the labels), and a label of 1e9
    would otherwise ask for a classifier of 1e9 rows. ``transposable``: the weight's column
    count, when its rows are the classes (a hint for a weight given transposed)."""
    largest = int(y.max()) if len(y) else -1
    c = largest + 1 if num_classes is None else num_classes
    rows = "" if num_classes is None else f" (the classifier's {c} rows)"
    if c < 2:
        raise ValueError(f"{name}: expected at least 2 classes, found {max(c, 0)}{rows}")
    if c > len(y):  # some class has no label, known without counting up to a huge label
        raise ValueError(f"{name}: expected a label of each of the {c} classes 0..{c - 1}"
                         f"{rows}, found {len(y)} label{'s' * (len(y) != 1)}")
    counts = torch.bincount(y, minlength=c)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        # a weight of shape (D, C) where (C, D) belongs: D rows, and labels only up to C
        transposed = (f"; the labels stop at {largest}: is the weight transposed? expected "
                      f"(classes, features)" if transposable == largest + 1 else "")
        raise ValueError(f"{name}: classes {missing[:10]}{' ...' * (len(missing) > 10)} have "
                         f"no training features{rows}{transposed}")
    return counts


def _owned(t: Tensor | None) -> Tensor | None:
    """Return a CPU copy of ``t`` (None stays None): a fitted method keeps state of its own,
    so that training on the layer a weight came from (``TauNorm(fc.weight)``) leaves it as
    fitted."""
    return None if t is None else t.detach().cpu().clone()


def _bias(bias: ArrayLike | None, weight: Tensor, name: str = "bias") -> Tensor | None:
    """Return ``bias`` as float32 (C,), one value per row of ``weight`` (C, D), or None."""
    if bias is None:
        return None
    b = as_tensor(bias, name, "numbers")
    if b.shape != (len(weight),):
        raise ValueError(f"{name}: expected {len(weight)} values (one per row of the weight, "
                         f"{weight.shape[0]} x {weight.shape[1]}), found shape {tuple(b.shape)}")
    b = b.float().to(weight.device)
    check_values(b.unsqueeze(0), name)
    return b


def _class_counts(counts: ArrayLike, num_classes: int, name: str = "counts") -> Tensor:
    """Return the training class counts after checking them: one per class, each > 0 (a class
    of count 0 has log prior -inf) and finite."""
    c = as_tensor(counts, name, "numbers")
    if c.shape != (num_classes,):
        raise ValueError(f"{name}: expected {num_classes} counts (one per class), found shape "
                         f"{tuple(c.shape)}")
    bad = ~(torch.isfinite(c) & (c > 0)) if c.is_floating_point() else ~(c > 0)
    if bool(bad.any()):
        j = int(bad.nonzero()[0])
        raise ValueError(f"{name}: expected a count > 0 for every class (the log prior of a "
                         f"count of 0 is -inf), found {c[j].item():g} for class {j}")
    return c.cpu()  # the priors meet CPU-held state (bias, logit blocks)


def _check_number(value: Any, name: str, expected: str, ok, integer: bool = False) -> None:
    """Refuse a hyper-parameter unless it is a finite number (an integer when ``integer``)
    for which ``ok(value)`` holds: TypeError for another type, else ValueError."""
    kind = numbers.Integral if integer else numbers.Real
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"{name}: expected {expected}, found {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and ok(value)):
        raise ValueError(f"{name}: expected {expected}, found {value!r}")


def _check_flag(value: Any, name: str, extra: str = "") -> None:
    """Refuse anything but True or False (a string 'no' would read as True)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False{extra}, found {type(value).__name__} "
                        f"{value!r}")


def _check_tau(tau: float | None, grid: list[float] | None) -> None:
    """Refuse a tau, or a grid of them, outside [0, MAX_TAU] (NaN, infinity, a string)."""
    expected = f"a number in [0, {MAX_TAU:g}]"
    if tau is not None:
        _check_number(tau, "tau", expected + " or None", lambda v: 0 <= v <= MAX_TAU)
    if grid is not None:
        if isinstance(grid, (str, bytes)) or not isinstance(grid, Iterable):
            raise TypeError(f"grid: expected a list of taus, found {type(grid).__name__} "
                            f"{grid!r}")
        values = list(grid)
        if not values:
            raise ValueError("grid: expected at least one tau, found an empty list")
        for value in values:
            _check_number(value, "grid", f"taus each {expected}", lambda v: 0 <= v <= MAX_TAU)


def _on(x: Tensor, *tensors: Tensor | None) -> list[Tensor | None]:
    """Return ``tensors`` (fitted state, kept on the CPU) on ``x``'s device, where the logits
    of features are computed (no copy when already there)."""
    return [None if t is None else t.to(x.device) for t in tensors]


def _matmul_chunked(x: Tensor, weight: Tensor, rows: int = 65536) -> Tensor:
    """Return ``x @ weight.T`` computed in row chunks into one output (no concatenation)."""
    out = x.new_empty(len(x), len(weight))
    with torch.no_grad():
        for i in range(0, len(x), rows):
            torch.mm(x[i : i + rows], weight.T, out=out[i : i + rows])
    return out


class Rebalancer:
    """Base of the stage-2 methods: ``fit`` then ``logits`` / ``predict``."""

    def fit(self, features: ArrayLike, labels: ArrayLike, val_features: ArrayLike | None = None,
            val_labels: ArrayLike | None = None) -> Rebalancer:
        raise NotImplementedError

    def logits(self, features: ArrayLike) -> Tensor:
        """Return class scores (N, C) for ``features`` (N, D); higher is more likely."""
        raise NotImplementedError

    def predict(self, features: ArrayLike) -> Tensor:
        """Return the predicted class of each row of ``features``."""
        return self.logits(features).argmax(1)

    def class_weights(self) -> Tensor | None:
        """Return the (C, D) weight vectors the logits use, or None for a non-linear method."""
        return None

    def learned_state(self) -> dict[str, Any]:
        """Return what ``fit`` learned (the attributes ending in ``_``), to save or inspect."""
        return {k: v for k, v in vars(self).items() if k.endswith("_")}

    def _check_fitted(self, attribute: str) -> None:
        if not hasattr(self, attribute):
            raise RuntimeError(f"{type(self).__name__} is not fitted yet: call fit() first")


class _LinearHead(Rebalancer):
    """Logits of a linear classifier with learned ``weight_`` (C, D) and ``bias_`` (C,)."""

    def logits(self, features: ArrayLike) -> Tensor:
        self._check_fitted("weight_")
        x = _features(features, columns=_like(self.weight_))
        return F.linear(x, *_on(x, self.weight_, self.bias_))

    def class_weights(self) -> Tensor:
        self._check_fitted("weight_")
        return self.weight_


class Joint(_LinearHead):
    """The joint (stage-1) classifier unchanged: ``logits = x W^T + b``."""

    def __init__(self, weight: ArrayLike, bias: ArrayLike | None = None) -> None:
        self.weight = weight
        self.bias = bias

    def fit(self, features=None, labels=None, val_features=None, val_labels=None) -> Joint:
        self.weight_ = _owned(_features(self.weight, "weight", fit=True))
        self.bias_ = _owned(_bias(self.bias, self.weight_))
        return self


class NCM(Rebalancer):
    """Nearest class mean over training features.

    ``metric="cosine"``: features are L2-normalised, class means of them are taken and compared
    by cosine similarity. ``metric="euclidean"``: raw features and means, scores are negative
    Euclidean distances. ``center=True`` subtracts the mean training feature first; with
    ``metric="euclidean", center=True, normalize=True`` this is the authors' default NCM
    (centre, L2-normalise, average without re-normalising, Euclidean distance).
    """

    def __init__(self, metric: str = "cosine", center: bool = False,
                 normalize: bool | None = None) -> None:
        if metric not in ("cosine", "euclidean"):
            raise ValueError(f"metric: expected 'cosine' or 'euclidean', found {metric!r}")
        _check_flag(center, "center")
        if normalize is not None:
            _check_flag(normalize, "normalize", " or None")
        self.metric = metric
        self.center = center
        self.normalize = normalize

    def _prepare(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        """Return x centred and normalised as the metric asks, written into ``out`` if given
        (as F.normalize does: divided by the norm, at least 1e-12)."""
        if self.center:
            x = torch.sub(x, self.center_.to(x.device), out=out)
        if self.normalize or (self.normalize is None and self.metric == "cosine"):
            norms = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_(min=1e-12)
            # an inf norm (values too large for float32's squares) would make its row all 0
            x = torch.div(x, norms.nan_to_num_(posinf=math.nan), out=out)
        return x

    def fit(self, features: ArrayLike, labels: ArrayLike, val_features=None,
            val_labels=None) -> NCM:
        # The values are checked through what they make, the class means and the rows' norms:
        # a pass of its own over all the features would cost as much as the class sums. (float64
        # is checked as given: beyond float32's range its values would read as inf.)
        given = as_tensor(features, "features", "numbers")
        # one pass on the CPU (features from a GPU copied), as the other fits without training
        x = _features(given, fit=True, finite=given.dtype == torch.float64).cpu()
        y = class_indices(labels, len(x))
        self.center_ = x.mean(0) if self.center else torch.zeros(x.shape[1])
        counts = _class_counts_of(y)
        num_classes = len(counts)
        sums = torch.zeros(num_classes, x.shape[1])
        # Prepared a block of rows at a time into one buffer small enough to stay in cache
        # (4 MiB): a normalised copy of all the features would be as large as they are and
        # cost more than the sums themselves to allocate.
        rows = max(1, (1 << 20) // max(x.shape[1], 1))
        buffer = x.new_empty(min(rows, len(x)), x.shape[1])
        for i in range(0, len(x), rows):
            block = x[i : i + rows]
            sums.index_add_(0, y[i : i + rows], self._prepare(block, buffer[: len(block)]))
        self.means_ = sums / counts.unsqueeze(1)
        try:  # NaN and infinity reach the means, and so do too large values (or inf norms)
            check_values(self.means_, "means")
        except ValueError:
            check_values(x, "features")  # names the first row at fault
        return self

    def logits(self, features: ArrayLike) -> Tensor:
        self._check_fitted("means_")
        x = _features(features, columns=_like(self.means_, "the matrix of class means"))
        (means,) = _on(x, self.means_)
        x = self._prepare(x)
        if self.metric == "cosine":
            return x @ F.normalize(means, dim=1).T
        return -torch.cdist(x, means)


class TauNorm(Rebalancer):
    """tau-normalised joint classifier: ``w_j / ||w_j||^tau``, bias dropped.

    With ``tau=None``, ``fit`` picks tau from ``grid`` (default 0.0..2.0 step 0.05) by balanced
    accuracy on the validation features (first best on ties); ``val_scores_`` keeps the curve.
    """

    def __init__(self, weight: ArrayLike, tau: float | None = None,
                 grid: list[float] | None = None) -> None:
        _check_tau(tau, grid)
        self.weight = weight
        self.tau = tau
        self.grid = grid

    @staticmethod
    def default_grid(grid_max: float = 2.0, step: float = 0.05) -> list[float]:
        """Return ``[0, step, 2*step, ..., grid_max]``, rounded to 10 decimals."""
        return [round(i * step, 10) for i in range(int(round(grid_max / step)) + 1)]

    @staticmethod
    def normalized_weight(weight: Tensor, tau: float) -> Tensor:
        """Return ``weight`` with each row divided by its L2 norm to the power ``tau``."""
        norms = weight.norm(dim=1, keepdim=True).clamp(min=1e-12)
        return weight / norms.pow(tau)

    def fit(self, features=None, labels=None, val_features: ArrayLike | None = None,
            val_labels: ArrayLike | None = None) -> TauNorm:
        self.weight_ = _owned(_features(self.weight, "weight", fit=True))
        if labels is not None:  # unused, but they say which classes the weight's rows are
            _class_counts_of(class_indices(labels, _rows(features), num_classes=len(self.weight_)),
                             len(self.weight_), transposable=self.weight_.shape[1])
        if self.tau is not None:
            self.tau_ = float(self.tau)
            self.val_scores_ = {}
            return self
        if val_features is None or val_labels is None:
            raise ValueError("tau=None needs val_features and val_labels to choose tau "
                             "(or give a fixed tau)")
        # Val rows may hold NaN or infinity here: the tau search scores such a row as argmax
        # scores its logits (a wrong row, never a wrong tau for the others; tested), where
        # one such training row would spoil what a method learns.
        xv = _features(val_features, "val_features", fit=True, columns=_like(self.weight_),
                       finite=False).cpu()
        yv = class_indices(val_labels, len(xv), "val_labels", len(self.weight_))
        # x (w_j / n_j^tau) = (x w_j) / n_j^tau: one product for the whole grid.
        norms = self.weight_.norm(dim=1).clamp(min=1e-12)
        self.tau_, self.val_scores_ = _choose_tau(
            _logit_blocks(xv, self.weight_), yv, self.grid, norms.pow, torch.div, 1.0)
        return self

    def logits(self, features: ArrayLike) -> Tensor:
        self._check_fitted("tau_")
        x = _features(features, columns=_like(self.weight_))
        return x @ self.class_weights().to(x.device).T

    def class_weights(self) -> Tensor:
        self._check_fitted("tau_")
        return self.normalized_weight(self.weight_, self.tau_)


def _rows(features: ArrayLike | None) -> int | None:
    """The rows of ``features`` given to a method that only counts the labels (None: any
    number of labels)."""
    return None if features is None else len(as_tensor(features, "features", "numbers"))


def _choose_tau(logit_blocks: Iterable[Tensor], labels: Tensor, grid: list[float] | None,
                table_row, apply, neutral: float) -> tuple[float, dict[float, float]]:
    """Return the tau of ``grid`` (default ``TauNorm.default_grid()``) whose adjusted val
    logits have the best balanced accuracy (the first on ties), and the score of each tau.

    The adjusted logits at tau are ``apply(logits, table_row(tau))``: ``torch.div`` by
    ``||w_j||^tau`` for tau-norm, ``torch.sub`` of ``tau log p_j`` for logit adjustment;
    ``neutral`` is the table value that leaves a logit as it is (1 and 0), so a grid that
    starts at tau 0 needs no pass for it. ``logit_blocks`` yields the val logits a block of
    rows at a time (which this may overwrite), in the order of ``labels``.

    The answer is that of scoring every tau (a test compares them with ``==``), from the
    scores at the grid's two ends. For both adjustments the difference of two classes'
    scores changes sign at most once over tau (with logit adjustment each score is linear in
    tau; with tau-norm ``log |z_j| - tau log ||w_j||`` is, and classes of the other sign
    never cross). So:
    - a row whose label beats every other class at both ends is right everywhere, and one
      with a class above the label at both ends is never right;
    - in the other rows only a few classes matter: those that beat or tie the label at an
      end, and of them the ones that can be the best somewhere in between. Each of those is
      scored against the label at every tau (a tie going to the lower class index, as
      argmax does); a row is right at a tau where it beats them all.
    Rounded scores can break the rule where two are a few units in the last place apart, so
    "beats" and "above" in these shortcuts mean by more than ``TAU_SEARCH_TOLERANCE`` times
    the label's score, and a near tie counts as a tie, scored at every tau. Rows with a NaN
    score, or a label scoring +-inf, are scored tau by tau.
    """
    taus = [float(t) for t in (grid if grid is not None else TauNorm.default_grid())]
    if not taus:
        raise ValueError("grid: expected at least one tau, found none")
    ranked = sorted(taus)
    table = torch.stack([table_row(t) for t in ranked])  # one row per ranked tau
    by_class = table.T.contiguous()  # (classes, taus)

    correct = torch.zeros(len(labels), len(taus), dtype=torch.bool)  # columns: ranked
    done, buffers = 0, []
    for z in logit_blocks:
        y = labels[done : done + len(z)]
        index = y.unsqueeze(1)
        label_logit = z.gather(1, index)
        z.scatter_(1, index, -math.inf)  # every class but the label; the label stays apart
        if not buffers:
            buffers = [torch.empty_like(z) for _ in range(3)]
        a, b, work = (t[: len(z)] for t in buffers)
        ends = []
        for k, out in ((0, a), (len(ranked) - 1, b)):
            # at tau 0 the scores are the logits themselves: no pass
            scores = z if bool((table[k] == neutral).all()) else apply(z, table[k], out=out)
            label_score = apply(label_logit, table[k].index_select(0, y).unsqueeze(1))
            ends.append((scores, label_score, scores.amax(1, keepdim=True)))
        (lo, y_lo, best_lo), (hi, y_hi, best_hi) = ends
        # Rounding can break the sign rule between scores closer than a few units in the
        # last place (a near tie at one tau, a clear order at the next): every shortcut below
        # asks for a margin of at least TAU_SEARCH_TOLERANCE times the label's score, and
        # near ties are scored at every tau.
        tol_lo, tol_hi = (TAU_SEARCH_TOLERANCE * (t.abs() + 1e-30) for t in (y_lo, y_hi))
        right = correct[done : done + len(z)]
        sure = ((y_lo - best_lo > tol_lo) & (y_hi - best_hi > tol_hi)).squeeze(1)
        right[sure] = True
        # Rows with a NaN score or a label scoring +-inf (whose margins below could be NaN):
        # scored tau by tau, as argmax does (rare).
        odd = ~sure & (best_lo.isnan() | best_hi.isnan() | ~y_lo.isfinite()
                       | ~y_hi.isfinite()).squeeze(1)
        if bool(odd.any()):
            rows = odd.nonzero().squeeze(1)
            logits = z[rows].scatter_(1, index[rows], label_logit[rows])
            for k in range(len(ranked)):
                right[rows, k] = apply(logits, table[k]).argmax(1) == y[rows]
            sure |= odd
        # Margins over the label's score less its tolerance: >= 0 for a class that beats or
        # nearly ties the label at that end.
        bar_lo, bar_hi = y_lo - tol_lo, y_hi - tol_hi
        rows = (~sure).nonzero().squeeze(1)
        if 0 < 2 * len(rows) < len(z):  # few rows left: copies of them cost less than the block
            margins = (lo[rows] - bar_lo[rows], hi[rows] - bar_hi[rows], None)
            right[rows] = _right_among_threats(
                z, rows, *margins, tol_lo[rows], tol_hi[rows], label_logit[rows],
                index[rows], by_class, apply)
        elif len(rows):  # most: the whole block (in place), the sure rows given an unbeatable label
            skip = sure.unsqueeze(1)
            margins = (torch.sub(lo, bar_lo.masked_fill(skip, math.inf), out=a),
                       torch.sub(hi, bar_hi.masked_fill(skip, math.inf), out=b), work)
            right[rows] = _right_among_threats(z, None, *margins, tol_lo, tol_hi, label_logit,
                                               index, by_class, apply)[rows]
        done += len(z)
    accuracy = balanced_accuracy(correct, labels).tolist()
    scores = dict(zip(ranked, accuracy))
    scores = {t: scores[t] for t in taus}  # back to the grid's order: its first best wins
    return max(scores, key=scores.get), scores


def _right_among_threats(z: Tensor, rows: Tensor | None, d_lo: Tensor, d_hi: Tensor,
                         work: Tensor | None, tol_lo: Tensor, tol_hi: Tensor,
                         label_logit: Tensor, y: Tensor, by_class: Tensor, apply) -> Tensor:
    """Return (rows x taus) whether each row of ``d_lo`` has its label best at each tau (see
    ``_choose_tau``). ``d_lo``, ``d_hi``: each class's score minus (the label's less its
    tolerance ``tol_lo`` / ``tol_hi``) at the grid's two ends, for the rows ``rows`` of the
    logits ``z`` (None: all; finite label scores; the label's own margin -inf; a row to leave
    out: -inf), overwritten; ``work``: scratch of their shape or None; ``label_logit``, ``y``:
    the label's logit and class; ``by_class``: the table, a row of taus per class.

    The difference of two classes' scores changes sign once at most over tau, so a class
    clearly above the label at both ends is above it in between (never right), and one
    clearly below it at both ends is below it in between."""
    tol = torch.maximum(tol_lo, tol_hi).squeeze(1)
    hopeless = torch.minimum(d_lo, d_hi, out=work).amax(1) > 2 * tol
    # Threats: the classes that beat or nearly tie the label at an end, in rows not hopeless
    # (a bar of +inf there: one comparison with a column, far cheaper than a masked fill).
    bar = d_lo.new_zeros(len(d_lo), 1).masked_fill_(hopeless.unsqueeze(1), math.inf)
    threat = torch.maximum(d_lo, d_hi, out=d_lo) >= bar
    flat = threat.view(-1).nonzero().squeeze(1)
    # (1-d gathers by index_select and take: much faster than advanced indexing here)
    row, cls = flat // d_lo.shape[1], flat % d_lo.shape[1]
    in_z = flat if rows is None else rows.index_select(0, row) * z.shape[1] + cls
    logit = z.view(-1).take(in_z)
    t_lo = apply(logit, by_class[:, 0].index_select(0, cls))  # the same floats as the ends'
    t_hi = apply(logit, by_class[:, -1].index_select(0, cls))
    # The label is wrong at a tau when the best threat there beats it, so only the threats
    # that are the best of the threats somewhere matter. Such a class scores, at one end, at
    # least what the threat best at the other end scores there, or is itself (near) best at
    # that other end: a pruning that leaves few per row.
    keep = torch.ones_like(row, dtype=torch.bool)
    for near, far, tol_near, tol_far in ((t_lo, t_hi, tol_lo, tol_hi),
                                         (t_hi, t_lo, tol_hi, tol_lo)):
        best_far = far.new_full((len(d_lo),), -math.inf).scatter_reduce_(0, row, far, "amax")
        at_best = far >= (best_far - tol_far.squeeze(1)).index_select(0, row)
        bar = near.new_full((len(d_lo),), -math.inf).scatter_reduce_(
            0, row, torch.where(at_best, near, -math.inf), "amax")
        keep &= (near >= (bar - tol_near.squeeze(1)).index_select(0, row)) | at_best
    keep = keep.nonzero().squeeze(1)
    row, cls, logit = (t.index_select(0, keep) for t in (row, cls, logit))
    # Per row and tau, how many classes beat the label (a hopeless row: one everywhere).
    beaten = hopeless.float().unsqueeze(1).expand(-1, by_class.shape[1]).clone()
    if not len(row):
        return beaten == 0
    label = y.squeeze(1).index_select(0, row)
    theirs = apply(logit.unsqueeze(1), by_class.index_select(0, cls))
    ours = apply(label_logit.index_select(0, row), by_class.index_select(0, label))
    # argmax picks the lowest index on a tie
    lost = torch.where((cls < label).unsqueeze(1), theirs >= ours, theirs > ours)
    return beaten.index_add_(0, row, lost.float()) == 0


def _logit_blocks(features: Tensor, weight: Tensor, bias: Tensor | None = None,
                  numbers: int = 1 << 20, min_rows: int = 512) -> Iterator[Tensor]:
    """Yield ``features @ weight.T (+ bias)`` in blocks of rows of about ``numbers`` logits
    (4 MiB: the tau search's passes over a block and its scratch stay in cache), but at
    least ``min_rows`` rows (fewer slow the product: 128 rows of iNaturalist's 8,142 classes
    took it from 2.6 to 4.3 s), each block written into the same buffer (valid until the
    next one)."""
    rows = max(min_rows, numbers // max(len(weight), 1))
    out = features.new_empty(min(rows, len(features)), len(weight))
    for i in range(0, len(features), rows):
        x = features[i : i + rows]
        if bias is None:
            yield torch.mm(x, weight.T, out=out[: len(x)])
        else:
            yield torch.addmm(bias, x, weight.T, out=out[: len(x)])


class LogitAdjust(_LinearHead):
    """Post-hoc logit adjustment (Menon et al., "Long-tail learning via logit adjustment",
    ICLR 2021): ``logits = x W^T + b - tau * log prior_y``, prior from the training counts.
    The result is again a linear classifier, with bias ``b - tau * log prior``.

    tau = 0 gives the joint logits back; tau = 1 is the Bayes-optimal correction for a
    balanced test set when the joint classifier estimates the training posterior. With
    ``tau=None``, ``fit`` chooses tau on the val features as ``TauNorm`` does
    (``val_scores_`` keeps the curve). The prior comes from ``counts`` when given (the
    training split's class counts), else from the training labels.
    """

    def __init__(self, weight: ArrayLike, bias: ArrayLike | None = None,
                 tau: float | None = None, grid: list[float] | None = None,
                 counts: ArrayLike | None = None) -> None:
        _check_tau(tau, grid)
        self.weight, self.bias, self.tau, self.grid, self.counts = weight, bias, tau, grid, counts

    def fit(self, features=None, labels: ArrayLike | None = None,
            val_features: ArrayLike | None = None,
            val_labels: ArrayLike | None = None) -> LogitAdjust:
        joint = Joint(self.weight, self.bias).fit()
        num_classes = len(joint.weight_)
        if self.counts is not None:
            counts = _class_counts(self.counts, num_classes)
        elif labels is not None:
            y = class_indices(labels, _rows(features), num_classes=num_classes)
            counts = _class_counts(torch.bincount(y, minlength=num_classes), num_classes,
                                   "labels' class counts")
        else:
            raise ValueError("LogitAdjust needs the class counts or the training labels")
        self.log_prior_ = log_prior(counts)
        bias = joint.bias_ if joint.bias_ is not None else torch.zeros(num_classes)
        if self.tau is not None:
            self.tau_, self.val_scores_ = float(self.tau), {}
        elif val_features is None or val_labels is None:
            raise ValueError("tau=None needs val_features and val_labels to choose tau "
                             "(or give a fixed tau)")
        else:
            xv = _features(val_features, "val_features", fit=True,
                           columns=_like(joint.weight_), finite=False).cpu()  # as TauNorm's
            yv = class_indices(val_labels, len(xv), "val_labels", num_classes)
            self.tau_, self.val_scores_ = _choose_tau(
                _logit_blocks(xv, joint.weight_, joint.bias_), yv, self.grid,
                lambda t: t * self.log_prior_, torch.sub, 0.0)
        self.weight_, self.bias_ = joint.weight_, bias - self.tau_ * self.log_prior_
        return self


# The tau search's margin for its shortcuts, relative to the label's score (about 80 units in
# the last place of a float32): far above the rounding of a score, far below real gaps.
TAU_SEARCH_TOLERANCE = 1e-5
# Below this many multiply-adds per step, extra threads cost more than they give: they spin
# and, on a loaded machine, wait for cores (a demo cRT fit swung from 0.2 s to 8 s).
SMALL_STEP_MACS = 8_000_000
# A stage 2 whose largest product (rows x feature dim x classes) is below this runs on one
# thread: the demo's ten methods took 1.3-1.7 s on two threads with both cores busy
# elsewhere, 0.8-1.1 s on one (its largest product, the test logits, is 51 M).
SMALL_STAGE_MACS = 256_000_000
# LWS keeps the joint logits of the training set when they fit in this many bytes.
LOGITS_MEMORY = 4 << 30


@contextlib.contextmanager
def threads_for(macs: int, limit: int = SMALL_STEP_MACS):
    """Run the block on one thread when its work, ``macs`` multiply-adds, is below ``limit``
    (SMALL_STEP_MACS for one training step, SMALL_STAGE_MACS for a whole stage 2)."""
    before = torch.get_num_threads()
    if macs < limit and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class CachedBatches:
    """Training batches drawn by index from features held in one tensor: ``sampler`` gives
    each epoch's order, ``batch_size`` rows a step (the last partial batch is dropped)."""

    def __init__(self, features: Tensor, labels: Tensor, sampler, batch_size: int,
                 device: torch.device) -> None:
        self.features, self.labels = features.to(device), labels.to(device)
        self.sampler = sampler
        self.batch_size = min(batch_size, len(sampler))
        self.feature_dim = features.shape[1]
        self.device = device

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        """Yield (features, labels) batches, each written into the same two buffers, so
        each batch is valid until the next one is drawn."""
        order = self.sampler.indices().to(self.device)
        rows = self.features.new_empty(self.batch_size, *self.features.shape[1:])
        labels = self.labels.new_empty(self.batch_size)
        for b in range(len(self)):
            batch = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield (torch.index_select(self.features, 0, batch, out=rows),
                   torch.index_select(self.labels, 0, batch, out=labels))


class _TrainedOnFeatures(Rebalancer):
    """Shared training loop of the methods trained on features (CRT, LWS, and through them
    BALMS, LAS and WB): SGD with momentum, cosine LR to 0, a sampler.

    ``fit`` takes features and labels, or a batch source with ``set_epoch``, ``__iter__``
    (yielding feature and label batches), ``__len__`` and ``feature_dim``, such as the online
    stage 2's frozen backbone on augmented images. With ``select="best_val"`` (val features and
    labels needed), the parameters of the epoch with the best val top-1 are kept (the
    authors' choice).
    The loss is ``self._loss(counts)`` (cross-entropy unless a subclass says otherwise), with
    the class counts from ``class_counts`` or else the training labels. As ``stage2.min_steps``
    does, a ``batch_size`` above the training rows / ``min_steps`` shrinks to that. Training
    runs on ``device``; the learned state is kept on the CPU, and ``logits`` are computed on
    the device of the features given.
    """

    def _loss(self, counts: Tensor | None) -> ClassifierLoss:
        return ClassifierLoss()

    def _counts(self, batches, num_classes: int) -> Tensor:
        """Return the training class counts: ``class_counts``, else counted from the labels."""
        if self.class_counts is not None:
            return _class_counts(self.class_counts, num_classes, "class_counts")
        if isinstance(batches, CachedBatches):
            return torch.bincount(batches.labels.cpu(), minlength=num_classes)
        raise ValueError("class_counts: needed when fitting on a batch source")

    def __init__(self, *, epochs: int, lr: float, batch_size: int, momentum: float,
                 weight_decay: float, sampler: str | float, samples_per_class: int, seed: int,
                 device: str | torch.device | None, select: str = "last",
                 class_counts: ArrayLike | None = None,
                 min_steps: int = _DEFAULTS.min_steps) -> None:
        least = self._min_epochs
        _check_number(epochs, "epochs", f"an int >= {least}" + (
            " (0: the joint classifier unchanged)" if least == 0 else
            " (0 epochs would leave the classifier at its random start)"),
            lambda v: v >= least, integer=True)
        _check_number(lr, "lr", f"a learning rate in (0, {MAX_RATE:g}]",
                      lambda v: 0 < v <= MAX_RATE)
        _check_number(batch_size, "batch_size", "an int >= 1", lambda v: v >= 1, integer=True)
        _check_number(momentum, "momentum", "a number in [0, 1)", lambda v: 0 <= v < 1)
        _check_number(weight_decay, "weight_decay", f"a number in [0, {MAX_RATE:g}]",
                      lambda v: 0 <= v <= MAX_RATE)
        if select not in ("last", "best_val"):
            raise ValueError(f"select: expected 'last' or 'best_val', found {select!r}")
        _check_number(samples_per_class, "samples_per_class", "an int >= 1", lambda v: v >= 1,
                      integer=True)
        _check_number(seed, "seed", "an int in [0, 2^63)", lambda v: 0 <= v < 2**63,
                      integer=True)
        _check_number(min_steps, "min_steps", "an int >= 1 (1: batch_size as given)",
                      lambda v: v >= 1, integer=True)
        try:
            parse_sampler_spec(sampler)
        except (TypeError, ValueError):
            raise ValueError(f"sampler: expected one of {', '.join(SAMPLER_NAMES)} or q in "
                             f"[0, 1], found {sampler!r}") from None
        self.class_counts = class_counts
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.sampler = sampler
        self.samples_per_class = samples_per_class
        self.seed = int(seed)  # numpy's integers too: torch's generator takes only int
        self.device = device
        self.select = select
        self.min_steps = int(min_steps)

    # Methods that start from the joint classifier (LWS, WB) may train 0 epochs: the joint
    # classifier unchanged; cRT's fresh classifier would stay random.
    _min_epochs = 1

    def _device(self) -> torch.device:
        """Return the device to fit on; ValueError for one this machine does not have."""
        try:
            return resolve_device(self.device if self.device is not None else "cpu")
        except ValueError as e:
            raise ValueError(f"device: {e}") from None

    def batch_for(self, draws: int) -> int:
        """Return the rows of a step over ``draws`` an epoch: as stage2.min_steps, a
        batch_size above draws / min_steps shrinks (2 steps an epoch of a small training set
        would leave the classifier near its start)."""
        return min(steps_batch(self.batch_size, draws, self.min_steps), draws)

    def _batches(self, features: ArrayLike, labels: ArrayLike | None,
                 num_classes: int | None = None, weight: Tensor | None = None):
        """Return the batch source of ``fit``'s input (see the class docstring); labels must
        be below ``num_classes`` when given (the classifier's rows), features have as many
        columns as ``weight`` when given (the classifier that multiplies them)."""
        self._device()  # a device this machine lacks: said before any work
        columns = None if weight is None else _like(weight)
        if hasattr(features, "set_epoch"):
            _need_columns(features.feature_dim, "features", columns)
            return features
        x = _features(features, fit=True, columns=columns)
        y = class_indices(labels, len(x), num_classes=num_classes)
        _class_counts_of(y, num_classes)  # before the sampler counts up to the largest label
        sampler = build_sampler(self.sampler, y, seed=self.seed, total_epochs=max(self.epochs, 1),
                                samples_per_class=self.samples_per_class, num_replicas=1,
                                rank=0)
        return CachedBatches(x, y, sampler, self.batch_for(len(sampler)), self._device())

    def _train(self, params: list[Tensor], forward, batches, val_features: ArrayLike | None,
               val_labels: ArrayLike | None, step) -> None:
        threads = contextlib.nullcontext()  # batches from a backbone: its work sets the threads
        if isinstance(batches, CachedBatches) and self._device().type == "cpu":
            classes = max(p.shape[0] for p in params)
            threads = threads_for(batches.batch_size * batches.feature_dim * classes)
        with threads:
            self._train_loop(params, forward, batches, val_features, val_labels, step)
        if not all(bool(torch.isfinite(p).all()) for p in params):
            raise ValueError(f"training diverged: the learned parameters hold NaN or infinity "
                             f"after {self.epochs} epochs; lower lr ({self.lr:g})")

    def _project(self, params: list[Tensor]) -> None:
        """Called after every step (weight balancing's MaxNorm); nothing by default."""

    def _sgd_step(self, params: list[Tensor], forward, loss_fn: ClassifierLoss):
        """Return step(features, labels, lr) -> loss: ``loss_fn``, autograd, torch's SGD."""
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                                    weight_decay=self.weight_decay)

        def step(features: Tensor, labels: Tensor, lr: float) -> Tensor:
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = loss_fn(forward(features), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                self._project(params)
            return loss.detach()

        return step

    def _manual_step(self, params: list[Tensor], logits_of, accumulate, loss_fn: ClassifierLoss):
        """Return step(inputs, labels, lr) -> loss with the gradient written out:
        ``logits_of(inputs, out)`` writes the logits into ``out``; ``accumulate(inputs, d,
        momenta, beta, alpha)`` sets each momentum buffer to ``beta * buffer + gradient`` from
        d loss / d logits = alpha * d (``loss_fn.value_and_scaled_grad``: softmax minus target,
        over the batch), so that a product can do it in place (``addmm_``, whose alpha also
        applies the 1 / batch); then weight decay and the update, as torch.optim.SGD does them.
        The same numbers as autograd (tests compare them) without its per-step overhead, which
        dominated the small steps of the demo. Every buffer is allocated once: a step
        allocates nothing batch-sized."""
        # Zero momentum: the first update 0 * momentum + g is torch's first buffer, g itself.
        momenta = [torch.zeros_like(p) for p in params]
        logits: list[Tensor] = []

        def step(inputs: Tensor, labels: Tensor, lr: float) -> Tensor:
            with torch.no_grad():
                if not logits or len(logits[0]) != len(inputs):
                    logits[:] = [inputs.new_empty(len(inputs), len(params[0]))]
                z = logits_of(inputs, logits[0])
                loss, d, alpha = loss_fn.value_and_scaled_grad(z, labels, out=z)
                accumulate(inputs, d, momenta, self.momentum, alpha)
                for p, m in zip(params, momenta):
                    if self.weight_decay:  # momentum * m + (g + wd p)
                        m.add_(p, alpha=self.weight_decay)
                    p.add_(m, alpha=-lr)
                self._project(params)
            return loss

        return step

    def _train_loop(self, params: list[Tensor], forward, batches,
                    val_features: ArrayLike | None, val_labels: ArrayLike | None,
                    step) -> None:
        total = len(batches) * self.epochs
        select = self.select == "best_val"
        if (val_features is None) != (val_labels is None):
            raise ValueError("val_features and val_labels: expected both or neither, found one")
        if select and val_features is None:
            raise ValueError("select='best_val' needs val_features and val_labels to choose "
                             "the epoch (or select='last')")
        if select:
            xv = _features(val_features, "val_features", fit=True,
                           columns=(batches.feature_dim, "as the training features"))
            yv = class_indices(val_labels, len(xv), "val_labels", len(params[0]))
            xv, yv = xv.to(self._device()), yv.to(self._device())
        elif val_features is not None:  # unused, but checked: a mistake shows here too
            rows = len(as_tensor(val_features, "val_features", "numbers"))
            class_indices(val_labels, rows, "val_labels", len(params[0]))
        self.loss_history_, self.val_history_ = [], []
        best, done = -1.0, 0
        for epoch in range(self.epochs):
            batches.set_epoch(epoch)
            loss_sum = torch.zeros((), device=self._device())
            for features, labels in batches:
                loss_sum += step(features, labels,
                                 self.lr * 0.5 * (1 + math.cos(math.pi * done / total)))
                done += 1
            self.loss_history_.append(loss_sum.item() / max(len(batches), 1))
            if select:
                with torch.no_grad():
                    top1 = (forward(xv).argmax(1) == yv).double().mean().item()
                self.val_history_.append(top1)
                if top1 > best:
                    best, self.best_epoch_ = top1, epoch + 1
                    kept = [p.detach().clone() for p in params]
        if select and self.epochs:
            with torch.no_grad():
                for p, k in zip(params, kept):
                    p.copy_(k)


class CRT(_LinearHead, _TrainedOnFeatures):
    """Classifier re-training: a freshly initialised linear classifier (weights and bias) trained
    on frozen features with class-balanced sampling.

    ``loss``: ``ce``, or ``logit_adjusted`` / ``balanced_softmax`` (``longtail.losses``: the
    logits are shifted by ``loss_tau * log prior`` / ``log n_y`` in training only).
    ``label_smoothing="las"``: MiSLAS's label-aware smoothing from ``las_head`` (largest class)
    to ``las_tail`` (smallest).
    """

    def __init__(self, num_classes: int | None = None, epochs: int = 10, lr: float = 0.2,
                 batch_size: int = 512, momentum: float = 0.9, weight_decay: float = 5e-4,
                 sampler: str | float = "class", samples_per_class: int = 4, seed: int = 0,
                 device: str | torch.device | None = None, select: str = "last",
                 class_counts: ArrayLike | None = None, loss: str = "ce", loss_tau: float = 1.0,
                 label_smoothing: str = "none", las_head: float = 0.3,
                 las_tail: float = 0.0, min_steps: int = _DEFAULTS.min_steps) -> None:
        super().__init__(epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum,
                         weight_decay=weight_decay, sampler=sampler,
                         samples_per_class=samples_per_class, seed=seed, device=device,
                         select=select, class_counts=class_counts, min_steps=min_steps)
        if label_smoothing not in ("none", "las"):
            raise ValueError(f"label_smoothing: expected 'none' or 'las', found "
                             f"{label_smoothing!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss: expected one of {', '.join(LOSSES)}, found {loss!r}")
        if num_classes is not None and not isinstance(num_classes, numbers.Integral):
            # CRT(W) for WB(W): the classifier's weight where its row count goes
            raise TypeError(f"num_classes: expected an int >= 2 or None (CRT trains a new "
                            f"classifier; WB and LWS start from a weight), found "
                            f"{type(num_classes).__name__}")
        if num_classes is not None:
            _check_number(num_classes, "num_classes", "an int >= 2 or None", lambda v: v >= 2,
                          integer=True)
        _check_number(loss_tau, "loss_tau", f"a number in [0, {MAX_TAU:g}]",
                      lambda v: 0 <= v <= MAX_TAU)
        for value, name in ((las_head, "las_head"), (las_tail, "las_tail")):
            _check_number(value, name, "a number in [0, 1)", lambda v: 0 <= v < 1)
        self.num_classes = num_classes
        self.loss, self.loss_tau = loss, loss_tau
        self.label_smoothing, self.las_head, self.las_tail = label_smoothing, las_head, las_tail

    def _loss(self, counts: Tensor | None) -> ClassifierLoss:
        if counts is None:
            return ClassifierLoss()
        smoothing = (las_epsilons(counts, self.las_head, self.las_tail)
                     if self.label_smoothing == "las" else None)
        return ClassifierLoss.build(counts, self.loss, self.loss_tau, smoothing=smoothing)

    @property
    def _uses_counts(self) -> bool:
        """True when the loss depends on the class counts (not plain cross-entropy)."""
        return self.loss != "ce" or self.label_smoothing != "none"

    def _initial(self, num_classes: int, dim: int) -> tuple[Tensor, Tensor]:
        """Return the starting weight and bias: nn.Linear's default init, drawn from a seeded
        generator instead of the global RNG."""
        g = torch.Generator().manual_seed(self.seed)
        bound = 1.0 / math.sqrt(dim)
        weight = (torch.rand(num_classes, dim, generator=g) * 2 - 1) * bound
        return weight, (torch.rand(num_classes, generator=g) * 2 - 1) * bound

    def fit(self, features: ArrayLike, labels: ArrayLike | None = None, val_features=None,
            val_labels=None) -> CRT:
        batches = self._batches(features, labels, self.num_classes)
        if self.num_classes is None and isinstance(batches, CachedBatches):
            num_classes = int(batches.labels.max()) + 1
        elif self.num_classes is None:
            raise ValueError("num_classes: needed when fitting on a batch source")
        else:
            num_classes = self.num_classes
        device = self._device()
        weight, bias = (t.to(device) for t in self._initial(num_classes, batches.feature_dim))
        counts = self._counts(batches, num_classes) if self._uses_counts else None
        loss_fn = self._loss(counts).to(device)
        forward = lambda f: F.linear(f, weight, bias)  # noqa: E731
        step = (self._linear_step(weight, bias, loss_fn) if isinstance(batches, CachedBatches)
                else self._sgd_step([weight, bias], forward, loss_fn))  # backbone: autograd
        self._train([weight, bias], forward, batches, val_features, val_labels, step)
        self.weight_, self.bias_ = weight.detach().cpu(), bias.detach().cpu()
        return self

    def _linear_step(self, weight: Tensor, bias: Tensor, loss_fn: ClassifierLoss):
        """Return the written-out step of the linear classifier (see ``_manual_step``)."""
        def accumulate(f: Tensor, d: Tensor, momenta: list[Tensor], beta: float,
                       alpha: float) -> None:
            momenta[0].addmm_(d.T, f, beta=beta, alpha=alpha)
            momenta[1].mul_(beta).add_(d.sum(0), alpha=alpha)

        return self._manual_step([weight, bias],
                                 lambda f, out: torch.addmm(bias, f, weight.T, out=out),
                                 accumulate, loss_fn)


class BALMS(CRT):
    """cRT with the Balanced Softmax loss and instance-balanced sampling: the classifier stage
    of Ren et al., "Balanced Meta-Softmax for long-tailed visual recognition" (NeurIPS 2020),
    without its meta-sampler. Loss ``-log softmax(z + log n)_y``; the plain logits at test."""

    def __init__(self, num_classes: int | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("sampler", "instance")
        super().__init__(num_classes, loss="balanced_softmax", **kwargs)


class LAS(CRT):
    """cRT with label-aware smoothing, the classifier stage of MiSLAS (Zhong et al., "Improving
    calibration for long-tailed recognition", CVPR 2021): target ``(1 - eps_y) onehot(y) +
    eps_y / C`` with ``eps_y = tail + (head - tail) sin(pi/2 (n_y - n_min) / (n_max - n_min))``,
    class-balanced sampling. MiSLAS's BatchNorm shift is ``stage2.features: online`` with
    ``stage2.bn: train``; its mixup is ``stage1.mixup_alpha``."""

    def __init__(self, num_classes: int | None = None, **kwargs: Any) -> None:
        if "label_smoothing" in kwargs:  # else Python's error names CRT.__init__
            raise TypeError("LAS sets label_smoothing itself (label-aware); for a fixed "
                            "smoothing use CRT(label_smoothing=...)")
        super().__init__(num_classes, label_smoothing="las", **kwargs)


class WB(CRT):
    """Weight balancing's second stage (Alshammari et al., "Long-tailed recognition via weight
    balancing", CVPR 2022): starting from the joint classifier, train it on frozen features
    with the class-balanced loss (class weights ``(1 - beta) / (1 - beta^n_y)``, Cui et al.
    2019), weight decay, and MaxNorm: after every step each class vector ``w_j`` longer than
    ``max_norm`` is scaled back to it (projected gradient descent onto the ball). ``max_norm``
    None: the mean class-vector norm of the joint classifier. Its first stage is plain training
    with a tuned ``stage1.weight_decay``.
    """

    def __init__(self, weight: ArrayLike, bias: ArrayLike | None = None,
                 max_norm: float | None = None, beta: float = 0.9999, **kwargs: Any) -> None:
        kwargs.setdefault("sampler", "instance")
        kwargs.setdefault("weight_decay", _DEFAULTS.wb.weight_decay)  # the config's, whose
        kwargs.setdefault("lr", _DEFAULTS.wb.lr)  # choice docs/results.md gives
        # its rows are the classes: checked first (len() of None or a string said nothing)
        super().__init__(len(_features(weight, "weight", fit=True)), **kwargs)
        _check_number(beta, "beta", "a number in [0, 1)", lambda v: 0 <= v < 1)
        if max_norm is not None:
            _check_number(max_norm, "max_norm", f"a number in (0, {MAX_RATE:g}] or None (the "
                          "joint classifier's mean row norm)", lambda v: 0 < v <= MAX_RATE)
        self.weight, self.bias, self.max_norm, self.beta = weight, bias, max_norm, beta

    _uses_counts = True
    _min_epochs = 0

    def _loss(self, counts: Tensor | None) -> ClassifierLoss:
        return ClassifierLoss(weight=class_balanced_weights(counts, self.beta))

    def _initial(self, num_classes: int, dim: int) -> tuple[Tensor, Tensor]:
        weight = _features(self.weight, "weight", fit=True).clone().cpu()
        _need_columns(dim, "features", _like(weight))
        bias = _bias(self.bias, weight)
        bias = torch.zeros(num_classes) if bias is None else bias.clone()
        self.max_norm_ = (float(self.max_norm) if self.max_norm is not None
                          else weight.norm(dim=1).mean().item())
        return weight, bias

    def _project(self, params: list[Tensor]) -> None:
        params[0].renorm_(2, 0, self.max_norm_)  # rows: one vector per class


class LWS(_TrainedOnFeatures):
    """Learnable weight scaling: ``f_j * (w_j . x) + b_j`` with the joint classifier frozen and
    one scale f_j per class learned with class-balanced sampling.

    ``scale_bias=True`` scales the bias too, ``f_j * (w_j . x + b_j)``, and ``weight_decay=5e-4``
    decays the scales: both as in the authors' code.
    """

    def __init__(self, weight: ArrayLike, bias: ArrayLike | None = None, epochs: int = 5,
                 lr: float = 0.2, batch_size: int = 512, momentum: float = 0.9,
                 weight_decay: float = 0.0, scale_bias: bool = False,
                 sampler: str | float = "class", samples_per_class: int = 4, seed: int = 0,
                 device: str | torch.device | None = None, select: str = "last",
                 class_counts: ArrayLike | None = None,
                 min_steps: int = _DEFAULTS.min_steps) -> None:
        super().__init__(epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum,
                         weight_decay=weight_decay, sampler=sampler,
                         samples_per_class=samples_per_class, seed=seed, device=device,
                         select=select, class_counts=class_counts, min_steps=min_steps)
        _check_flag(scale_bias, "scale_bias")
        self.weight = weight
        self.bias = bias
        self.scale_bias = scale_bias

    _min_epochs = 0  # unit scales: the joint classifier

    def _scale(self, logits: Tensor, scales: Tensor, bias: Tensor | None,
               out: Tensor | None = None) -> Tensor:
        """Return the LWS logits from the joint logits without bias, ``x W^T`` (written into
        ``out`` when given)."""
        if bias is None:
            return torch.mul(logits, scales, out=out)
        if self.scale_bias:
            return torch.mul(torch.add(logits, bias, out=out), scales, out=out)
        return torch.addcmul(bias, logits, scales, out=out)

    def _scales_step(self, scales: Tensor, bias: Tensor | None):
        """Return the written-out step of the scales on joint logits (see ``_manual_step``):
        d logit_j / d f_j is the logit, plus the bias with scale_bias."""
        with_bias = bias is not None and self.scale_bias

        def accumulate(rows: Tensor, d: Tensor, momenta: list[Tensor], beta: float,
                       alpha: float) -> None:
            # sum_i d_ij (z_ij + b_j) = sum_i d_ij z_ij + b_j sum_i d_ij; d is not needed after.
            d_sum = d.sum(0) if with_bias else None
            momenta[0].mul_(beta).add_(d.mul_(rows).sum(0), alpha=alpha)
            if with_bias:
                momenta[0].addcmul_(bias, d_sum, value=alpha)

        return self._manual_step([scales], lambda rows, out: self._scale(rows, scales, bias, out),
                                 accumulate, ClassifierLoss())

    def _scaled_logits(self, x: Tensor, scales: Tensor, weight: Tensor,
                       bias: Tensor | None) -> Tensor:
        return self._scale(x @ weight.T, scales, bias)

    def fit(self, features: ArrayLike, labels: ArrayLike | None = None, val_features=None,
            val_labels=None) -> LWS:
        weight = _features(self.weight, "weight", fit=True).to(self._device())
        batches = self._batches(features, labels, len(weight), weight)
        device = self._device()
        bias = _bias(self.bias, weight)
        scales = torch.ones(len(weight), device=device, requires_grad=True)
        logits_bytes = len(batches.features) * len(weight) * 4 if isinstance(
            batches, CachedBatches) else None
        if logits_bytes is not None and logits_bytes <= LOGITS_MEMORY:
            # x W^T does not change while the scales learn: one product for the whole fit,
            # then a step costs batch x C numbers instead of a (batch x D) (D x C) product.
            # (Above LOGITS_MEMORY, e.g. iNaturalist's 437k x 8142, each batch's product.)
            batches = CachedBatches(_matmul_chunked(batches.features, weight), batches.labels,
                                    batches.sampler, batches.batch_size, device)
            if val_features is not None and self.select == "best_val":  # else unused
                xv = _features(val_features, "val_features", fit=True, columns=_like(weight))
                val_features = _matmul_chunked(xv.to(device), weight)
            forward = lambda logits: self._scale(logits, scales, bias)  # noqa: E731
            step = self._scales_step(scales, bias)
        else:
            forward = lambda f: self._scaled_logits(f, scales, weight, bias)  # noqa: E731
            step = self._sgd_step([scales], forward, ClassifierLoss())  # backbone: autograd
        self._train([scales], forward, batches, val_features, val_labels, step)
        self.scales_ = scales.detach().cpu()
        self.weight_, self.bias_ = _owned(weight), _owned(bias)
        return self

    def logits(self, features: ArrayLike) -> Tensor:
        self._check_fitted("scales_")
        x = _features(features, columns=_like(self.weight_))
        return self._scaled_logits(x, *_on(x, self.scales_, self.weight_, self.bias_))

    def class_weights(self) -> Tensor:
        self._check_fitted("scales_")
        return self.scales_.unsqueeze(1) * self.weight_


def build_rebalancer(
    name: str,
    cfg: Stage2Config,
    *,
    joint_weight: Tensor,
    joint_bias: Tensor | None,
    num_classes: int,
    seed: int,
    class_counts: ArrayLike | None = None,
    device: torch.device | None = None,
) -> Rebalancer:
    """Return the unfitted method ``name`` configured by the ``stage2.*`` keys.
    ``class_counts`` (the training split's) give the prior of the methods that use one;
    without them the methods count the training labels given to ``fit``. The trained methods
    shrink the batch of a small training split themselves (``stage2.min_steps``)."""
    trained = dict(batch_size=cfg.batch_size, momentum=cfg.momentum,
                   samples_per_class=cfg.samples_per_class, seed=seed, device=device,
                   select=cfg.select, class_counts=class_counts, min_steps=cfg.min_steps)
    crt = dict(epochs=cfg.crt.epochs, lr=cfg.crt.lr, weight_decay=cfg.crt.weight_decay,
               las_head=cfg.crt.las_head, las_tail=cfg.crt.las_tail, **trained)
    if name == "joint":
        return Joint(joint_weight, joint_bias)
    if name == "ncm_cosine":
        return NCM("cosine", center=cfg.ncm.center, normalize=cfg.ncm.normalize)
    if name == "ncm_euclidean":
        return NCM("euclidean", center=cfg.ncm.center, normalize=cfg.ncm.normalize)
    if name == "tau_norm":
        grid = TauNorm.default_grid(cfg.tau_norm.grid_max, cfg.tau_norm.grid_step)
        return TauNorm(joint_weight, tau=cfg.tau_norm.tau, grid=grid)
    if name == "logit_adjust":
        grid = TauNorm.default_grid(cfg.logit_adjust.grid_max, cfg.logit_adjust.grid_step)
        return LogitAdjust(joint_weight, joint_bias, tau=cfg.logit_adjust.tau, grid=grid,
                           counts=class_counts)
    if name == "crt":
        return CRT(num_classes, sampler=cfg.crt.sampler, loss=cfg.crt.loss,
                   loss_tau=cfg.crt.loss_tau, label_smoothing=cfg.crt.label_smoothing, **crt)
    if name == "balms":
        return BALMS(num_classes, **{**crt, "lr": cfg.crt.lr if cfg.balms.lr is None
                                     else cfg.balms.lr})
    if name == "las":
        return LAS(num_classes, sampler=cfg.crt.sampler, **crt)
    if name == "wb":
        return WB(joint_weight, joint_bias, max_norm=cfg.wb.max_norm, beta=cfg.wb.beta,
                  epochs=cfg.wb.epochs, lr=cfg.wb.lr, weight_decay=cfg.wb.weight_decay,
                  sampler=cfg.wb.sampler, **trained)
    if name == "lws":
        return LWS(joint_weight, joint_bias, epochs=cfg.lws.epochs, lr=cfg.lws.lr,
                   weight_decay=cfg.lws.weight_decay, scale_bias=cfg.lws.scale_bias,
                   sampler=cfg.lws.sampler, **trained)
    raise ValueError(f"unknown stage-2 method {name!r}")
