"""What a person reads: the results table, metrics.json, per_class.csv, report.md and plots."""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import math
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

from longtail.checkpoint import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    json_type,
    read_json,
)
from longtail.config import PLACE_KEYS
from longtail.errors import LongtailError

COLUMNS = ("top1", "many", "medium", "few", "ece")


def _char_width(ch: str) -> int:
    """Terminal columns of one character: 2 for wide East Asian ones, 0 for combining marks."""
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def fit_cell(text: str, width: int) -> str:
    """Return ``text`` cut and padded to exactly ``width`` terminal columns, so that class
    names in any script line up (a CJK character takes two columns)."""
    out, used = [], 0
    for ch in text:
        w = _char_width(ch)
        if used + w > width:
            break
        out.append(ch)
        used += w
    return "".join(out) + " " * (width - used)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_table(methods: dict[str, dict[str, Any]], markdown: bool = False) -> str:
    """Return one row per method: top-1, Many, Medium, Few, ECE (%), and tau where chosen."""
    header = ["method", "top-1", "many", "medium", "few", "ece", "note"]
    rows = []
    for name, m in methods.items():
        note = f"tau={m['tau']:.2f}" if "tau" in m else ""
        rows.append([name, *(_cell(m.get(c)) for c in COLUMNS), note])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]

    def fmt(row: list[str]) -> str:  # text columns left-aligned, numbers right-aligned
        cells = [x.ljust(w) if i in (0, len(header) - 1) else x.rjust(w)
                 for i, (x, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def format_grid(grid: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Return the stage-1 variant x method table (Markdown): cells are "top-1 / few"."""
    methods = list(next(iter(grid.values()))) if grid else []
    lines = ["| stage-1 variant | " + " | ".join(methods) + " |",
             "|" + "---|" * (len(methods) + 1)]
    for sampler, results in grid.items():
        cells = [f"{_cell(results[m]['top1'])} / {_cell(results[m]['few'])}" for m in methods]
        lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Keys that do not change what a run measures: where it ran, and two that change only its
# floating-point path (decoding once or per epoch draws augmentations differently; the
# evaluation batch, the sums' order), which resume therefore refuses to change.
_FREE_KEYS = ("seed", *PLACE_KEYS, "data.in_memory", "eval.batch_size")


def comparable_runs(names: list[Any], configs: list[dict[str, Any]],
                    splits: list[dict[str, str]], ignore: list[str]) -> str | None:
    """Return why runs cannot be averaged (another setting than the seed, another split), or
    None. ``configs`` are flattened config.yaml's, ``splits`` manifest.json's split_sha256;
    keys in ``ignore`` (or under a section in it) may differ."""
    def free(key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in (*_FREE_KEYS, *ignore))

    # Same seed, same setting (where it ran aside) and same split files: one run twice, e.g. a
    # copied folder; averaging it would show a spread of 0 that measures nothing. (Other
    # data under the same list names is another split, said below.)
    where = [k for k in _FREE_KEYS if k != "seed"]
    setting = [{k: v for k, v in c.items() if k not in where} for c in configs]
    for i, j in itertools.combinations(range(len(configs)), 2):
        if setting[i] and setting[i] == setting[j] and all(
                splits[i][p] == splits[j][p] for p in splits[i].keys() & splits[j].keys()):
            return (f"{names[i]} and {names[j]} have the same seed "
                    f"({setting[i].get('seed')}) and config: the same run twice (a copy?), "
                    f"whose spread would be 0; average runs of different seeds")

    # A run without config.yaml (metrics.json copied alone) has no settings to compare.
    known = [(name, config) for name, config in zip(names, configs) if config]
    head, first = known[0] if known else (names[0], {})
    for name, config in known[1:]:
        keys = [key for key in sorted(set(first) | set(config))
                if not free(key) and first.get(key) != config.get(key)]
        if keys:  # all of them at once: one --ignore per try would take as many tries
            key = keys[0]
            listed = ", ".join(keys[1:4]) + ", ..." * (len(keys) > 4)
            more = f" and {len(keys) - 1} more ({listed})" if len(keys) > 1 else ""
            # many keys: their sections, a shorter --ignore
            ignore = ",".join(keys) if len(keys) <= 4 else ",".join(
                sorted({k.split(".")[0] for k in keys}))
            return (f"{head} and {name} differ in {key} ({first.get(key)!r} vs "
                    f"{config.get(key)!r}){more}; runs to average may differ only in seed, "
                    f"or pass --ignore {ignore}")
    # A split fixed by its lists (or by data.split_seed) must be the same file in every run;
    # a split drawn from the seed differs with it, and its config was compared above.
    seeded = first.get("data.split_seed") is None and (
        first.get("data.kind") in ("fmnist_lt", "cifar10_lt", "cifar100_lt")
        or (first.get("data.kind") == "image_folder" and first.get("data.train") is None)
        or (first.get("data.val_from_train") or 0) > 0)
    if not seeded and not free("data"):
        for name, split in zip(names[1:], splits[1:]):
            for part in sorted(set(splits[0]) & set(split)):
                if splits[0][part] != split[part]:
                    return (f"{names[0]} and {name} have different {part} splits (SHA-256 "
                            f"{splits[0][part][:12]}... vs {split[part][:12]}...); pass "
                            f"--ignore data to average them anyway")
    return None


def read_metrics(path: Path) -> dict[str, Any]:
    """Return a run's metrics.json, checked to hold "methods": {name: {column: value}}."""
    metrics = read_json(path, ("methods",))
    methods = metrics["methods"]
    bad = (json_type(methods) if not isinstance(methods, dict) else next(
        (f"{json.dumps(name)}: {json_type(m)}" for name, m in methods.items()
         if not isinstance(m, dict)), None))
    if bad or not methods:
        raise LongtailError(f'{path}: expected "methods" to map each method to an object of '
                            f'its results, found {bad or "none"}')
    for name, results in methods.items():
        for column in (*COLUMNS, "tau"):
            value = results.get(column)
            if value is not None and (isinstance(value, bool) or not isinstance(
                    value, (int, float)) or not math.isfinite(value)):
                raise LongtailError(f'{path}: expected "{column}" of method {json.dumps(name)} '
                                    f'to be a finite number or null, found {json.dumps(value)}')
            if value is not None and column != "tau" and not 0 <= value <= 100:  # percentages
                raise LongtailError(f'{path}: expected "{column}" of method {json.dumps(name)} '
                                    f'to be a percentage in [0, 100], found {json.dumps(value)}')
    return metrics


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Return mean, std (sample, n-1; None for one value) and n of top1 / many / medium / few /
    ece / tau of each method over several runs' metrics.json (e.g. seeds). A method or group missing
    from a run (or empty in it) is averaged over the runs that have it: see n."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    names = list(dict.fromkeys(name for r in runs for name in r["methods"]))
    for name in names:
        summary[name] = {}
        for column in (*COLUMNS, "tau"):
            values = [r["methods"][name][column] for r in runs if name in r["methods"]
                      and r["methods"][name].get(column) is not None]
            if not values:
                continue
            mean = sum(values) / len(values)
            std = ((sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
                   if len(values) > 1 else None)
            summary[name][column] = {"mean": mean, "std": std, "n": len(values)}
    return summary


def format_summary(summary: dict[str, dict[str, dict[str, float]]], markdown: bool = True,
                   runs: int | None = None) -> str:
    """Return a table of mean +- std per method over runs (see ``summarize``); a cell over
    fewer than ``runs`` runs says how many."""
    header = ["method", "top-1", "many", "medium", "few", "ece", "tau"]
    rows = []
    for name, columns in summary.items():
        cells = [name]
        for column in (*COLUMNS, "tau"):
            stat = columns.get(column)
            digits = 2 if column == "tau" else 1
            if stat is None:
                cells.append("-")
                continue
            cell = f"{stat['mean']:.{digits}f}"
            if stat["std"] is not None:
                cell += f" ± {stat['std']:.{digits}f}"
            if runs is not None and stat["n"] < runs:
                cell += f" (n={stat['n']})"
            cells.append(cell)
        rows.append(cells)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip()
                     for r in [header, *rows])


def per_class_csv(metrics: dict[str, Any], class_names: list[str]) -> str:
    """Return per_class.csv: one row per class with its training count, group and accuracies."""
    dataset, methods = metrics["dataset"], metrics["methods"]
    group_of = {c: g for g, classes in dataset["shot_groups"].items() for c in classes}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["class", "name", "train_count", "group", *methods])
    for c, count in enumerate(dataset["train_counts"]):
        accs = [m["per_class"][c] for m in methods.values()]
        writer.writerow([c, class_names[c], count, group_of[c],
                         *("" if a != a else f"{a:.2f}" for a in accs)])
    return out.getvalue()


def plot_png(draw: Callable[[Any], None], panels: int | None = None) -> bytes:
    """Return the PNG bytes of a figure drawn by ``draw(ax)``, or with ``panels`` by
    ``draw(axes)`` on a list of that many small panels (4 a row; a list even of one).

    matplotlib's Figure without pyplot (no global figure state to import or clean up), and
    fixed margins instead of tight_layout, which took a third of the report's time."""
    # A HOME that cannot be written (a service account's) has matplotlib warn in two lines
    # on import that it caches in a temporary folder instead, which serves a report as well.
    logging.getLogger("matplotlib").setLevel(logging.ERROR)
    from matplotlib.figure import Figure

    if panels is None:
        fig = Figure(figsize=(7, 4), dpi=110)
        ax = fig.subplots()
        fig.subplots_adjust(left=0.09, right=0.98, bottom=0.13, top=0.97)
    else:
        cols = min(panels, 4)
        rows = -(-panels // cols)
        fig = Figure(figsize=(2.6 * cols, 2.6 * rows), dpi=110)
        grid = fig.subplots(rows, cols, squeeze=False)
        for extra in grid.flat[panels:]:
            extra.set_visible(False)
        ax = list(grid.flat[:panels])
        # in inches, whatever the number of rows: room for the titles and tick labels
        fig.subplots_adjust(left=0.45 / (2.6 * cols), right=1 - 0.1 / (2.6 * cols),
                            bottom=0.4 / (2.6 * rows), top=1 - 0.3 / (2.6 * rows),
                            wspace=0.25, hspace=0.45)
    draw(ax)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_report(run_dir: Path, metrics: dict[str, Any], class_names: list[str],
                 weight_norms: dict[str, list[float]], header: str) -> None:
    """Write metrics.json, per_class.csv, plots/*.png and report.md into ``run_dir``."""
    atomic_write_json(run_dir / "metrics.json", metrics)
    atomic_write_text(run_dir / "per_class.csv", per_class_csv(metrics, class_names))
    counts = metrics["dataset"]["train_counts"]
    order = sorted(range(len(counts)), key=lambda c: -counts[c])

    def accuracy_plot(ax) -> None:
        for name, m in metrics["methods"].items():
            ax.plot(range(len(order)), [m["per_class"][c] for c in order], label=name, lw=1.2)
        ax.set_xlabel("class, by training count (head to tail)")
        ax.set_ylabel("test top-1 (%)")
        ax.legend(fontsize=8)

    def norm_plot(ax) -> None:
        same: dict[tuple[float, ...], list[str]] = {}  # logit_adjust keeps joint's weights
        for name, norms in weight_norms.items():
            same.setdefault(tuple(norms), []).append(name)
        for norms, names in same.items():
            top = max(norms) or 1.0
            ax.plot(range(len(order)), [norms[c] / top for c in order], label=" = ".join(names),
                    lw=1.2)
        ax.set_xlabel("class, by training count (head to tail)")
        ax.set_ylabel("classifier weight norm / max")
        if weight_norms:
            ax.legend(fontsize=8)
        else:  # e.g. NCM alone: said on the plot, not by matplotlib's warning
            ax.text(0.5, 0.5, "no method here has linear class weights", ha="center",
                    transform=ax.transAxes)

    calibrated = {n: m["reliability"] for n, m in metrics["methods"].items()
                  if "reliability" in m}

    def reliability_plot(axes) -> None:
        for ax, (name, bins) in zip(axes, calibrated.items()):
            width = 1.0 / len(bins["count"])
            centers = [(i + 0.5) * width for i in range(len(bins["count"]))]
            acc = [a or 0.0 for a in bins["accuracy"]]  # None: an empty bin
            ax.bar(centers, acc, width=width, edgecolor="black", lw=0.4, label="accuracy")
            ax.plot([0, 1], [0, 1], "k--", lw=0.8)
            ax.set_title(f"{name}: ECE {metrics['methods'][name]['ece']:.1f}%", fontsize=8)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.tick_params(labelsize=6)
        axes[0].set_xlabel("confidence", fontsize=7)
        axes[0].set_ylabel("accuracy", fontsize=7)

    atomic_write_bytes(run_dir / "plots" / "per_class_accuracy.png", plot_png(accuracy_plot))
    atomic_write_bytes(run_dir / "plots" / "weight_norms.png", plot_png(norm_plot))
    figures = ["![per-class accuracy](plots/per_class_accuracy.png)", "",
               "![weight norms](plots/weight_norms.png)", ""]
    if calibrated:
        atomic_write_bytes(run_dir / "plots" / "reliability.png",
                           plot_png(reliability_plot, panels=len(calibrated)))
        figures += ["![reliability diagrams](plots/reliability.png)", ""]
    report = "\n".join([
        f"# longtail run: {metrics['dataset']['name']}", "", header, "",
        format_table(metrics["methods"], markdown=True), "",
        "Accuracies in %; Many / Medium / Few are means of per-class accuracies. ECE: expected "
        "calibration error of the softmax's top class, equal-width bins (%); metrics.json also "
        "has nll and balanced_accuracy."
        + (" NCM's scores are not logits: the softmax of ncm_cosine's cosine similarities (in "
           "[-1, 1]) is close to uniform, so its ECE measures that underconfidence, not its "
           "ranking." if "ncm_cosine" in metrics["methods"] else ""), "", *figures])
    atomic_write_text(run_dir / "report.md", report)
