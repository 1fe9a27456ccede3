"""Each stage-2 method on small synthetic features where the right answer is known."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from longtail import CRT, LWS, NCM, Joint, LogitAdjust, TauNorm
from longtail.losses import ClassifierLoss
from longtail.metrics import balanced_accuracy


def clusters(counts, dim=8, spread=0.3, seed=0):
    """Features around well-separated class centres (one axis per class, scaled by 5)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    centres = 5 * torch.eye(len(counts), dim)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=g), labels


def biased_classifier(num_classes=4, dim=8):
    """A joint-like classifier: class axes with norms that grow with class size (head first)."""
    norms = torch.tensor([4.0, 2.0, 1.0, 0.5])[:num_classes]
    return norms.unsqueeze(1) * torch.eye(num_classes, dim), torch.tensor([0.3, 0.1, 0.0, -0.2])


def test_joint_is_the_linear_classifier():
    w, b = biased_classifier()
    x = torch.randn(5, 8)
    assert torch.allclose(Joint(w, b).fit().logits(x), x @ w.T + b)


def test_tau_zero_gives_joint_weights_back_without_bias():
    w, b = biased_classifier()
    x = torch.randn(6, 8)
    model = TauNorm(w, tau=0.0).fit()
    assert torch.allclose(model.class_weights(), w)
    assert torch.allclose(model.logits(x), x @ w.T)  # bias dropped


def test_tau_one_normalises_every_class_weight():
    w, _ = biased_classifier()
    norms = TauNorm(w, tau=1.0).fit().class_weights().norm(dim=1)
    assert torch.allclose(norms, torch.ones(4))


def test_tau_is_chosen_on_validation_where_it_removes_the_norm_bias():
    w, _ = biased_classifier()
    # Features close to the class axes but noisy: with raw norms the head class wins too often.
    xv, yv = clusters([50] * 4, spread=3.0, seed=1)
    xv = xv / 5
    model = TauNorm(w).fit(None, None, xv, yv)
    assert model.tau_ in model.val_scores_ and len(model.val_scores_) == 41  # 0.0..2.0 by 0.05
    assert 0.8 <= model.tau_ <= 1.2
    assert model.val_scores_[model.tau_] > model.val_scores_[0.0] + 0.05


def _every_tau(logits, labels, grid, adjust):
    return {float(t): balanced_accuracy(adjust(t, logits).argmax(1) == labels, labels).item()
            for t in grid}


@pytest.mark.parametrize("case", ["mixed", "negative", "ties", "unsorted grid", "poor",
                                  "infinite", "near ties"])
def test_tau_search_equals_scoring_every_tau(case):
    """The search scores the grid's ends for every row and the few classes that matter at
    every tau; its curve must be that of scoring every tau, on rows of every kind: right
    everywhere, right at one end, never right, negative label logits, exact ties at one end
    or everywhere, a near-chance classifier, infinite and NaN logits, and scores a rounding
    apart (their order at one tau not that of the next)."""
    from longtail.stages.rebalance import LogitAdjust

    g = torch.Generator().manual_seed(3)
    num_classes, dim = 30, 16
    counts = torch.linspace(200, 3, num_classes).round().long()
    weight = torch.randn(num_classes, dim, generator=g) * (counts.float() ** 0.4).unsqueeze(1)
    x = torch.randn(900, dim, generator=g)
    y = torch.randint(0, num_classes, (900,), generator=g)
    x = x + 0.4 * F.normalize(weight, dim=1)[y] * dim ** 0.5
    grid = TauNorm.default_grid()
    if case == "negative":
        x = x - 1.5  # many rows with a negative label logit
    la_counts, bias = counts.clone(), torch.randn(num_classes, generator=g)
    if case == "ties":
        weight[7] = weight[3]  # two identical classes: every row ties between them
        x[:50] = 0  # all-zero rows: every class ties, argmax picks class 0
        # Logit adjustment: classes 3 and 7 tie at tau 0 only; the rarer 3 wins above it.
        bias[7] = bias[3]
        la_counts[3], la_counts[7] = 5, 150
    if case == "unsorted grid":
        grid = [1.3, 0.0, 2.0, 0.7, 0.05, 1.0, 0.35]
    if case == "poor":  # labels mostly unrelated to the features: many rows never right
        y = torch.randint(0, num_classes, (900,), generator=g)
    if case == "near ties":  # classes a few units in the last place apart: so are scores
        ulps = torch.randint(-3, 4, (num_classes, 1), generator=g).float()
        weight = weight[:1].expand(num_classes, dim) * (1 + ulps * 2**-23)
    if case == "infinite":  # rows with an infinite or NaN feature give +-inf / NaN logits
        x[:5, 0], x[5:10, 0], x[10:15, 0] = math.inf, -math.inf, math.nan
        weight[:, 0] = weight[:, 0].abs()  # +inf in every class for the first rows: ties
    tau_norm = TauNorm(weight, grid=grid).fit(None, None, x, y)
    norms = weight.norm(dim=1)
    expected = _every_tau(x @ weight.T, y, grid, lambda t, z: z / norms.pow(t))
    assert tau_norm.val_scores_ == expected
    assert list(tau_norm.val_scores_) == [float(t) for t in grid]
    assert tau_norm.tau_ == max(expected, key=expected.get)
    la = LogitAdjust(weight, bias, grid=grid, counts=la_counts).fit(None, None, x, y)
    expected = _every_tau(x @ weight.T + bias, y, grid, lambda t, z: z - t * la.log_prior_)
    assert la.val_scores_ == expected


