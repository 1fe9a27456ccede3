"""What a pip-installed longtail needs outside the repository (its bundled configs), shell-safe
command hints, the manifest's git commit, the stage-2 summary of methods fitted on images, and
the package's listed public names."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import longtail
from longtail.cli import BUNDLED_CONFIGS, bundled_configs, main
from longtail.config import load_config
from longtail.pipeline import git_commit
from longtail.rundir import resume_command
from tests.conftest import make_fake_fmnist, make_image_list_dataset
from tests.test_end_to_end import ROOT, TINY

CONFIG = str(ROOT / "configs" / "fmnist_lt.yaml")
ODD = "int sp2 ö"  # a folder name a shell splits


def test_repository_configs_are_the_bundled_ones():
    assert (ROOT / "configs").resolve() == BUNDLED_CONFIGS.resolve()  # one copy
    assert {"fmnist_lt", "features", "imagenet_lt_resnext50"} <= set(bundled_configs())


@pytest.mark.parametrize("name", ["fmnist_lt", "fmnist_lt.yaml", "configs/fmnist_lt.yaml"])
def test_a_bundled_config_by_name_where_there_is_no_configs_folder(name, tmp_path, capsys,
                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["config", name, "seed=3"]) == 0
    out, err = capsys.readouterr()
    assert err == "note: using longtail's bundled config fmnist_lt.yaml\n"
    # `longtail config NAME > my.yaml` is a copy to edit: the same config
    (tmp_path / "my.yaml").write_text(out)
    assert load_config(tmp_path / "my.yaml") == load_config(CONFIG, ["seed=3"])


@pytest.mark.parametrize("name, missing", [
    ("imagenet_lt_resnext50", "config key data.root: expected the dataset folder"),
    ("cifar100_lt_resnet32", "config key data.root: expected the dataset folder"),
    ("places_lt_resnet152", "config key model.weights: expected a file of pretrained weights")])
def test_config_writes_a_paper_config_whose_data_is_still_to_give(name, missing, tmp_path,
                                                                   capsys, monkeypatch):
    """`longtail config NAME > my.yaml` is how a pip user gets a config to edit: it is written
    with data.root (and model.weights) empty, with a note; a run of it asks for them."""
    monkeypatch.chdir(tmp_path)
    assert main(["config", name]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines()[-1].startswith(f"note: fill in before 'longtail run': {missing}")
    assert "config key data.root: expected the dataset folder" in err  # every one, one line
    (tmp_path / "my.yaml").write_text(out)
    assert main(["run", "my.yaml"]) == 2
    assert missing in capsys.readouterr().err


def test_a_bundled_name_that_is_also_a_folder_here(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fmnist_lt").mkdir()  # e.g. an earlier `--out fmnist_lt`
    assert main(["config", "fmnist_lt"]) == 0
    assert capsys.readouterr().err == "note: using longtail's bundled config fmnist_lt.yaml\n"


def test_out_through_a_folder_not_made_yet(tmp_path, monkeypatch):
    from longtail.rundir import check_out_creatable

    monkeypatch.chdir(tmp_path)
    check_out_creatable(Path("new/../out"))  # as mkdir(parents=True) takes it
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_a_config_neither_file_nor_bundled_lists_the_bundled(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in (["run", "fmnist"], ["grid", "fmnist"], ["config", "fmnist"],
                    # a missing file in another folder is not taken for the bundled one
                    ["run", str(tmp_path / "fmnist_lt.yaml")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "config file not found; expected a YAML file or a " \
               "bundled config: " in err and "fmnist_lt, imagenet_lt_resnet10" in err, err
    assert not (tmp_path / "runs").exists()


def test_a_wheel_ships_the_configs_and_finds_them_outside_the_repository(tmp_path):
    pytest.importorskip("setuptools")  # built without isolation: nothing is downloaded
    source = tmp_path / "src-copy"  # a copy: building writes build/ and egg-info beside it
    shutil.copytree(ROOT / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "whl"), str(source)], check=True,
                   capture_output=True)
    (wheel,) = (tmp_path / "whl").glob("longtail-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        assert "longtail/configs/fmnist_lt.yaml" in z.namelist()
        z.extractall(site)
    work = tmp_path / "elsewhere"  # no configs/ here: the --help epilog's example still runs
    work.mkdir()
    code = ("import sys, longtail.cli as c; print(c.__file__, file=sys.stderr); "
            "sys.exit(c.main(['config', 'configs/fmnist_lt.yaml']))")
    result = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(str(site)), result.stderr  # the wheel's, not the checkout's
    assert "note: using longtail's bundled config fmnist_lt.yaml" in result.stderr
    assert "kind: fmnist_lt" in result.stdout


def test_resume_hints_are_quoted_for_the_shell(tmp_path, capsys, monkeypatch):
    assert shlex.split(resume_command(Path(f"/tmp/x/{ODD}")))[-1] == f"/tmp/x/{ODD}"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("longtail.stages.joint.train_joint", interrupted)
    root = make_fake_fmnist(tmp_path / "f")
    out = tmp_path / ODD
    code = main(["run", CONFIG, f"data.root={root}", "data.n_max=40", "data.n_min=4",
                 "data.val_per_class=4", "--out", str(out)])
    assert code == 130
    hint = capsys.readouterr().err.strip().split("continue with: ")[1]
    assert shlex.split(hint) == ["longtail", "run", "--resume", str(out)]


def test_extract_usage_line_is_quoted(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "manifest.json").write_text("{}")
    monkeypatch.setattr("longtail.extract.extract_run", lambda *args: {})
    out = tmp_path / ODD
    assert main(["extract", str(run), "--out", str(out)]) == 0
    usage = capsys.readouterr().out.split("use it: ")[1]
    assert shlex.split(usage) == ["longtail", "run", str(out / "config.yaml")]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_commit_is_longtails_own_only(tmp_path):
    ours = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    if ours:  # a git checkout of longtail (not an unpacked sdist)
        assert git_commit() == ours
    # installed into a venv inside the user's own repository, or vendored into it
    user = tmp_path / "user"
    for package in (user / ".venv" / "lib" / "site-packages" / "longtail",
                    user / "src" / "longtail"):
        package.mkdir(parents=True)
        shutil.copy(ROOT / "src" / "longtail" / "__init__.py", package)
    (user / "pyproject.toml").write_text('[project]\nname = "mine"\n')
    env = {**os.environ, "GIT_AUTHOR_NAME": "u", "GIT_AUTHOR_EMAIL": "u@x",
           "GIT_COMMITTER_NAME": "u", "GIT_COMMITTER_EMAIL": "u@x"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "mine"]):
        subprocess.run(["git", *args], cwd=user, env=env, check=True, capture_output=True)
    assert git_commit(user / ".venv" / "lib" / "site-packages" / "longtail") is None
    assert git_commit(user / "src" / "longtail") is None
    assert git_commit(tmp_path) is None  # no repository at all


def test_finetune_select_names_its_key_and_summary_times_the_fit(tmp_path, capsys,
                                                                 monkeypatch):
    from longtail.stages.online import NetworkStage2

    online_batches = NetworkStage2.online_batches

    def slow(self, method):  # an online fit that takes measurably long
        import time

        time.sleep(0.5)
        return online_batches(self, method)

    monkeypatch.setattr(NetworkStage2, "online_batches", slow)
    files = make_image_list_dataset(tmp_path / "data", [30, 12, 6, 3])
    out = tmp_path / "run"
    code = main(["run", CONFIG, "data.kind=list", f"data.root={tmp_path / 'data'}",
                 *(f"data.{k}={v}" for k, v in files.items()), *TINY, "stage1.epochs=1",
                 "stage2.select=best_val", "stage2.methods=[joint,crt,finetune]",
                 "stage2.finetune.epochs=1", "stage2.crt.epochs=1", "stage2.features=online",
                 "stage2.bn=train", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "stage1.select" not in text
    assert re.search(r"stage2\.select=best_val: the weights of epoch 1 \(.*\) are the result "
                     r"of stage 2 finetune", text), text
    assert "stage 2 (crt, finetune on images, the rest on cached features):" in text
    seconds = float(re.search(r"crt +fitted on images in +([\d.]+) s", text).group(1))
    assert seconds >= 0.5, text
    assert json.loads((out / "metrics.json").read_text())["methods"].keys() == \
        {"joint", "crt", "finetune"}


def test_dir_and_help_list_the_lazy_public_names():
    import pydoc

    names = {"CRT", "LWS", "NCM", "Joint", "TauNorm", "LogitAdjust", "BALMS", "LAS", "WB",
             "Rebalancer"}
    assert names <= set(longtail.__all__) and names <= set(dir(longtail))
    text = pydoc.render_doc(longtail, renderer=pydoc.plaintext)  # help(longtail)'s text
    assert all(re.search(rf"^    class {n}\b", text, re.M) for n in names), text


def test_stage2_on_features_starts_without_torchvision():
    """rebalance, extract and the re-balancers in Python do not wait for torchvision (about 2 s
    of imports); the data package gives its names on first use."""
    code = ("import sys, longtail.pipeline, longtail.extract\n"
            "from longtail import TauNorm, CRT\n"
            "from longtail.data import shot_groups, read_feature_file\n"
            "print('torchvision' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=120)
    assert out.stdout.split() == ["False"], out.stderr[-2000:]
    import longtail.data
    from longtail.data.builder import build_data

    assert longtail.data.build_data is build_data  # the lazy name is the function itself
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        longtail.data.nothing  # noqa: B018


@pytest.mark.parametrize("module", ["longtail.pipeline", "longtail.extract"])
def test_numpy_is_imported_before_torch(module):
    """torch imports numpy from C and carries on when that fails: a Ctrl-C landing in it was
    swallowed and left numpy half-loaded (the run went on, then died in matplotlib). The
    commands' modules import numpy first, so the Ctrl-C stops them (exit 130)."""
    code = ("import sys\n"
            "order = []\n"
            "class Watch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name in ('numpy', 'torch'): order.append(name)\n"
            "sys.meta_path.insert(0, Watch())\n"
            f"import {module}\n"
            "print(*order)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=120)
    assert out.stdout.split()[:2] == ["numpy", "torch"], out.stderr[-2000:]


@pytest.mark.parametrize("how", ["entry", "main"])
def test_the_command_skips_the_interpreters_teardown_but_not_atexit(how):
    """``longtail`` (cli.entry) ends with os._exit once torch is loaded: its teardown took about
    a second after the last line. atexit handlers still run, the exit code is kept; plain
    main() under sys.exit tears down as usual (the probe below sees the difference)."""
    code = ("import atexit, sys, torch\n"
            "class Probe:\n"
            "    def __del__(self): print('teardown', flush=True)\n"
            "probe = Probe()\n"
            "atexit.register(lambda: print('atexit', flush=True))\n"
            "sys.argv = ['longtail', 'summarize', 'no-such-run']\n"
            "from longtail.cli import entry, main\n"
            + ("entry()\n" if how == "entry" else "sys.exit(main())\n"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=120)
    assert out.returncode == 2 and "longtail: error:" in out.stderr, out.stderr[-2000:]
    assert "atexit" in out.stdout.split()
    assert ("teardown" in out.stdout.split()) == (how == "main")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full here")
def test_stdout_full_or_closed_is_one_line_or_nothing():
    command = f"{shlex.quote(sys.executable)} -m longtail config fmnist_lt"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    full = subprocess.run(["bash", "-c", command + " > /dev/full"], capture_output=True,
                          text=True, env=env)
    assert full.returncode == 2
    assert full.stderr.splitlines()[-1] == "longtail: error: stdout: No space left on device"
    closed = subprocess.run(["bash", "-c", command + " >&-"], capture_output=True, text=True,
                            env=env)  # its output discarded, as with > /dev/null
    assert closed.returncode == 0 and "Traceback" not in closed.stderr, closed.stderr


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch):
    import datetime

    import longtail.rundir as rundir

    class Frozen(datetime.datetime):  # every run starts in the same second
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 12, 1, 9, 55, 31)

    monkeypatch.setattr(rundir, "datetime", Frozen)
    monkeypatch.chdir(tmp_path)
    first = rundir.default_run_dir("demo")
    assert first == Path("runs/demo-20261201-095531")
    # seeds started together with `&` all chose the same free name: each claims its own
    assert [rundir.claim_run_dir(first) for _ in range(3)] == [
        first, Path("runs/demo-20261201-095531-2"), Path("runs/demo-20261201-095531-3")]
    assert all(p.is_dir() for p in Path("runs").iterdir())
    # one started after those names were taken does not choose them
    assert rundir.default_run_dir("demo") == Path("runs/demo-20261201-095531-4")


