"""Runs that survive crashes and bad input: resume, atomic files, caches, clear errors."""

import json
import os
import random
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from longtail.checkpoint import atomic_write_bytes, load_checkpoint
from longtail.cli import main
from longtail.config import FEATURE_METHODS
from longtail.errors import LongtailError
from tests.conftest import make_fake_fmnist, make_image_list_dataset

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "fmnist_lt.yaml")
TINY = ["model.width=8", "stage1.batch_size=16", "stage1.lr=0.05", "stage2.batch_size=32",
        "stage2.crt.epochs=2", "stage2.lws.epochs=2", "eval.batch_size=256",
        "stage1.min_steps=1", "stage2.min_steps=1"]  # the batches as given: fast


def fmnist_args(root: Path, *extra: str) -> list[str]:
    """The demo on a fake Fashion-MNIST, TINY, then ``extra`` (which replace TINY's keys: a key
    given twice is noted)."""
    given = {e.partition("=")[0] for e in extra}
    return [CONFIG, f"data.root={root}", "data.n_max=60", "data.n_min=2",
            "data.val_per_class=5", *(t for t in TINY if t.partition("=")[0] not in given),
            *extra]


def leftovers(folder: Path) -> list[str]:
    """Temporary files the atomic writer would leave if it failed to clean up."""
    return [p.name for p in folder.rglob(".*.tmp")] if folder.exists() else []


# --------------------------------------------------------------------------------------------
# Resume