def test_tau_search_equals_scoring_every_tau_on_random_problems():
    """Random small problems of every kind (rounded values full of exact ties, duplicate and
    nearly duplicate classes, zero rows, infinities, grids of one to 41 taus): the searched
    curve of both tau-norm and logit adjustment equals full scoring, with ``==``."""
    import random

    from longtail.stages.rebalance import LogitAdjust

    grids = [TauNorm.default_grid(), [0.0, 2.0], [0.5, 1.0, 1.5], [1.0], [2.0, 0.0, 0.3, 1.7]]
    for seed in range(150):
        r, g = random.Random(seed), torch.Generator().manual_seed(seed)
        c, d, n = r.choice([2, 3, 5, 17, 40]), r.choice([1, 2, 4, 16]), r.choice([1, 5, 50, 300])
        scale = torch.rand(c, 1, generator=g) * r.choice([0.1, 1, 5]) + 0.01
        w = torch.randn(c, d, generator=g) * scale
        x = torch.randn(n, d, generator=g) * r.choice([0.1, 1, 10]) + r.choice([-1, 0, 1])
        kind = r.choice(["plain", "round", "duplicate", "near duplicate", "zero", "inf"])
        if kind == "round":
            x, w = x.round(), w.round() + 0.01
        if kind == "duplicate" and c > 2:
            w[1] = w[0]
        if kind == "near duplicate" and c > 2:
            w[1] = w[0] * (1 + 1e-6)
        if kind == "zero":
            x[: n // 2] = 0
        if kind == "inf":
            x[0, 0] = r.choice([math.inf, -math.inf, math.nan])
        y = torch.randint(0, c, (n,), generator=g)
        grid = r.choice(grids)
        norms = w.norm(dim=1).clamp(min=1e-12)
        expected = _every_tau(x @ w.T, y, grid, lambda t, z, n=norms: z / n.pow(t))
        assert TauNorm(w, grid=grid).fit(None, None, x, y).val_scores_ == expected, seed
        counts, bias = torch.randint(1, 100, (c,), generator=g), torch.randn(c, generator=g)
        la = LogitAdjust(w, bias, grid=grid, counts=counts).fit(None, None, x, y)
        prior = la.log_prior_
        expected = _every_tau(x @ w.T + bias, y, grid, lambda t, z, p=prior: z - t * p)
        assert la.val_scores_ == expected, seed


def test_tau_norm_without_validation_says_what_is_missing():
    w, _ = biased_classifier()
    with pytest.raises(ValueError, match="val_features"):
        TauNorm(w).fit(torch.randn(4, 8), torch.arange(4))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_ncm_is_perfect_on_well_separated_clusters(metric):
    x, y = clusters([40, 10, 3, 1])
    xt, yt = clusters([20] * 4, seed=2)
    model = NCM(metric).fit(x, y)
    assert (model.predict(xt) == yt).all()
    expected = torch.stack([x[y == c].mean(0) for c in range(4)])
    if metric == "euclidean":
        assert torch.allclose(model.means_, expected, atol=1e-6)


def test_ncm_cosine_ignores_feature_norm():
    x, y = clusters([5, 5, 5, 5])
    model = NCM("cosine").fit(x, y)
    assert torch.allclose(model.logits(x), model.logits(10 * x), atol=1e-5)


def test_ncm_authors_variant_centres_and_normalises():
    x, y = clusters([30, 10, 5, 2])
    model = NCM("euclidean", center=True, normalize=True).fit(x, y)
    z = F.normalize(x - x.mean(0), dim=1)
    assert torch.allclose(model.means_[1], z[y == 1].mean(0), atol=1e-6)


def test_ncm_needs_every_class():
    with pytest.raises(ValueError, match="no training features"):
        NCM().fit(torch.randn(3, 2), torch.tensor([0, 0, 2]))


def test_lws_with_unit_scales_equals_joint():
    w, b = biased_classifier()
    x, y = clusters([10, 5, 3, 2])
    for scale_bias in (False, True):
        model = LWS(w, b, epochs=0, scale_bias=scale_bias).fit(x, y)
        assert torch.equal(model.scales_, torch.ones(4))
        assert torch.allclose(model.logits(x), Joint(w, b).fit().logits(x))


def test_lws_learns_scales_that_flatten_the_norms_and_keeps_weights_frozen():
    w, b = biased_classifier()
    x, y = clusters([400, 100, 20, 5], spread=3.0)
    x = x / 5
    model = LWS(w, b, epochs=20, lr=0.1, batch_size=64).fit(x, y)
    effective = model.class_weights().norm(dim=1)
    assert effective.max() / effective.min() < 0.5 * (w.norm(dim=1).max() / w.norm(dim=1).min())
    assert torch.equal(model.weight_, w)
    xt, yt = clusters([100] * 4, spread=3.0, seed=5)
    xt = xt / 5
    def score(logits, labels):
        return balanced_accuracy(logits.argmax(1) == labels, labels).item()

    assert score(model.logits(xt), yt) > score(x @ w.T + b, y) - 0.01
    assert score(model.logits(xt), yt) > score(xt @ w.T + b, yt) + 0.05


def test_lws_scale_bias_multiplies_the_whole_logit():
    w, b = biased_classifier()
    model = LWS(w, b, epochs=0, scale_bias=True).fit(torch.randn(4, 8), torch.arange(4))
    model.scales_ = torch.tensor([2.0, 1.0, 1.0, 0.5])
    x = torch.randn(3, 8)
    assert torch.allclose(model.logits(x), (x @ w.T + b) * model.scales_)


def test_crt_learns_a_balanced_classifier_deterministically():
    x, y = clusters([300, 60, 10, 3], spread=1.0)
    xt, yt = clusters([50] * 4, spread=1.0, seed=9)
    a = CRT(epochs=10, lr=0.1, batch_size=64, seed=1).fit(x, y)
    b = CRT(epochs=10, lr=0.1, batch_size=64, seed=1).fit(x, y)
    assert torch.equal(a.weight_, b.weight_) and torch.equal(a.bias_, b.bias_)
    assert a.weight_.shape == (4, 8) and a.bias_.shape == (4,)
    assert (a.predict(xt) == yt).float().mean() > 0.95


def test_crt_class_balanced_sampling_beats_instance_sampling_on_the_tail():
    x, y = clusters([1000, 200, 8, 2], spread=4.0)
    xt, yt = clusters([200] * 4, spread=4.0, seed=3)
    balanced = CRT(epochs=5, lr=0.05, batch_size=64, sampler="class").fit(x, y)
    plain = CRT(epochs=5, lr=0.05, batch_size=64, sampler="instance").fit(x, y)
    tail = yt >= 2
    acc = lambda m: (m.predict(xt[tail]) == yt[tail]).float().mean()  # noqa: E731
    assert acc(balanced) > acc(plain)


def test_unfitted_methods_say_so():
    with pytest.raises(RuntimeError, match="not fitted"):
        NCM().predict(torch.randn(2, 3))


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="2-d"):
        NCM().fit(torch.randn(5), torch.zeros(5))
    with pytest.raises(ValueError, match="expected 5 labels"):
        NCM().fit(torch.randn(5, 2), torch.zeros(4))


