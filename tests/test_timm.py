"""timm backbones (model.name: timm/NAME): two families end to end, weights from files, and
one-line answers for names, image sizes and pretrained weights that cannot be had."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from longtail.cli import main
from longtail.config import FEATURE_METHODS
from longtail.errors import LongtailError
from longtail.models import build_model
from tests.conftest import make_fake_fmnist

timm = pytest.importorskip("timm")
ROOT = Path(__file__).resolve().parents[1]
FMNIST = str(ROOT / "configs" / "fmnist_lt.yaml")
TINY = ["data.n_max=40", "data.n_min=2", "data.val_per_class=3", "data.image_size=32",
        "stage1.epochs=1", "stage1.batch_size=32", "stage2.batch_size=32",
        "stage2.crt.epochs=2", "stage2.lws.epochs=1", "stage1.min_steps=1",
        "stage2.min_steps=1"]  # the batches as given: fast


@pytest.mark.parametrize("name", ["test_convnext", "test_vit"])
def test_timm_convnext_and_vit_run_end_to_end(tmp_path, name, capsys):
    root = make_fake_fmnist(tmp_path / "f", train_per_class=60, test_per_class=4)
    out = tmp_path / "run"
    assert main(["run", FMNIST, f"data.root={root}", f"model.name=timm/{name}", *TINY,
                 "--out", str(out)]) == 0
    assert f"stage 1: timm/{name} (64-d features" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["methods"]) == set(FEATURE_METHODS)
    state = torch.load(out / "stage1" / "last.pt", weights_only=True)["model"]
    assert state["fc.weight"].shape == (10, 64)


def test_timm_weights_from_timm_safetensors_and_longtail_files(tmp_path):
    source = timm.create_model("test_vit")  # 160 px, 3 channels, 1000 classes
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    from safetensors.torch import save_file

    save_file(source.state_dict(), str(tmp_path / "vit.safetensors"))
    for path in (tmp_path / "vit.pth", tmp_path / "vit.safetensors"):
        # 32 px and grayscale: timm resamples the position embeddings and sums the stem
        model = build_model("timm/test_vit", 10, 1, 32, weights=path)
        assert "classifier left out" in model.weights_note
        assert torch.equal(model.backbone.blocks[0].attn.qkv.weight,
                           source.blocks[0].attn.qkv.weight)
        assert model.backbone.pos_embed.shape[1] == 1 + 4  # class token + 2x2 patches
    torch.save({"model": model.state_dict()}, tmp_path / "ours.pt")
    again = build_model("timm/test_vit", 10, 1, 32, weights=tmp_path / "ours.pt")
    assert again.weights_note.startswith("loaded") and torch.equal(
        again.fc.weight, model.fc.weight)
    torch.save(timm.create_model("test_convnext").state_dict(), tmp_path / "convnext.pth")
    with pytest.raises(LongtailError, match="does not fit model.name timm/test_vit: Missing"):
        build_model("timm/test_vit", 10, 3, 32, weights=tmp_path / "convnext.pth")


def test_unknown_timm_name_suggests_close_matches(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", FMNIST, "model.name=timm/convnext_ato", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("longtail: error: config key model.name: timm has no model 'convnext_ato'; "
                   "did you mean timm/convnext_atto, timm/convnextv2_atto, timm/convnext_nano?")
    assert not out.exists()


def test_image_too_small_for_the_model_says_which_size_to_use(tmp_path, capsys):
    root = make_fake_fmnist(tmp_path / "f", train_per_class=30, test_per_class=2)
    out = tmp_path / "run"
    for name, reason in (("test_convnext", "it needs at least 32 px, its total stride"),
                         ("test_vit", "should be divisible by patch size (16)")):
        assert main(["run", FMNIST, f"data.root={root}", f"model.name=timm/{name}",
                     "data.n_max=20", "data.val_per_class=2", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and reason in err[0] and "set data.image_size=32" in err[0], err
        assert not out.exists()


def test_pretrained_without_network_says_where_to_put_the_file(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    out = tmp_path / "run"
    assert main(["run", FMNIST, "model.name=timm/test_vit", "model.pretrained=true",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.pretrained: cannot download the weights of timm/test_vit" \
        in err[0] and "https://huggingface.co/timm/test_vit.r160_in1k" in err[0] \
        and "model.weights=FILE" in err[0], err
    assert not out.exists()


def test_embed_timm_example_then_longtail_run(tmp_path, capsys):
    """examples/embed_timm.py on a list dataset with a tiny random model, then a features run
    on what it wrote: the recipe of the README cannot rot."""
    import subprocess
    import sys

    from tests.conftest import make_image_list_dataset

    lists = make_image_list_dataset(tmp_path / "d", counts=[12, 6, 3], size=16)
    (tmp_path / "names.txt").write_text("cat\ndog\nowl\n")
    torch.save(timm.create_model("test_convnext").state_dict(), tmp_path / "w.pth")
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "embed_timm.py"), "--model", "test_convnext",
         "--weights", str(tmp_path / "w.pth"), "--root", str(tmp_path / "d"),
         "--train", str(lists["train"]), "--val", str(lists["val"]), "--test",
         str(lists["test"]), "--class-names", str(tmp_path / "names.txt"), "--format",
         "safetensors", "--out", str(tmp_path / "feats")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "train.safetensors: (21, 64)" in result.stdout
    out = tmp_path / "run"
    assert main(["run", str(tmp_path / "feats" / "config.yaml"), "stage1.epochs=5",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"]["train_counts"] == [12, 6, 3]
    assert "owl" in (out / "per_class.csv").read_text()
