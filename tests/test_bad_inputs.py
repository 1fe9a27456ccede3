"""Every bad input or misuse in docs/reliability.md: exit status 2, one line naming the culprit,
nothing left behind; mistakes in the command line or config answered in under 2 s.

CASES is the table docs/reliability.md shows (a test checks that every case is listed there).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longtail.cli import main
from tests.conftest import make_fake_fmnist, make_image_list_dataset

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "fmnist_lt.yaml")


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def _edit_list(world: Path, split: str, change) -> None:
    path = world / "d" / f"{split}.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(change(lines)) + "\n")


def _damaged_zip(path: Path) -> None:
    """A torch.save file whose central directory entry is overwritten: is_zipfile still
    finds the archive's end, ZipFile refuses it."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buffer)
    path.write_bytes(buffer.getvalue().replace(b"PK\x01\x02", b"PK\x09\x09", 1))


def _npz(path: Path) -> None:
    import numpy as np

    np.savez(path, **{"fc.weight": np.zeros((2, 2))})


def _moved_extract(folder: Path, root: Path) -> None:
    """An extract's folder moved away from the data.root its config.yaml names."""
    for name in ("t.npz", "u.npz"):  # only their presence is looked at before the root's
        _write(folder / name, "")
    _write(folder / "config.yaml", f"data: {{kind: features, root: {root}, train: t.npz, "
                                   f"test: u.npz}}\n")


def _run_dir(world: Path, name: str, seed: int = 0, epochs: int = 30) -> Path:
    """A finished-looking run folder: config.yaml, metrics.json and manifest.json."""
    import json

    folder = world / name
    text = Path(CONFIG).read_text().replace("seed: 0", f"seed: {seed}")
    _write(folder / "config.yaml", text.replace("epochs: 30", f"epochs: {epochs}"))
    method = {"top1": 80.0, "many": 90.0, "medium": 70.0, "few": 60.0, "per_class": [80.0]}
    _write(folder / "metrics.json", json.dumps({"dataset": {}, "methods": {"crt": method}}))
    _write(folder / "manifest.json", json.dumps({"split_sha256": {}}))
    return folder


def _two_runs(world: Path) -> None:
    """Two finished-looking runs that differ only in their seed: a and b."""
    _run_dir(world, "a")
    _run_dir(world, "b", 1)


LIST = ["data.kind=list", "data.root={w}/d", "data.train={w}/d/train.txt",
        "data.val={w}/d/val.txt", "data.test={w}/d/test.txt"]

