"""data.kind: features (feature files in, no stage 1) and longtail extract (features out)."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from longtail.cli import main
from longtail.config import FEATURE_METHODS, load_config
from longtail.data import build_data, read_feature_file, write_feature_file
from longtail.data.features import _npz_memmap
from longtail.errors import LongtailError
from tests.conftest import tiny_fmnist_run

ROOT = Path(__file__).resolve().parents[1]
FMNIST = str(ROOT / "configs" / "fmnist_lt.yaml")


def gaussian_features(folder: Path, dim: int = 16, counts=(200, 120, 60, 25, 10, 4),
                      per_class: int = 30, fmt: str = "npz", seed: int = 0,
                      names: list[str] | None = None) -> dict[str, Path]:
    """Write long-tailed train, balanced val and test features: one Gaussian cluster a class,
    close enough to each other that the head classes' priors matter."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(len(counts), dim)).astype(np.float32) * 0.9
    files = {}
    for split, sizes in (("train", counts), ("val", [per_class] * len(counts)),
                         ("test", [per_class] * len(counts))):
        labels = np.repeat(np.arange(len(counts)), sizes)
        x = means[labels] + rng.normal(size=(len(labels), dim)).astype(np.float32)
        files[split] = folder / f"{split}.{fmt}"
        write_feature_file(files[split], torch.from_numpy(np.maximum(x, 0)),
                           torch.from_numpy(labels), names)
    return files


def features_args(folder: Path, fmt: str = "npz") -> list[str]:
    return ["data.kind=features", f"data.root={folder}", f"data.train=train.{fmt}",
            f"data.val=val.{fmt}", f"data.test=test.{fmt}"]


FAST = ["stage1.epochs=30", "stage1.batch_size=64", "stage2.batch_size=64",
        "stage2.crt.epochs=10", "stage2.lws.epochs=5", "stage1.min_steps=1",
        "stage2.min_steps=1"]  # the batches as given: fast


@pytest.mark.parametrize("fmt", ["npz", "pt", "safetensors"])
def test_feature_files_round_trip_in_every_format(tmp_path, fmt):
    x = torch.randn(7, 5)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    w = torch.randn(3, 5)
    path = tmp_path / f"f.{fmt}"
    write_feature_file(path, x, y, ["a", "b", "c"], joint_weight=w)
    blob = read_feature_file(path)
    assert torch.equal(blob["features"], x) and torch.equal(blob["labels"], y)
    assert blob["class_names"] == ["a", "b", "c"] and torch.equal(blob["joint_weight"], w)
    assert blob["labels"].dtype == torch.int64 and len(blob["sha256"]) == 64


def test_damaged_pt_feature_files_are_called_damaged(tmp_path):
    from longtail.errors import LongtailError

    path = tmp_path / "f.pt"
    write_feature_file(path, torch.randn(7, 5), torch.arange(7) % 3, ["a", "b", "c"])
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(LongtailError, match="f.pt: not a readable PyTorch file: truncated"):
        read_feature_file(path)
    path.write_bytes(b"garbage")
    with pytest.raises(LongtailError, match=r"f.pt: not a PyTorch file .* starts with b'garb"):
        read_feature_file(path)


def test_npz_features_are_memory_mapped_unless_compressed(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.savez(tmp_path / "plain.npz", features=x, labels=np.arange(4))
    np.savez_compressed(tmp_path / "small.npz", features=x, labels=np.arange(4))
    mapped = _npz_memmap(tmp_path / "plain.npz", "features")
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, x)
    assert _npz_memmap(tmp_path / "small.npz", "features") is None
    for name in ("plain.npz", "small.npz"):
        assert np.array_equal(read_feature_file(tmp_path / name)["features"].numpy(), x)
    with zipfile.ZipFile(tmp_path / "plain.npz") as archive:  # still a valid .npz file
        assert sorted(archive.namelist()) == ["features.npy", "labels.npy"]
    mapped[0, 0] = 99.0  # copy-on-write: the file never changes
    assert np.load(tmp_path / "plain.npz")["features"][0, 0] == 0.0


