import math

import torch

from longtail.metrics import evaluate, group_accuracy, per_class_accuracy


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
