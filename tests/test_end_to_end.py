"""Tiny end-to-end runs through the CLI: metrics.json, config.yaml, report and features."""

import json
import re
from pathlib import Path

import pytest
import yaml

from longtail.cli import main
from longtail.config import config_from_dict
from longtail.models.backbones import Backbone
from tests.conftest import make_image_list_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = ["stage1.epochs=2", "stage1.batch_size=32", "stage1.lr=0.05", "model.width=8",
        "stage2.batch_size=32", "stage2.crt.epochs=3", "stage2.lws.epochs=2",
        "eval.batch_size=256", "stage1.min_steps=1", "stage2.min_steps=1"]  # batches as given


def check_metrics(run_dir: Path, num_classes: int, methods=None) -> dict:
    """Check metrics.json of a run; ``methods``: those expected, default config.yaml's."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if methods is None:
        methods = yaml.safe_load((run_dir / "config.yaml").read_text())["stage2"]["methods"]
    dataset = metrics["dataset"]
    assert dataset["num_classes"] == num_classes and len(dataset["train_counts"]) == num_classes
    assert len(dataset["group_counts"]) == num_classes
    assert sorted(sum(dataset["shot_groups"].values(), [])) == list(range(num_classes))
    assert list(metrics["methods"]) == list(methods)
    for name, m in metrics["methods"].items():
        assert 0 <= m["top1"] <= 100, name
        assert 0 <= m["ece"] <= 100 and m["nll"] > 0 and 0 <= m["balanced_accuracy"] <= 100
        assert len(m["reliability"]["count"]) == 15, name
        assert len(m["per_class"]) == num_classes
        for group in ("many", "medium", "few"):
            assert m[group] is None or 0 <= m[group] <= 100
            assert (m[group] is None) == (not dataset["shot_groups"][group])
    # every method's reliability bins hold every test image once
    assert len({sum(m["reliability"]["count"]) for m in metrics["methods"].values()}) == 1
    assert 0 <= metrics["methods"]["tau_norm"]["tau"] <= 2
    config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    for name in ("per_class.csv", "report.md", "manifest.json", "stage1/last.pt",
                 "features/train.pt", "features/val.pt", "features/test.pt",
                 "plots/weight_norms.png", "stage2/crt.pt", "logs/scalars.jsonl"):
        assert (run_dir / name).is_file(), name
    return metrics


def test_tiny_fmnist_run_writes_valid_metrics(fake_fmnist, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", str(ROOT / "configs" / "fmnist_lt.yaml"), f"data.root={fake_fmnist}",
                 "data.n_max=60", "data.n_min=2", "data.val_per_class=5", *TINY,
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "shot groups by training count" in printed and "Ankle boot" in printed
    assert "tau_norm" in printed and "method" in printed
    # what data.image_size: null, data.hflip: null and model.small_stem: null resolved to
    assert "7x7 stem), " in printed and "; input 28 px, flips off\n" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"] == {"image_size": 28, "channels": 1, "hflip": False,
                                 "mean": [0.2860], "std": [0.3530], "in_memory": True,
                                 "num_workers": 0}
    # how long each part took, said on the last line and kept
    seconds = manifest["seconds"]
    assert list(seconds) == ["data", "stage_1", "features", "stage_2_and_report", "total"]
    assert all(v >= 0 for v in seconds.values())
    assert sum(seconds.values()) - seconds["total"] <= seconds["total"] + 0.05
    assert re.fullmatch(r"done in [\d.]+ s \(data [\d.]+ s, stage 1 [\d.]+ s, features "
                        r"[\d.]+ s, stage 2 and report [\d.]+ s\)",
                        printed.rstrip().splitlines()[-1])
    metrics = check_metrics(out, 10)
    assert sorted(metrics["dataset"]["train_counts"], reverse=True)[0] == 60
    # An existing run directory is never overwritten unless asked.
    assert main(["run", str(ROOT / "configs" / "fmnist_lt.yaml"), f"data.root={fake_fmnist}",
                 "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_list_run_needs_only_root_and_lists(tmp_path, monkeypatch):
    root = tmp_path / "data"
    files = make_image_list_dataset(root, counts=[150, 60, 25, 12, 4], size=20)
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    code = main(["run", str(ROOT / "configs" / "fmnist_lt.yaml"), "data.kind=list",
                 f"data.root={root}", f"data.train={files['train']}",
                 f"data.val={files['val']}", f"data.test={files['test']}", *TINY,
                 "--out", str(out)])
    assert code == 0
    metrics = check_metrics(out, 5)
    assert metrics["dataset"]["train_counts"] == [150, 60, 25, 12, 4]
    assert metrics["dataset"]["shot_groups"] == {"many": [0], "medium": [1, 2], "few": [3, 4]}


def test_rebalance_reruns_stage2_without_the_backbone(fake_fmnist, tmp_path, monkeypatch,
                                                      capsys):
    out = tmp_path / "run"
    assert main(["run", str(ROOT / "configs" / "fmnist_lt.yaml"), f"data.root={fake_fmnist}",
                 "data.n_max=60", "data.n_min=2", "data.val_per_class=5", *TINY,
                 "stage2.methods=[joint,crt]", "--out", str(out)]) == 0

    def no_backbone(*args, **kwargs):
        raise AssertionError("stage 2 ran the backbone")

    monkeypatch.setattr(Backbone, "forward", no_backbone)
    assert main(["rebalance", str(out), "stage2.methods=[joint,tau_norm,lws,ncm_cosine]",
                 "stage2.tau_norm.tau=0.5"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # the methods fitted now and the earlier ones not re-fitted (kept, not lost), in the
    # order of the method list
    assert list(metrics["methods"]) == ["joint", "ncm_cosine", "crt", "tau_norm", "lws"]
    assert metrics["methods"]["tau_norm"]["tau"] == 0.5
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rebalanced"][-1]["kept"] == ["crt"]
    # config.yaml lists every method metrics.json holds: a later rebalance (or extract) covers
    # them all, with the settings config.yaml records.
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["stage2"]["methods"] == list(metrics["methods"])
    capsys.readouterr()
    assert main(["rebalance", str(out), "stage2.tau_norm.tau=0.25"]) == 0
    printed = capsys.readouterr().out
    # only tau-norm's settings changed: the other four fits are reused
    assert re.findall(r"\n  ([a-z_]+) +fitted in", printed) == ["tau_norm"]
    assert len(re.findall(r"\n  [a-z_]+ +reused in", printed)) == 4
    assert json.loads((out / "metrics.json").read_text())["methods"]["tau_norm"]["tau"] == 0.25
    assert main(["rebalance", str(out), "stage1.epochs=3"]) == 2


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_lt_profile(tmp_path):
    from longtail.config import load_config
    from longtail.data import build_data

    data = build_data(load_config(ROOT / "configs" / "fmnist_lt.yaml").data, seed=0)
    assert sorted(data.train_counts, reverse=True) == [1280, 691, 373, 202, 109, 59, 32, 17, 9, 5]
    assert len(data.val) == 200 and len(data.test) == 10000


def test_grid_runs_each_sampler_and_writes_grid_json(fake_fmnist, tmp_path, capsys):
    out = tmp_path / "grid"
    code = main(["grid", str(ROOT / "configs" / "fmnist_lt.yaml"), f"data.root={fake_fmnist}",
                 "data.n_max=60", "data.n_min=2", "data.val_per_class=5", *TINY,
                 "stage1.epochs=1", "stage2.methods=[joint,crt,tau_norm]",
                 "--samplers", "instance,class,0.5", "--out", str(out)])
    assert code == 0
    grid = json.loads((out / "grid.json").read_text())
    assert list(grid) == ["instance", "class", "0.5"]
    for methods in grid.values():
        assert list(methods) == ["joint", "crt", "tau_norm"]
    for sampler in grid:
        assert yaml.safe_load((out / sampler / "config.yaml").read_text())["stage1"][
            "sampler"] in ("instance", "class", 0.5)
        seconds = json.loads((out / sampler / "manifest.json").read_text())["seconds"]
        assert list(seconds) == ["stage_1", "features", "stage_2_and_report", "total"]
    table = (out / "grid.md").read_text().splitlines()
    assert table[0] == "| stage-1 variant | joint | crt | tau_norm |"
    assert len(table) == 5 and " / " in table[2]
    assert "grid: top-1 / Few-shot" in capsys.readouterr().out
    # the folder taken: overwrite or choose another (a grid has no --resume to offer)
    assert main(["grid", str(ROOT / "configs" / "fmnist_lt.yaml"), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"longtail: error: --out {out}: folder exists and is not empty; pass --overwrite to "
        f"replace its files or choose another --out\n")


def test_a_stopped_grid_says_which_rows_finished(fake_fmnist, tmp_path, capsys, monkeypatch):
    import longtail.pipeline as pipeline

    calls = []

    def fake_run(cfg, data, run_dir, *args, **kwargs):  # the first row finishes, then Ctrl-C
        calls.append(run_dir.name)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return {"methods": {"joint": {"top1": 50.0, "few": 10.0}}}

    monkeypatch.setattr(pipeline, "_run", fake_run)
    out = tmp_path / "grid"
    code = main(["grid", str(ROOT / "configs" / "fmnist_lt.yaml"), f"data.root={fake_fmnist}",
                 "data.n_max=60", "data.n_min=2", "data.val_per_class=5",
                 "--samplers", "instance,class", "--out", str(out)])
    assert code == 130 and calls == ["instance", "class"]
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"longtail: interrupted; {out}/grid.json holds the finished rows (instance); the grid "
        f"starts again with the same command and --overwrite")
    assert list(json.loads((out / "grid.json").read_text())) == ["instance"]


def test_a_grid_row_that_fails_before_its_first_checkpoint_leaves_no_folder(
        fake_fmnist, tmp_path, capsys, monkeypatch):
    """Its config, dataset and manifest stayed, and the same grid command, run again with a
    fixed setting, was refused ('folder exists and is not empty')."""
    from longtail.stages import joint

    def broken(*args, **kwargs):
        raise joint.LongtailError("stage 1: loss is nan at epoch 1, step 6")

    args = ["grid", str(ROOT / "configs" / "fmnist_lt.yaml"), f"data.root={fake_fmnist}",
            "data.n_max=60", "data.n_min=2", "data.val_per_class=5", *TINY, "stage1.epochs=1",
            "stage2.methods=[joint]", "--samplers", "instance,class", "--out",
            str(tmp_path / "grid")]
    monkeypatch.setattr("longtail.stages.joint.train_joint", broken)
    assert main(args) == 2
    assert "loss is nan" in capsys.readouterr().err
    assert list((tmp_path / "grid").iterdir()) == []
    monkeypatch.undo()
    assert main(args) == 0  # the same command, no --overwrite needed
    assert sorted(p.name for p in (tmp_path / "grid").iterdir()) == [
        "class", "grid.json", "grid.md", "instance"]


def test_grid_losses_with_mixup_and_every_method(fake_fmnist, tmp_path, capsys):
    """grid --losses runs stage 1 once per loss (here with mixup) and stage2.methods=all fits
    every method on features, each with calibration figures and a reliability diagram."""
    from longtail.config import FEATURE_METHODS

    out = tmp_path / "grid"
    code = main(["grid", str(ROOT / "configs" / "fmnist_lt.yaml"), f"data.root={fake_fmnist}",
                 "data.n_max=60", "data.n_min=2", "data.val_per_class=5", *TINY,
                 "stage1.epochs=1", "stage1.mixup_alpha=0.2", "stage2.methods=all",
                 "stage2.wb.epochs=2", "--losses", "ce,logit_adjusted", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    grid = json.loads((out / "grid.json").read_text())
    assert list(grid) == ["instance-ce", "instance-logit_adjusted"]
    for row in grid:
        config = yaml.safe_load((out / row / "config.yaml").read_text())
        assert config["stage1"]["loss"] == row.split("-")[1]
        assert config["stage2"]["methods"] == list(FEATURE_METHODS)
        check_metrics(out / row, 10, FEATURE_METHODS)
        assert (out / row / "plots" / "reliability.png").stat().st_size > 1000
        assert "reliability.png" in (out / row / "report.md").read_text()


def test_grid_rejects_unknown_samplers(capsys):
    assert main(["grid", str(ROOT / "configs" / "fmnist_lt.yaml"), "--samplers",
                 "instance,balanced"]) == 2
    assert "--samplers balanced" in capsys.readouterr().err
    assert main(["grid", str(ROOT / "configs" / "fmnist_lt.yaml"), "--losses",
                 "ce,focal"]) == 2
    assert "--losses focal: expected one of ce, logit_adjusted" in capsys.readouterr().err


def test_run_on_a_generated_image_folder(tmp_path):
    from tests.conftest import make_image_folder

    root = make_image_folder(tmp_path / "folder", per_class=[40] * 4, size=20)
    out = tmp_path / "run"
    assert main(["run", str(ROOT / "configs" / "fmnist_lt.yaml"), "data.kind=image_folder",
                 f"data.root={root}", "data.n_max=30", "data.n_min=3", "data.val_per_class=3",
                 "data.test_per_class=5", *TINY, "--out", str(out)]) == 0
    metrics = check_metrics(out, 4)
    assert sorted(metrics["dataset"]["train_counts"], reverse=True) == [30, 14, 6, 3]


def test_run_on_a_cifar_fixture_with_resnet32(tmp_path):
    from tests.conftest import make_fake_cifar

    root = make_fake_cifar(tmp_path / "cifar", "cifar10_lt", train_per_class=30)
    out = tmp_path / "run"
    assert main(["run", str(ROOT / "configs" / "cifar10_lt_resnet32.yaml"), f"data.root={root}",
                 "data.imbalance_ratio=10", "data.val_per_class=2", "stage1.epochs=1",
                 "stage1.warmup_epochs=0", "stage1.batch_size=32", "stage2.crt.epochs=2",
                 "stage2.lws.epochs=1", "--out", str(out)]) == 0
    metrics = check_metrics(out, 10)
    # Cao et al.'s recipe: 32 px with crop and flips (data.hflip: null would leave them off)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["input"]["image_size"], manifest["input"]["hflip"]) == (32, True)
    # the head class gives its 2 val images out of training; groups use the counts before
    assert metrics["dataset"]["train_counts"] == [28, 23, 17, 13, 10, 8, 6, 5, 3, 3]
    assert metrics["dataset"]["group_counts"] == [30, 23, 17, 13, 10, 8, 6, 5, 3, 3]


def test_torchrun_two_processes_on_cpu(tmp_path):
    """DistributedDataParallel over Gloo: sharded sampling and feature extraction, one report."""
    import os
    import subprocess
    import sys

    import torch

    from longtail.config import load_config
    from longtail.data import build_data
    from tests.conftest import make_fake_fmnist

    root = make_fake_fmnist(tmp_path / "f", train_per_class=100)
    args = [f"data.root={root}", "data.n_max=80", "data.n_min=4", "data.val_per_class=5", *TINY,
            "stage1.epochs=6", "stage1.lr=0.1"]
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "longtail", "run", str(ROOT / "configs" / "fmnist_lt.yaml"),
         *args, "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[:3000]
    assert result.stdout.count("test top-1 (%)") == 1  # rank 0 reports, once
    check_metrics(out, 10)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    # Features gathered from both ranks come back complete and in dataset order.
    data = build_data(load_config(ROOT / "configs" / "fmnist_lt.yaml", args).data, seed=0)
    train = torch.load(out / "features" / "train.pt", weights_only=True)
    assert torch.equal(train["labels"], data.train.labels)
    # Every rank extracted with the saved model's BatchNorm statistics: the features equal a
    # recompute from stage1/last.pt in one process.
    from longtail.models import build_model
    from longtail.stages.inference import infer

    model = build_model("resnet10", 10, 1, 28, width=8)
    model.load_state_dict(torch.load(out / "stage1" / "last.pt", weights_only=True)["model"])
    model.eval()
    test = torch.load(out / "features" / "test.pt", weights_only=True)
    again, _ = infer(model.features, data.test.with_transform(data.transform(train=False)),
                     batch_size=256, device=torch.device("cpu"),
                     layout=model.layout(torch.device("cpu")))
    torch.testing.assert_close(test["features"], again, rtol=1e-4, atol=1e-5)
    # The same global batch in one process: the same method, up to BatchNorm statistics being
    # per process (16 images each instead of 32; SyncBatchNorm is GPU-only). On this tiny data
    # (a width-8 network, 100 test images) that moves top-1 by up to ~15 points, so the
    # tolerance is 25; a broken shard, gather or label order falls to chance (10%).
    single = tmp_path / "single"
    assert main(["run", str(ROOT / "configs" / "fmnist_lt.yaml"), *args, "--out",
                 str(single)]) == 0
    one = json.loads((single / "metrics.json").read_text())["methods"]
    two = json.loads((out / "metrics.json").read_text())["methods"]
    for method in one:
        assert abs(one[method]["top1"] - two[method]["top1"]) <= 25, method
        assert min(one[method]["top1"], two[method]["top1"]) > 30, method
    # The run's features as data.kind: features under torchrun: stage 2 on rank 0, the other
    # waits for it, and both end together
    feats = tmp_path / "feats"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "longtail", "run", str(ROOT / "configs" / "fmnist_lt.yaml"),
         "data.kind=features", f"data.root={out / 'features'}", "data.train=train.pt",
         "data.val=val.pt", "data.test=test.pt", *TINY, "--out", str(feats)],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[:3000]
    assert result.stdout.count("test top-1 (%)") == 1
    assert json.loads((feats / "metrics.json").read_text())["methods"].keys() == one.keys()


def test_torchrun_says_a_config_mistake_once_without_tracebacks(tmp_path):
    """The other process waits in silence and ends quietly on torchrun's SIGTERM (it used to
    print a KeyboardInterrupt traceback and 'stopped by SIGTERM')."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "longtail", "run", str(ROOT / "configs" / "fmnist_lt.yaml"), "stage1.epoch=3",
         "--out", str(tmp_path / "r")], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert lines[0].startswith("longtail: error: unknown config key stage1.epoch;"), lines[:3]
    assert result.stderr.count("longtail:") == 1, result.stderr
    assert "KeyboardInterrupt" not in result.stderr and "longtail/cli.py" not in result.stderr
    assert not (tmp_path / "r").exists()


def test_torchrun_with_undecodable_images_skipped_keeps_the_ranks_in_step(tmp_path):
    """data.on_bad_image=skip: a batch left with under two images is skipped by every rank
    together (once a collective mismatch: gloo aborted, or NCCL hung)."""
    import os
    import random
    import subprocess
    import sys

    files = make_image_list_dataset(tmp_path / "d", counts=[40, 30, 20, 10])
    rng = random.Random(0)
    for line in files["train"].read_text().splitlines():
        if rng.random() < 0.4:  # per-rank batches of 2: some ranks keep 0 or 1 of a batch
            (tmp_path / "d" / line.split()[0]).write_bytes(b"not an image")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "longtail", "run", str(ROOT / "configs" / "fmnist_lt.yaml"), "data.kind=list",
         f"data.root={tmp_path / 'd'}", *(f"data.{s}={p}" for s, p in files.items()),
         "data.on_bad_image=skip", "data.in_memory=false", "stage1.batch_size=4",
         "stage1.min_steps=1", "stage1.epochs=1", "model.width=8", "stage2.methods=[joint]",
         "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[:3000]
    assert "warning: skipped " in result.stdout and (out / "metrics.json").is_file()
