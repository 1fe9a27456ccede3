"""A finished run whose files were damaged or removed afterwards: rebalance and resume answer
in one line naming the file (or redo what is only a cache), never with a traceback."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from longtail.checkpoint import load_checkpoint
from longtail.cli import main
from longtail.errors import LongtailError, UnreadableFile
from tests.conftest import tiny_fmnist_run


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One tiny finished run (val split included), copied by each test before damaging it."""
    return tiny_fmnist_run(tmp_path_factory.mktemp("finished"), "stage1.batch_size=16",
                           "stage1.lr=0.05", "stage2.crt.epochs=1",
                           "stage2.methods=[joint,crt,tau_norm]")


@pytest.fixture
def run(finished, tmp_path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


def one_line_error(argv: list[str], capsys) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_rebalance_with_one_method_writes_the_report(run, capsys):
    """One method with a reliability diagram: a single panel (once a TypeError)."""
    (run / "metrics.json").unlink()  # no earlier methods: exactly one in the report
    assert main(["rebalance", str(run), "stage2.methods=[crt]"]) == 0
    assert (run / "plots" / "reliability.png").stat().st_size > 0
    assert "| crt |" in (run / "report.md").read_text()


def test_rebalance_without_val_features_says_how_to_extract_them(run, capsys):
    (run / "features" / "val.pt").unlink()
    err = one_line_error(["rebalance", str(run)], capsys)
    assert f"{run}/features/val.pt: not found" in err
    assert f"longtail run --resume {run}" in err
    assert main(["run", "--resume", str(run)]) == 0  # extracts val again
    assert main(["rebalance", str(run)]) == 0


def test_something_in_the_way_of_the_features_is_named_and_the_hint_works(run, capsys):
    """A file named features, or a folder named like a features file: the hint says to
    remove it first (the --resume it suggests would fail on it), and then it works."""
    shutil.rmtree(run / "features")
    (run / "features").write_text("x")
    err = one_line_error(["rebalance", str(run)], capsys)
    assert err.endswith(f"remove {run}/features, then extract them again with: longtail run "
                        f"--resume {run}")
    (run / "features").unlink()
    (run / "features").symlink_to(run / "nowhere")  # a broken link is in the way as well
    assert f"remove {run}/features, then extract" in one_line_error(["rebalance", str(run)],
                                                                     capsys)
    assert one_line_error(["run", "--resume", str(run)], capsys).endswith(
        f"{run}/features: is a broken symbolic link (-> {run}/nowhere); move it away "
        f"(longtail writes a folder there)")
    (run / "features").unlink()
    assert main(["run", "--resume", str(run)]) == 0
    (run / "features" / "test.pt").unlink()
    (run / "features" / "test.pt").mkdir()
    err = one_line_error(["extract", str(run), "--out", str(run.parent / "x")], capsys)
    assert f"{run}/features/test.pt: is a folder; extract reads" in err
    assert f"remove {run}/features/test.pt, then extract them again" in err
    (run / "features" / "test.pt").rmdir()
    assert main(["run", "--resume", str(run)]) == 0
    shutil.rmtree(run / "stage2")
    (run / "stage2").write_text("x")
    assert one_line_error(["rebalance", str(run)], capsys).endswith(
        f"{run}/stage2: is a file, not a folder; move it away (longtail writes a folder there)")


def test_test_features_copied_over_the_training_ones_are_not_fitted_on(run, capsys):
    before = json.loads((run / "metrics.json").read_text())
    shutil.copy(run / "features" / "test.pt", run / "features" / "train.pt")
    err = one_line_error(["rebalance", str(run)], capsys)
    assert err.endswith(f"{run}/features/train.pt: holds the test split's features, not "
                        f"train's (copied over it?); extract the features again with: "
                        f"longtail run --resume {run}"), err
    assert main(["run", "--resume", str(run)]) == 0  # extracts train again
    assert main(["rebalance", str(run)]) == 0
    assert json.loads((run / "metrics.json").read_text())["methods"] == before["methods"]


def test_a_log_folder_that_is_a_file_and_a_failed_rebalance_writes_no_event_file(run, capsys):
    events = sorted((run / "logs").glob("events.out.tfevents.*"))
    err = one_line_error(["rebalance", str(run), "stage2.methods=[finetune]"], capsys)
    assert "finetune" in err
    assert sorted((run / "logs").glob("events.out.tfevents.*")) == events  # none added
    shutil.rmtree(run / "logs")
    (run / "logs").write_text("")
    err = one_line_error(["rebalance", str(run)], capsys)
    assert err.endswith(f"{run}/logs: is a file, expected the run's log folder; move it out of "
                        f"the way"), err
    (run / "logs").unlink()
    (run / "logs" / "scalars.jsonl").mkdir(parents=True)
    err = one_line_error(["rebalance", str(run)], capsys)
    assert err.endswith("logs/scalars.jsonl: is a folder, expected the run's log file; move it "
                        "out of the way"), err


def test_extract_without_the_features_folder_names_extract(run, tmp_path, capsys):
    """The message shared with rebalance names the command that was run."""
    shutil.rmtree(run / "features")
    err = one_line_error(["extract", str(run), "--out", str(tmp_path / "x")], capsys)
    assert f"{run}/features/train.pt: not found; extract reads the run's cached train " in err
    assert "rebalance" not in err and f"longtail run --resume {run}" in err
    assert not (tmp_path / "x").exists()


def test_rebalance_with_corrupt_metrics_json_names_line_and_column(run, capsys):
    (run / "metrics.json").write_text("{bad\n")
    err = one_line_error(["rebalance", str(run), "stage2.methods=[crt]"], capsys)
    assert f"{run}/metrics.json:1:2: not valid JSON" in err


def test_damaged_feature_caches_are_named_then_extracted_again_on_resume(run, capsys):
    train = run / "features" / "train.pt"
    train.write_bytes(train.read_bytes()[:3000])  # truncated
    (run / "features" / "test.pt").write_bytes(b"garbage")
    err = one_line_error(["rebalance", str(run)], capsys)
    assert "refused" not in err and "full pickle" not in err
    assert "features/test.pt: not a PyTorch file" in err and "--resume" in err
    assert main(["run", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "train.pt: not a readable PyTorch file: truncated or corrupt" in out
    assert "extracting these features again" in out
    assert load_checkpoint(train)["features"].shape[0] > 0
    assert main(["rebalance", str(run)]) == 0


def test_truncated_stage1_checkpoint_on_resume_is_called_truncated(run, capsys):
    last = run / "stage1" / "last.pt"
    last.write_bytes(last.read_bytes()[:5000])
    err = one_line_error(["run", "--resume", str(run)], capsys)
    assert "stage1/last.pt: not a readable PyTorch file: truncated or corrupt" in err
    assert err.endswith("delete it and --resume trains stage 1 again from the start")
    assert "refused" not in err
    # rebalance takes the joint classifier from it: the same advice, as a command
    err = one_line_error(["rebalance", str(run)], capsys)
    assert "stage1/last.pt: not a readable PyTorch file: truncated or corrupt" in err
    assert err.endswith(f"the joint classifier is in it: delete it and longtail run --resume "
                        f"{run} trains stage 1 again")


def _saved(obj, **kwargs) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("content,expected", [
    (_saved({"w": torch.ones(3)})[:100], "not a readable PyTorch file: truncated or corrupt"),
    (b"", "not a readable PyTorch file: it is empty"),
    (b"seed: 0\ndata:\n  kind: list\n", "not a PyTorch file (torch.save writes a zip archive; "
                                        "this one starts with b'seed: 0"),
    (_saved({"w": torch.ones(3)}, _use_new_zipfile_serialization=False)[:40],
     "not a readable PyTorch file: truncated or corrupt"),
], ids=["truncated", "empty", "yaml", "truncated old format"])
def test_unreadable_files_are_not_called_pickle_refusals(tmp_path, content, expected):
    path = tmp_path / "w.pt"
    path.write_bytes(content)
    with pytest.raises(UnreadableFile, match="^" + str(path)) as caught:
        load_checkpoint(path)
    assert expected in str(caught.value) and "refused" not in str(caught.value)
    assert caught.value.path == path


def test_pickled_objects_are_still_refused_and_named(tmp_path):
    path = tmp_path / "evil.pt"
    path.write_bytes(_saved({"model": torch.nn.Linear(2, 2)}))
    with pytest.raises(LongtailError, match="refused to load.*full pickle.*"
                                            "torch.nn.modules.linear.Linear") as caught:
        load_checkpoint(path)
    assert not isinstance(caught.value, UnreadableFile)


def test_new_shot_thresholds_regroup_the_cached_fits_as_a_fresh_fit_would(run, capsys):
    """eval.* only groups the classes: rebalance reuses every fit and groups it again, to the
    numbers fitting afresh gives; caches keyed with eval.* (before 0.2) are reused too."""
    from longtail.checkpoint import save_checkpoint
    from longtail.pipeline import _stage2_key, run_inputs
    from longtail.rundir import load_run_config

    cfg = load_run_config(run)
    _, weight, bias, feats = run_inputs(run, cfg)
    path = run / "stage2" / "tau_norm.pt"
    blob = load_checkpoint(path)
    blob["key"] = _stage2_key("tau_norm", cfg, feats, weight, bias, with_eval=True)
    save_checkpoint(blob, path)
    capsys.readouterr()
    assert main(["rebalance", str(run)]) == 0  # thresholds as the key has them: reused
    assert capsys.readouterr().out.count(" reused in ") == 3
    thresholds = ["eval.many_threshold=30", "eval.few_threshold=10"]
    assert main(["rebalance", str(run), *thresholds]) == 0
    printed = capsys.readouterr().out
    assert "fitted" not in printed and printed.count(" reused in ") == 3, printed
    regrouped = json.loads((run / "metrics.json").read_text())
    shutil.rmtree(run / "stage2")
    assert main(["rebalance", str(run), *thresholds]) == 0
    assert capsys.readouterr().out.count(" fitted in ") == 3
    fresh = json.loads((run / "metrics.json").read_text())
    assert regrouped == fresh
    groups = fresh["dataset"]["shot_groups"]
    assert groups["few"] and groups["many"]  # the new thresholds split the classes three ways


def test_run_files_of_the_wrong_shape_are_one_line_or_redone(run, capsys):
    """Files that load but hold something else (a list saved over last.pt, a tensor over a
    stage-2 result, hand-edited JSON): one line naming the file and field, where each was a
    TypeError, KeyError or AttributeError traceback (the manifest's after metrics.json had
    been rewritten)."""
    last = run / "stage1" / "last.pt"
    saved = last.read_bytes()
    for content, found in (([1, 2], "found a list"), ({"epoch": 1}, "found one without 'model'")):
        torch.save(content, last)
        err = one_line_error(["rebalance", str(run)], capsys)
        assert f"{last}: not a checkpoint longtail wrote (expected a mapping of 'model', " \
               f"{found})" in err and "trains stage 1 again" in err, err
    torch.save([1, 2], last)
    err = one_line_error(["run", "--resume", str(run)], capsys)
    assert f"{last}: not a checkpoint longtail wrote" in err, err
    last.write_bytes(saved)
    # a stage-2 result is a cache: fitted again
    torch.save(torch.zeros(3), run / "stage2" / "crt.pt")
    assert main(["rebalance", str(run), "stage2.methods=[crt]"]) == 0
    assert isinstance(load_checkpoint(run / "stage2" / "crt.pt"), dict)
    dataset = run / "dataset.json"
    info = json.loads(dataset.read_text())
    for key, value, message in (
            ("train_counts", "abc", '"train_counts": expected 10 counts >= 0 (num_classes), '
                                    "found 'abc'"),
            ("num_classes", 5, '"class_names": expected 5 names (num_classes), found'),
            ("num_classes", "10", "\"num_classes\": expected an int >= 2, found '10'")):
        dataset.write_text(json.dumps({**info, key: value}))
        assert f"{dataset}: {message}" in one_line_error(["rebalance", str(run)], capsys)
    dataset.write_text(json.dumps(info))
    manifest = run / "manifest.json"
    entries = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**entries, "rebalanced": 5}))
    metrics = (run / "metrics.json").read_bytes()
    err = one_line_error(["rebalance", str(run)], capsys)
    assert f'{manifest}: "rebalanced": expected a list of entries, found 5' in err
    assert (run / "metrics.json").read_bytes() == metrics  # refused before anything is written