# (case, setup(world) or None, argv with {w} for the world folder, expected in the message)
CASES = [
    # --- command line and config: answered before torch is imported ----------------------
    ("config file missing", None, ["run", "{w}/typo.yaml"], "typo.yaml: config file not found"),
    ("config file empty", lambda w: _write(w / "e.yaml", ""), ["run", "{w}/e.yaml"],
     "e.yaml: the config file is empty"),
    ("config file not YAML", lambda w: _write(w / "b.yaml", "seed: [1, 2\n"),
     ["run", "{w}/b.yaml"], "b.yaml:2: not valid YAML"),
    ("config file with an unknown key",
     lambda w: _write(w / "k.yaml", "seed: 0\nstage1:\n  epochs: 3\n  bogus: 1\n"),
     ["run", "{w}/k.yaml", "seed=1"],
     "k.yaml:4: unknown config key stage1.bogus; did you mean stage1.loss, stage1.epochs"),
    ("config file a list", lambda w: _write(w / "l.yaml", "- 1\n- 2\n"), ["run", "{w}/l.yaml"],
     "l.yaml: expected a mapping of keys, found list"),
    ("config file not UTF-8", lambda w: _write(w / "u.yaml", b"seed: \xff\n"),
     ["run", "{w}/u.yaml"], "u.yaml:1: not UTF-8 text (byte 0xff)"),
    ("config file in UTF-16", lambda w: _write(w / "u16.yaml", "seed: 1\n".encode("utf-16")),
     ["run", "{w}/u16.yaml"], "u16.yaml:1: looks like UTF-16 text; save the file as UTF-8"),
    ("config file ending in NUL bytes", lambda w: _write(w / "z.yaml", b"seed: 1\n" + bytes(64)),
     ["run", "{w}/z.yaml"], "z.yaml:2: not valid YAML (holds the control character 0x00, as a "
     "file damaged in a crash does)"),
    ("run with overrides only", None, ["run", "stage1.epochs=1"],
     "run: expected a CONFIG file first, found 'stage1.epochs=1'"),
    ("run with nothing", None, ["run"], "run: expected a CONFIG file"),
    ("unknown command", None, ["trian"], "invalid choice: 'trian'"),
    ("unknown option", None, ["run", CONFIG, "--epochs", "3"],
     "run: unrecognized arguments: --epochs 3; see 'longtail run --help'"),
    # the data keys' folders and files: present or not, said before torch is imported
    ("fmnist data.root missing", None, ["run", CONFIG, "data.root={w}/none"],
     "Fashion-MNIST not found in"),
    ("grid: fmnist data.root missing", None, ["grid", CONFIG, "data.root={w}/none"],
     "Fashion-MNIST not found in"),
    ("image data.root missing", None, ["run", CONFIG, "data.kind=image_folder",
                                       "data.root={w}/none"],
     "config key data.root: folder not found: "),
    ("list file not there", None, ["run", CONFIG, "data.kind=list", "data.root={w}",
                                   "data.train=t.txt", "data.val=v.txt", "data.test=u.txt"],
     "t.txt: list file not found (looked in the working directory and in data.root"),
    ("features file not there", None, ["run", CONFIG, "data.kind=features", "data.root=null",
                                       "data.train=t.npz",
                                       "data.test=u.npz"],
     "t.npz: features file not found (config key data.train; looked in the working directory "
     "and in data.root, which is not set"),
    ("extract folder moved", lambda w: _moved_extract(w / "moved", w / "gone"),
     ["run", "{w}/moved/config.yaml"],
     "/gone; the config's folder holds t.npz, u.npz: add data.root="),
    ("cifar data.root missing", None, ["run", str(ROOT / "configs" / "cifar10_lt_resnet32.yaml"),
                                       "data.root={w}/none"],
     "cifar10_lt: expected the python version of CIFAR in"),
    ("inat annotation file not there", None,
     ["run", str(ROOT / "configs" / "inat2018_resnet50_90.yaml"), "data.root={w}"],
     "train2018.json: annotation file not found"),
    ("image sub-folder not there", lambda w: (w / "if" / "train").mkdir(parents=True),
     ["run", CONFIG, "data.kind=image_folder", "data.root={w}/if", "data.train=train",
      "data.val=val", "data.test=test"], "if/val: image folder not found"),
    ("class-name file not there", None,
     ["run", CONFIG, "data.kind=list", "data.root={w}/d", "data.train=train.txt",
      "data.val=val.txt", "data.test=test.txt", "data.class_names=nope.txt"],
     "nope.txt: class-name file not found"),
    ("fmnist data.root a file", lambda w: _write(w / "f.txt", "x"),
     ["run", CONFIG, "data.root={w}/f.txt"], "f.txt is a file, expected a folder"),
    ("unknown key", None, ["run", CONFIG, "stage1.epoch=3"],
     "unknown config key stage1.epoch; did you mean stage1.epochs"),
    # the file's key 'seed' starts 'seed-x': the error was blamed on the file's line 6
    ("override key with a non-key character", None, ["config", CONFIG, "seed-x=1"],
     "error: unknown config key seed-x; did you mean seed?"),
    ("override key with a character that does not show", None,
     ["config", CONFIG, "seed\u200b=1"],
     "error: unknown config key 'seed\\u200b' (it holds a character that does not show); did "
     "you mean seed?"),
    # int() refuses more than 4300 digits, with a traceback
    ("override an integer of 5000 digits", None, ["config", CONFIG, "stage1.epochs=" + "1" * 5000],
     "config key stage1.epochs: expected int, found str '1111"),
    ("config file nested thousands deep",
     lambda w: _write(w / "deep.yaml", "stage1: " + "[" * 5000 + "]" * 5000 + "\n"),
     ["config", "{w}/deep.yaml"], "deep.yaml: not valid YAML for longtail (nested too deeply)"),
    ("override nested thousands deep", None, ["config", CONFIG, "stage1.epochs=" + "[" * 3000],
     "config key stage1.epochs: expected int, found str '[[[["),
    ("override without =", None, ["config", CONFIG, "stage1.epochs"],
     "override 'stage1.epochs': expected KEY=VALUE"),
    ("wrong type", None, ["run", CONFIG, "stage1.epochs=ten"],
     "config key stage1.epochs: expected int, found str 'ten'"),
    ("zero epochs", None, ["run", CONFIG, "stage1.epochs=0"], "config key stage1.epochs"),
    ("negative learning rate", None, ["run", CONFIG, "stage1.lr=-1"],
     "config key stage1.lr: expected a learning rate in (0, 1000]"),
    ("NaN learning rate", None, ["run", CONFIG, "stage2.crt.lr=.nan"],
     "config key stage2.crt.lr: expected a learning rate in (0, 1000]"),
    ("momentum of 1", None, ["run", CONFIG, "stage1.momentum=1"], "config key stage1.momentum"),
    ("negative workers", None, ["run", CONFIG, "data.num_workers=-1"],
     "config key data.num_workers: expected an int in [0, "),
    ("thousands of workers", None, ["run", CONFIG, "data.num_workers=100000"],
     "CPUs here) or null, found 100000"),
    ("learning rate beyond float32", None, ["run", CONFIG, "stage1.lr=1e39"],
     "config key stage1.lr: expected a learning rate in (0, 1000] or null, found 1e+39"),
    ("weight decay beyond float32", None, ["run", CONFIG, "stage2.crt.weight_decay=1e300"],
     "config key stage2.crt.weight_decay: expected a number in [0, 1000], found 1e+300"),
    ("huge loss tau", None, ["run", CONFIG, "stage1.loss=logit_adjusted",
                             "stage1.loss_tau=1e300"],
     "config key stage1.loss_tau: expected a number in [0, 10], found 1e+300"),
    ("mean on the 0-255 scale", None, ["run", CONFIG, "data.mean=[123.7]", "data.std=[58.4]"],
     "config key data.std: expected values in [0.001, 1] (images scaled to [0, 1] are divided "
     "by them; values of the 0-255 scale divided by 255), found [58.4]"),
    ("tiny std", None, ["run", CONFIG, "data.mean=[0.5]", "data.std=[1e-300]"],
     "config key data.std: expected values in [0.001, 1]"),
    ("zero std", None, ["run", CONFIG, "data.mean=[0.5]", "data.std=[0]"],
     "config key data.std: expected values in [0.001, 1]"),
    ("std without mean", None, ["run", CONFIG, "data.std=[0.2]"], "config key data.mean"),
    ("negative seed", None, ["run", CONFIG, "seed=-1"],
     "config key seed: expected an int in [0, 2^32), found -1"),
    ("unknown device", None, ["run", CONFIG, "device=gpu"],
     "config key device: expected auto, cpu, cuda, cuda:N or mps, found 'gpu'"),
    ("negative tau grid", None, ["run", CONFIG, "stage2.tau_norm.grid_max=-1"],
     "config key stage2.tau_norm.grid_max"),
    ("two input channels", None, ["run", CONFIG, "model.in_channels=2"],
     "config key model.in_channels: expected 1, 3 or null, found 2"),
    ("width too small", None, ["run", CONFIG, "model.width=4"], "config key model.width"),
    ("warm-up as long as training", None, ["run", CONFIG, "stage1.warmup_epochs=30"],
     "config key stage1.warmup_epochs"),
    ("no stage-2 method", None, ["run", CONFIG, "stage2.methods=[]"],
     "config key stage2.methods: expected at least one method"),
    ("a method twice", None, ["run", CONFIG, "stage2.methods=[crt,crt]"],
     "config key stage2.methods: expected each method at most once"),
    ("unknown method", None, ["run", CONFIG, "stage2.methods=[crt,wls]"],
     "config key stage2.methods: expected list of one of"),
    ("bad sampler", None, ["run", CONFIG, "stage1.sampler=sqrtt"], "config key stage1.sampler"),
    ("list files without data.kind=list", None, ["run", CONFIG, "data.train=train.txt"],
     "config key data.train: set, but data.kind fmnist_lt draws its own split and reads no "
     "split files; for 'path label' list files set data.kind=list"),
    ("n_min and imbalance_ratio", None, ["run", CONFIG, "data.imbalance_ratio=50"],
     "config key data.imbalance_ratio: expected null when data.n_min is given"),
    ("q out of range", None, ["run", CONFIG, "stage2.crt.sampler=1.5"],
     "config key stage2.crt.sampler: expected q in [0, 1]"),
    ("list without train", None, ["run", CONFIG, "data.kind=list", "data.root=/x"],
     "config key data.train"),
    ("best_val without val", None, ["run", CONFIG, "data.val_per_class=0",
                                    "stage2.tau_norm.tau=1", "stage1.select=best_val"],
     "config key stage1.select: expected last, since there is no val split"),
    ("tau chosen without val", None, ["run", CONFIG, "data.val_per_class=0"],
     "config key stage2.tau_norm.tau: null chooses tau on the val split, but there is none; "
     "set data.val_per_class, or a fixed tau"),
    ("list data without val", None, ["run", CONFIG, "data.kind=list", "data.root=/x",
                                     "data.train=/x/t.txt", "data.test=/x/t.txt"],
     "config key stage2.tau_norm.tau: null chooses tau on the val split, but there is none; "
     "set data.val or data.val_from_train (data.val_per_class makes val only where longtail "
     "draws the split), or a fixed tau"),
    ("grid: unknown sampler", None, ["grid", CONFIG, "--samplers", "instance,foo"],
     "--samplers foo"),
    ("grid: a sampler twice", None, ["grid", CONFIG, "--samplers", "sqrt,sqrt"],
     "--samplers: expected distinct samplers"),
    ("grid: override after an option", None,
     ["grid", CONFIG, "--samplers", "sqrt", "stage1.epoch=1"], "unknown config key stage1.epoch"),
    ("--out is a file", lambda w: _write(w / "f.txt", "x"), ["run", CONFIG, "--out", "{w}/f.txt"],
     "f.txt: exists and is not a folder"),
    ("--out not empty", lambda w: _write(w / "full" / "x", "x"),
     ["run", CONFIG, "--out", "{w}/full"], "folder exists and is not empty; pass --overwrite"),
    ("--out not writable", None, ["run", CONFIG, "--out", "/proc/1/run"],
     "cannot write in /proc/1"),
    ("--resume of no run", None, ["run", "--resume", "{w}/nothing"], "not a run directory"),
    ("--resume of a run's file", lambda w: _run_dir(w, "r"),
     ["run", "--resume", "{w}/r/config.yaml"],
     "--resume {w}/r/config.yaml: is a file, expected a run folder (the folder that holds "
     "config.yaml)"),
    ("--resume with --overwrite", lambda w: _run_dir(w, "r"),
     ["run", "--resume", "{w}/r", "--overwrite"],
     "--resume continues a run and --overwrite replaces one; give one of them"),
    ("--out and --resume differ", lambda w: _run_dir(w, "r"),
     ["run", "--resume", "{w}/r", "--out", "{w}/other"], "--out and --resume name different"),
    ("rebalance of no run", None, ["rebalance", "{w}"], "not a run directory (no config.yaml)"),
    ("rebalance changing stage 1", lambda w: _run_dir(w, "r"),
     ["rebalance", "{w}/r", "stage1.epochs=3"], "rebalance only changes stage2.*"),
    ("make-split: image_folder --out inside --root", None,
     ["make-split", "image_folder", "--root", "{w}/d/train", "--out", "{w}/d/train/splits"],
     "make-split --out {w}/d/train/splits: inside --root {w}/d/train, where every sub-folder is "
     "read as a class"),
    ("make-split: n-min 0", None,
     ["make-split", "fmnist", "--root", "{w}", "--out", "{w}/s", "--n-min", "0"],
     "make-split --n-min: expected an integer >= 1, found 0"),
    ("make-split: n-min above n-max", None, ["make-split", "fmnist", "--root", "{w}", "--out",
                                             "{w}/s", "--n-max", "5", "--n-min", "9"],
     "make-split --n-min: expected at most --n-max"),
    ("make-split: ratio below 1", None,
     ["make-split", "fmnist", "--root", "{w}", "--out", "{w}/s", "--ratio", "0.5"],
     "make-split --ratio"),
    ("make-split: list without --list", None,
     ["make-split", "list", "--root", "{w}", "--out", "{w}/s"], "expected --list FILE"),
    ("make-split: missing root", None,
     ["make-split", "fmnist", "--root", "{w}/none", "--out", "{w}/s"], "folder not found"),
    ("rebalance of two runs", lambda w: (_run_dir(w, "a"), _run_dir(w, "b", 1)),
     ["rebalance", "{w}/a", "{w}/b"], "rebalance: expected one run folder, found a second: "
                                      "{w}/b (rebalance each on its own: longtail rebalance "
                                      "{w}/b)"),
    ("summarize: missing run", None, ["summarize", "{w}/none"], "metrics.json: not found"),
    ("summarize: a run of no method", lambda w: _write(w / "e" / "metrics.json",
                                                        '{"dataset": {}, "methods": {}}'),
     ["summarize", "{w}/e"], '{w}/e/metrics.json: expected "methods" to map each method to '
                             'an object of its results, found none'),
    ("summarize: a folder of runs", lambda w: (_run_dir(w, "g/a"), _run_dir(w, "g/b", 1)),
     ["summarize", "{w}/g"], "{w}/g/metrics.json: not found; {w}/g holds runs in its folders: "
                             "summarize them, e.g. longtail summarize {w}/g/a {w}/g/b"),
    ("summarize: a run twice", lambda w: _run_dir(w, "a"), ["summarize", "{w}/a", "{w}/a/"],
     "is given twice"),
    ("summarize: runs of other settings", lambda w: (_run_dir(w, "a"), _run_dir(w, "b", 1, 10)),
     ["summarize", "{w}/a", "{w}/b"], "differ in stage1.epochs (30 vs 10)"),
    ("summarize: two copies of one run", lambda w: (_run_dir(w, "a"), _run_dir(w, "b", 1),
                                                    shutil.copytree(w / "a", w / "c")),
     ["summarize", "{w}/a", "{w}/b", "{w}/c"],
     "/c have the same seed (0) and config: the same run twice (a copy?)"),
    ("config --keys with a CONFIG", None, ["config", "--keys", CONFIG, "seed=1"],
     "config --keys lists every key; it takes no CONFIG or overrides"),
    ("config with overrides only", None, ["config", "stage1.epochs=3"],
     "config: expected a CONFIG file first, found 'stage1.epochs=3'; e.g. longtail config "
     "configs/fmnist_lt.yaml stage1.epochs=3"),
    ("unknown backbone", None, ["run", CONFIG, "model.name=resnet5"],
     "config key model.name: expected one of resnet10"),
    ("timm without a model name", None, ["run", CONFIG, "model.name=timm/"],
     "config key model.name: expected one of"),
    ("pretrained for a longtail backbone", None, ["run", CONFIG, "model.pretrained=true"],
     "config key model.pretrained: expected false for longtail's own backbones"),
    ("features without a test file", None,
     ["run", CONFIG, "data.kind=features", "data.train=train.npz"],
     "config key data.test: expected a .npz, .pt or .safetensors file"),
    ("grid on features", None, ["grid", CONFIG, "data.kind=features", "data.train=a.npz",
                                "data.val=b.npz", "data.test=c.npz"],
     "config key data.kind: grid trains stage 1"),
    ("extract of no run", None, ["extract", "{w}", "--out", "{w}/x"],
     "not a run directory (no config.yaml)"),
    ("extract into a full folder", lambda w: (_run_dir(w, "r"), _write(w / "full" / "x", "x")),
     ["extract", "{w}/r", "--out", "{w}/full"],
     "/full: folder exists and is not empty; pass --overwrite"),
    ("extract: unknown format", lambda w: _run_dir(w, "r"),
     ["extract", "{w}/r", "--format", "csv", "--out", "{w}/x"], "invalid choice: 'csv'"),
    ("summarize: --json into a missing folder", _two_runs,
     ["summarize", "{w}/a", "{w}/b", "--json", "{w}/no/s.json"], "no/s.json: folder"),
    ("summarize: --json a device", _two_runs,
     ["summarize", "{w}/a", "{w}/b", "--json", "/dev/full"],
     "--json /dev/full: expected a file name for the summary, found a device, FIFO or socket "
     "(the table goes to stdout)"),
    # (before: the table, then an error line not naming --json)
    ("summarize: --json where nothing can be written", _two_runs,
     ["summarize", "{w}/a", "{w}/b", "--json", "/proc/1/s.json"],
     "--json /proc/1/s.json: cannot write in /proc/1"),
    ("summarize: --json under a file", _two_runs,
     ["summarize", "{w}/a", "{w}/b", "--json", "{w}/d/train.txt/s.json"],
     "--json {w}/d/train.txt/s.json: {w}/d/train.txt is a file, not a folder"),
    ("extract into the run folder", lambda w: _run_dir(w, "a"),
     ["extract", "{w}/a", "--out", "{w}/a", "--overwrite"], "inside the run folder"),
    ("features run with mixup", None,
     ["run", CONFIG, "data.kind=features", "data.root={w}", "data.train=t.npz",
      "data.test=t.npz", "stage1.mixup_alpha=0.2"],
     "config key stage1.mixup_alpha: expected 0 (mixup mixes images"),
    # --- beyond the paper: losses, mixup, the new stage-2 methods -------------------------
    ("unknown stage-1 loss", None, ["run", CONFIG, "stage1.loss=focal"],
     "stage1.loss: expected one of ce, logit_adjusted, balanced_softmax"),
    ("stage2.methods not a list or all", None, ["run", CONFIG, "stage2.methods=every"],
     "config key stage2.methods: expected all or a list of"),
    ("negative mixup alpha", None, ["run", CONFIG, "stage1.mixup_alpha=-0.2"],
     "stage1.mixup_alpha: expected a number in [0, 1000]"),
    ("label smoothing of 1", None, ["run", CONFIG, "stage2.crt.las_head=1"],
     "stage2.crt.las_head: expected a number in [0, 1)"),
    ("MaxNorm radius 0", None, ["run", CONFIG, "stage2.wb.max_norm=0"],
     "stage2.wb.max_norm: expected a number in (0, 1000] or null"),
    ("a key twice in the config file", lambda w: _write(
        w / "twice.yaml", "data:\n  kind: list\n  kind: fmnist_lt\n"), ["run", "{w}/twice.yaml"],
     "twice.yaml:3: not valid YAML (key 'kind' given twice (first on line 2))"),
    ("empty path", None, ["run", CONFIG, "data.kind=list", "data.root={w}", "data.train=",
                          "data.test=t.txt"], "config key data.train: expected a path or null"),
    ("Pareto alpha 0", None, ["run", CONFIG, "data.profile=pareto", "data.pareto_alpha=0"],
     "config key data.pareto_alpha: expected a number in [0.1, 1000]"),
    ("cRT of no epochs", None, ["run", CONFIG, "stage2.crt.epochs=0"],
     "config key stage2.crt.epochs: expected an int >= 1, found 0"),
    ("nothing trainable", None, ["run", CONFIG, "model.trainable=[]"],
     "config key model.trainable: expected module names to train"),
    ("weights file missing", None, ["run", CONFIG, "model.weights={w}/none.pt"],
     "config key model.weights: file not found: "),
    ("logit_adjust without val", None,
     ["run", CONFIG, "data.val_per_class=0", "stage2.methods=[logit_adjust]"],
     "stage2.logit_adjust.tau: null chooses tau on the val split"),
    ("grid: unknown loss", None, ["grid", CONFIG, "--losses", "ce,focal"],
     "--losses focal: expected one of ce, logit_adjusted, balanced_softmax"),
    ("grid: a loss twice", None, ["grid", CONFIG, "--losses", "ce,ce"],
     "--losses: expected distinct losses, found 'ce,ce'"),
    ("grid: a trailing comma in --samplers", None, ["grid", CONFIG, "--samplers", "instance,"],
     "--samplers: expected comma-separated samplers, found an empty one in 'instance,'"),
    ("rebalance: an override without a key", lambda w: _run_dir(w, "r", epochs=1),
     ["rebalance", "{w}/r", "=3"], "override '=3': expected KEY=VALUE, e.g. stage1.epochs=10"),
    ("summarize: --json -", lambda w: _run_dir(w, "r"), ["summarize", "{w}/r", "--json", "-"],
     "--json -: expected a file name for the JSON summary (the table goes to stdout)"),
    ("stage1.epochs beyond any schedule", None,
     ["run", CONFIG, "stage1.epochs=99999999999999999999"],
     "config key stage1.epochs: expected at most 100000, found 99999999999999999999"),
    ("a config key in capitals", None, ["run", CONFIG, "STAGE1.EPOCHS=3"],
     "unknown config key STAGE1; did you mean stage1?"),
    ("config of a run folder", lambda w: _run_dir(w, "r"), ["config", "{w}/r"],
     "/r/config.yaml, that folder's config)"),
    ("grid: no config", None, ["grid"],
     "grid: the following arguments are required: CONFIG; see 'longtail grid --help'"),
    # --- answered before torch is imported and before any data is read --------------------
    ("misspelt --version", None, ["--versoin"], "unrecognized arguments: --versoin"),
    ("a command's option before it", None, ["--debug", "run", CONFIG],
     "unrecognized arguments: --debug (a command's options go after it: longtail run --debug "
     "...); see 'longtail --help'"),
    ("config file a folder", None, ["run", "{w}/d"], "d: is a folder, not a config file"),
    ("--out empty", None, ["run", CONFIG, "--out", ""],
     "argument --out: expected a folder, found ''"),
    # (before: a folder named '-', and the whole run in it)
    ("--out -", None, ["run", CONFIG, "--out", "-"],
     "argument --out: expected a folder, found '-'"),
    # (before: taken as the working directory)
    ("make-split: --root empty", None, ["make-split", "fmnist", "--root", "", "--out", "{w}/s"],
     "argument --root: expected a folder, found ''"),
    ("--out a dangling symlink", lambda w: (w / "gone").symlink_to(w / "nowhere"),
     ["run", CONFIG, "--out", "{w}/gone"], "gone is a symbolic link to"),
    ("--out under a file", lambda w: _write(w / "f.txt", "x"),
     ["run", CONFIG, "--out", "{w}/f.txt/run"], "f.txt is a file, not a folder"),
    ("--out under /sys", None, ["run", CONFIG, "--out", "/sys/longtail/run"],
     "cannot write in /sys"),
    ("--resume with a changed key", lambda w: _run_dir(w, "r"),
     ["run", "--resume", "{w}/r", "stage1.epochs=3"],
     "config differs from the run's own config.yaml (stage1.epochs: 30 -> 3)"),
    ("--resume with another process count", lambda w: (_run_dir(w, "r"), _write(
        w / "r" / "manifest.json", '{"split_sha256": {}, "world_size": 2}')),
     ["run", "--resume", "{w}/r"],
     "--resume {w}/r: the run's stage 1 started on 2 processes, this is 1; continue it with "
     "the same count: torchrun with 2 processes in all (on one machine: torchrun "
     "--nproc-per-node 2 -m longtail run --resume {w}/r)"),
    ("--resume with a changed stage-2 key", lambda w: _run_dir(w, "r"),
     ["run", "--resume", "{w}/r", "stage2.crt.epochs=3"],
     "(stage2.crt.epochs: 10 -> 3); resume without changes, or start a new run; stage-2 keys "
     "alone: longtail rebalance {w}/r KEY=VALUE ... (once stage 1 has finished)"),
    ("grid: q=1 and instance", None, ["grid", CONFIG, "--samplers", "1,instance"],
     "--samplers: expected distinct samplers, found '1,instance'; 1.0 and instance are both"),
    ("make-split: negative seed", None,
     ["make-split", "fmnist", "--root", "{w}", "--out", "{w}/s", "--seed", "-1"],
     "make-split --seed: expected an integer in [0, 2^32), found -1"),
    ("make-split into a full folder", lambda w: _write(w / "full" / "x", "x"),
     ["make-split", "fmnist", "--root", "{w}", "--out", "{w}/full"],
     "full: folder exists and is not empty; pass --overwrite"),
    ("summarize: metrics.json a list", lambda w: (_run_dir(w, "a"), _run_dir(w, "b"),
                                                  _write(w / "b" / "metrics.json", "[]")),
     ["summarize", "{w}/a", "{w}/b"],
     'b/metrics.json: expected a JSON object with "methods", found a JSON array'),
    ("summarize: a result that is not a number", lambda w: (
        _run_dir(w, "a"), _write(w / "a" / "metrics.json", '{"methods": {"crt": {"top1": "x"}}}')),
     ["summarize", "{w}/a"], 'a/metrics.json: expected "top1" of method "crt" to be a finite '
                             'number or null, found "x"'),
    ("summarize: a result that is NaN", lambda w: (
        _run_dir(w, "a"), _write(w / "a" / "metrics.json", '{"methods": {"crt": {"few": NaN}}}')),
     ["summarize", "{w}/a"], 'expected "few" of method "crt" to be a finite number or null, '
                             'found NaN'),
    # (before: averaged, 153.4 +- 136.7)
    ("summarize: a result beyond 100%", lambda w: (
        _run_dir(w, "a"), _write(w / "a" / "metrics.json", '{"methods": {"crt": {"top1": 250}}}')),
     ["summarize", "{w}/a"], 'a/metrics.json: expected "top1" of method "crt" to be a '
                             'percentage in [0, 100], found 250'),
    ("summarize: a run folder in a link loop", lambda w: (
        os.symlink(w / "l1", w / "l2"), os.symlink(w / "l2", w / "l1")),
     ["summarize", "{w}/l1/r"], "l1/r/metrics.json: is in a loop of symbolic links"),
    ("rebalance: online stage 2", lambda w: _run_dir(w, "r"),
     ["rebalance", "{w}/r", "stage2.features=online"],
     "override stage2.features=online: rebalance fits stage 2 on the run's cached features "
     "and never runs the network"),
    ("rebalance: per_class.csv a folder",
     lambda w: (_run_dir(w, "r"), (w / "r" / "per_class.csv").mkdir()),
     ["rebalance", "{w}/r"], "{w}/r/per_class.csv: a folder where rebalance writes the file; "
                             "move it away"),
    ("rebalance: a section set to null", lambda w: _run_dir(w, "r"),
     ["rebalance", "{w}/r", "stage2=null"], "override 'stage2=null': stage2 is a section; set "
                                            "its keys"),
    ("rebalance: fine-tuning", lambda w: _run_dir(w, "r"),
     ["rebalance", "{w}/r", "stage2.methods=[finetune]"],
     "stage2.methods: finetune re-runs the network on images, which 'rebalance' does not"),
    ("rebalance: an extract folder", lambda w: (_run_dir(w, "r"), (w / "r/manifest.json").unlink()),
     ["rebalance", "{w}/r"], "r: not a run directory (config.yaml but no manifest.json; a "
                             "folder written by extract?"),
    ("summarize: --json over a run's own file", _two_runs,
     ["summarize", "{w}/a", "{w}/b", "--json", "{w}/a/metrics.json", "--overwrite"],
     "a/metrics.json: inside the run folder"),
    ("extract: --out another run", _two_runs,
     ["extract", "{w}/a", "--out", "{w}/b", "--overwrite"],
     "b: a run folder (it holds manifest.json), whose config.yaml extract would replace"),
    ("summarize: --json empty", lambda w: _run_dir(w, "a"), ["summarize", "{w}/a", "--json", ""],
     "summarize: argument --json: expected a file name, found ''"),
    ("grid: --samplers empty", None, ["grid", CONFIG, "--samplers", ","],
     "--samplers: expected one or more comma-separated samplers, e.g. instance,class,sqrt, "
     "found ','"),
    ("an option given twice", None,
     ["grid", CONFIG, "--samplers", "instance", "--samplers", "class"],
     "option --samplers given twice; give it once"),
    ("rebalance: metrics.json not JSON", lambda w: (_run_dir(w, "r"),
                                                    _write(w / "r" / "metrics.json", "{bad")),
     ["rebalance", "{w}/r", "stage2.methods=[crt]"], "r/metrics.json:1:2: not valid JSON"),
    # --- options that would be silently overwritten, dropped or ignored -------------------
    ("summarize: --json onto another file", lambda w: (
        _run_dir(w, "a"), _run_dir(w, "b", 1), _write(w / "my_config.yaml", "seed: 1\n")),
     ["summarize", "{w}/a", "{w}/b", "--json", "{w}/my_config.yaml"],
     '/my_config.yaml: expected a new file or a summary written by summarize before (JSON of '
     '"runs" and "methods"), found another file; pass --overwrite to replace it'),
    ("summarize: --json a folder", _two_runs,
     ["summarize", "{w}/a", "{w}/b", "--json", "{w}/a"],
     "/a: expected a file name for the summary, found a folder"),
    ("summarize: --ignore of an unknown key", _two_runs,
     ["summarize", "{w}/a", "{w}/b", "--ignore", "data,stage1.epoch"],
     "summarize --ignore: expected config keys or sections, found unknown key stage1.epoch; "
     "did you mean stage1.epochs"),
    ("summarize: a file, not a run folder", lambda w: _write(w / "my_fmnist.yaml", "seed: 1\n"),
     ["summarize", "{w}/my_fmnist.yaml"],
     "/my_fmnist.yaml is a file, not a run folder; expected finished runs' folders"),
    ("grid: stage1.sampler besides --samplers", None,
     ["grid", CONFIG, "--samplers", "class", "stage1.sampler=sqrt"],
     "grid: override stage1.sampler=sqrt conflicts with --samplers class: grid sets "
     "stage1.sampler of each row from --samplers; drop the override, or put sqrt in --samplers"),
    ("grid: stage1.sampler with the default samplers", None,
     ["grid", CONFIG, "stage1.sampler=0.3"],
     "override stage1.sampler=0.3 conflicts with --samplers (default "
     "instance,class,sqrt,progressive)"),
    ("grid: stage1.loss besides --losses", None,
     ["grid", CONFIG, "--losses", "ce,balanced_softmax", "stage1.loss=logit_adjusted"],
     "grid: override stage1.loss=logit_adjusted conflicts with --losses ce,balanced_softmax"),
    ("make-split: ratio infinite", None,
     ["make-split", "fmnist", "--root", "{w}", "--out", "{w}/s", "--ratio", "inf"],
     "make-split --ratio: expected a finite number >= 1, found inf"),
    ("make-split: n-max, n-min and ratio", None,
     ["make-split", "fmnist", "--root", "{w}", "--out", "{w}/s", "--n-max", "8", "--n-min", "2",
      "--ratio", "4"], "make-split --ratio: expected at most two of --n-max, --n-min and "
                       "--ratio (ratio = n_max / n_min), found all three"),
    ("make-split: alpha without pareto", None,
     ["make-split", "fmnist", "--root", "{w}", "--out", "{w}/s", "--alpha", "3"],
     "make-split --alpha: expected only with --profile pareto (its shape), found --alpha 3 "
     "with --profile exponential"),
    ("make-split: --out over the --list it reads", None,
     ["make-split", "list", "--root", "{w}/d", "--list", "{w}/d/train.txt", "--out", "{w}/d",
      "--overwrite"], "/d: would write train.txt over the --list it reads"),
    ("make-split: --out over lists it did not write", lambda w: _write(w / "o" / "val.txt", "x"),
     ["make-split", "list", "--root", "{w}/d", "--list", "{w}/d/train.txt", "--out", "{w}/o",
      "--overwrite"], "o: holds val.txt that make-split did not write (no split.json), which it "
                      "would replace; choose another --out"),
    ("make-split: one class", lambda w: _write(w / "one.txt", "train/class_0/00000.png 0\n"
                                                              "train/class_0/00001.jpg 0\n"),
     ["make-split", "list", "--root", "{w}/d", "--list", "{w}/one.txt", "--out", "{w}/s"],
     "one.txt holds 1 class; expected at least 2"),
    ("make-split: list under another root", None,
     ["make-split", "list", "--root", "{w}", "--list", "{w}/d/train.txt", "--out", "{w}/s"],
     "make-split --root {w}: none of the first 12 images {w}/d/train.txt lists is there (e.g. "
     "{w}/train/"),
    ("make-split: --root a file", None,
     ["make-split", "fmnist", "--root", "{w}/d/train.txt", "--out", "{w}/s"],
     "train.txt: is a file, expected the source's folder"),
    ("make-split: alpha infinite", None, ["make-split", "fmnist", "--root", "{w}", "--out",
                                          "{w}/s", "--profile", "pareto", "--alpha", "inf"],
     "make-split --alpha: expected a number in [0.1, 1000] (ImageNet-LT's is 6), found inf"),
    ("make-split: --list with another source", None,
     ["make-split", "image_folder", "--root", "{w}", "--out", "{w}/s", "--list", "{w}/l.txt"],
     "make-split --list: expected only with the list source, found with image_folder"),
    ("features run with finetune", lambda w: make_feature_world(w / "f"),
     ["run", CONFIG, "data.kind=features", "data.root={w}/f", "data.train=train.npz",
      "data.val=val.npz", "data.test=test.npz", "stage2.methods=[crt,finetune]"],
     "config key stage2.methods: expected no finetune (it trains the network on images; "
     "data.kind: features has none), found ['crt', 'finetune']"),
    ("make-split image_folder: n-max above a class", lambda w: [
        _write(w / "pool" / c / f"{i}.png", "x") for c in "ab" for i in range(6)],
     ["make-split", "image_folder", "--root", "{w}/pool", "--out", "{w}/s", "--n-max", "50",
      "--val-per-class", "1", "--test-per-class", "1"],
     "make-split --n-max: expected at most 4, found 50: class a has 6 images, of which 1 val + "
     "1 test are set aside"),
    ("make-split: test-per-class of an array source", None,
     ["make-split", "fmnist", "--root", "{w}", "--out", "{w}/s", "--test-per-class", "10"],
     "make-split --test-per-class: expected only with the list and image_folder sources, "
     "found with fmnist"),
    ("path part over 255 bytes", None, ["run", "{w}/" + "a" * 300 + ".yaml"],
     "File name too long (a file or folder name over 255 bytes)"),
    ("--out in a loop of symbolic links", lambda w: (
        os.symlink(w / "lp1", w / "lp2"), os.symlink(w / "lp2", w / "lp1")),
     ["run", CONFIG, "--out", "{w}/lp1/run"], "lp1 is in a loop of symbolic links; remove the "
                                              "links or choose another --out"),
    ("a value of 100,000 characters", None, ["run", CONFIG, "stage1.sampler=" + "a" * 100000],
     "a" * 39 + "' (100002 characters)"),
    ("n_max below 1", None, ["run", CONFIG, "data.n_max=-1"],
     "config key data.n_max: expected an int >= 1 or null, found -1"),
    ("config key a list", lambda w: _write(w / "ck.yaml", "? [a, b]\n: 1\n"),
     ["run", "{w}/ck.yaml"], "ck.yaml:1: not valid YAML (expected a plain key, found a list)"),
    ("--out inside an image folder's root", None,
     ["run", CONFIG, "data.kind=image_folder", "data.root={w}/d/train", "--out",
      "{w}/d/train/run"], "/d/train, where data.kind image_folder reads every sub-folder as a "
                          "class (the run's folder would become one); choose an --out outside it"),
    ("config file a FIFO", lambda w: os.mkfifo(w / "p.yaml"), ["run", "{w}/p.yaml"],
     "p.yaml: config file is not a regular file (a FIFO, device or socket)"),
    ("config file a symbolic link loop", lambda w: os.symlink(w / "loop.yaml", w / "loop.yaml"),
     ["run", "{w}/loop.yaml"], "loop.yaml: config file is in a loop of symbolic links"),
    ("config file too large", lambda w: _write(w / "big.yaml", "seed: 0\n" * 40000),
     ["run", "{w}/big.yaml"], "big.yaml: 0.3 MB, too large for a config file"),
    ("weights file a FIFO", lambda w: os.mkfifo(w / "w.pt"), ["run", CONFIG,
                                                               "model.weights={w}/w.pt"],
     "w.pt is not a regular file (a FIFO, device or socket)"),
    ("weights file empty", lambda w: _write(w / "e.pt", b""),
     ["run", CONFIG, "model.weights={w}/e.pt"],
     "config key model.weights: {w}/e.pt: not a readable PyTorch file: it is empty (0 bytes)"),
    ("weights file of text", lambda w: _write(w / "t.pt", "weights\n"),
     ["run", CONFIG, "model.weights={w}/t.pt"],
     "t.pt: not a PyTorch file (torch.save writes a zip archive; this one starts with "
     "b'weights\\n')"),
    ("weights file a damaged zip", lambda w: _damaged_zip(w / "z.pt"),
     ["run", CONFIG, "model.weights={w}/z.pt"],
     "z.pt: not a readable PyTorch file: truncated or corrupt (the zip archive torch.save "
     "writes has no end)"),
    ("weights file an npz", lambda w: _npz(w / "w.npz"), ["run", CONFIG, "model.weights={w}/w.npz"],
     "w.npz: not a PyTorch file: a zip archive of fc.weight.npy, not one torch.save wrote"),
    ("mean of 3 channels for 1", None, ["run", CONFIG, "model.in_channels=1",
                                        "data.mean=[.5,.5,.5]", "data.std=[.2,.2,.2]"],
     "config key data.mean: expected 1 values (one per channel, model.in_channels), found "
     "[0.5, 0.5, 0.5]"),
    ("YAML 1.1 base-60 number", None, ["run", CONFIG, "seed=1:00"],
     "config key seed: expected int, found str '1:00'"),
    ("key with an empty part", None, ["run", CONFIG, ".seed=1"],
     "override '.seed=1': expected a dotted key without empty parts"),
    ("image size too large", None, ["run", CONFIG, "data.image_size=100000"],
     "config key data.image_size: expected an int in [8, 4096] or null, found 100000"),
    ("model width too large", None, ["run", CONFIG, "model.width=1000000"],
     "config key model.width: expected an int in [8, 1024]"),
    ("batch size beyond any memory", None, ["run", CONFIG, "eval.batch_size=" + "9" * 23],
     "config key eval.batch_size: expected an int in [1, 1048576]"),
    ("tau grid step beyond its end", None, ["run", CONFIG, "stage2.tau_norm.grid_step=1000"],
     "config key stage2.tau_norm.grid_step: expected at most grid_max (2): a larger step "
     "leaves tau 0 alone in the grid, found 1000.0"),
    ("tau grid too fine", None, ["run", CONFIG, "stage2.tau_norm.grid_step=1e-12"],
     "config key stage2.tau_norm.grid_step: expected > 0 and at least grid_max / 1000"),
    ("tau infinite", None, ["run", CONFIG, "stage2.logit_adjust.tau=inf"],
     "config key stage2.logit_adjust.tau: expected a number in [0, 10.0] or null, found inf"),
    ("std infinite", None, ["run", CONFIG, "data.std=[inf]", "data.mean=[0]"],
     "config key data.std: expected values in [0.001, 1]"),
    ("mean NaN", None, ["run", CONFIG, "data.std=[1]", "data.mean=[.nan]"],
     "config key data.mean: expected values in [0, 1]"),
    ("class names for a dataset that names its own", None,
     ["run", CONFIG, "data.class_names=names.txt"],
     "config key data.class_names: set, but data.kind fmnist_lt reads no class-name file"),
    ("bundled config with an unknown key", None, ["run", "configs/fmnist_lt.yaml",
                                                  "stage1.epoch=3"],
     "unknown config key stage1.epoch; did you mean stage1.epochs"),
]

