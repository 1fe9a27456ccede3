"""The long-tail losses, mixup, and the new stage-2 methods on small data with known answers."""

import math

import pytest
import torch
import torch.nn.functional as F

from longtail.losses import (
    ClassifierLoss,
    class_balanced_weights,
    las_epsilons,
    log_prior,
)
from longtail.stages.rebalance import LAS, WB, Joint, LogitAdjust


def _batch(seed=0, n=32, c=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * 3, torch.randint(0, c, (n,), generator=g)


def test_balanced_softmax_with_equal_counts_is_cross_entropy():
    logits, labels = _batch()
    loss = ClassifierLoss.build([7] * 6, "balanced_softmax")
    torch.testing.assert_close(loss(logits, labels), F.cross_entropy(logits, labels))


def test_balanced_softmax_is_logit_adjusted_at_tau_one():
    logits, labels = _batch(1)
    counts = [500, 120, 40, 9, 3, 1]
    bs = ClassifierLoss.build(counts, "balanced_softmax")(logits, labels)
    la = ClassifierLoss.build(counts, "logit_adjusted", tau=1.0)(logits, labels)
    torch.testing.assert_close(bs, la)
    # and the shift is by log n: the head class's logit grows most
    expected = F.cross_entropy(logits + torch.tensor(counts).float().log(), labels)
    torch.testing.assert_close(bs, expected)


def test_logit_adjusted_loss_at_tau_zero_is_cross_entropy():
    logits, labels = _batch(2)
    loss = ClassifierLoss.build([500, 120, 40, 9, 3, 1], "logit_adjusted", tau=0.0)
    torch.testing.assert_close(loss(logits, labels), F.cross_entropy(logits, labels))


def test_bfloat16_logits_get_the_offset_in_float32():
    # Under autocast the logits are bfloat16; the prior offset (log n, up to ~6 here) must not
    # be rounded to bfloat16 before it is added.
    logits, labels = _batch(3)
    low = logits.bfloat16()
    counts = [5003, 1201, 407, 93, 31, 7]
    loss = ClassifierLoss.build(counts, "balanced_softmax")(low, labels)
    exact = F.cross_entropy(low.float() + torch.tensor(counts).double().log().float(), labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, exact, rtol=1e-6, atol=1e-6)


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="expected one of ce, logit_adjusted"):
        ClassifierLoss.build([1, 2], "focal")


@pytest.mark.parametrize("offset,smoothing,weight", [
    (True, False, False), (False, True, False), (False, False, True), (True, True, True)])
def test_written_out_gradient_equals_autograd(offset, smoothing, weight):
    logits, labels = _batch(3)
    counts = torch.tensor([500, 120, 40, 9, 3, 1])
    loss = ClassifierLoss(log_prior(counts) if offset else None,
                          las_epsilons(counts, 0.3, 0.0) if smoothing else None,
                          class_balanced_weights(counts) if weight else None)
    z = logits.clone().requires_grad_(True)
    value = loss(z, labels)
    value.backward()
    fast_value, fast_grad = loss.value_and_grad(logits, labels)
    torch.testing.assert_close(fast_value, value.detach())
    torch.testing.assert_close(fast_grad, z.grad)


def test_smoothing_and_weights_match_torch_cross_entropy():
    logits, labels = _batch(4)
    eps = torch.full((6,), 0.1)
    torch.testing.assert_close(ClassifierLoss(smoothing=eps)(logits, labels),
                               F.cross_entropy(logits, labels, label_smoothing=0.1))
    w = torch.rand(6, generator=torch.Generator().manual_seed(0)) + 0.5
    torch.testing.assert_close(ClassifierLoss(weight=w)(logits, labels),
                               F.cross_entropy(logits, labels, weight=w))


def test_las_epsilons_run_from_head_to_tail():
    eps = las_epsilons([1000, 100, 10, 1], head=0.3, tail=0.0)
    assert eps[0] == pytest.approx(0.3) and eps[-1] == pytest.approx(0.0)
    assert eps[1] == pytest.approx(0.3 * math.sin(math.pi / 2 * 99 / 999))
    assert (eps[:-1] >= eps[1:]).all()
    assert las_epsilons([5, 5], 0.3, 0.0).tolist() == pytest.approx([0.3, 0.3])


def test_class_balanced_weights():
    w = class_balanced_weights([1000, 10], beta=0.999999)
    assert w.sum() == pytest.approx(2.0)
    assert w[1] / w[0] == pytest.approx(100, rel=1e-3)  # beta -> 1: inverse frequency
    assert class_balanced_weights([1000, 10], beta=0.0).tolist() == [1.0, 1.0]