def test_feature_caches_of_the_wrong_shape_are_redone_or_named(run, capsys):
    """A list saved over features/train.pt was an AttributeError traceback in rebalance."""
    torch.save([1, 2], run / "features" / "train.pt")
    err = one_line_error(["rebalance", str(run)], capsys)
    assert f"{run}/features/train.pt: not a checkpoint longtail wrote (expected a mapping of " \
           f"'features', 'labels', found a list)" in err, err
    assert main(["run", "--resume", str(run)]) == 0  # extracted again
    assert main(["rebalance", str(run)]) == 0


def test_an_integer_beyond_pythons_digit_limit_is_one_line(tmp_path):
    """int() refuses more than 4300 digits: a hand-edited metrics.json (summarize) or
    dataset.json (rebalance), or a class-name file, ended in a ValueError traceback."""
    from longtail.checkpoint import read_json
    from longtail.data.listfile import read_class_names

    (tmp_path / "metrics.json").write_text('{"methods": {"crt": {"top1": ' + "1" * 5000 + "}}}")
    with pytest.raises(LongtailError, match=r"metrics\.json: not valid JSON for longtail \(an "
                                            r"integer of more than 4300 digits\)$"):
        read_json(tmp_path / "metrics.json")
    (tmp_path / "names.txt").write_text("0 cat\n" + "1" * 5000 + " dog\n")
    with pytest.raises(LongtailError, match=r"names\.txt:2: expected 'label name' with a label "
                                            r">= 0, found a label of 5000 digits$"):
        read_class_names(tmp_path / "names.txt", 2)