@pytest.mark.parametrize("method", ["crt", "logit_adjusted", "balanced_softmax", "las", "wb"])
def test_crt_written_out_gradient_equals_autograd_and_torch_sgd(monkeypatch, method):
    """cRT's hand-written step (softmax minus target, SGD with momentum and weight decay)
    gives the classifier that autograd with torch.optim.SGD gives, for every loss variant
    (and weight balancing's class weights and MaxNorm)."""
    from longtail.stages.rebalance import CRT, LAS, WB

    g = torch.Generator().manual_seed(0)
    y = torch.arange(5).repeat_interleave(torch.tensor([50, 30, 12, 6, 3]))
    x = torch.randn(len(y), 16, generator=g) + torch.nn.functional.one_hot(y, 16).float()
    args = dict(epochs=4, batch_size=16, lr=0.3, weight_decay=1e-3)
    joint = torch.randn(5, 16, generator=g) * 3
    build = {"crt": lambda: CRT(5, **args),
             "logit_adjusted": lambda: CRT(5, loss="logit_adjusted", loss_tau=0.7, **args),
             "balanced_softmax": lambda: CRT(5, loss="balanced_softmax", **args),
             "las": lambda: LAS(5, **args),
             "wb": lambda: WB(joint, torch.zeros(5),
                              max_norm=1.0, **args)}[method]
    fast = build()
    fast.fit(x, y)
    # The same fit through autograd and torch.optim.SGD.
    monkeypatch.setattr(CRT, "_linear_step", lambda self, w, b, loss_fn: self._sgd_step(
        [w, b], lambda f: F.linear(f, w, b), loss_fn))
    slow = build()
    slow.fit(x, y)
    torch.testing.assert_close(fast.weight_, slow.weight_, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.bias_, slow.bias_, rtol=1e-4, atol=1e-5)
    assert fast.loss_history_ == pytest.approx(slow.loss_history_, rel=1e-4)


@pytest.mark.parametrize("scale_bias", [False, True])
def test_lws_written_out_gradient_equals_autograd(monkeypatch, scale_bias):
    from longtail.stages.rebalance import LWS

    g = torch.Generator().manual_seed(1)
    y = torch.arange(4).repeat_interleave(torch.tensor([40, 20, 8, 3]))
    x = torch.randn(len(y), 12, generator=g) + torch.nn.functional.one_hot(y, 12).float()
    weight, bias = torch.randn(4, 12, generator=g), torch.randn(4, generator=g)
    args = dict(epochs=3, batch_size=8, lr=0.3, weight_decay=1e-3, scale_bias=scale_bias)
    fast = LWS(weight, bias, **args).fit(x, y)
    monkeypatch.setattr(LWS, "_scales_step", lambda self, scales, bias: self._sgd_step(
        [scales], lambda logits: self._scale(logits, scales, bias), ClassifierLoss()))
    slow = LWS(weight, bias, **args).fit(x, y)
    torch.testing.assert_close(fast.scales_, slow.scales_, rtol=1e-4, atol=1e-5)


