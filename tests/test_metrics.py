import math

import pytest
import torch

from longtail.metrics import balanced_accuracy, evaluate, group_accuracy, per_class_accuracy


def test_per_class_accuracy_and_groups():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 2])
    preds = torch.tensor([0, 0, 1, 0, 0, 0, 0, 2])
    acc = per_class_accuracy(preds, labels, 4)
    assert acc[:3] == [100.0, 50.0, 25.0]
    assert math.isnan(acc[3])  # no test images
    result = evaluate(preds, labels, group_counts=[500, 50, 5, 200])
    assert result["top1"] == 50.0  # over images, not classes
    assert result["many"] == 100.0  # class 3 has no test images: left out of the mean
    assert result["medium"] == 50.0
    assert result["few"] == 25.0


def test_evaluate_takes_numpy_and_any_integer_type_and_names_a_misfit():
    import numpy as np

    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 2])
    preds = torch.tensor([0, 0, 1, 0, 0, 0, 0, 2])
    scores = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    expected = evaluate(preds, labels, [500, 50, 5, 200], scores=scores)
    for convert in (lambda t: t.numpy(), lambda t: t.to(torch.uint8), lambda t: t.int(),
                    lambda t: t.tolist()):
        got = evaluate(convert(preds), convert(labels), np.array([500, 50, 5, 200]),
                       scores=scores.numpy())
        assert {k: v for k, v in got.items() if k != "per_class"} == {
            k: v for k, v in expected.items() if k != "per_class"}
    for args, message in (
            ((preds, labels, [500, 50]), r"^labels: expected labels below the 2 classes of "
                                         r"group_counts, found 2$"),
            ((preds[:3], labels, [5] * 4), r"^predictions: expected 8 labels, found shape"),
            ((preds, labels, []), r"^group_counts: expected one training count per class"),
            ((preds, labels, [5] * 4, 100, 20, scores[:, :3]),
             r"^scores: expected shape \(8, 4\) \(a score per label and class\), found "
             r"\(8, 3\)$")):
        with pytest.raises(ValueError, match=message):
            evaluate(*args)


def test_empty_group_is_none_not_zero():
    labels = torch.tensor([0, 1])
    result = evaluate(labels, labels, group_counts=[1000, 500])
    assert result["medium"] is None and result["few"] is None
    assert group_accuracy([10.0, 20.0], []) is None


def test_top1_is_exact_in_float64():
    """4 of 5 right is 80.0 exactly, not float32's 80.0000011920929."""
    labels = torch.arange(5)
    preds = torch.tensor([0, 1, 2, 3, 0])
    assert evaluate(preds, labels, group_counts=[200] * 5)["top1"] == 80.0


def test_ece_of_a_perfectly_calibrated_toy_is_zero():
    """Confidence 0.75 on every image and 75% of them right: ECE 0; NLL is -log of the
    probability given to the true class."""
    from longtail.metrics import calibration

    p = torch.tensor([0.75, 0.25])
    scores = p.log().repeat(12, 1)
    labels = torch.tensor([0] * 9 + [1] * 3)
    result = calibration(scores, labels)
    assert result["ece"] == pytest.approx(0.0, abs=1e-4)
    assert result["nll"] == pytest.approx(-(9 * math.log(0.75) + 3 * math.log(0.25)) / 12)
    bins = result["reliability"]
    assert bins["count"][11] == 12 and sum(bins["count"]) == 12  # 0.75 is in (11/15, 12/15]
    assert bins["confidence"][11] == pytest.approx(0.75) and bins["accuracy"][11] == 0.75
    assert bins["accuracy"][0] is None


def test_ece_of_an_overconfident_toy_and_agreement_with_torchmetrics():
    from longtail.metrics import calibration

    scores = torch.tensor([[10.0, 0.0]] * 10)  # confidence ~1.0
    labels = torch.tensor([0] * 6 + [1] * 4)
    assert calibration(scores, labels)["ece"] == pytest.approx(40.0, abs=0.01)
    g = torch.Generator().manual_seed(0)
    scores, labels = torch.randn(500, 7, generator=g) * 2, torch.randint(0, 7, (500,),
                                                                            generator=g)
    result = calibration(scores, labels)
    # the same number as torchmetrics' ECE (the reference implementation; a test dependency)
    from torchmetrics.functional.classification import multiclass_calibration_error

    reference = multiclass_calibration_error(torch.softmax(scores, 1), labels, num_classes=7,
                                             n_bins=15, norm="l1")
    assert result["ece"] == pytest.approx(100 * float(reference), abs=1e-3)
    assert sum(result["reliability"]["count"]) == 500


def test_balanced_accuracy_is_the_mean_per_class_accuracy():
    labels = torch.tensor([0, 0, 0, 0, 1, 2])
    predictions = torch.tensor([0, 0, 0, 0, 0, 2])  # class 0: 100%, 1: 0%, 2: 100%
    result = evaluate(predictions, labels, group_counts=[100, 10, 1])
    assert result["top1"] == pytest.approx(500 / 6)
    assert result["balanced_accuracy"] == pytest.approx(200 / 3)
    # the fraction, of one column or of each column of many (classes absent: left out)
    labels = torch.tensor([0, 0, 0, 0, 2])
    correct = torch.tensor([[1, 0], [1, 0], [0, 0], [0, 1], [1, 1]], dtype=torch.bool)
    assert balanced_accuracy(correct[:, 0], labels).item() == pytest.approx(0.75)
    both = balanced_accuracy(correct, labels)
    assert both.tolist() == [balanced_accuracy(c, labels).item() for c in correct.T]
    assert both.tolist() == pytest.approx([0.75, 0.625])
