"""Backbones, initial weights and partial freezing."""

import pytest
import torch
import torchvision

from longtail.errors import LongtailError
from longtail.models import BACKBONES, build_backbone, build_model, load_weights

FEATURES = {"resnet10": 512, "resnet18": 512, "resnet50": 2048, "resnet101": 2048,
            "resnet152": 2048, "resnext50_32x4d": 2048, "resnext101_32x4d": 2048,
            "resnext152_32x4d": 2048, "resnet32_cifar": 64}


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_gives_features_of_its_documented_size(name):
    assert set(BACKBONES) == set(FEATURES)
    side = 32 if name == "resnet32_cifar" else 64
    backbone = build_backbone(name).eval()
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, side, side))
    assert out.shape == (2, FEATURES[name]) == (2, backbone.feature_dim)


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d", "resnet152"])
def test_parameter_counts_match_torchvision(name):
    ours = sum(p.numel() for p in build_backbone(name).parameters())
    reference = getattr(torchvision.models, name)()
    theirs = sum(p.numel() for p in reference.parameters()) - reference.fc.weight.numel() \
        - reference.fc.bias.numel()
    assert ours == theirs


def test_resnet32_cifar_is_the_standard_size():
    wide = build_model("resnet32_cifar", 10, 3, 32, width=32)
    assert "model.width=32 does not apply to resnet32_cifar" in wide.weights_note
    assert wide.backbone.feature_dim == 64  # as said: its own widths (was 128, unsaid)
    model = build_model("resnet32_cifar", 10, 3, 32)
    assert model.weights_note == ""
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 0.46


def test_small_stem_only_for_tiny_images_and_width():
    tiny = build_model("resnet10", 10, 1, 12, width=16)
    assert tiny.backbone.conv1.kernel_size == (3, 3) and tiny.backbone.feature_dim == 128
    assert isinstance(tiny.backbone.maxpool, torch.nn.Identity)
    # 28 px: torchvision's stem (measured as accurate at a seventh of the time)
    assert build_model("resnet10", 10, 1, 28, width=16).backbone.conv1.kernel_size == (7, 7)
    assert build_model("resnet10", 10, 1, 28, small_stem=True).backbone.conv1.kernel_size == (3, 3)
    assert build_model("resnet10", 10, 3, 224).backbone.conv1.kernel_size == (7, 7)


def test_torchvision_checkpoint_loads_and_other_classifiers_are_left_out(tmp_path):
    reference = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("resnet18", 365, 3, 224)
    summary = load_weights(model, path)
    assert "classifier left out (1000 classes in the file, 365 here)" in summary
    assert torch.equal(model.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    # Our own checkpoints (backbone.* names, nested under "model") load too, classifier included.
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "ours.pt")
    again = build_model("resnet18", 365, 3, 224)
    load_weights(again, tmp_path / "ours.pt")
    assert torch.equal(again.fc.weight, model.fc.weight)