# Bad data: found when the data is read, before the run directory exists.
DATA_CASES = [
    ("list file a FIFO", lambda w: ((w / "d/val.txt").unlink(), os.mkfifo(w / "d/val.txt")),
     "val.txt: list file is not a regular file (a FIFO, device or socket)"),
    ("list line without label", lambda w: _edit_list(w, "train", lambda x: [*x, "a.png"]),
     "train.txt:13: expected 'relative/path label'"),
    ("label not an integer", lambda w: _edit_list(w, "train", lambda x: [*x, "a.png one"]),
     "train.txt:13: expected an integer label, found 'one'"),
    ("label of 5000 digits",
     lambda w: _edit_list(w, "train", lambda x: [*x, "a.png " + "1" * 5000]),
     "train.txt:13: expected an integer label, found a number of 5000 digits"),
    ("negative label", lambda w: _edit_list(w, "train", lambda x: [*x, "a.png -1"]),
     "train.txt:13: expected a label >= 0, found -1"),
    ("label with a gap", lambda w: _edit_list(w, "train", lambda x: [*x, "a.png 17"]),
     "train.txt:13: label 17, but no training image has label 3..16"),
    ("val label training lacks",
     lambda w: _edit_list(w, "train", lambda x: [line for line in x if line[-2:] != " 1"]),
     "val.txt:3: label 1, but no training image has it (training lacks 1); every class needs "
     "training images: add some of label 1 to "),
    ("test label beyond the classes", lambda w: _edit_list(w, "test", lambda x: [*x, "a.png 5"]),
     "test.txt:13: label 5 is not below the class count 3"),
    ("duplicate list line", lambda w: _edit_list(w, "train", lambda x: [*x, x[0]]),
     "train.txt:13: train/class_0/00000.png is listed twice (first on line 1)"),
    ("one image spelled twice", lambda w: _edit_list(w, "train", lambda x: [*x, "./" + x[0]]),
     "train.txt:13: ./train/class_0/00000.png is listed twice (first on line 1)"),
    ("list not UTF-8", lambda w: _write(w / "d" / "val.txt", b"val/\xe9.png 0\n"),
     "val.txt:1: not UTF-8 text"),
    ("empty list", lambda w: _write(w / "d" / "val.txt", "\n"), "val.txt: no entries"),
    ("list file missing", lambda w: (w / "d" / "test.txt").unlink(),
     "test.txt: list file not found"),
    ("image missing", lambda w: (w / "d" / "train/class_0/00000.png").unlink(),
     "train.txt:1: image not found"),
    # a zero-width space: the path printed looked exactly like the image's
    ("path with a character that does not show",
     lambda w: _edit_list(w, "train", lambda x: [x[0].replace(".png", "\u200b.png"), *x[1:]]),
     "train.txt:1: image not found: '/"),
    ("list paths from another root", lambda w: _edit_list(w, "train", lambda x: [
        "images/" + line for line in x]),
     "nor any of the next listed images; list paths are relative to data.root: check that "
     "it is the folder they start from"),
    ("absolute list paths elsewhere", lambda w: _edit_list(w, "train", lambda x: [
        "/nowhere/" + line for line in x]),
     "train.txt:1: image not found: /nowhere/train/class_0/00000.png, nor any of the next listed "
     "images; absolute list paths are used as written: check that the images are at these "
     "paths"),
    ("Windows separators in a path", lambda w: _edit_list(w, "train", lambda x: [
        x[0].replace("/", "\\"), *x[1:]]),
     "(data.on_bad_image=skip leaves missing images out; the path has Windows separators (\\): "
     "write it with /)"),
    ("path outside the root", lambda w: _edit_list(w, "val", lambda x: [
        *x, "../outside.png 0"]), "val.txt:7: path"),
    ("symlink out of the root", lambda w: (w / "d" / "val" / "link.png").symlink_to(
        w / "outside.png") or _edit_list(w, "val", lambda x: [*x, "val/link.png 0"]),
     "is outside data.root"),
    ("val without a class", lambda w: _edit_list(w, "val", lambda x: [
        line for line in x if not line.endswith(" 2")]),
     "the val split has no image of classes [2]"),
    ("image not decodable", lambda w: _write(w / "d" / "train/class_0/00000.png", b"nope"),
     "train.txt:1: cannot decode image {w}/d/train/class_0/00000.png (not an image Pillow reads "
     "(it starts with b'nope')); data.on_bad_image=skip skips such images"),
    # (before: "not an image Pillow reads (it starts with b'\\x89PNG...')")
    ("image damaged", lambda w: _write(w / "d" / "train/class_0/00000.png",
                                       b"\x89PNG\r\n\x1a\n" + bytes(40)),
     "train.txt:1: cannot decode image {w}/d/train/class_0/00000.png (a PNG file Pillow cannot "
     "read: damaged (a bad checksum, cut short?)); data.on_bad_image=skip skips such images"),
    ("image empty", lambda w: _write(w / "d" / "train/class_0/00000.png", b""),
     "train.txt:1: cannot decode image {w}/d/train/class_0/00000.png (an empty file (0 bytes)); "
     "data.on_bad_image=skip skips such images"),
    ("one class only", lambda w: _edit_list(w, "train", lambda x: [
        line for line in x if line.endswith(" 0")]), "train.txt: expected at least 2 classes"),
    ("dataset folder missing", lambda w: shutil.rmtree(w / "d"),
     "config key data.root: folder not found"),
    ("list file a folder", lambda w: ((w / "d" / "test.txt").unlink(),
                                      (w / "d" / "test.txt").mkdir()),
     "d/test.txt: is a folder, expected a list file"),
    ("image path a folder", lambda w: ((w / "d" / "train/class_0/00000.png").unlink(),
                                       (w / "d" / "train/class_0/00000.png").mkdir()),
     "/d/train/class_0/00000.png is a folder, expected an image file"),
    ("dataset root a file", lambda w: (shutil.rmtree(w / "d"), _write(w / "d", "x")),
     "/d is a file, expected a folder"),
]


