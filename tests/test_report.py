import math

import pytest

from longtail.report import format_summary, format_table, per_class_csv, summarize


def metrics(top1, few, tau=None):
    m = {"top1": top1, "many": 90.0, "medium": None, "few": few, "per_class": [90.0, math.nan]}
    if tau is not None:
        m["tau"] = tau
    return {"dataset": {"name": "x", "num_classes": 2, "train_counts": [500, 5],
                        "shot_groups": {"many": [0], "medium": [], "few": [1]}},
            "methods": {"joint": m}}


def test_table_has_a_row_per_method_and_dashes_for_empty_groups():
    table = format_table({"joint": metrics(50.0, 10.0)["methods"]["joint"],
                          "tau_norm": metrics(60.0, 30.0, tau=0.75)["methods"]["joint"]})
    lines = table.splitlines()
    assert len(lines) == 4 and lines[2].startswith("joint") and "tau=0.75" in lines[3]
    assert " - " in lines[2] + " "


def test_summary_mean_and_sample_std():
    summary = summarize([metrics(50.0, 10.0, 1.0), metrics(60.0, 20.0, 1.5),
                         metrics(70.0, 30.0, 2.0)])
    top1 = summary["joint"]["top1"]
    assert top1["mean"] == 60.0 and top1["n"] == 3 and abs(top1["std"] - 10.0) < 1e-9
    assert "medium" not in summary["joint"]  # empty in every run
    assert "60.0 ± 10.0" in format_summary(summary)


def test_per_class_csv_rows():
    text = per_class_csv(metrics(50.0, 10.0), ["head", "tail"])
    assert text.splitlines() == ["class,name,train_count,group,joint", "0,head,500,many,90.00",
                                 "1,tail,5,few,"]


def _calibrated(top1: float) -> dict:
    m = metrics(top1, 10.0)["methods"]["joint"]
    return {**m, "ece": 5.0, "reliability": {"count": [3, 0, 7], "accuracy": [0.5, None, 0.9],
                                             "confidence": [0.2, None, 0.8]}}


@pytest.mark.parametrize("count", [1, 2, 5])
def test_report_is_written_for_any_number_of_methods(tmp_path, count):
    """One method gives one reliability panel (plt.subplots' single Axes, not an array)."""
    from longtail.report import write_report

    run = metrics(50.0, 10.0)
    run["methods"] = {f"m{i}": _calibrated(50.0 + i) for i in range(count)}
    write_report(tmp_path, run, ["head", "tail"], {"m0": [2.0, 1.0]}, header="test")
    assert (tmp_path / "plots" / "reliability.png").stat().st_size > 0
    assert "| m0 |" in (tmp_path / "report.md").read_text()


@pytest.mark.filterwarnings("error")  # no weight norms (NCM alone): no legend warning either
def test_report_explains_ncm_cosines_ece_only_when_it_is_there(tmp_path):
    from longtail.report import write_report

    run = metrics(50.0, 10.0)
    for methods in ({"crt": _calibrated(50.0)}, {"ncm_cosine": _calibrated(50.0)}):
        run["methods"] = methods
        write_report(tmp_path, run, ["head", "tail"], {}, header="test")
        said = "so its ECE measures that underconfidence" in (tmp_path / "report.md").read_text()
        assert said == ("ncm_cosine" in methods)


def test_methods_with_the_same_weights_share_one_labelled_line(tmp_path, monkeypatch):
    """logit_adjust keeps joint's weights: one line "joint = logit_adjust", not two where the
    later hides the former."""
    from matplotlib.figure import Figure

    from longtail import report

    labels = []

    def draw(fn, panels=None):
        ax = list(Figure().subplots(1, panels, squeeze=False)[0]) if panels else Figure().subplots()
        fn(ax)
        if not panels:
            labels.append(ax.get_legend_handles_labels()[1])
        return b""

    monkeypatch.setattr(report, "plot_png", draw)
    run = metrics(50.0, 10.0)
    run["methods"] = {n: _calibrated(50.0) for n in ("joint", "crt", "logit_adjust")}
    norms = {"joint": [2.0, 1.0], "crt": [1.0, 1.0], "logit_adjust": [2.0, 1.0]}
    report.write_report(tmp_path, run, ["head", "tail"], norms, header="test")
    assert labels[-1] == ["joint = logit_adjust", "crt"]