def test_sigkill_in_a_middle_epoch_then_resume_gives_the_uninterrupted_metrics(tmp_path):
    root = make_fake_fmnist(tmp_path / "f", train_per_class=500, test_per_class=10)
    args = [CONFIG, f"data.root={root}", "data.n_max=480", "data.n_min=20",
            "data.val_per_class=5", *TINY, "stage1.epochs=4"]
    # one thread each: the uninterrupted run goes on beside the one that is killed
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "longtail", "run", *args]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    log = tmp_path / "whole.err"  # a file, not a pipe that could fill while nobody reads it
    with log.open("w") as sink:  # the child has its own copy of the file
        uninterrupted = subprocess.Popen([*cmd, "--out", str(whole)], env=env,
                                         stdout=subprocess.DEVNULL, stderr=sink)
    child = subprocess.Popen([*cmd, "--out", str(broken)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    checkpoint = broken / "stage1" / "last.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(random.Random(0).uniform(0.05, 0.3))  # a random step of epoch 2
    child.send_signal(signal.SIGKILL)
    child.wait()
    epoch = load_checkpoint(checkpoint)["epoch"]
    assert 1 <= epoch < 4 and not (broken / "metrics.json").exists(), "not killed mid-run"
    assert uninterrupted.wait() == 0, log.read_text()

    result = subprocess.run([*cmd, "--out", str(broken), "--resume", str(broken)], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"resuming stage 1 after epoch {epoch} of 4" in result.stdout
    a = json.loads((whole / "metrics.json").read_text())
    b = json.loads((broken / "metrics.json").read_text())
    assert a == b
    manifest = json.loads((broken / "manifest.json").read_text())
    assert len(manifest["resumed"]) == 1
    # the resume's seconds go with its entry; the killed first part recorded none
    assert "seconds" not in manifest and manifest["resumed"][0]["seconds"]["total"] > 0


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGHUP"])
def test_sigterm_stops_like_ctrl_c_and_says_how_to_resume(tmp_path, stop):
    # kill, timeout and Slurm's end of a job send SIGTERM, a closed terminal SIGHUP: one line
    # with the command that continues, the shell's status for the signal, and a run that
    # resumes
    root = make_fake_fmnist(tmp_path / "f", train_per_class=500, test_per_class=10)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "longtail", "run", CONFIG, f"data.root={root}",
           "data.n_max=480", "data.n_min=20", "data.val_per_class=5", *TINY,
           "stage1.epochs=30", "--out", str(out)]
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.time() + 120
    while not (out / "stage1" / "last.pt").exists() and child.poll() is None \
            and time.time() < deadline:
        time.sleep(0.01)
    child.send_signal(getattr(signal, stop))
    err = child.communicate()[1]
    assert child.returncode == 128 + getattr(signal, stop), err
    assert err.strip().splitlines()[-1] == (
        f"longtail: stopped by {stop}; continue with: longtail run --resume {out}"), err
    assert "Traceback" not in err and not (out / "metrics.json").exists()
    assert load_checkpoint(out / "stage1" / "last.pt")["epoch"] >= 1


def test_nohup_keeps_sighup_ignored():
    code = ("import signal; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
            "from longtail.cli import install_stop_handlers, _on_stop_signal; "
            "install_stop_handlers(); "
            "print(signal.getsignal(signal.SIGHUP) is signal.SIG_IGN, "
            "signal.getsignal(signal.SIGTERM) is _on_stop_signal)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, check=True)
    assert result.stdout.split() == ["True", "True"]


def test_two_runs_started_together_into_one_new_out_are_not_mixed(tmp_path, capsys,
                                                                   monkeypatch):
    """Neither of two runs into a new --out could lock it at its start; the second, with
    --overwrite, took the first's folder without the lock, removed its files and both wrote
    there (two runs' curves in one logs/, the first's results lost). Here the first makes
    the folder and holds it while the second reads its data: the second is refused and the
    first's files stay."""
    import longtail.data

    root = make_fake_fmnist(tmp_path / "f", train_per_class=60, test_per_class=5)
    out = tmp_path / "run"
    build = longtail.data.build_data
    holder = []

    def first_run_meanwhile(*args, **kwargs):
        data = build(*args, **kwargs)
        out.mkdir()
        (out / "manifest.json").write_text("{}")  # the first run's files
        holder.append(subprocess.Popen([sys.executable, "-c", (
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"),
            str(out)], stdout=subprocess.PIPE, text=True))
        assert holder[0].stdout.readline() == "locked\n"
        return data

    monkeypatch.setattr(longtail.data, "build_data", first_run_meanwhile)
    try:
        assert main(["run", CONFIG, f"data.root={root}", "data.n_max=50", "data.n_min=5",
                     "data.val_per_class=2", *TINY, "--out", str(out), "--overwrite"]) == 2
    finally:
        for child in holder:
            child.kill()
            child.wait()
    assert capsys.readouterr().err.strip() == (
        f"longtail: error: {out}: another longtail command is working in this folder; "
        f"wait until it ends (or stop it) and try again")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]


def test_a_second_make_split_into_the_same_out_is_refused(tmp_path, capsys):
    """Two make-splits into one new --out wrote one staging folder; one failed ('Directory
    not empty') and its clean-up removed the split the other had announced."""
    root = make_fake_fmnist(tmp_path / "f", train_per_class=30, test_per_class=3)
    out = tmp_path / "split"
    out.mkdir()  # made by the first, which holds it
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"),
        str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert main(["make-split", "fmnist", "--root", str(root), "--out", str(out),
                     "--n-max", "20", "--ratio", "4", "--val-per-class", "2"]) == 2
    finally:
        holder.kill()
        holder.wait()
    assert capsys.readouterr().err.strip() == (
        f"longtail: error: {out}: another longtail command is working in this folder; "
        f"wait until it ends (or stop it) and try again")
    assert out.is_dir() and not any(out.iterdir())  # the first's folder, left to it


def test_out_removed_by_another_commands_probe_is_probed_again(tmp_path, monkeypatch):
    """Two runs started at the same instant into one new --out: each makes the folder to
    probe it and removes it again; the one whose folder vanished said 'cannot write in
    .../out (No such file or directory)'."""
    from longtail import rundir

    probe, calls, out = rundir.probe_write, [], tmp_path / "new" / "out"

    def raced(folder):
        calls.append(folder)
        if len(calls) == 1:  # the other command's clean-up, between our mkdir and probe
            out.rmdir()
            out.parent.rmdir()
            raise FileNotFoundError(2, "No such file or directory")
        probe(folder)

    mkdir = Path.mkdir

    def made_first_by_the_other(folder, *args, **kwargs):
        if not calls:  # the other command's probe folders, made just before ours
            mkdir(folder, *args, **kwargs)
            raise FileExistsError(17, "File exists")
        mkdir(folder, *args, **kwargs)

    monkeypatch.setattr(rundir, "probe_write", raced)
    monkeypatch.setattr(Path, "mkdir", made_first_by_the_other)
    rundir.check_out_creatable(out)
    assert len(calls) == 2 and not (tmp_path / "new").exists()  # probed, nothing left


def test_no_second_command_works_in_a_run_folder_while_the_run_goes_on(tmp_path, capsys):
    root = make_fake_fmnist(tmp_path / "f", train_per_class=500, test_per_class=10)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = tmp_path / "run"
    args = [CONFIG, f"data.root={root}", "data.n_max=480", "data.n_min=20",
            "data.val_per_class=5", *TINY, "stage1.epochs=30"]
    child = subprocess.Popen([sys.executable, "-m", "longtail", "run", *args, "--out",
                              str(out)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "stage1" / "last.pt").exists() and child.poll() is None \
                and time.time() < deadline:
            time.sleep(0.01)
        said = (f"{out}: another longtail command is working in this folder; wait until it "
                f"ends (or stop it) and try again")
        for argv in (["run", "--resume", str(out)], ["rebalance", str(out)],
                     ["run", *args, "--out", str(out), "--overwrite"]):
            capsys.readouterr()
            assert main(argv) == 2, argv
            assert capsys.readouterr().err.strip() == f"longtail: error: {said}", argv
            # and at once: before torch is imported and the data read (CPU seconds)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            refused = subprocess.run([sys.executable, "-m", "longtail", *argv], env=env,
                                     capture_output=True, text=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            assert refused.returncode == 2 and refused.stderr == f"longtail: error: {said}\n"
            assert cpu < 1.5, (argv, cpu)
        # extract only reads, but the run has no features yet: it says to wait, not to
        # --resume (which the lock would refuse)
        capsys.readouterr()
        assert main(["extract", str(out), "--out", str(tmp_path / "feats")]) == 2
        assert capsys.readouterr().err.strip().endswith(
            f"features (it does not run the backbone); the run is still going there (another "
            f"longtail command holds {out}); try again when it ends")
        assert child.poll() is None  # the run itself goes on, its folder untouched
        assert (out / "config.yaml").is_file()
    finally:
        child.kill()
        child.wait()
    capsys.readouterr()
    main(["rebalance", str(out)])  # the lock ends with the process, killed or not
    err = capsys.readouterr().err
    assert "another longtail command" not in err and "longtail run --resume" in err


def test_the_out_probe_does_not_race_between_torchruns_processes(tmp_path, monkeypatch):
    """Every torchrun process checks --out; only rank 0 makes and removes the probe folders
    (two probes on the same new folder failed one process now and then: `File exists`), and
    a folder made meanwhile by another process is taken as it is, not an error."""
    from longtail.rundir import check_out_creatable

    out = tmp_path / "a" / "run"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    made = []
    real_mkdir = Path.mkdir
    monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: made.append(self)
                        or real_mkdir(self, *a, **k))
    check_out_creatable(out)
    assert made == [] and not (tmp_path / "a").exists()  # rank 1: nothing made
    monkeypatch.setenv("RANK", "0")

    def other_process_first(self, *a, **k):  # rank 0's mkdir loses the race for "a"
        real_mkdir(self, *a, **k)
        if self.name == "a":
            raise FileExistsError(17, "File exists", str(self))

    monkeypatch.setattr(Path, "mkdir", other_process_first)
    check_out_creatable(out)
    assert (tmp_path / "a").is_dir() and not out.exists()  # the other's folder stays; ours not
    # rank 1 looks whether --out holds files just as rank 0's probe removes it: not there
    # (was: a FileNotFoundError, 'run: No such file or directory', one test run in ~10)
    from longtail import rundir

    out.mkdir()
    monkeypatch.setattr(Path, "iterdir", lambda self: (_ for _ in ()).throw(
        FileNotFoundError(2, "No such file or directory", str(self))))
    rundir.check_run_dir(out, overwrite=False)


def test_the_stop_line_is_the_whole_answer_even_when_clean_up_complains():
    """SIGTERM (timeout, Slurm) also kills the DataLoader workers that decode images: the
    loader's clean-up then complained in ~20 lines after the stop line (`Exception ignored in
    ... __del__`), and multiprocessing's resource_sharer thread, whose workers left mid-way,
    printed a BrokenPipeError traceback through sys.excepthook. A stop silences what the
    clean-up says afterwards. (In a process of its own: pytest catches such complaints
    itself.)"""
    code = ("import gc, sys, threading, longtail.cli\n"
            "class Loader:  # as a DataLoader iterator whose workers were killed\n"
            "    def __del__(self):\n"
            "        raise RuntimeError('DataLoader worker (pid 1) is killed by signal')\n"
            "def stopped(args, argv):\n"
            "    loader = Loader()\n"
            "    raise KeyboardInterrupt\n"
            "def serve():  # as resource_sharer._serve: it reports through sys.excepthook\n"
            "    try:\n"
            "        raise BrokenPipeError(32, 'Broken pipe')\n"
            "    except Exception:\n"
            "        sys.excepthook(*sys.exc_info())\n"
            "longtail.cli._dispatch = stopped\n"
            f"code = longtail.cli.main(['config', {CONFIG!r}])\n"
            "gc.collect()\n"
            "thread = threading.Thread(target=serve)\n"
            "thread.start()\n"
            "thread.join()\n"
            "print(code)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=60)
    assert (result.stdout, result.stderr) == ("130\n", "longtail: interrupted\n")


def test_a_torchrun_environment_left_set_says_what_it_waits_for(fake_fmnist, tmp_path):
    # WORLD_SIZE=2 and MASTER_* left in the shell: the join waits for a second process that
    # never comes; within seconds a line says so and how to run one process
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "WORLD_SIZE": "2", "RANK": "0",
           "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    child = subprocess.Popen([sys.executable, "-m", "longtail", "run",
                              *fmnist_args(fake_fmnist, "stage1.epochs=1"), "--out",
                              str(tmp_path / "run")], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        line = child.stderr.readline()  # blocks until the note (or the end)
        # a stop is heard while it waits (the join blocks in C++, where it once went unheard)
        child.send_signal(signal.SIGTERM)
        rest = child.communicate(timeout=30)[1]
    finally:
        child.kill()
        child.wait()
    assert line.strip() == (f"note: waiting for all 2 processes (WORLD_SIZE) to join at "
                            f"127.0.0.1:{port}, this one rank 0; started by hand? unset "
                            f"WORLD_SIZE, RANK, MASTER_ADDR and MASTER_PORT to run one process")
    assert child.returncode == 143 and rest == ("longtail: stopped by SIGTERM; nothing was "
                                                "written\n"), rest
    assert not (tmp_path / "run").exists()


def test_a_reader_that_leaves_the_pipe_does_not_stop_the_work(fake_fmnist, tmp_path):
    # `longtail run ... | head -1`: the run goes on to its end (output after that is dropped)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "longtail", "run", *fmnist_args(fake_fmnist, "stage1.epochs=1"),
           "--out", str(out)]
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    assert child.stdout.readline()
    child.stdout.close()  # the reader leaves: the next write meets a closed pipe
    err = child.stderr.read()
    assert child.wait() == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert (out / "metrics.json").is_file()
    summary = subprocess.run(f"{shlex.quote(sys.executable)} -m longtail summarize "
                             f"{shlex.quote(str(out))} | head -c 10", shell=True, env=env,
                             capture_output=True, text=True)
    assert len(summary.stdout) == 10 and summary.stderr == "", summary


def test_resuming_a_finished_run_redoes_nothing(fake_fmnist, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["run", *fmnist_args(fake_fmnist, "stage1.epochs=1"), "--out", str(out)]) == 0
    before = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()

    from longtail.stages import inference

    def no_inference(*args, **kwargs):
        raise AssertionError("features were extracted again")

    monkeypatch.setattr(inference, "infer", no_inference)  # extract_features' own import
    assert main(["run", "--resume", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "resuming stage 1 after epoch 1 of 1" in printed
    assert printed.count(" reused in ") == len(FEATURE_METHODS) and " fitted in " not in printed
    assert json.loads((out / "metrics.json").read_text()) == before


def test_resume_before_the_first_epoch_ended_says_it_starts_over(fake_fmnist, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *fmnist_args(fake_fmnist, "stage1.epochs=1"), "--out", str(out)]) == 0
    before = json.loads((out / "metrics.json").read_text())
    for path in out.iterdir():  # as a run stopped within its first epoch leaves it
        if path.name not in ("config.yaml", "manifest.json"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    capsys.readouterr()
    assert main(["run", "--resume", str(out)]) == 0
    assert "resuming stage 1 from its start: no epoch had finished" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text()) == before


def test_resume_refuses_a_changed_config_or_changed_data(fake_fmnist, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *fmnist_args(fake_fmnist, "stage1.epochs=1"), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["run", *fmnist_args(fake_fmnist, "stage1.epochs=2"), "--resume",
                 str(out)]) == 2
    assert "stage1.epochs: 1 -> 2" in capsys.readouterr().err
    # Same config, but the dataset behind data.root changed.
    other = make_fake_fmnist(tmp_path / "other", train_per_class=90)
    assert main(["run", "--resume", str(out), f"data.root={other}"]) == 2
    assert "split differs from the one the run started with" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "nothing")]) == 2