def _features(world: Path, split: str, change=None, name: str | None = None, **keys) -> None:
    """Rewrite feature file SPLIT.npz of the world: ``change(arrays)`` edits its arrays."""
    import numpy as np

    path = world / "f" / f"{split}.npz"
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    if change:
        change(arrays)
    arrays.update(keys)
    with open(world / "f" / (name or path.name), "wb") as f:
        np.savez(f, **arrays)


def np_set(array, index, value):
    array[index] = value
    return array


def _npz_raw_member(path: Path, key: str) -> None:
    """Rewrite .npz ``path`` with member ``key.npy`` replaced by a member ``key`` of raw bytes."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        members = {n: archive.read(n) for n in archive.namelist() if n != f"{key}.npy"}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        archive.writestr(key, b"12345")


def _set(key, index, value):
    def change(arrays):
        arrays[key] = arrays[key].copy()
        arrays[key][index] = value
    return change


FEATURES = ["data.kind=features", "data.root={w}/f", "data.train=train.npz",
            "data.val=val.npz", "data.test=test.npz"]

# Bad feature files (data.kind: features): found when they are read, before the run folder.
FEATURE_CASES = [
    ("features file missing", lambda w: (w / "f" / "test.npz").unlink(),
     "f/test.npz: features file not found (config key data.test"),
    ("features file of another format", lambda w: _write(w / "f" / "test.csv", "1,2\n"),
     "f/test.csv: expected a feature file ending in .npz, .pt, .safetensors, found '.csv'"),
    ("features file not readable", lambda w: _write(w / "f" / "val.npz", b"not a zip"),
     "f/val.npz: not an .npz file (expected a zip archive"),
    ("features key missing", lambda w: _features(w, "train", lambda a: a.update(
        feats=a.pop("features"))),
     "f/train.npz: no 'features'; expected keys features (N, D) and labels (N,), found "
     "['class_names', 'feats', 'labels']"),
    ("features not 2-d", lambda w: _features(w, "train", lambda a: a.update(
        features=a["features"][:, 0])),
     "f/train.npz: features: expected a 2-d (N, D) array, found shape (12,)"),
    ("integer features", lambda w: _features(w, "test", lambda a: a.update(
        features=a["features"].astype("int64"))),
     "f/test.npz: features: expected floating-point numbers, found torch.int64"),
    ("labels of another length", lambda w: _features(w, "train", lambda a: a.update(
        labels=a["labels"][:-1])),
     "f/train.npz: labels: expected shape (12,) (one per row of features), found (11,)"),
    ("labels not integers", lambda w: _features(w, "val", lambda a: a.update(
        labels=a["labels"].astype("float32"))),
     "f/val.npz: labels: expected integers, found torch.float32"),
    ("negative feature label", lambda w: _features(w, "train", _set("labels", 0, -1)),
     "f/train.npz: labels: expected labels >= 0, found -1 in row 0"),
    ("feature label beyond int64", lambda w: _features(w, "train", lambda a: a.update(
        labels=np_set(a["labels"].astype("uint64"), 2, 2**63 + 5))),
     "f/train.npz: labels: expected labels below the class count, found 9223372036854775813 "
     "in row 2"),
    ("npz member without .npy", lambda w: _npz_raw_member(w / "f" / "val.npz", "labels"),
     "f/val.npz: labels: expected an array (labels.npy, as np.savez writes), found a member "
     "'labels' of 5 raw bytes"),
    ("NaN in the features", lambda w: _features(w, "train", _set("features", (3, 1),
                                                                 float("nan"))),
     "f/train.npz: features: expected finite numbers, found NaN or infinity in row 3"),
    ("features of another dimension", lambda w: _features(w, "test", lambda a: a.update(
        features=a["features"][:, :3])),
     "f/test.npz: features have 3 dimensions, data.train's"),
    ("label beyond the class names", lambda w: _features(w, "test", _set("labels", 0, 3)),
     "f/test.npz: label 3 is not below the class count 3 (class_names has 3 names)"),
    ("class names that differ", lambda w: _features(
        w, "val", class_names=__import__("numpy").array(["a", "b", "x"])),
     "f/val.npz: class_names differ from those of"),
    ("fewer class names in one file", lambda w: _features(
        w, "val", class_names=__import__("numpy").array(["a", "b"])),
     "f/val.npz: class_names has 2 names, "),
    ("class names not UTF-8", lambda w: _features(
        w, "train", class_names=__import__("numpy").array([b"a", b"\xff", b"c"])),
     "f/train.npz: class_names: name 1 is not UTF-8 text (b'\\xff')"),
    ("negative group count", lambda w: _features(
        w, "train", group_counts=__import__("numpy").array([30, -10, 3])),
     "f/train.npz: group_counts: expected counts at least the training rows of each class "
     "(they count a class's images before val was taken out of them), found -10 for class 1, "
     "which has 4 training rows"),
    ("group counts below the training rows", lambda w: _features(
        w, "train", group_counts=__import__("numpy").array([6, 1, 2])),
     "f/train.npz: group_counts: expected counts at least the training rows of each class "
     "(they count a class's images before val was taken out of them), found 1 for class 1, "
     "which has 4 training rows"),
    ("training labels with a gap", lambda w: _features(w, "train", lambda a: a.update(
        labels=a["labels"] * (a["labels"] != 1))),
     "f/train.npz: no training row has label 1; labels must be 0..C-1 (C = 3), each used "
     "in training"),
    ("val features without a class", lambda w: _features(w, "val", lambda a: a.update(
        labels=a["labels"] % 2)), "f/val.npz: the val split has no row of classes [2]"),
    ("joint classifier with NaN", lambda w: _features(
        w, "train", joint_weight=__import__("numpy").full((3, 4), float("nan"), "float32")),
     "f/train.npz: joint_weight: expected finite numbers, found NaN or infinity in row"),
    ("string labels", lambda w: _features(w, "train", lambda a: a.update(
        labels=a["labels"].astype(str))), "f/train.npz: labels: expected numbers, found <U"),
    ("a folder named like a features file", lambda w: ((w / "f" / "val.npz").unlink(),
                                                        (w / "f" / "val.npz").mkdir()),
     "f/val.npz: is a folder, not a feature file (config key data.val)"),
    ("no class with two training rows to hold out as val", lambda w: (
        (w / "f" / "val.npz").unlink(),
        _features(w, "train", lambda a: a.update(features=a["features"][[0, 6, 10]],
                                                 labels=a["labels"][[0, 6, 10]]))),
     "f/train.npz: no class has more than one training item"),
    ("joint classifier of another shape", lambda w: _features(
        w, "train", joint_weight=__import__("numpy").zeros((3, 5), "float32")),
     "f/train.npz: joint_weight: expected shape (3, 4) (classes, feature dimensions), found "
     "shape (3, 5)"),
]


def make_feature_world(folder: Path) -> None:
    """Feature files of 3 classes, 4-d: train 6/4/2 rows, val 2 and test 3 per class."""
    import torch

    from longtail.data import write_feature_file

    for split, counts in (("train", [6, 4, 2]), ("val", [2, 2, 2]), ("test", [3, 3, 3])):
        labels = torch.repeat_interleave(torch.arange(3), torch.tensor(counts))
        features = torch.nn.functional.one_hot(labels, 4).float() + 0.1
        write_feature_file(folder / f"{split}.npz", features, labels, ["a", "b", "c"])


@pytest.fixture
def world(tmp_path: Path) -> Path:
    make_image_list_dataset(tmp_path / "d", counts=[6, 4, 2])
    (tmp_path / "outside.png").write_bytes((tmp_path / "d/train/class_0/00000.png").read_bytes())
    return tmp_path


def _argv(argv: list[str], world: Path) -> list[str]:
    return [a.replace("{w}", str(world)) for a in argv]


@pytest.mark.parametrize("case,setup,argv,expected", CASES, ids=[c[0] for c in CASES])
def test_cli_mistake_is_one_line_fast_and_leaves_nothing(world, case, setup, argv, expected):
    if setup:
        setup(world)
    before = sorted(p.relative_to(world) for p in world.rglob("*"))
    start = time.perf_counter()
    result, cpu = _run_measured([sys.executable, "-m", "longtail", *_argv(argv, world)],
                                cwd=world, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    elapsed = time.perf_counter() - start
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert expected.replace("{w}", str(world)) in lines[0], lines[0]
    assert result.stdout == ""
    assert sorted(p.relative_to(world) for p in world.rglob("*")) == before  # nothing left
    # The work the answer took (CPU seconds: no torch import, no data read), which a busy
    # machine does not inflate as it does the wall time; that only has to stay sane.
    assert cpu < 1.5 and elapsed < 15, f"{case}: {cpu:.2f} s of CPU, {elapsed:.2f} s"


def _run_measured(argv: list[str], **kwargs) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``argv`` (output captured) and return its result and its own CPU seconds (user +
    system, from wait4: no other child's). Its output is one line, so the pipes cannot fill."""
    import threading

    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          **kwargs) as child:
        guard = threading.Timer(60, child.kill)  # a hang fails the test, not the suite
        guard.start()
        _, status, usage = os.wait4(child.pid, 0)
        guard.cancel()
        child.returncode = os.waitstatus_to_exitcode(status)
        out, err = child.stdout.read(), child.stderr.read()
    return (subprocess.CompletedProcess(argv, child.returncode, out, err),
            usage.ru_utime + usage.ru_stime)