def test_small_work_runs_on_one_thread_and_the_threads_come_back():
    from longtail.stages.rebalance import threads_for

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threads_for(10, limit=100):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with threads_for(1000, limit=100):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_stage2_bench_runs_small_and_prints_every_ratio(tmp_path):
    """bench/stage2.py (make bench) on a small shape: every method gets a fit, a bound and a
    ratio, so the bench cannot rot between benchmark runs."""
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "stage2.json"
    result = subprocess.run(
        [sys.executable, str(root / "bench" / "stage2.py"), "--classes", "20", "--train",
         "3000", "--dim", "16", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(root / "src")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fit/bound" in result.stdout and "softmax of every step" in result.stdout
    methods = json.loads(out.read_text())["methods"]
    for name in ("crt", "lws", "tau_norm", "ncm_cosine", "ncm_euclidean"):
        assert methods[name]["bound_s"] is not None and methods[name]["fit_s"] >= 0


def test_the_rebalancers_take_a_models_own_parameters():
    """A trained nn.Linear's weight and bias (which require grad) work as the joint
    classifier, and nothing the re-balancers return carries a graph. (The README's Python
    block is run as written by tests/test_docs_commands.py, on the demo's features.)"""
    g = torch.Generator().manual_seed(0)
    counts = torch.tensor([40, 20, 8, 4])
    train_labels = torch.repeat_interleave(torch.arange(4), counts)
    centres = 3 * torch.randn(4, 16, generator=g)
    val_labels = torch.arange(4).repeat(5)
    x = centres[train_labels] + torch.randn(len(train_labels), 16, generator=g)
    xv = centres[val_labels] + torch.randn(len(val_labels), 16, generator=g)
    test = torch.randn(7, 16, generator=g)
    fc = torch.nn.Linear(16, 4)
    fitted = [TauNorm(fc.weight).fit(x, train_labels, xv, val_labels),
              CRT(epochs=10).fit(x, train_labels),
              LWS(fc.weight, fc.bias, epochs=5).fit(x, train_labels),
              NCM("cosine").fit(x, train_labels),
              LogitAdjust(fc.weight, fc.bias, counts=counts).fit(None, None, xv, val_labels)]
    for method in fitted:
        assert method.predict(test).shape == (7,)
        assert not method.logits(test).requires_grad


def test_labels_beyond_the_classifier_are_named():
    x, y = torch.randn(20, 4), torch.arange(20) % 4
    with pytest.raises(ValueError, match="labels: expected labels below the 2 classes of the "
                                         "classifier, found 3"):
        CRT(num_classes=2, epochs=1).fit(x, y)
    with pytest.raises(ValueError, match="below the 3 classes of the classifier, found 3"):
        LWS(torch.randn(3, 4), epochs=1).fit(x, y)


# Misuse of the Python API: a ValueError (TypeError for a wrong type) naming the argument,
# what was expected and what was found, never a silent wrong result or a raw torch message.


def _misuse_problem():
    """Tiny features (40 x 8) of 4 classes and a joint-like classifier (4 x 8) for them."""
    x, y = clusters([10] * 4)
    w, b = biased_classifier()
    return x, y, w, b


def test_float_labels_must_hold_integers():
    x, y, _, _ = _misuse_problem()
    with pytest.raises(ValueError, match=r"^labels: expected integer labels, found 0.7 in "
                                         r"row 0$"):
        NCM().fit(x, y + 0.7)
    with pytest.raises(ValueError, match=r"^val_labels: expected integer labels, found nan in "
                                         r"row 1$"):
        TauNorm(biased_classifier()[0]).fit(None, None, x[:2], torch.tensor([0.0, math.nan]))
    # integer-valued floats are the same labels
    assert torch.equal(NCM().fit(x, y.double()).means_, NCM().fit(x, y).means_)


def test_non_finite_features_are_refused_naming_the_row():
    x, y, w, b = _misuse_problem()
    bad = x.clone()
    bad[3, 5] = math.nan
    with pytest.raises(ValueError, match=r"^features: expected finite numbers, found NaN or "
                                         r"infinity in row 3$"):
        NCM().fit(bad, y)
    bad[3, 5] = -math.inf
    with pytest.raises(ValueError, match="features: .* NaN or infinity in row 3"):
        CRT(epochs=1).fit(bad, y)
    with pytest.raises(ValueError, match="val_features: .* NaN or infinity in row 3"):
        LWS(w, b, epochs=1, select="best_val").fit(x, y, bad, y)
    with pytest.raises(ValueError, match="weight: .* NaN or infinity in row 0"):
        Joint(torch.full((2, 3), math.nan)).fit()
    with pytest.raises(ValueError, match="features: .* NaN or infinity in row 3"):
        Joint(w, b).fit().predict(bad)


def test_features_that_overflow_float32_are_refused():
    from longtail.stages.rebalance import WB

    x, y, w, b = _misuse_problem()
    message = (r"^features: expected values of magnitude at most 1e15, found 5.\d+e20 in row 0: "
               r"squared norms and products of such values overflow float32; scale them down$")
    with pytest.raises(ValueError, match=message):
        WB(w, b, epochs=1, batch_size=8).fit(x * 1e20, y)
    with pytest.raises(ValueError, match=r"found 5.\d+e\+?300 in row 0"):  # beyond float32
        NCM().fit(x.double() * 1e300, y)
    for metric in ("cosine", "euclidean"):  # caught through the means and norms
        with pytest.raises(ValueError, match=r"^features: .* found 5.\d+e20 in row 0"):
            NCM(metric).fit(x * 1e20, y)
    assert NCM().fit(x * 1e14, y).predict(x).shape == (40,)  # large but safe


@pytest.mark.parametrize("method", ["crt", "balms", "las", "wb", "lws"])
def test_trained_methods_refuse_bad_hyper_parameters(method):
    from longtail.stages.rebalance import BALMS, LAS, WB

    w, b = biased_classifier()
    make = {"crt": lambda **k: CRT(4, **k), "balms": lambda **k: BALMS(4, **k),
            "las": lambda **k: LAS(4, **k), "wb": lambda **k: WB(w, b, **k),
            "lws": lambda **k: LWS(w, b, **k)}[method]
    for key, value, message in [
            ("lr", 0, r"lr: expected a learning rate in \(0, 1000\], found 0"),
            ("lr", -0.1, r"lr: expected a learning rate in \(0, 1000\], found -0.1"),
            ("lr", math.nan, r"lr: expected a learning rate in \(0, 1000\], found nan"),
            ("lr", 1e300, r"lr: expected a learning rate in \(0, 1000\], found 1e\+300"),
            ("batch_size", 0, "batch_size: expected an int >= 1, found 0"),
            ("momentum", -0.5, r"momentum: expected a number in \[0, 1\), found -0.5"),
            ("momentum", 1.0, r"momentum: expected a number in \[0, 1\), found 1.0"),
            ("weight_decay", -1e-4, r"weight_decay: expected a number in \[0, 1000\], found -0"),
            ("weight_decay", 1e39, r"weight_decay: expected a number in \[0, 1000\], found 1e"),
            ("epochs", -1, "epochs: expected an int >= [01]"),
            ("seed", -1, r"seed: expected an int in \[0, 2\^63\), found -1"),
            ("seed", 2**70, r"seed: expected an int in \[0, 2\^63\)"),
            ("samples_per_class", 0, "samples_per_class: expected an int >= 1, found 0"),
            ("sampler", "foo", "sampler: expected one of .* or q in \\[0, 1\\], found 'foo'"),
            ("sampler", [1], "sampler: expected one of .*, found \\[1\\]"),
            ("epochs", 2.5, None)]:
        if message is None:
            with pytest.raises(TypeError, match="epochs: expected an int >= [01].*, found float"):
                make(**{key: value})
            continue
        with pytest.raises(ValueError, match=message):
            make(**{key: value})
    if method in ("wb", "lws"):  # starts from the joint classifier: 0 epochs leave it as it is
        assert make(epochs=0).epochs == 0
    else:  # a fresh classifier: 0 epochs would leave it random
        with pytest.raises(ValueError, match=r"epochs: expected an int >= 1 \(0 epochs would "
                                             r"leave the classifier at its random start\), "
                                             r"found 0"):
            make(epochs=0)


def test_every_class_of_the_classifier_needs_training_labels():
    """A weight with more rows than the labels' classes, a label gap, one class, or a label of
    1e9 (which would ask for a classifier of 1e9 rows, and memory for it) are refused before
    any work, as the command line refuses them; not rows nothing trained, predicted anyway."""
    from longtail.stages.rebalance import BALMS, LAS, WB

    x, y = clusters([20, 10, 6, 4])
    w, b = biased_classifier()
    wide, wide_b = torch.cat([w, torch.randn(2, 8)]), torch.cat([b, torch.zeros(2)])
    rows = r"have no training features \(the classifier's 6 rows\)"
    with pytest.raises(ValueError, match=r"^labels: classes \[4, 5\] " + rows):
        LWS(wide, wide_b, epochs=1).fit(x, y)
    with pytest.raises(ValueError, match=r"^labels: classes \[4, 5\] " + rows):
        WB(wide, wide_b, epochs=1).fit(x, y)
    with pytest.raises(ValueError, match=r"^labels: classes \[4, 5\] " + rows + "$"):
        TauNorm(wide, tau=1.0).fit(x, y)
    # given transposed, (features, classes): 8 rows, and the labels stop at column 4
    with pytest.raises(ValueError, match=r"^labels: classes \[4, 5, 6, 7\] have no training "
                                         r"features \(the classifier's 8 rows\); the labels "
                                         r"stop at 3: is the weight transposed\? expected "
                                         r"\(classes, features\)$"):
        TauNorm(w.T, tau=1.0).fit(x, y)
    with pytest.raises(ValueError, match=r"^labels: classes \[4, 5\] " + rows + "$"):
        CRT(6, epochs=1).fit(x, y)  # no weight given: none to be transposed
    gap = torch.where(y == 0, 9, y)
    for method in (CRT(epochs=1), BALMS(epochs=1), LAS(epochs=1), NCM()):
        with pytest.raises(ValueError, match=r"^labels: classes \[0, 4, 5, 6, 7, 8\] have no "
                                             r"training features$"):
            method.fit(x, gap)
        with pytest.raises(ValueError, match=r"^labels: classes \[0, 1\] have no training"):
            method.fit(x[y == 2], y[y == 2])
        with pytest.raises(ValueError, match=r"^labels: expected at least 2 classes, found 1$"):
            method.fit(x[y == 0], y[y == 0])
        huge = y.clone()
        huge[-1] = 10**9  # refused at once, without counting up to it
        with pytest.raises(ValueError, match=r"^labels: expected a label of each of the "
                                             r"1000000001 classes 0..1000000000, found 40 "
                                             r"labels$"):
            method.fit(x, huge)
    assert TauNorm(w, tau=1.0).fit(x, y).tau_ == 1.0  # all four classes: as before


def test_api_hyper_parameters_are_checked_as_the_config_checks_them():
    import numpy as np

    from longtail.stages.rebalance import LAS, WB

    w, b = biased_classifier()
    for make in (lambda **k: TauNorm(w, **k), lambda **k: LogitAdjust(w, b, **k)):
        for tau in (math.nan, math.inf, -1, 11):
            with pytest.raises(ValueError, match=r"^tau: expected a number in \[0, 10\] or "
                                                 r"None, found"):
                make(tau=tau)
        with pytest.raises(TypeError, match=r"^tau: expected .* found str 'a'"):
            make(tau="a")
        with pytest.raises(TypeError, match=r"^grid: expected a list of taus, found float 1.0"):
            make(grid=1.0)
        with pytest.raises(TypeError, match=r"^grid: expected a list of taus, found str"):
            make(grid="0,1")
        with pytest.raises(ValueError, match=r"^grid: expected taus each a number in \[0, 10\], "
                                             r"found nan"):
            make(grid=[math.nan, 1.0])
        with pytest.raises(ValueError, match=r"^grid: expected at least one tau"):
            make(grid=[])
        assert make(grid=np.linspace(0, 2, 5)).grid is not None  # NumPy's floats are numbers
    for max_norm in (0, -1, math.nan, 1e300):
        with pytest.raises(ValueError, match=r"^max_norm: expected a number in \(0, 1000\] or"):
            WB(w, b, max_norm=max_norm)
    with pytest.raises(TypeError, match=r"^num_classes: expected an int >= 2 or None \(CRT "
                                        r"trains a new classifier; WB and LWS start from a "
                                        r"weight\), found Tensor"):
        CRT(w)
    for bad in (0, 1, -1):
        with pytest.raises(ValueError, match=r"^num_classes: expected an int >= 2 or None"):
            CRT(bad)
    with pytest.raises(TypeError, match=r"^num_classes: expected an int >= 2 or None"):
        CRT(10.0)
    with pytest.raises(TypeError, match=r"^center: expected True or False, found str 'no'"):
        NCM(center="no")
    with pytest.raises(TypeError, match=r"^scale_bias: expected True or False, found str"):
        LWS(w, b, scale_bias="no")
    x, y = clusters([5, 5, 5, 5])
    with pytest.raises(ValueError, match=r"^features: expected at least one column, found none"):
        CRT(epochs=1).fit(x[:, :0], y)
    # the loss's settings, bounded as stage2.crt.* and stage2.wb.* are (NaN trained to NaN
    # weights that predicted class 0 for every row)
    for bad in (math.nan, -0.5, 1e300):
        with pytest.raises(ValueError, match=r"^loss_tau: expected a number in \[0, 10\], found"):
            CRT(loss="logit_adjusted", loss_tau=bad)
    for name in ("las_head", "las_tail"):
        for bad in (math.nan, 1.0, -0.1):
            with pytest.raises(ValueError, match=rf"^{name}: expected a number in \[0, 1\)"):
                LAS(**{name: bad})
    with pytest.raises(TypeError, match=r"^LAS sets label_smoothing itself .* CRT\("):
        LAS(label_smoothing=0.1)
    for bad in (1.0, -1, math.nan):
        with pytest.raises(ValueError, match=r"^beta: expected a number in \[0, 1\), found"):
            WB(w, b, beta=bad)
    with pytest.raises(TypeError, match=r"^beta: expected a number in \[0, 1\), found str 'x'"):
        WB(w, b, beta="x")
    with pytest.raises(ValueError, match=r"^min_steps: expected an int >= 1"):
        CRT(min_steps=0)
    # NumPy's integers are ints to every check, and to the seeded generator
    assert CRT(4, epochs=1, seed=np.int64(3)).fit(x, y).seed == 3
    assert WB(w, b).lr == 0.02  # stage2.wb.lr's default, not cRT's


def test_a_diverged_fit_is_refused_and_small_sets_take_min_steps():
    x, y = clusters([60, 30, 10, 4])
    with pytest.raises(ValueError, match=r"^training diverged: the learned parameters hold NaN "
                                         r"or infinity after 2 epochs; lower lr \(1000\)$"):
        CRT(4, epochs=2, lr=1000, weight_decay=1000).fit(x, y)
    # 104 rows at the default batch of 512 would be one step an epoch; min_steps (16, as the
    # config's) shrinks it to 104 // 16 = 6, and 1 takes it as given
    assert len(CRT(4, epochs=1)._batches(x, y)) == 17
    assert len(CRT(4, epochs=1, min_steps=1)._batches(x, y)) == 1
    assert len(CRT(4, epochs=1, batch_size=4)._batches(x, y)) == 26


def test_logit_adjust_counts_must_be_positive_and_one_per_class():
    import numpy as np

    from longtail.stages.rebalance import LogitAdjust

    x, y, w, b = _misuse_problem()
    with pytest.raises(ValueError, match=r"^counts: expected a count > 0 for every class \(the "
                                         r"log prior of a count of 0 is -inf\), found 0 for "
                                         r"class 0$"):
        LogitAdjust(w, b, tau=1.0, counts=np.zeros(4)).fit()
    with pytest.raises(ValueError, match="counts: .* found -3 for class 2"):
        LogitAdjust(w, b, tau=1.0, counts=[5, 4, -3, 1]).fit()
    with pytest.raises(ValueError, match=r"^counts: expected 4 counts \(one per class\), found "
                                         r"shape \(3,\)$"):
        LogitAdjust(w, b, tau=1.0, counts=np.ones(3)).fit()
    with pytest.raises(ValueError, match="labels' class counts: .* found 0 for class 3"):
        LogitAdjust(w, b, tau=1.0).fit(x, y % 3)  # no training label of class 3
    with pytest.raises(ValueError, match="class_counts: .* found 0 for class 1"):
        CRT(4, epochs=1, loss="logit_adjusted", class_counts=[3, 0, 2, 1]).fit(x, y)


def test_features_of_another_size_name_both_sizes():
    from longtail.stages.rebalance import WB, LogitAdjust

    x, y, w, b = _misuse_problem()
    narrow = x[:, :5]
    weight = r"expected 8 columns \(the classifier's weight is 4 x 8\), found 5$"
    for fit in (lambda: LWS(w, b, epochs=1).fit(narrow, y),
                lambda: WB(w, b, epochs=1).fit(narrow, y),
                lambda: Joint(w, b).fit().logits(narrow),
                lambda: TauNorm(w, tau=1.0).fit().predict(narrow),
                lambda: LogitAdjust(w, b, tau=1.0, counts=[1] * 4).fit().logits(narrow),
                lambda: CRT(epochs=1).fit(x, y).logits(narrow),
                lambda: LWS(w, b, epochs=0).fit(x, y).logits(narrow)):
        with pytest.raises(ValueError, match="^features: " + weight):
            fit()
    for fit in (lambda: TauNorm(w).fit(None, None, narrow, y),
                lambda: LogitAdjust(w, b, counts=[1] * 4).fit(None, None, narrow, y)):
        with pytest.raises(ValueError, match="^val_features: " + weight):
            fit()
    with pytest.raises(ValueError, match=r"^features: expected 8 columns \(the matrix of class "
                                         r"means is 4 x 8\), found 5$"):
        NCM().fit(x, y).logits(narrow)
    with pytest.raises(ValueError, match=r"^val_features: expected 8 columns \(as the training "
                                         r"features\), found 5$"):
        CRT(epochs=1, select="best_val").fit(x, y, narrow, y)


def test_val_labels_beyond_the_classifier_are_named():
    from longtail.stages.rebalance import LogitAdjust

    x, y, w, b = _misuse_problem()
    message = (r"^val_labels: expected labels below the 2 classes of the classifier, "
               r"found 3$")
    with pytest.raises(ValueError, match=message):
        TauNorm(w[:2]).fit(None, None, x, y)
    with pytest.raises(ValueError, match=message):
        LogitAdjust(w[:2], b[:2], counts=[1, 1]).fit(None, None, x, y)
    with pytest.raises(ValueError, match=message.replace("2 classes", "4 classes")
                       .replace("found 3", "found 5")):
        CRT(4, epochs=1, select="best_val").fit(x, y, x, y + 2)


def test_bias_of_another_length_is_named():
    from longtail.stages.rebalance import WB, LogitAdjust

    x, y, w, b = _misuse_problem()
    message = (r"^bias: expected 4 values \(one per row of the weight, 4 x 8\), found shape "
               r"\(3,\)$")
    for fit in (lambda: Joint(w, b[:3]).fit(), lambda: LWS(w, b[:3], epochs=1).fit(x, y),
                lambda: LogitAdjust(w, b[:3], tau=1.0, counts=[1] * 4).fit(),
                lambda: WB(w, b[:3], epochs=1).fit(x, y)):
        with pytest.raises(ValueError, match=message):
            fit()


def test_empty_features_are_refused_at_fit():
    x, y, w, b = _misuse_problem()
    message = r"^features: expected at least one row, found none \(shape \(0, 8\)\)$"
    for fit in (lambda: NCM().fit(x[:0], y[:0]), lambda: CRT(epochs=1).fit(x[:0], y[:0]),
                lambda: LWS(w, b, epochs=1).fit(x[:0], y[:0])):
        with pytest.raises(ValueError, match=message):
            fit()
    with pytest.raises(ValueError, match="^val_" + message[1:]):
        TauNorm(w).fit(None, None, x[:0], y[:0])
    assert Joint(w, b).fit().logits(x[:0]).shape == (0, 4)  # scoring no rows is fine


def test_cuda_without_cuda_is_refused_when_fit_starts(monkeypatch):
    x, y, w, b = _misuse_problem()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    crt = CRT(epochs=1, device="cuda")  # constructing asks nothing of the machine
    message = r"^device: found 'cuda', but no GPU is available; use cpu$"
    with pytest.raises(ValueError, match=message):
        crt.fit(x, y)
    with pytest.raises(ValueError, match=message.replace("'cuda'", "'cuda:0'")):
        LWS(w, b, epochs=1, device=torch.device("cuda:0")).fit(x, y)
    with pytest.raises(ValueError, match="device: expected cpu, cuda, cuda:N or mps, found 'gpu'"):
        CRT(epochs=1, device="gpu").fit(x, y)
    # a GPU index this machine does not have: named here, not by CUDA at the first tensor
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device: found 'cuda:3', but this machine has 1 "
                                         r"GPU\(s\) \(cuda:0 to cuda:0\)"):
        CRT(epochs=1, device="cuda:3").fit(x, y)
    from longtail.distributed import select_device
    from longtail.errors import LongtailError

    with pytest.raises(LongtailError, match="config key device: found 'cuda:3', but this"):
        select_device("cuda:3")


def test_string_labels_are_refused():
    import numpy as np

    x, y, _, _ = _misuse_problem()
    message = "^labels: expected integer class indices, found strings$"
    for labels in (np.array([f"class_{i}" for i in y.tolist()]), [str(i) for i in y.tolist()],
                   np.array([str(i) for i in y.tolist()], dtype=object)):
        with pytest.raises(TypeError, match=message):
            NCM().fit(x, labels)
    with pytest.raises(TypeError, match=message):
        CRT(epochs=1).fit(x, [b"a"] * len(y))


def test_balms_takes_its_own_learning_rate_or_crts():
    from longtail.config import load_config
    from longtail.stages.rebalance import build_rebalancer

    def lr_of(*overrides: str) -> float:
        cfg = load_config(None, list(overrides)).stage2
        return build_rebalancer("balms", cfg, joint_weight=torch.zeros(3, 4), joint_bias=None,
                                num_classes=3, seed=0).lr

    assert lr_of("stage2.crt.lr=0.3") == 0.3  # null: cRT's
    assert lr_of("stage2.crt.lr=0.3", "stage2.balms.lr=0.05") == 0.05
    demo = Path(__file__).resolve().parents[1] / "configs" / "fmnist_lt.yaml"
    assert load_config(str(demo)).stage2.balms.lr == 0.05  # the demo's, measured


def test_a_fitted_method_keeps_its_own_copy_of_the_weights_it_was_given():
    """TauNorm(fc.weight) shared fc's storage: training fc on afterwards changed the fitted
    method (its tau chosen for the old weights). Joint, LogitAdjust and LWS did the same."""
    x, y = clusters([20, 10, 6, 4])
    fc = torch.nn.Linear(8, 4)
    methods = [TauNorm(fc.weight, tau=1.0), Joint(fc.weight, fc.bias),
               LogitAdjust(fc.weight, fc.bias, tau=1.0), LWS(fc.weight, fc.bias, epochs=1)]
    for method in methods:
        method.fit(x, y)
    before = [method.logits(x) for method in methods]
    with torch.no_grad():
        fc.weight.mul_(-1)
        fc.bias.add_(1)
    for method, logits in zip(methods, before):
        assert torch.equal(method.logits(x), logits), type(method).__name__


def test_a_read_only_array_is_taken_quietly_and_wb_checks_its_weight_first():
    """A memory-mapped (read-only) NumPy array printed torch's 'not writable' warning; WB(None)
    was len()'s TypeError and WB('abc') a message about labels."""
    import warnings

    x, y = clusters([20, 10, 6, 4])
    frozen = x.numpy().copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert NCM().fit(frozen, y).predict(frozen).shape == (40,)
    from longtail.stages.rebalance import WB

    for weight, message in ((None, r"^weight: expected numbers, found NoneType"),
                            ("abc", r"^weight: expected numbers, found strings$")):
        with pytest.raises(TypeError, match=message):
            WB(weight, epochs=1)


def test_sparse_and_meta_tensors_and_devices_are_named():
    """A sparse or meta tensor failed deep inside torch ('Cannot access data pointer',
    'aminmax ... SparseCPU', '.item() cannot be called on meta tensors')."""
    x, y = clusters([20, 10, 6, 4])
    with pytest.raises(TypeError, match=r"^features: expected a dense tensor, found layout "
                                        r"torch.sparse_coo \(pass x.to_dense\(\)\)$"):
        NCM().fit(x.to_sparse(), y)
    with pytest.raises(TypeError, match=r"^features: expected a tensor with data, found one "
                                        r"on the meta device$"):
        CRT(epochs=1).fit(x.to("meta"), y)
    with pytest.raises(ValueError, match=r"^device: expected cpu, cuda, cuda:N or mps, found "
                                         r"'meta'$"):
        CRT(epochs=1, device="meta").fit(x, y)


def test_complex_numbers_and_labels_beyond_int64_are_named():
    """Complex features were cut to their real part (one torch warning a process at most);
    a label of 1e20 or a uint64 of 2^63 + 5 was reported as a negative number."""
    import numpy as np

    x, y = clusters([20, 10, 6, 4])
    with pytest.raises(TypeError, match=r"^features: expected .*, found complex numbers "
                                        r"\(torch.complex64\)$"):
        NCM().fit(x + 1j * x, y)
    with pytest.raises(TypeError, match=r"^labels: expected integer class indices, found "
                                        r"complex numbers"):
        NCM().fit(x, y.numpy() + 2.5j)
    with pytest.raises(ValueError, match=r"^labels: expected labels below 2\^63, found 1e\+20 "
                                         r"in row 0$"):
        NCM().fit(x, np.where(y.numpy() == 0, 1e20, y.numpy()))
    big = y.numpy().astype(np.uint64)
    big[3] = 2**63 + 5
    with pytest.raises(ValueError, match=r"^labels: expected labels below 2\^63, found "
                                         r"9223372036854775813 in row 3$"):
        NCM().fit(x, big)
    assert NCM().fit(x, y.numpy().astype(np.uint64)).predict(x).shape == (40,)  # fine below


def test_val_given_to_a_trained_method_is_checked_even_when_unused():
    """select='best_val' without val kept the last epoch in silence; val of another length,
    or features without labels, passed unseen when select='last' did not read them."""
    x, y = clusters([20, 10, 6, 4])
    with pytest.raises(ValueError, match=r"^select='best_val' needs val_features and "
                                         r"val_labels to choose the epoch \(or select='last'\)$"):
        CRT(epochs=1, select="best_val").fit(x, y)
    with pytest.raises(ValueError, match=r"^val_features and val_labels: expected both or "
                                         r"neither, found one$"):
        LWS(torch.randn(4, x.shape[1]), epochs=1).fit(x, y, x)
    with pytest.raises(ValueError, match=r"^val_labels: expected 40 labels, found shape \(39,\)"):
        CRT(epochs=1).fit(x, y, x, y[:-1])
    with pytest.raises(ValueError, match=r"^val_labels: expected labels below the 4 classes"):
        CRT(epochs=1).fit(x, y, x, y + 1)
    assert CRT(epochs=1).fit(x, y, x, y).val_history_ == []  # given, checked, unused


def test_methods_that_only_count_the_labels_check_them_against_the_features():
    """TauNorm and LogitAdjust read the training labels for their counts only: 10 labels for
    40 features were taken as the class counts."""
    x, y = clusters([20, 10, 6, 4])
    w = torch.randn(4, x.shape[1])
    for method in (TauNorm(w, tau=1.0), LogitAdjust(w, tau=1.0)):
        with pytest.raises(ValueError, match=r"^labels: expected 40 labels, found shape \(10,\)"):
            method.fit(x, y[:10])
        method.fit(None, y)  # labels alone: their counts