def test_resume_with_a_checkpoint_of_another_class_count_is_refused(fake_fmnist, tmp_path,
                                                                    capsys):
    out = tmp_path / "run"
    assert main(["run", *fmnist_args(fake_fmnist, "stage1.epochs=1"), "--out", str(out)]) == 0
    state = load_checkpoint(out / "stage1" / "last.pt")
    state["model"]["fc.weight"] = state["model"]["fc.weight"][:7]
    state["model"]["fc.bias"] = state["model"]["fc.bias"][:7]
    torch.save(state, out / "stage1" / "last.pt")
    capsys.readouterr()
    assert main(["run", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "last.pt: class count does not match: fc.weight is (7, 64)" in err


def test_resume_rebalance_and_extract_from_another_directory_read_the_runs_own_data(
        tmp_path, monkeypatch, capsys):
    """Relative data paths are taken from where the run started (manifest.json's cwd)."""
    a, b = tmp_path / "a", tmp_path / "b"
    make_image_list_dataset(a / "imgs", counts=[30, 12, 6, 3])
    monkeypatch.chdir(a)
    assert main(["run", CONFIG, "data.kind=list", "data.root=imgs", "data.train=train.txt",
                 "data.val=imgs/val.txt", "data.test=test.txt", *TINY, "stage1.epochs=1",
                 "--out", "run"]) == 0
    # The same relative names from the new directory hold another dataset: not to be read.
    make_image_list_dataset(b / "imgs", counts=[5, 5, 5, 5])
    monkeypatch.chdir(b)
    capsys.readouterr()
    assert main(["run", "--resume", "../a/run"]) == 0, capsys.readouterr().err
    assert main(["rebalance", "../a/run", "stage2.methods=[crt]"]) == 0
    assert main(["extract", "../a/run", "--out", "x"]) == 0
    assert "split differs" not in capsys.readouterr().err
    # config.yaml keeps the paths as they were given
    assert "root: imgs\n  train: train.txt\n" in (a / "run" / "config.yaml").read_text()


# --------------------------------------------------------------------------------------------
# Caches


def test_feature_cache_is_keyed_by_weights_and_data(fake_fmnist, tmp_path, monkeypatch):
    from longtail.config import load_config
    from longtail.data import build_data
    from longtail.models import build_model
    from longtail.stages import features

    cfg = load_config(None, [f"data.root={fake_fmnist}", "data.n_max=40", "data.n_min=4",
                             "data.val_per_class=2"])
    data = build_data(cfg.data, seed=0)
    model = build_model("resnet10", 10, 1, 28, width=8)
    kwargs = dict(device=torch.device("cpu"), batch_size=128, num_workers=0,
                  out_dir=tmp_path / "features")
    first = features.extract_features(model, data, **kwargs)
    from longtail.stages import inference

    calls = []
    real_infer = inference.infer
    monkeypatch.setattr(inference, "infer", lambda *a, **k: calls.append(1) or real_infer(*a, **k))
    again = features.extract_features(model, data, **kwargs)
    assert not calls and torch.equal(again["train"].features, first["train"].features)
    with torch.no_grad():
        model.backbone.layer4[0].conv1.weight.mul_(2)  # new weights: new features
    changed = features.extract_features(model, data, **kwargs)
    assert len(calls) == 3 and not torch.equal(changed["test"].features, first["test"].features)
    other = build_data(cfg.data, seed=1)  # another split: the train features are redone
    features.extract_features(model, other, **kwargs)
    assert len(calls) == 5  # train and val (the test split is the same)


def test_rebalance_refuses_features_of_other_weights(fake_fmnist, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *fmnist_args(fake_fmnist, "stage1.epochs=1"), "--out", str(out)]) == 0
    state = load_checkpoint(out / "stage1" / "last.pt")
    state["model"]["backbone.conv1.weight"] += 1
    torch.save(state, out / "stage1" / "last.pt")
    capsys.readouterr()
    assert main(["rebalance", str(out)]) == 2
    err = capsys.readouterr().err
    assert "were not made by the backbone in" in err and "stage1/last.pt" in err


# --------------------------------------------------------------------------------------------
# Atomic files


def test_a_crash_mid_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    atomic_write_bytes(path, b"old contents")

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(LongtailError, match="metrics.json: cannot write .disk full"):
        atomic_write_bytes(path, b"new contents that never land")
    assert path.read_bytes() == b"old contents"
    assert leftovers(tmp_path) == []


def test_sigkill_during_writes_never_leaves_a_truncated_file(tmp_path):
    path = tmp_path / "big.bin"
    script = (f"from longtail.checkpoint import atomic_write_bytes\n"
              f"print('writing', flush=True)\n"
              f"i = 0\n"
              f"while True:\n"
              f"    atomic_write_bytes({str(path)!r}, bytes([i % 256]) * 4_000_000)\n"
              f"    i += 1\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    atomic_write_bytes(path, b"\xff" * 4_000_000)
    for delay in (0.05, 0.13, 0.21):
        child = subprocess.Popen([sys.executable, "-c", script], env=env,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "writing\n"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        data = path.read_bytes()
        assert len(data) == 4_000_000 and len(set(data)) == 1


# --------------------------------------------------------------------------------------------
# Bad input: one line, exit status 2, the file and line or the key, nothing left behind


def run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err
    assert err.count("\n") <= 1 and "Traceback" not in err
    return code, err


def list_args(root, files, *extra):
    return [CONFIG, "data.kind=list", f"data.root={root}", f"data.train={files['train']}",
            f"data.val={files['val']}", f"data.test={files['test']}", *TINY,
            "stage1.epochs=1", *extra]


@pytest.mark.parametrize("split,line,expected", [
    ("train", "train/class_0/00000.png", "train.txt:3: expected 'relative/path label'"),
    ("train", "train/class_0/00000.png x", "train.txt:3: expected an integer label, found 'x'"),
    ("train", "train/class_0/00000.png -3", "train.txt:3: expected a label >= 0, found -3"),
    ("test", "test/class_0/extra.png 4", "test.txt:3: label 4 is not below the class count 2"),
    ("train", "train/missing.png 0", "train.txt:3: image not found"),
    ("val", "../outside.png 0", "val.txt:3: path"),
])
def test_bad_list_lines(tmp_path, capsys, split, line, expected):
    root = tmp_path / "d"
    files = make_image_list_dataset(root, counts=[6, 3])
    (tmp_path / "outside.png").write_bytes((root / "train/class_0/00000.png").read_bytes())
    lines = files[split].read_text().splitlines()
    lines.insert(2, line)
    files[split].write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    code, err = run_cli(["run", *list_args(root, files), "--out", str(out)], capsys)
    assert code == 2 and expected in err
    assert not out.exists()


def test_paths_outside_the_root_are_allowed_when_asked(tmp_path, capsys):
    root = tmp_path / "d"
    files = make_image_list_dataset(root, counts=[6, 3])
    (tmp_path / "outside.png").write_bytes((root / "train/class_0/00000.png").read_bytes())
    files["train"].write_text(files["train"].read_text() + "../outside.png 0\n")
    from longtail.config import load_config
    from longtail.data import build_data

    cfg = load_config(None, list_args(root, files, "data.allow_outside_root=true")[1:])
    assert build_data(cfg.data, seed=0).train_counts == [7, 3]


def test_class_without_training_images(tmp_path, capsys):
    root = tmp_path / "d"
    files = make_image_list_dataset(root, counts=[6, 3, 2])
    for path in files.values():  # label 1 gone from every split: a gap remapping closes
        path.write_text(path.read_text().replace(" 1\n", " 2\n"))
    code, err = run_cli(["run", *list_args(root, files), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "train.txt:7: label 2, but no training image has label 1;" in err
    assert "data.remap_labels=true" in err
    from longtail.config import load_config
    from longtail.data import build_data

    cfg = load_config(None, list_args(root, files, "data.remap_labels=true")[1:])
    assert build_data(cfg.data, seed=0).train_counts == [6, 5]  # as the hint says


def write_broken_image(root: Path, files: dict[str, Path]) -> None:
    first = files["train"].read_text().split()[0]
    (root / first).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")


def test_undecodable_image_is_found_at_start_when_decoded_in_memory(tmp_path, capsys):
    root = tmp_path / "d"
    files = make_image_list_dataset(root, counts=[6, 3])
    write_broken_image(root, files)
    out = tmp_path / "run"
    code, err = run_cli(["run", *list_args(root, files, "data.in_memory=true"), "--out",
                         str(out)], capsys)
    assert code == 2 and "train.txt:1: cannot decode image" in err and not out.exists()


def test_undecodable_image_found_while_training_in_a_worker(tmp_path, capsys):
    root = tmp_path / "d"
    files = make_image_list_dataset(root, counts=[12, 6])
    first = files["train"].read_text().splitlines()[0]
    lines = files["train"].read_text().splitlines()
    files["train"].write_text("\n".join(lines[1:] + [first]) + "\n")  # not the first image
    (root / first.split()[0]).write_bytes(b"\xff\xd8\xff broken jpeg")
    out = tmp_path / "run"
    code, err = run_cli(["run", *list_args(root, files, "data.in_memory=false",
                                           "data.num_workers=1"), "--out", str(out)], capsys)
    assert code == 2 and f"train.txt:{len(lines)}: cannot decode image" in err
    assert "data.on_bad_image=skip" in err
    assert not (out / "metrics.json").exists() and leftovers(out) == []


def test_undecodable_images_can_be_skipped_and_counted(tmp_path, capsys):
    root = tmp_path / "d"
    files = make_image_list_dataset(root, counts=[12, 6])
    write_broken_image(root, files)
    out = tmp_path / "run"
    assert main(["run", *list_args(root, files, "data.on_bad_image=skip",
                                   "data.in_memory=true"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    skipped = next(line for line in printed.splitlines() if "could not be decoded" in line)
    first = files["train"].read_text().split()[0]  # the broken one, named by its list line
    assert skipped == (f"note: {files['train']}: skipped 1 image(s) that could not be decoded "
                       f"(data.on_bad_image=skip): {files['train']}:1 ({root / first})"), skipped
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"]["train_counts"] == [11, 6]
    # ... and when decoded on the fly, each epoch counts what it skipped.
    out2 = tmp_path / "run2"
    assert main(["run", *list_args(root, files, "data.on_bad_image=skip",
                                   "data.in_memory=false", "data.num_workers=0",
                                   "stage1.batch_size=4"), "--out", str(out2)]) == 0
    printed = capsys.readouterr().out
    assert "warning: skipped 1 undecodable images in epoch 1" in printed
    # ... and so does the extraction of each split's features (a val or test image too)
    assert ("warning: features train: 1 of 18 images could not be decoded and are left out "
            "(data.on_bad_image=skip)") in printed
    assert printed.count("are left out") == 1  # once, by the extraction


def test_missing_dataset_folder(tmp_path, capsys):
    files = {k: tmp_path / f"{k}.txt" for k in ("train", "val", "test")}
    code, err = run_cli(["run", *list_args(tmp_path / "nowhere", files), "--out",
                         str(tmp_path / "o")], capsys)
    assert code == 2 and "config key data.root: folder not found" in err


def test_weights_of_another_feature_size(fake_fmnist, tmp_path, capsys):
    from longtail.models import build_model

    path = tmp_path / "w.pt"
    torch.save(build_model("resnet10", 10, 1, 28, width=16).state_dict(), path)
    out = tmp_path / "run"
    code, err = run_cli(["run", *fmnist_args(fake_fmnist, f"model.weights={path}"), "--out",
                         str(out)], capsys)
    assert code == 2 and "w.pt: tensor backbone.conv1.weight has shape (16, 1, 7, 7)" in err


def test_pickled_weights_are_refused(fake_fmnist, tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)
    code, err = run_cli(["run", *fmnist_args(fake_fmnist, f"model.weights={path}"), "--out",
                         str(tmp_path / "o")], capsys)
    assert code == 2 and "evil.pt: refused to load" in err and "full pickle" in err


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(fake_fmnist, tmp_path, capsys,
                                                           monkeypatch):
    import torch.nn.functional as F

    calls = {"n": 0}
    real = F.cross_entropy

    def poisoned(logits, labels):  # 2 steps per epoch: finite for 5 steps, then NaN
        calls["n"] += 1
        loss = real(logits, labels)
        return loss * float("nan") if calls["n"] > 5 else loss

    monkeypatch.setattr(F, "cross_entropy", poisoned)  # what stage 1's loss calls
    out = tmp_path / "run"
    code, err = run_cli(["run", *fmnist_args(fake_fmnist, "stage1.epochs=3",
                                             "stage1.batch_size=64"), "--out", str(out)], capsys)
    assert code == 2
    assert "loss is nan at epoch 3, step 2" in err and "last.pt (epoch 2)" in err
    assert load_checkpoint(out / "stage1" / "last.pt")["epoch"] == 2
    assert not (out / "metrics.json").exists()

    # as on a GPU, checked every 10 steps: the NaN of a step between checks is still found
    # before the epoch's checkpoint, which stays the last good one
    import longtail.stages.joint

    monkeypatch.setattr(longtail.stages.joint, "NAN_CHECK_EVERY", {"cpu": 10})
    calls["n"] = 0
    code, err = run_cli(["run", *fmnist_args(fake_fmnist, "stage1.epochs=3",
                                             "stage1.batch_size=64"), "--out", str(out),
                         "--overwrite"], capsys)
    assert code == 2
    assert ("loss is nan by epoch 3, step 2 (checked every 10 steps)" in err
            and "last.pt (epoch 2)" in err)
    assert load_checkpoint(out / "stage1" / "last.pt")["epoch"] == 2


def test_manifest_records_what_reproduces_the_run(fake_fmnist, tmp_path):
    out = tmp_path / "run"
    assert main(["run", *fmnist_args(fake_fmnist, "stage1.epochs=1", "seed=7"), "--out",
                 str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"][:2] == ["longtail", "run"] and "seed=7" in manifest["command"]
    assert manifest["seed"] == 7 and manifest["config"]["seed"] == 7
    assert set(manifest["versions"]) >= {"longtail", "torch", "torchvision", "python"}
    assert "git_commit" in manifest
    assert set(manifest["split_sha256"]) == {"train", "val", "test"}
    assert all(len(h) == 64 for h in manifest["split_sha256"].values())


def test_yaml_is_loaded_safely(tmp_path):
    from longtail.config import ConfigError, load_config

    path = tmp_path / "c.yaml"
    path.write_text("seed: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_numpy_global_rng_is_not_used_by_the_split(fake_fmnist):
    from longtail.config import load_config
    from longtail.data import build_data

    np.random.seed(0)
    expected = np.random.rand()
    np.random.seed(0)
    build_data(load_config(None, [f"data.root={fake_fmnist}", "data.n_max=40",
                                  "data.n_min=4"]).data, seed=0)
    assert np.random.rand() == expected


def test_overwrite_removes_the_replaced_runs_files_and_only_those(tmp_path):
    from longtail.pipeline import prepare_run_dir

    run = tmp_path / "run"
    for name in ("stage2/lws.pt", "logs/events.out.tfevents.1", "metrics.json", "notes.txt"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("old")
    with pytest.raises(LongtailError, match="pass --overwrite"):
        prepare_run_dir(run, overwrite=False)
    (run / "manifest.json").write_text("{}")  # not a run yet: --overwrite deletes nothing
    (run / "manifest.json").unlink()
    prepare_run_dir(run, overwrite=True)
    assert (run / "logs" / "events.out.tfevents.1").is_file()
    (run / "manifest.json").write_text("{}")  # a run's folder: its own files go
    prepare_run_dir(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]  # not longtail's: kept


def test_stage2_cache_key_does_not_depend_on_the_method_list(fake_fmnist):
    """rebalance rewrites config.yaml's method list: the cached results stay valid."""
    from dataclasses import replace

    from longtail.config import load_config
    from longtail.pipeline import _stage2_key
    from longtail.stages.features import FeatureSet

    cfg = load_config(None, ["stage2.methods=[crt]"])
    more = replace(cfg, stage2=replace(cfg.stage2, methods=["joint", "crt", "finetune_last"]))
    other = replace(cfg, stage2=replace(cfg.stage2, batch_size=64))
    feats = {"train": FeatureSet(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), "k")}
    key = [_stage2_key("crt", c, feats, torch.ones(2, 3), None) for c in (cfg, more, other)]
    assert key[0] == key[1] != key[2]
    # a method's key covers its own settings only (balms and las take cRT's)
    crt_lr = replace(cfg, stage2=replace(cfg.stage2, crt=replace(cfg.stage2.crt, lr=0.5)))
    for name, same in (("tau_norm", True), ("ncm_cosine", True), ("lws", True),
                       ("balms", False), ("las", False)):
        keys = [_stage2_key(name, c, feats, torch.ones(2, 3), None) for c in (cfg, crt_lr)]
        assert (keys[0] == keys[1]) is same, name


def test_a_rebalancer_refusing_the_runs_features_is_one_line(fake_fmnist, tmp_path,
                                                              monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(["run", *fmnist_args(fake_fmnist, "stage1.epochs=1",
                                     "stage2.methods=[joint,crt]"), "--out", str(out)]) == 0
    from longtail.stages import rebalance

    def refuses(*args, **kwargs):
        raise ValueError("features: expected finite numbers, found NaN or infinity in row 7")

    monkeypatch.setattr(rebalance.CRT, "fit", refuses)
    capsys.readouterr()
    assert main(["rebalance", str(out), "stage2.methods=[crt]", "stage2.crt.epochs=3"]) == 2
    assert capsys.readouterr().err == ("longtail: error: stage 2, crt: features: expected finite "
                                       "numbers, found NaN or infinity in row 7\n")


def test_rebalance_of_a_read_only_run_folder_is_one_line(tmp_path, monkeypatch, capsys):
    import errno
    import tempfile

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "manifest.json").write_text("{}")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert main(["rebalance", str(run)]) == 2
    err = capsys.readouterr().err
    assert err == (f"longtail: error: {run}: cannot write in the run folder (Read-only file "
                   f"system); rebalance writes stage2/, metrics.json and the report there: copy "
                   f"the run folder somewhere writable\n")


def test_the_resource_sharer_threads_connection_errors_are_dropped(monkeypatch, capsys):
    """A DataLoader worker's resource_sharer thread reports a main process that left
    mid-transfer through sys.excepthook (a BrokenPipeError traceback after the stop line):
    dropped; any other error, and the same error elsewhere, still reaches the hook."""
    import longtail.cli as cli

    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    cli._quiet_fd_sharing_errors()
    cli._quiet_fd_sharing_errors()  # once: main() may run many times in one process
    assert sys.excepthook.longtail_quiet

    def raised_in(filename: str, error: BaseException):
        code = compile("def serve(error):\n    raise error\n", filename, "exec")
        scope: dict = {}
        exec(code, scope)
        try:
            scope["serve"](error)
        except BaseException as e:
            return type(e), e, e.__traceback__.tb_next  # the traceback from serve's frame

    sharer = os.path.join("/usr/lib/python3.11/multiprocessing", "resource_sharer.py")
    sys.excepthook(*raised_in(sharer, BrokenPipeError(32, "Broken pipe")))
    sys.excepthook(*raised_in(sharer, ConnectionResetError(104, "reset by peer")))
    assert capsys.readouterr().err == ""
    sys.excepthook(*raised_in(sharer, ValueError("a real bug")))
    sys.excepthook(*raised_in("/work/mine.py", BrokenPipeError(32, "Broken pipe")))
    err = capsys.readouterr().err
    assert "ValueError: a real bug" in err and "BrokenPipeError" in err


def test_a_torch_compile_failure_is_one_line_naming_stage1_compile():
    """stage1.compile=true without a C++ compiler (CPU) or Triton (GPU): torch's 159-line
    traceback becomes one line; another error of the step passes through as it is."""
    import torch
    from torch._inductor.exc import InvalidCxxCompiler

    from longtail.errors import LongtailError
    from longtail.stages.joint import _compile_failure

    said = _compile_failure(InvalidCxxCompiler(), torch.device("cpu"))
    assert isinstance(said, LongtailError)
    assert str(said) == ("stage1.compile=true: torch.compile failed on cpu (No working C++ "
                         "compiler found in torch._inductor.config.cpp.cxx: (None, 'g++')); set "
                         "stage1.compile=false to train without it")
    other = RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    assert _compile_failure(other, torch.device("cpu")) is None


def test_a_home_that_cannot_be_written_leaves_the_report_quiet():
    """matplotlib warned in two lines on every run and rebalance that it could not make its
    cache folder under HOME (a service account's /nonexistent, a read-only HOME)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME",
                                                             "XDG_CACHE_HOME")}
    env.update(HOME="/dev/null", PYTHONPATH=str(ROOT / "src"))
    result = subprocess.run(
        [sys.executable, "-c", "from longtail.report import plot_png\n"
         "assert plot_png(lambda ax: ax.plot([1, 2])).startswith(b'\\x89PNG')"],
        env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_a_full_disk_under_extract_or_make_split_names_the_folder_and_leaves_nothing(
        tmp_path, capsys, monkeypatch):
    """A write that fails without a file name (a full disk) said only 'No space left on
    device', and extract left its empty --out folder behind."""
    import errno

    import longtail.data.makesplit
    import longtail.extract
    from longtail.cli import main
    from tests.conftest import make_fake_fmnist, tiny_fmnist_run

    def full(*args, **kwargs):
        out = Path(args[2]) if len(args) > 2 else Path(args[0].out)
        (out / "part").mkdir(parents=True)
        (out / "part" / "x.png").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    run = tiny_fmnist_run(tmp_path / "r", "stage2.methods=[joint]")
    monkeypatch.setattr(longtail.extract, "extract_run", full)
    capsys.readouterr()
    assert main(["extract", str(run), "--out", str(tmp_path / "a" / "b")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"longtail: error: extract --out {tmp_path / 'a' / 'b'}: cannot write the files (No "
        f"space left on device)")
    assert not (tmp_path / "a").exists()
    monkeypatch.setattr(longtail.data.makesplit, "make_split", full)
    (tmp_path / "empty").mkdir()
    assert main(["make-split", "fmnist", "--root", str(make_fake_fmnist(tmp_path / "f")),
                 "--out", str(tmp_path / "empty"), "--n-max", "20", "--n-min", "2"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"longtail: error: make-split --out {tmp_path / 'empty'}: cannot write the split (No "
        f"space left on device)")
    assert list((tmp_path / "empty").iterdir()) == []  # an empty folder given stays, empty