def test_checkpoint_of_another_architecture_or_feature_size_is_refused(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(LongtailError, match="shape"):
        load_weights(build_model("resnet18", 10, 3, 224, width=32), path)
    with pytest.raises(LongtailError, match="has shape|do not exist|missing"):
        load_weights(build_model("resnet50", 10, 3, 224), path)


def test_pickled_checkpoints_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": torchvision.models.resnet18()}, path)  # a whole module: needs pickle
    with pytest.raises(LongtailError, match="refused to load"):
        load_weights(build_model("resnet18", 10, 3, 224), path)


def test_freeze_trains_only_the_named_modules_and_keeps_frozen_batchnorm_still():
    model = build_model("resnet10", 5, 3, 32)
    trained = model.freeze(["layer4", "fc"])
    assert trained and all(n.startswith(("backbone.layer4.", "fc.")) for n in trained)
    model.train()
    assert not model.backbone.bn1.training and model.backbone.layer4[0].bn1.training
    before = model.backbone.bn1.running_mean.clone()
    model(torch.randn(4, 3, 32, 32))
    assert torch.equal(model.backbone.bn1.running_mean, before)
    with pytest.raises(LongtailError, match="no module 'layer9'"):
        model.freeze(["layer9"])


def test_an_unknown_trainable_module_is_named_before_the_data_is_read(tmp_path, fake_fmnist,
                                                                      monkeypatch, capsys):
    from pathlib import Path

    import longtail.data
    from longtail.cli import main

    def read(*args, **kwargs):
        raise AssertionError("the data was read before model.trainable was checked")

    monkeypatch.setattr(longtail.data, "build_data", read)
    weights = tmp_path / "w.pt"
    torch.save(build_model("resnet10", 10, 1, 28, width=32).state_dict(), weights)
    config = str(Path(__file__).resolve().parents[1] / "configs" / "fmnist_lt.yaml")
    assert main(["run", config, f"data.root={fake_fmnist}", "model.trainable=[fc,layer9]",
                 f"model.weights={weights}", "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.startswith(
        "longtail: error: config key model.trainable: no module 'layer9'; expected names such "
        "as backbone, fc, conv1")
    assert not (tmp_path / "r").exists()


def test_gpu_check_script_runs_on_cpu():
    """bench/gpu_check.py is meant for a GPU; its CPU smoke run keeps it from rotting."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, str(root / "bench" / "gpu_check.py"), "--device", "cpu", "--steps", "1",
         "--batch", "2", "--images", "16"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(root / "src")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "img/s" in result.stdout and "bottleneck:" in result.stdout


def test_config_knows_every_backbone_without_importing_torch():
    from longtail.config import BACKBONE_NAMES

    assert tuple(BACKBONE_NAMES) == tuple(BACKBONES)


def test_narrow_networks_on_cpu_train_in_the_contiguous_layout():
    """oneDNN's backward of a 1x1 stride-2 convolution of 8 channels in channels_last crashed
    the process (torch 2.14, model.width=8 at 224 px); such networks take the contiguous
    layout on a CPU, wider ones channels_last."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    cpu = torch.device("cpu")
    assert build_model("resnet10", 10, 3, 224, width=8).layout(cpu) == torch.contiguous_format
    assert build_model("resnet10", 10, 3, 224, width=16).layout(cpu) == torch.channels_last
    assert build_model("resnet10", 10, 3, 224, width=8).layout(
        torch.device("cuda")) == torch.channels_last
    code = ("import torch\nfrom longtail.models import build_model\n"
            "m = build_model('resnet10', 10, 3, 224, width=8)\n"
            "layout = m.layout(torch.device('cpu'))\nm.to(memory_format=layout)\n"
            "for _ in range(3):\n"
            "    m(torch.randn(2, 3, 224, 224).contiguous(memory_format=layout)).sum().backward()\n"
            "print('ok')\n")
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(root / "src"),
                                              "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr[-500:]


def test_weights_with_nan_or_without_a_classifier_for_a_run_of_no_epochs(tmp_path, capsys):
    """A NaN in the file ended in 'loss is nan ... lower the learning rate'; weights without
    this data's classifier and stage1.epochs=0 reported fc's random start as `joint` (and
    tau-norm, LWS, ... built on it), exit 0."""
    from pathlib import Path

    from longtail.cli import main
    from tests.conftest import make_fake_fmnist

    state = build_model("resnet10", 10, 1, 28, width=8).state_dict()
    broken = dict(state)
    broken["backbone.conv1.weight"] = broken["backbone.conv1.weight"].clone()
    broken["backbone.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(broken, tmp_path / "nan.pt")
    with pytest.raises(LongtailError, match=r"nan\.pt: tensor backbone\.conv1\.weight holds NaN "
                                            r"or infinity; the file is damaged"):
        load_weights(build_model("resnet10", 10, 1, 28, width=8), tmp_path / "nan.pt")
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, tmp_path / "nofc.pt")
    model = build_model("resnet10", 10, 1, 28, width=8)
    assert load_weights(model, tmp_path / "nofc.pt").endswith(
        "; no classifier in the file (it starts fresh)") and not model.classifier_loaded
    assert build_model("resnet10", 10, 1, 28, width=8,
                       weights=tmp_path / "nofc.pt").classifier_loaded \
        is False
    torch.save(state, tmp_path / "full.pt")
    assert build_model("resnet10", 10, 1, 28, width=8, weights=tmp_path / "full.pt") \
        .classifier_loaded
    root = make_fake_fmnist(tmp_path / "f")
    config = str(Path(__file__).resolve().parents[1] / "configs" / "fmnist_lt.yaml")
    assert main(["run", config, f"data.root={root}", "data.n_max=40", "data.n_min=4",
                 "data.val_per_class=4", "model.width=8", "stage1.epochs=0",
                 f"model.weights={tmp_path / 'nofc.pt'}", "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "has none for these 10 classes; train it: stage1.epochs >= 1 (with "
        "model.trainable=[fc], the classifier alone)")
    assert not (tmp_path / "r").exists()