@pytest.mark.parametrize("case,setup,expected", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_is_one_line_and_leaves_nothing(world, capsys, case, setup, expected):
    setup(world)
    out = world / "run"
    code = main(["run", CONFIG, *_argv(LIST, world), "stage1.epochs=1", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert expected.replace("{w}", str(world)) in err, err
    assert not out.exists()


@pytest.mark.parametrize("case,setup,expected", FEATURE_CASES,
                         ids=[c[0] for c in FEATURE_CASES])
def test_bad_feature_file_is_one_line_and_leaves_nothing(world, capsys, case, setup, expected):
    make_feature_world(world / "f")
    setup(world)
    out = world / "run"
    argv = _argv(FEATURES, world)
    if case == "features file of another format":
        argv = [a.replace("test.npz", "test.csv") for a in argv]
    if case.startswith("no class with two"):  # no val file: val is held out of training
        argv = [a for a in argv if not a.startswith("data.val=")]
    code = main(["run", CONFIG, *argv, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert expected in err, err
    assert not out.exists()


def test_missing_images_are_skipped_when_asked(world, capsys):
    """data.on_bad_image=skip leaves out a listed image that does not exist (and says so)."""
    (world / "d" / "train/class_0/00000.png").unlink()
    from longtail.config import load_config
    from longtail.data import build_data

    cfg = load_config(CONFIG, [*_argv(LIST, world), "data.on_bad_image=skip"])
    data = build_data(cfg.data, 0, None)
    assert data.train_counts == [5, 4, 2]
    assert any("1 listed images are missing" in note for note in data.notes)


def test_no_out_in_a_read_only_working_directory(tmp_path):
    result = subprocess.run([sys.executable, "-m", "longtail", "run", CONFIG],
                            capture_output=True, text=True, cwd="/proc/1", timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 2 and "cannot write in /proc/1" in result.stderr


def test_fashion_mnist_missing_says_where_to_put_it(tmp_path, capsys):
    code = main(["run", CONFIG, f"data.root={tmp_path}/none", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "dataset-fashion-mnist" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_failure_after_the_run_folder_exists_removes_it(tmp_path, capsys, monkeypatch):
    """A run that fails before its first stage-1 checkpoint leaves no folder behind."""
    from longtail.stages import joint

    def broken(*args, **kwargs):
        raise joint.LongtailError("stage 1: simulated failure")

    monkeypatch.setattr("longtail.stages.joint.train_joint", broken)
    root = make_fake_fmnist(tmp_path / "f")
    out = tmp_path / "run"
    code = main(["run", CONFIG, f"data.root={root}", "data.n_max=40", "data.n_min=4",
                 "data.val_per_class=4", "--out", str(out)])
    assert code == 2 and "simulated failure" in capsys.readouterr().err
    assert not out.exists()


def test_a_full_disk_after_stage_1_says_how_to_continue(tmp_path, capsys, monkeypatch):
    from longtail.errors import LongtailError

    def full(*args, out_dir, **kwargs):
        raise LongtailError(f"{out_dir}/test.pt: cannot write (No space left on device)")

    monkeypatch.setattr("longtail.pipeline.extract_features", full)
    root = make_fake_fmnist(tmp_path / "f")
    out = tmp_path / "run"
    code = main(["run", CONFIG, f"data.root={root}", "data.n_max=40", "data.n_min=4",
                 "data.val_per_class=4", "stage1.epochs=1", "--out", str(out)])
    assert code == 2
    assert capsys.readouterr().err == (
        f"longtail: error: {out}/features/test.pt: cannot write (No space left on device); "
        f"once there is room, continue with: longtail run --resume {out}\n")
    assert (out / "stage1" / "last.pt").is_file()


def test_ctrl_c_says_how_to_resume(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("longtail.stages.joint.train_joint", interrupted)
    root = make_fake_fmnist(tmp_path / "f")
    out = tmp_path / "run"
    code = main(["run", CONFIG, f"data.root={root}", "data.n_max=40", "data.n_min=4",
                 "data.val_per_class=4", "--out", str(out)])
    assert code == 130
    assert f"continue with: longtail run --resume {out}" in capsys.readouterr().err


@pytest.mark.parametrize("error,said", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                  "allocate memory: you tried to allocate 40000000000 bytes. Error code 12"),
     "tried to allocate 37.3 GiB"),
    (RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.15 GiB total)"),
     "tried to allocate 20.00 GiB"),
    (MemoryError(), "out of memory")])
def test_out_of_memory_is_one_line_with_what_to_lower(tmp_path, capsys, monkeypatch, error,
                                                      said):
    def allocate(*args, **kwargs):
        raise error

    monkeypatch.setattr("longtail.stages.joint.train_joint", allocate)
    root = make_fake_fmnist(tmp_path / "f")
    code = main(["run", CONFIG, f"data.root={root}", "data.n_max=40", "data.n_min=4",
                 "data.val_per_class=4", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("longtail: error: out of memory") and said in err, err
    assert err.endswith("lower stage1.batch_size, eval.batch_size, data.image_size or "
                        "model.width"), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["LOCAL_RANK", "RANK"])
def test_a_process_index_that_is_no_number_is_one_line_before_torch(world, name):
    result, cpu = _run_measured([sys.executable, "-m", "longtail", "run", CONFIG],
                                cwd=world, env={**os.environ, "PYTHONPATH": str(ROOT / "src"),
                                                name: "abc"})
    assert result.returncode == 2 and cpu < 1.5, (result.stderr, cpu)
    assert result.stderr == (f"longtail: error: {name}: expected this process's index, an int "
                             f">= 0 (torchrun sets it), found 'abc'\n")


def test_written_files_follow_the_umask(tmp_path):
    from longtail.checkpoint import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600


def test_reliability_doc_lists_every_case():
    text = (ROOT / "docs" / "reliability.md").read_text()
    missing = [c[0] for c in [*CASES, *DATA_CASES, *FEATURE_CASES]
               if f"| {c[0]} |" not in text]
    assert not missing, f"docs/reliability.md lacks {missing}"


def test_summarize_json_replaces_only_an_earlier_summary(tmp_path, capsys):
    """--json never overwrites a file that summarize did not write, unless --overwrite."""
    import json

    runs = [str(_run_dir(tmp_path, "a")), str(_run_dir(tmp_path, "b", 1))]
    mine = _write(tmp_path / "my_config.yaml", "seed: 1\n")
    assert main(["summarize", *runs, "--json", str(mine)]) == 2
    assert mine.read_text() == "seed: 1\n"  # untouched
    assert "pass --overwrite" in capsys.readouterr().err
    summary = tmp_path / "s.json"
    assert main(["summarize", *runs, "--json", str(summary)]) == 0
    assert main(["summarize", *runs[:1], "--json", str(summary)]) == 0  # an earlier summary
    assert json.loads(summary.read_text())["runs"] == runs[:1]
    assert main(["summarize", *runs, "--json", str(mine), "--overwrite"]) == 0
    assert set(json.loads(mine.read_text())) == {"runs", "methods"}


def _pool(tmp_path: Path, per_class: int = 40) -> Path:
    from tests.conftest import make_image_folder

    return make_image_folder(tmp_path / "pool", per_class=[per_class] * 4, size=8)


def test_make_split_n_min_and_ratio_fix_n_max(tmp_path, capsys):
    """--n-min with --ratio (no --n-max) makes the largest class n_min x ratio, not all."""
    import json

    root, out = _pool(tmp_path), tmp_path / "s"
    base = ["make-split", "image_folder", "--root", str(root), "--val-per-class", "2",
            "--test-per-class", "2"]
    assert main([*base, "--out", str(out), "--n-min", "3", "--ratio", "10"]) == 0
    train = json.loads((out / "split.json").read_text())["counts"]["train"]
    assert max(train) == 30 and min(train) == 3
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "t"), "--n-min", "3", "--ratio", "20"]) == 2
    assert ("make-split --n-min 3 --ratio 20: expected a largest class (n_min x ratio) of at "
            "most 36 images, found 60") in capsys.readouterr().err
    # --ratio beyond n_max would leave the smallest class less than an image: not 1 silently
    assert main([*base, "--out", str(tmp_path / "u"), "--n-max", "10", "--ratio", "50"]) == 2
    assert ("make-split --ratio: expected at most 10, found 50: the smallest class would keep "
            "n_max / ratio < 1 image (--n-max 10)") in capsys.readouterr().err
    assert not (tmp_path / "t").exists() and not (tmp_path / "u").exists()
    # --n-min above what the smallest class gives, named with why
    assert main([*base, "--out", str(tmp_path / "v"), "--n-min", "50"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "make-split --n-min: expected at most 36, found 50 (n_max 36: class class_00 has 40 "
        "images, of which 2 val + 2 test are set aside)")
    assert main([*base, "--out", str(tmp_path / "w"), "--n-min", "1", "--ratio", "1e308"]) == 2
    assert "found 1e+308: class" in capsys.readouterr().err  # not 309 digits


def test_make_split_refuses_names_with_line_breaks_before_writing(tmp_path, capsys):
    """A file or class folder whose name holds a newline split its list line in two: an
    IndexError traceback, and under --overwrite half the files new, half the old split's."""
    import shutil

    root, out = _pool(tmp_path, per_class=12), tmp_path / "s"
    base = ["make-split", "image_folder", "--root", str(root), "--out", str(out),
            "--val-per-class", "2", "--test-per-class", "2", "--n-min", "1"]
    assert main(base) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    first = sorted((root / "class_00").iterdir())[0]
    odd = first.with_name("a\nb.png")
    shutil.copy(first, odd)
    capsys.readouterr()
    assert main([*base, "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"longtail: error: {str(odd)!r}: a name with a line break cannot go in a "
                   f"list file of 'path label' lines; rename it")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    odd.unlink()
    (root / "class_00").rename(root / "class\n00")
    assert main([*base, "--overwrite"]) == 2
    assert "class 'class\\n00': a name with a line break cannot go in classes.txt" in \
        capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_make_split_of_a_list_refuses_a_missing_image_it_would_choose(tmp_path, capsys):
    """A listed image that is not there failed only at `longtail run` of the split."""
    root, out = _pool(tmp_path, per_class=6), tmp_path / "s"
    images = sorted(root.rglob("*.png"))
    pool = tmp_path / "pool.txt"
    pool.write_text("".join(f"{p.relative_to(root)} {int(p.parent.name[-2:])}\n"
                            for p in images))
    images[7].unlink()
    images[20].unlink()
    args = ["make-split", "list", "--list", str(pool), "--root", str(root), "--out", str(out),
            "--val-per-class", "1", "--test-per-class", "1", "--n-min", "1"]
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == (
        f"longtail: error: {pool}:8: image not found: {images[7]} (1 more of the chosen "
        f"images too); the split would list it: fix or remove the line")
    assert not out.exists()


def test_make_split_paths_in_its_command_work_from_any_folder(tmp_path, capsys, monkeypatch):
    import json

    root = _pool(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["make-split", "image_folder", "--root", root.name, "--out", "s",
                 "--val-per-class", "2", "--test-per-class", "2"]) == 0
    usage = capsys.readouterr().out.splitlines()[-1]
    assert f"data.root={root} " in usage and f"data.train={tmp_path}/s/train.txt" in usage
    summary = json.loads((tmp_path / "s" / "split.json").read_text())
    assert summary["data_root"] == summary["source"]["root"] == str(root)


def test_make_split_without_test_names_no_test_txt(tmp_path, capsys):
    """--test-per-class 0: no test.txt, and the printed command does not name one (also not a
    test.txt left by an earlier split in the same --out)."""
    root, out = _pool(tmp_path, per_class=12), tmp_path / "s"
    args = ["make-split", "image_folder", "--root", str(root), "--out", str(out),
            "--val-per-class", "2", "--n-max", "8"]
    assert main([*args, "--test-per-class", "2"]) == 0 and (out / "test.txt").is_file()
    capsys.readouterr()
    assert main([*args, "--test-per-class", "0", "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert not (out / "test.txt").exists()
    assert "test.txt" not in printed.split("use it:")[1].splitlines()[0], printed
    assert "data.test=TEST_LIST" in printed and "wrote no test.txt" in printed


def _gpu_may_be_here() -> bool:
    import glob

    from longtail import cli

    patterns = getattr(cli, "GPU_DRIVER_FILES", ("/proc/driver/nvidia/version", "/dev/nvidia*"))
    return not sys.platform.startswith("linux") or any(map(glob.glob, patterns))


@pytest.mark.skipif(_gpu_may_be_here(), reason="a GPU driver is visible: cuda may be there")
@pytest.mark.parametrize("device,message", [
    ("cuda", "config key device: found 'cuda', but no GPU is available; use cpu"),
    ("cuda:0", "config key device: found 'cuda:0', but no GPU is available; use cpu"),
    ("mps", "config key device: found 'mps', but MPS is not available; use cpu")])
def test_a_missing_device_is_answered_before_torch(tmp_path, device, message):
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "longtail", "run", CONFIG,
         f"device={device}", "--out", str(tmp_path / "r")], capture_output=True, text=True,
        cwd=tmp_path, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    lines = [x for x in result.stderr.splitlines() if not x.startswith("import time:")]
    assert result.returncode == 2 and lines == [f"longtail: error: {message}"], result.stderr
    imported = [x.rsplit("|", 1)[-1].strip() for x in result.stderr.splitlines()]
    assert "torch" not in imported  # answered before torch was imported
    assert list(tmp_path.iterdir()) == []


def test_quick_device_check_defers_to_torch_when_unsure(tmp_path, monkeypatch):
    """cuda is refused without torch only on Linux with no GPU driver's files; mps only off
    macOS; auto and cpu never."""
    from longtail import cli
    from longtail.errors import LongtailError

    monkeypatch.setattr(cli, "GPU_DRIVER_FILES", (str(tmp_path / "nvidia*"),))
    monkeypatch.setattr(cli.sys, "platform", "linux")
    for device in ("auto", "cpu"):
        cli.check_device(device)
    with pytest.raises(LongtailError, match="found 'cuda:1', but no GPU is available"):
        cli.check_device("cuda:1")
    (tmp_path / "nvidia0").touch()  # a driver: torch decides
    cli.check_device("cuda")
    with pytest.raises(LongtailError, match="found 'mps', but MPS is not available"):
        cli.check_device("mps")
    monkeypatch.setattr(cli.sys, "platform", "darwin")
    cli.check_device("mps")
    monkeypatch.setattr(cli, "GPU_DRIVER_FILES", ())
    monkeypatch.setattr(cli.sys, "platform", "win32")  # no /dev to look at
    cli.check_device("cuda")


def test_quick_device_check_says_what_torch_would(monkeypatch):
    """The fast refusal is the same line as select_device's, after torch is imported."""
    import torch

    from longtail import cli, distributed
    from longtail.errors import LongtailError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(cli, "GPU_DRIVER_FILES", ())
    monkeypatch.setattr(cli.sys, "platform", "linux")
    for device in ("cuda", "cuda:0", "mps"):
        with pytest.raises(LongtailError) as slow:
            distributed.select_device(device)
        with pytest.raises(LongtailError) as quick:
            cli.check_device(device)
        assert str(quick.value) == str(slow.value)


def test_resume_points_to_rebalance_only_for_what_rebalance_takes(tmp_path):
    from longtail.config import load_config
    from longtail.errors import LongtailError
    from longtail.rundir import check_resumable

    run = _run_dir(tmp_path, "r")
    for change, offered in (("stage2.crt.epochs=3", True), ("stage2.lws.lr=0.1", True),
                            ("stage2.finetune.epochs=3", False),
                            ("stage2.methods=[crt,finetune]", False),
                            ("stage2.features=online", False)):
        with pytest.raises(LongtailError) as error:
            check_resumable(run, load_config(run / "config.yaml", [change], run=True))
        assert ("longtail rebalance" in str(error.value)) == offered, (change, error.value)
        assert "resume without changes, or start a new run" in str(error.value)
