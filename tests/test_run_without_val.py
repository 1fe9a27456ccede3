"""A tiny run without a val split whose batches are larger than its training set: the printed
batch and the scaled lr are the ones training takes, and extract exports the splits it has."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest

from longtail.cli import main
from tests.conftest import make_fake_fmnist

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "fmnist_lt.yaml")


@pytest.fixture(scope="module")
def run_output(tmp_path_factory) -> tuple[Path, str]:
    """(run folder, its stdout): no val, stage1.batch_size and finetune's above 60 images
    (min_steps 1: capped at one epoch)."""
    folder = tmp_path_factory.mktemp("noval")
    root = make_fake_fmnist(folder / "f")
    out = folder / "run"
    stdout = io.StringIO()  # module-scoped: capsys is per test
    with contextlib.redirect_stdout(stdout):
        code = main(["run", CONFIG, f"data.root={root}", "data.n_max=12", "data.n_min=2",
                     "data.val_per_class=0", "stage2.tau_norm.tau=1", "model.width=8",
                     "stage1.epochs=1", "stage1.batch_size=4096", "stage1.lr=null",
                     "stage2.finetune.epochs=1", "stage2.finetune.batch_size=4096",
                     "stage1.min_steps=1", "stage2.min_steps=1",  # the batch: one epoch
                     "stage2.methods=[joint,tau_norm,finetune_last]", "--out", str(out)])
    assert code == 0
    return out, stdout.getvalue()


def test_batch_larger_than_the_training_set_is_capped_and_lr_follows(run_output):
    out, text = run_output
    images = sum(json.loads((out / "dataset.json").read_text())["train_counts"])
    assert images < 4096
    header = next(line for line in text.splitlines() if line.startswith("stage 1:"))
    lr = float(re.search(r"lr ([0-9.e-]+);", header).group(1))
    assert f"batch {images} over 1 process(es)" in header, header
    assert lr == pytest.approx(0.1 * images / 256, rel=1e-5)  # base_lr at base_batch_size 256
    assert (f"note: stage1.batch_size 4096 would leave fewer than 1 step an epoch over the "
            f"{images} training images; batches of {images}, lr scaled to it "
            f"(stage1.min_steps)") in text
    assert (f"note: stage2.finetune.batch_size 4096 would leave fewer than 1 step an epoch "
            f"over the {images} training images; batches of {images}\n"
            ) in text  # finetune's lr is not scaled


def test_extract_of_a_run_without_val_writes_train_and_test(run_output, tmp_path, capsys):
    out, _ = run_output
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["split_sha256"]) == {"train", "test"}
    assert main(["extract", str(out), "--out", str(tmp_path / "x")]) == 0
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == [
        "config.yaml", "test.npz", "train.npz"]
    # Runs made before recorded the empty val split's SHA-256: still no val features needed.
    old = out.parent / "old"
    shutil.copytree(out, old)
    manifest["split_sha256"]["val"] = hashlib.sha256(b"").hexdigest()
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert main(["extract", str(old), "--out", str(tmp_path / "y")]) == 0
    assert not (tmp_path / "y" / "val.npz").exists()
    capsys.readouterr()