def _linear_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.tensor([200, 80, 30, 10, 4])
    y = torch.arange(5).repeat_interleave(counts)
    x = torch.randn(len(y), 8, generator=g) * 0.8 + torch.eye(5, 8)[y] * 2
    w, b = torch.randn(5, 8, generator=g), torch.randn(5, generator=g)
    return x, y, w, b, counts


def test_logit_adjust_tau_zero_gives_the_joint_logits():
    x, y, w, b, counts = _linear_problem()
    la = LogitAdjust(w, b, tau=0.0, counts=counts).fit()
    torch.testing.assert_close(la.logits(x), Joint(w, b).fit().logits(x))


def test_logit_adjust_uniform_prior_is_a_no_op():
    x, y, w, b, _ = _linear_problem()
    la = LogitAdjust(w, b, tau=1.0, counts=[9] * 5).fit()
    joint = Joint(w, b).fit()
    torch.testing.assert_close(torch.softmax(la.logits(x), 1), torch.softmax(joint.logits(x), 1))
    assert torch.equal(la.predict(x), joint.predict(x))


def test_logit_adjust_subtracts_tau_log_prior_and_chooses_tau_on_val():
    x, y, w, b, counts = _linear_problem()
    la = LogitAdjust(w, b, tau=0.5, counts=counts).fit()
    torch.testing.assert_close(la.logits(x), x @ w.T + b - 0.5 * log_prior(counts))
    xv, yv = x[::3], y[::3]
    chosen = LogitAdjust(w, b, grid=[0.0, 0.5, 1.0, 1.5], counts=counts).fit(
        x, y, xv, yv)
    assert list(chosen.val_scores_) == [0.0, 0.5, 1.0, 1.5]
    assert chosen.tau_ == max(chosen.val_scores_, key=chosen.val_scores_.get)
    # the prior may come from the training labels instead of counts
    from_labels = LogitAdjust(w, b, tau=1.0).fit(x, y)
    torch.testing.assert_close(from_labels.logits(x), LogitAdjust(w, b, tau=1.0,
                                                                 counts=counts).fit().logits(x))


def test_max_norm_leaves_no_class_norm_above_the_threshold():
    x, y, w, b, counts = _linear_problem()
    joint = w * torch.tensor([6.0, 3.0, 1.0, 0.5, 0.2]).unsqueeze(1)  # head norms far above
    wb = WB(joint, b, max_norm=1.5, epochs=3, lr=0.5, batch_size=32).fit(x, y)
    norms = wb.weight_.norm(dim=1)
    assert (norms <= 1.5 + 1e-5).all()
    assert norms.max() == pytest.approx(1.5, rel=1e-4)  # the ball is reached, not undershot
    # null radius: the mean norm of the joint classifier's class vectors
    default = WB(joint, b, epochs=1, batch_size=32).fit(x, y)
    assert default.max_norm_ == pytest.approx(joint.norm(dim=1).mean().item())
    assert (default.weight_.norm(dim=1) <= default.max_norm_ + 1e-5).all()


def test_las_lowers_confidence_of_head_classes():
    x, y, w, b, counts = _linear_problem()
    from longtail.stages.rebalance import CRT

    plain = CRT(5, epochs=5, lr=0.2, batch_size=32).fit(x, y)
    las = LAS(5, epochs=5, lr=0.2, batch_size=32, las_head=0.5, las_tail=0.0).fit(x, y)
    head = y == 0
    conf = lambda m: torch.softmax(m.logits(x[head]), 1).max(1).values.mean()  # noqa: E731
    assert conf(las) < conf(plain) - 0.05


def test_mixup_is_seeded_and_convex():
    from longtail.stages.joint import mixup

    images = torch.randn(8, 1, 4, 4)
    a, perm_a, lam_a = mixup(images.clone(), 0.2, seed=7)
    b, perm_b, lam_b = mixup(images.clone(), 0.2, seed=7)
    assert torch.equal(a, b) and torch.equal(perm_a, perm_b) and lam_a == lam_b
    assert 0 <= lam_a <= 1
    torch.testing.assert_close(a, lam_a * images + (1 - lam_a) * images[perm_a])
    assert sorted(perm_a.tolist()) == list(range(8))
    _, _, lam_c = mixup(images.clone(), 0.2, seed=8)
    assert lam_c != lam_a