def test_a_claimed_default_folder_is_locked_and_cleaned_as_its_own(tmp_path, monkeypatch,
                                                                   fake_fmnist):
    """Another run takes the default name while this one reads its data: this one claims
    -2, locks it, and removes it when it fails before its first checkpoint."""
    import datetime
    import os

    import longtail.data
    import longtail.pipeline as pipeline
    import longtail.rundir as rundir
    from longtail.config import load_config
    from longtail.errors import LongtailError

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 12, 1, 9, 55, 31)

    monkeypatch.setattr(rundir, "datetime", Frozen)
    monkeypatch.chdir(tmp_path)
    other = Path("runs/demo-20261201-095531")
    real_build = longtail.data.build_data

    def build(*args, **kwargs):  # the other run makes its folder meanwhile
        other.mkdir(parents=True)
        (other / "config.yaml").write_text("seed: 1\n")
        return real_build(*args, **kwargs)

    seen = []

    def fail(cfg, data, run_dir, *args, **kwargs):
        seen.append((run_dir, os.path.realpath(run_dir) in rundir._LOCKED))
        raise LongtailError("stopped before the first checkpoint")

    monkeypatch.setattr(longtail.data, "build_data", build)
    monkeypatch.setattr(pipeline, "_run", fail)
    cfg = load_config(ROOT / "configs" / "fmnist_lt.yaml", [f"data.root={fake_fmnist}",
                                                           "data.n_max=40", "data.val_per_class=5"])
    with pytest.raises(LongtailError, match="stopped before the first checkpoint"):
        pipeline.run(cfg, config_name="demo")
    assert seen == [(Path("runs/demo-20261201-095531-2"), True)]
    assert not Path("runs/demo-20261201-095531-2").exists()  # its own, removed
    assert (other / "config.yaml").read_text() == "seed: 1\n"  # the other's, untouched