def test_copies_of_one_run_are_not_averaged():
    """Same seed and config (where it ran aside): one run twice, a spread of 0 that means
    nothing; another seed, or another setting allowed by --ignore, is a run of its own."""
    from longtail.report import comparable_runs

    a = {"seed": 0, "stage1.epochs": 30, "device": "cpu", "data.root": "/a"}
    copy = {**a, "device": "cuda", "data.root": "/b"}
    problem = comparable_runs(["a", "b", "c"], [a, {**a, "seed": 1}, copy], [{}] * 3, [])
    assert problem.startswith("a and c have the same seed (0) and config: the same run twice")
    assert comparable_runs(["a", "b"], [a, {**a, "seed": 1}], [{}] * 2, []) is None
    # a copy whose manifest recorded one split more (or none) is still a copy
    assert comparable_runs(["a", "c"], [a, copy], [{"train": "aa"}, {"train": "aa", "val": "v"}],
                           []).startswith("a and c have the same seed (0) and config")
    assert comparable_runs(["a", "c"], [a, copy], [{"train": "aa"}, {}],
                           []).startswith("a and c have the same seed (0) and config")
    # other data under the same list names and seed: another split, not a copy
    lists = {**a, "data.kind": "list"}
    assert comparable_runs(["a", "c"], [lists, {**lists, "data.root": "/b"}],
                           [{"train": "aa"}, {"train": "bb"}], []) == (
        "a and c have different train splits (SHA-256 aa... vs bb...); pass --ignore data to "
        "average them anyway")
    assert comparable_runs(["a", "b"], [a, {**a, "stage1.epochs": 10}], [{}] * 2,
                           ["stage1.epochs"]) is None
    # a run without config.yaml (metrics.json copied alone) is not compared: no invented
    # difference (`None vs False`), while the others still are
    assert comparable_runs(["x", "a", "b"], [{}, a, {**a, "seed": 1}], [{}] * 3, []) is None
    assert comparable_runs(["x", "a", "b"], [{}, a, {**a, "seed": 1, "stage1.epochs": 9}],
                           [{}] * 3, []).startswith("a and b differ in stage1.epochs (30 vs 9)")
    # every differing key in one message, so that one --ignore is enough
    other = {**a, "seed": 1, "stage1.epochs": 9, "stage1.lr": 0.1, "data.train": "t"}
    assert comparable_runs(["a", "b"], [a, other], [{}] * 2, []) == (
        "a and b differ in data.train (None vs 't') and 2 more (stage1.epochs, stage1.lr); "
        "runs to average may differ only in seed, or pass --ignore data.train,stage1.epochs,"
        "stage1.lr")
    assert comparable_runs(["a", "b"], [a, other], [{}] * 2,
                           ["data.train,stage1.epochs,stage1.lr"][0].split(",")) is None
    many = {**other, "stage1.momentum": 0.5, "stage2.crt.lr": 1.0}
    assert comparable_runs(["a", "b"], [a, many], [{}] * 2, []).endswith(
        "and 4 more (stage1.epochs, stage1.lr, stage1.momentum, ...); runs to average may "
        "differ only in seed, or pass --ignore data,stage1,stage2")


def test_fit_cell_lines_up_wide_and_combining_characters():
    from longtail.report import fit_cell

    # A CJK character takes two terminal columns, a combining accent none.
    assert fit_cell("猫", 4) == "猫  "
    assert fit_cell("e\u0301t\u00e9", 4) == "e\u0301t\u00e9 "
    # Cut on a character boundary: a wide character that would overflow is left out.
    assert fit_cell("ねこねこ", 5) == "ねこ "
    assert fit_cell("a" * 20, 16) == "a" * 16
    names = ["猫のクラスの名前です長い", "dog", "Ελληνικά"]
    widths = {sum(2 if "\u3040" <= ch <= "\u9fff" else 1 for ch in fit_cell(n, 16))
              for n in names}
    assert widths == {16}