def test_features_run_writes_metrics_and_rebalancers_beat_joint_on_few(tmp_path, capsys):
    gaussian_features(tmp_path / "f", names=[f"c{i}" for i in range(6)])
    out = tmp_path / "run"
    assert main(["run", FMNIST, *features_args(tmp_path / "f"), *FAST, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "joint classifier on 16-d features: trained" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    methods = metrics["methods"]
    assert set(methods) == set(FEATURE_METHODS)
    assert metrics["dataset"]["train_counts"] == [200, 120, 60, 25, 10, 4]
    for name in ("ncm_cosine", "crt", "tau_norm", "lws", "logit_adjust", "las"):
        assert methods[name]["few"] > methods["joint"]["few"] + 5, (name, methods)
    for name in ("report.md", "per_class.csv", "plots/weight_norms.png", "stage1/joint.pt",
                 "dataset.json", "manifest.json"):
        assert (out / name).is_file(), name
    assert not (out / "features").exists()  # the files are read where they are, not copied
    assert "c5" in (out / "per_class.csv").read_text()

    # rebalance re-reads the files and keeps the joint classifier; balms and las take
    # stage2.crt.*, so they are fitted again too, and config.yaml describes every result
    capsys.readouterr()
    assert main(["rebalance", str(out), "stage2.methods=[crt]", "stage2.crt.epochs=2"]) == 0
    printed = capsys.readouterr().out
    again = json.loads((out / "metrics.json").read_text())["methods"]
    assert again["joint"] == methods["joint"] and again["crt"] != methods["crt"]
    for name in ("balms", "las"):
        assert re.search(rf"note: {name} is fitted again too: its result in metrics.json was "
                         rf"made with stage2.crt.epochs=\d+ \(now 2\)\n", printed)
        assert again[name] != methods[name]
    for name in ("tau_norm", "lws", "wb", "ncm_cosine"):
        assert again[name] == methods[name] and f"note: {name}" not in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rebalanced"][-1]["fitted_again"] == ["balms", "las"]
    # a plain rebalance now reuses every fit: the numbers are those of the config
    assert main(["rebalance", str(out)]) == 0
    assert "fitted " not in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["methods"] == again
    # caches of longtail 0.1 (keyed by all of stage2.*, no settings recorded) are reused too
    from longtail.checkpoint import load_checkpoint, save_checkpoint
    from longtail.pipeline import _stage2_key, run_inputs
    from longtail.rundir import load_run_config

    cfg = load_run_config(out)
    _, weight, bias, feats = run_inputs(out, cfg)
    for path in (out / "stage2").glob("*.pt"):
        blob = load_checkpoint(path)
        del blob["settings"]
        blob["key"] = _stage2_key(path.stem, cfg, feats, weight, bias, legacy=True)
        save_checkpoint(blob, path)
    assert main(["rebalance", str(out)]) == 0
    assert "fitted " not in capsys.readouterr().out
    # summarize reads it like any run; a changed file is refused by rebalance
    assert main(["summarize", str(out)]) == 0
    gaussian_features(tmp_path / "f", seed=1)
    capsys.readouterr()
    assert main(["rebalance", str(out)]) == 2
    assert "features differ from those" in capsys.readouterr().err


def test_features_run_batch_above_the_training_rows_scales_lr_to_them(tmp_path, capsys):
    gaussian_features(tmp_path / "f")
    assert main(["run", FMNIST, *features_args(tmp_path / "f"), "stage1.epochs=1",
                 "stage1.batch_size=4096", "stage1.lr=null", "stage2.methods=[joint]",
                 "--out", str(tmp_path / "run")]) == 0
    # 419 training rows: stage1.min_steps (16) makes the batch 419 // 16 = 26, and base_lr
    # 0.1 at 256 is scaled to 26, not to 4096
    assert f"lr {0.1 * 26 / 256:g}, batch 26" in capsys.readouterr().out


def test_val_held_out_of_training_features(tmp_path):
    files = gaussian_features(tmp_path / "f")
    cfg = load_config(None, ["data.kind=features", f"data.train={files['train']}",
                             f"data.test={files['test']}", "data.val_from_train=2"])
    data = build_data(cfg.data, seed=0)
    assert data.train_counts == [198, 118, 58, 23, 8, 2]
    assert data.group_counts == [200, 120, 60, 25, 10, 4] and len(data.val) == 12
    assert data.class_names == [str(c) for c in range(6)]
    # the printed table: trained-on counts, the listed ones beside them (they set the groups)
    from longtail.pipeline import dataset_summary

    rows = dataset_summary(data, 100, 20).splitlines()
    assert rows[2].split() == ["class", "name", "train", "listed", "group"]
    assert rows[3].split() == ["0", "0", "198", "200", "many"]
    assert rows[-1].split() == ["5", "5", "2", "4", "few"]
    assert not any(r.startswith("note:") for r in rows)  # every group has classes
    # thresholds that leave a group empty say which keys set them
    rows = dataset_summary(data, 500, 3).splitlines()
    assert rows[2] == ("note: no class in the many and few groups (accuracy shown as -); "
                       "eval.many_threshold and eval.few_threshold set the groups (training "
                       "counts from 4 to 200 here)")


def test_a_split_given_the_training_file_is_warned_of(tmp_path, capsys):
    # as the list reader warns of shared images: test accuracy would be measured on training rows
    files = gaussian_features(tmp_path / "f")
    cfg = load_config(None, ["data.kind=features", f"data.train={files['train']}",
                             f"data.test={files['train']}", f"data.val={files['val']}"])
    build_data(cfg.data, seed=0)
    assert capsys.readouterr().out.splitlines() == [
        f"warning: data.train and data.test hold the same rows ({files['train']} and "
        f"{files['train']}); test accuracy is measured on rows trained on"]


def test_val_held_out_of_a_feature_file_with_group_counts_keeps_them(tmp_path):
    """A training file that carries its dataset's counts (extract writes them) keeps them as
    the groups' counts when val is held out of its rows: they are not recounted from them."""
    y = torch.tensor([0] * 200 + [1] * 30 + [2] * 10)
    write_feature_file(tmp_path / "train.npz", torch.rand(len(y), 8), y,
                       group_counts=torch.tensor([500, 150, 15]))
    write_feature_file(tmp_path / "test.npz", torch.rand(6, 8), torch.tensor([0, 1, 2] * 2))
    for held in (1, 0):
        cfg = load_config(None, ["data.kind=features", f"data.root={tmp_path}",
                                 "data.train=train.npz", "data.test=test.npz",
                                 f"data.val_from_train={held}", "stage2.methods=[crt]"])
        data = build_data(cfg.data, seed=0)
        assert data.group_counts == [500, 150, 15]
        assert data.train_counts == [200 - held, 30 - held, 10 - held]


def test_a_hold_out_that_unbalances_val_says_so(tmp_path):
    files = gaussian_features(tmp_path / "f", counts=(80, 30, 8, 1))
    for held, notes in (
            (2, ["val: 6 images held out of training (data.val_from_train=2)",
                 "val is not balanced: 1 of 4 classes have 2 or fewer training images and gave "
                 "all but one (val per class 0 to 2); a class of one image gives none"]),
            (10, ["val: 27 images held out of training (data.val_from_train=10)",
                  "val is not balanced: 2 of 4 classes have 10 or fewer training images and "
                  "gave all but one (val per class 0 to 10); a class of one image gives none"])):
        cfg = load_config(None, ["data.kind=features", f"data.train={files['train']}",
                                 f"data.test={files['test']}", f"data.val_from_train={held}"])
        assert build_data(cfg.data, seed=0).notes[-2:] == notes
    files = gaussian_features(tmp_path / "g", counts=(80, 30, 8, 4))
    cfg = load_config(None, ["data.kind=features", f"data.train={files['train']}",
                             f"data.test={files['test']}", "data.val_from_train=5"])
    assert build_data(cfg.data, seed=0).notes[-1].endswith(
        "(val per class 3 to 5); data.val_from_train=3 keeps it balanced")
    cfg = load_config(None, ["data.kind=features", f"data.train={files['train']}",
                             f"data.test={files['test']}", "data.val_from_train=3"])
    assert build_data(cfg.data, seed=0).notes[-1].startswith("val: 12 images held out")


def test_extract_of_a_run_with_val_held_out_of_training_runs_again(tmp_path):
    """A class of one training row has no val row when val is held out of training: the
    extracted val file lacks it, and the extracted config still runs (and repeats the run)."""
    gaussian_features(tmp_path / "f", counts=(80, 30, 8, 1))
    out = tmp_path / "run"
    assert main(["run", FMNIST, "data.kind=features", f"data.root={tmp_path / 'f'}",
                 "data.train=train.npz", "data.test=test.npz", "data.val_from_train=1", *FAST,
                 "--out", str(out)]) == 0
    assert main(["extract", str(out), "--out", str(tmp_path / "x")]) == 0
    assert main(["run", str(tmp_path / "x" / "config.yaml"), "--out", str(tmp_path / "y")]) == 0
    before = json.loads((out / "metrics.json").read_text())
    after = json.loads((tmp_path / "y" / "metrics.json").read_text())
    assert after["methods"] == before["methods"]
    # a val file that lacks a class and was not held out of these rows is still refused
    blob = read_feature_file(tmp_path / "x" / "train.npz")
    write_feature_file(tmp_path / "x" / "train.npz", blob["features"], blob["labels"])
    with pytest.raises(LongtailError, match=r"val.npz: the val split has no row of classes "
                                            r"\[3\]"):
        build_data(load_config(tmp_path / "x" / "config.yaml").data, seed=0)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    """A tiny finished Fashion-MNIST-LT run (1 epoch, width 8)."""
    return tiny_fmnist_run(tmp_path_factory.mktemp("image_run"), "stage1.batch_size=32",
                           "stage2.batch_size=32", "stage2.crt.epochs=3", "stage2.lws.epochs=2")


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_extract_then_features_run_repeats_every_stage2_number(image_run, tmp_path, fmt,
                                                               capsys):
    files = tmp_path / "x"
    assert main(["extract", str(image_run), "--format", fmt, "--out", str(files)]) == 0
    assert f"longtail run {files / 'config.yaml'}" in capsys.readouterr().out
    train = read_feature_file(files / f"train.{fmt}")
    cached = torch.load(image_run / "features" / "train.pt", weights_only=True)
    assert torch.equal(train["features"], cached["features"])
    assert train["class_names"][9] == "Ankle boot" and train["joint_weight"].shape == (10, 64)
    out = tmp_path / "again"
    assert main(["run", str(files / "config.yaml"), "--out", str(out)]) == 0
    before = json.loads((image_run / "metrics.json").read_text())
    after = json.loads((out / "metrics.json").read_text())
    assert after["methods"] == before["methods"]  # joint, tau_norm, lws included
    assert after["dataset"]["shot_groups"] == before["dataset"]["shot_groups"]
    # A features run can be extracted too (its joint classifier travels with it).
    assert main(["extract", str(out), "--out", str(tmp_path / "y")]) == 0
    assert torch.equal(read_feature_file(tmp_path / "y" / "train.npz")["joint_weight"],
                       train["joint_weight"])


def test_extract_overwrite_in_another_format_leaves_only_the_new_files(image_run, tmp_path):
    """--overwrite in another format removes the earlier extract's split files (a mix of two
    runs' features read as one dataset ran without a word); other files stay."""
    files = tmp_path / "x"
    assert main(["extract", str(image_run), "--out", str(files)]) == 0
    (files / "notes.md").write_text("mine")
    assert main(["extract", str(image_run), "--format", "pt", "--out", str(files),
                 "--overwrite"]) == 0
    assert sorted(p.name for p in files.iterdir()) == [
        "config.yaml", "notes.md", "test.pt", "train.pt", "val.pt"]


def test_features_run_without_the_joint_classifier_retrains_only_joint(image_run, tmp_path):
    """Without joint_weight in the file the joint classifier is trained on the features: NCM
    and cRT (which do not use it) still repeat the run's numbers exactly."""
    files = tmp_path / "x"
    assert main(["extract", str(image_run), "--out", str(files)]) == 0
    blob = read_feature_file(files / "train.npz")
    write_feature_file(files / "train.npz", blob["features"], blob["labels"],
                       blob["class_names"], group_counts=blob["group_counts"])
    out = tmp_path / "again"
    assert main(["run", str(files / "config.yaml"), "--out", str(out)]) == 0
    before = json.loads((image_run / "metrics.json").read_text())["methods"]
    after = json.loads((out / "metrics.json").read_text())["methods"]
    for name in ("ncm_cosine", "ncm_euclidean", "crt"):
        assert after[name] == before[name], name


def test_no_joint_classifier_and_no_stage1_epochs_is_one_config_error(tmp_path):
    from dataclasses import replace

    from longtail.errors import LongtailError
    from longtail.stages.linear import joint_on_features

    files = gaussian_features(tmp_path / "f")
    cfg = load_config(None, ["data.kind=features", f"data.train={files['train']}",
                             f"data.test={files['test']}"])
    data = build_data(cfg.data, seed=0)
    with pytest.raises(LongtailError, match=r"stage1.epochs: .*train.npz carries no joint "
                                            r"classifier .* expected an int >= 1, found 0"):
        joint_on_features(data, replace(cfg.stage1, epochs=0), 0, torch.device("cpu"),
                          tmp_path / "joint.pt")


def test_keys_read_nowhere_are_named_in_the_notes(tmp_path):
    """A misspelt group_count, or joint_weight put in the val file, was ignored without a
    word: the run's notes name each."""
    files = gaussian_features(tmp_path, counts=(20, 10, 5))
    for split, extra in (("train", {"group_count": np.array([20, 10, 5])}),
                         ("val", {"joint_weight": np.zeros((3, 16), np.float32)})):
        with np.load(files[split]) as archive:
            arrays = {k: archive[k] for k in archive.files}
        np.savez(files[split], **arrays, **extra)
    notes = build_data(load_config(None, features_args(tmp_path)).data, seed=0).notes
    assert (f"{files['train']}: group_count ignored (a feature file's keys: features, labels, "
            f"class_names, joint_weight, joint_bias, group_counts)") in notes
    assert f"{files['val']}: joint_weight ignored (read from the training file only)" in notes
