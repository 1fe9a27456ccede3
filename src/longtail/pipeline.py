"""``longtail run``: config -> data -> model -> stage 1 -> features -> stage 2 -> metrics -> report.

``longtail rebalance RUN_DIR`` re-runs only stage 2 and the report from a finished run's cached
features and stage-1 classifier: no image is read and the backbone never runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

# numpy before torch: torch imports numpy from C and, if that import fails, carries on without
# it, so a Ctrl-C landing there was swallowed and left numpy half-loaded (tracebacks later).
import numpy
import torch

from longtail import __version__, distributed
from longtail.checkpoint import (
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
    make_dir,
    read_json,
    read_manifest,
    save_checkpoint,
    state_digest,
)
from longtail.config import (
    FINETUNE_METHODS,
    STAGE2_METHODS,
    TIMM_PREFIX,
    TRAINED_METHODS,
    Config,
    dump_config,
    get_key,
    load_config,
    method_settings,
    shown,
    stage2_sampler,
)
from longtail.data.profiles import shot_groups
from longtail.data.samplers import class_aware_problem
from longtail.errors import Interrupted, LongtailError, UnreadableFile, file_problem
from longtail.metrics import evaluate, group_accuracies
from longtail.report import fit_cell, format_grid, format_table, read_metrics, write_report
from longtail.rundir import (
    check_rebalance_args,
    check_run_dir,
    claim_run_dir,
    default_run_dir,
    folder_in_use,
    resume_command,
    run_folder_lock,
    run_paths,
)
from longtail.scalars import ScalarLog
from longtail.stages.features import (
    FeatureSet,
    backbone_digest,
    extract_features,
    load_features,
)
from longtail.stages.rebalance import SMALL_STAGE_MACS, Joint, build_rebalancer, threads_for

# The data readers, the models and the training stages bring in torchvision (about 2 s of
# imports): they are imported where a run needs them, so that stage 2 on a run's cached
# features (`longtail rebalance`, `extract`) starts without them.
if TYPE_CHECKING:
    from longtail.data import FeatureData, LongTailData


@dataclass
class DatasetInfo:
    """What stage 2 and the report need to know of the dataset (saved as dataset.json)."""

    name: str
    num_classes: int
    class_names: list[str]
    train_counts: list[int]
    group_counts: list[int] | None = None  # before a val hold-out; None: train_counts

    @property
    def counts_for_groups(self) -> list[int]:
        """Training counts that decide the Many/Medium/Few groups."""
        return self.group_counts or self.train_counts


@dataclass
class Prefit:
    """A stage-2 method fitted on images (fine-tuning, online stage 2) before the report."""

    method: Any
    test_features: torch.Tensor  # what it is evaluated on (re-extracted after a BN drift)
    seconds: float  # its fit: the report's time of the method, not only its evaluation


# What a run writes in its folder: --overwrite removes them first, so that nothing of the
# replaced run (its other methods' results, its TensorBoard curves) mixes with the new one.
RUN_PRODUCTS = ("config.yaml", "manifest.json", "dataset.json", "metrics.json", "per_class.csv",
                "report.md", "plots", "stage1", "stage2", "features", "logs")


def prepare_run_dir(run_dir: Path, overwrite: bool, resumable: bool = True) -> None:
    """Create ``run_dir`` (see ``check_run_dir``); with ``overwrite`` of an earlier run's
    folder (it has manifest.json), remove that run's files (and only those names)."""
    check_run_dir(run_dir, overwrite, resumable)
    if overwrite and (run_dir / "manifest.json").is_file():  # a run's folder, not any folder
        for name in RUN_PRODUCTS:
            path = run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    make_dir(run_dir)


def _shared_run_dir(out: Path | None, target: Path, overwrite: bool,
                    locks: contextlib.ExitStack, resumable: bool = True) -> Path:
    """Return the run directory chosen (and prepared) by rank 0, in every process: ``out``,
    or without it the default-named ``target`` (or the next free name, see ``claim_run_dir``).
    Rank 0 locks it (into ``locks``) before it removes an earlier run's files: two runs
    started together into one new --out (which neither could lock at their start) are one
    refused, not two mixed, one of them undoing the other's files."""
    run_dir = None
    if distributed.is_main():
        if out is None:
            run_dir = claim_run_dir(target)
        else:
            check_run_dir(out, overwrite, resumable)
            make_dir(out)
            run_dir = out
        locks.enter_context(run_folder_lock(run_dir))  # (already held: the same lock)
        prepare_run_dir(run_dir, overwrite, resumable)
    return Path(distributed.broadcast_object(run_dir))


def run(cfg: Config, *, config_name: str, out: Path | None = None, overwrite: bool = False,
        resume: Path | None = None, argv: list[str] | None = None) -> dict[str, Any]:
    """Run the whole method as configured; return metrics.json's content (rank 0) or {}.

    The data is read and checked before the run directory is made, so bad input leaves
    nothing behind. With ``resume``, the run in that directory continues where it stopped:
    finished stages (stage-1 epochs, features, stage-2 methods) are not redone.
    """
    from longtail.data import build_data

    device = distributed.select_device(cfg.device)
    check_model_name(cfg)
    target = out or default_run_dir(config_name)
    if resume is None:
        check_run_dir(target, overwrite)  # before any work
    run_dir, fresh = resume, False
    # No other command may work in the folder meanwhile (a --resume or rebalance of the same
    # run would write into the same files): locked before any work when it exists (resumed or
    # overwritten), once made otherwise.
    locks = contextlib.ExitStack()
    locks.enter_context(run_folder_lock(resume or target))
    try:
        with locks, distributed.session(device):
            started = time.perf_counter()  # after torchrun's processes joined
            data = build_data(cfg.data, cfg.seed, cfg.model.in_channels, device.type)
            # stage 1 trains unless feature files bring the joint classifier
            check_class_aware(cfg, data.train_counts,
                              stage1=getattr(data.train, "joint_weight", None) is None)
            seconds = {"data": time.perf_counter() - started}
            if resume is None:
                # a default name is claimed new (maybe as -2: another run took it meanwhile).
                # Rank 0 looks, as it makes the folder: another rank's look could meet its
                # probe (the folder made and removed again) and fail.
                fresh = distributed.is_main() and (
                    out is None or not target.is_dir() or not any(target.iterdir()))
                run_dir = _shared_run_dir(out, target, overwrite, locks)
            global active_run
            active_run = run_dir  # for the last words of a process whose peer ended (cli)
            metrics = _run(cfg, data, run_dir, device, argv or [], resumed=resume is not None,
                           seconds=seconds)
            active_run = None
            if distributed.is_main():
                _record_seconds(run_dir, seconds, time.perf_counter() - started,
                                resumed=resume is not None)
            return metrics
    except KeyboardInterrupt:
        if run_dir is None:
            raise Interrupted("nothing was written") from None
        raise Interrupted(f"continue with: {resume_command(run_dir)}") from None
    except BaseException:
        # A run that failed before its first stage-1 checkpoint leaves no folder behind
        # (one it did not create, e.g. with --overwrite, is left alone).
        if fresh and run_dir is not None and distributed.is_main() and \
                not _has_checkpoint(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


active_run: Path | None = None  # the folder ``run`` works in, once it has one


def continue_hint(run_dir: Path, what: str) -> str:
    """Return "``what`` with: <resume command>", or, while a run still works in ``run_dir``
    (another process holds its lock, which would refuse the --resume), to wait for it."""
    if folder_in_use(run_dir):
        return (f"the run is still going there (another longtail command holds {run_dir}); "
                f"try again when it ends")
    return f"{what} with: {resume_command(run_dir)}"


def _has_checkpoint(run_dir: Path) -> bool:
    """Whether a run has saved stage-1 work (its last epoch, or a joint classifier)."""
    return (run_dir / "stage1" / "last.pt").is_file() or \
        (run_dir / "stage1" / "joint.pt").is_file()


def check_model_name(cfg: Config) -> None:
    """Stop at once on a timm model name timm does not know, on pretrained weights that
    cannot be had, or on a model.trainable that names no module (before the data is read)."""
    if cfg.data.kind == "features":
        return
    if cfg.model.name.startswith(TIMM_PREFIX):
        from longtail.models.timm_backbone import check_pretrained_available, timm_architecture

        arch = timm_architecture(cfg.model.name)
        if cfg.model.pretrained:
            check_pretrained_available(arch)
    elif cfg.model.trainable is not None:  # (a timm model's names are checked once built)
        from longtail.models import build_model

        with torch.device("meta"):  # the module names only: no memory, no initialisation
            model = build_model(cfg.model.name, 2, 3, 224, width=cfg.model.width,
                                small_stem=cfg.model.small_stem)
        model.freeze(cfg.model.trainable)


def grid(cfg: Config, samplers: list[str | float], losses: list[str] | None = None, *,
         config_name: str, out: Path | None = None, overwrite: bool = False,
         argv: list[str] | None = None) -> dict[str, Any]:
    """Run stage 1 once per sampler (and per loss of ``losses``) and every stage-2 method on
    each: the paper's Figure 1, and the stage-1 losses compared the same way.

    Each variant's run goes to ``DIR/<sampler>/`` (``DIR/<sampler>-<loss>/`` with ``losses``);
    ``DIR/grid.json`` maps each variant to its metrics.json "methods" object and ``DIR/grid.md``
    holds the table.
    """
    from longtail.data import build_data

    device = distributed.select_device(cfg.device)
    check_model_name(cfg)
    if out is not None:
        check_run_dir(out, overwrite, resumable=False)  # before any work
    results: dict[str, Any] = {}
    grid_dir = None
    try:
        with distributed.session(device), contextlib.ExitStack() as locks:
            data = build_data(cfg.data, cfg.seed, cfg.model.in_channels, device.type)
            check_class_aware(cfg, data.train_counts, stage1_samplers=samplers)
            grid_dir = _shared_run_dir(out, out or default_run_dir(f"{config_name}-grid"),
                                       overwrite, locks, resumable=False)  # no grid --resume
            _grid_rows(cfg, data, samplers, losses, grid_dir, overwrite, device, argv,
                       results)
    except KeyboardInterrupt:
        if grid_dir is None:
            raise Interrupted("nothing was written") from None
        done = f"{grid_dir}/grid.json holds the finished rows ({', '.join(results)})" \
            if results else "no row finished"
        again = " and --overwrite" if out is not None else ""  # a default name is a new one
        raise Interrupted(f"{done}; the grid starts again with the same command{again}") \
            from None
    return results


def _grid_rows(cfg: Config, data: LongTailData, samplers: list, losses: list[str] | None,
               grid_dir: Path, overwrite: bool, device: torch.device, argv: list[str] | None,
               results: dict[str, Any]) -> None:
    """Run ``grid``'s variants into ``grid_dir``, adding each one's methods to ``results``
    and grid.json as it finishes; then write grid.md and print the table."""
    for sampler in samplers:
        for loss in losses or [None]:
            row = str(sampler) if loss is None else f"{sampler}-{loss}"
            _say(f"\n=== grid: stage1.sampler={sampler}"
                 + (f" stage1.loss={loss}" if loss else "") + " ===")
            sub = replace(cfg, stage1=replace(cfg.stage1, sampler=sampler,
                                              loss=loss or cfg.stage1.loss))
            run_dir = grid_dir / row
            if distributed.is_main():
                prepare_run_dir(run_dir, overwrite)
            started, seconds = time.perf_counter(), {}
            try:
                metrics = _run(sub, data, run_dir, device, argv or [], resumed=False,
                               seconds=seconds)
            except BaseException:
                # a row that failed before its first checkpoint leaves no folder, as a run;
                # the grid's command, run again, then needs no --overwrite for it
                if distributed.is_main() and not _has_checkpoint(run_dir):
                    shutil.rmtree(run_dir, ignore_errors=True)
                raise
            if distributed.is_main():
                _record_seconds(run_dir, seconds, time.perf_counter() - started)
                results[row] = metrics["methods"]
                atomic_write_json(grid_dir / "grid.json", results)
    if distributed.is_main():
        table = format_grid(results)
        atomic_write_text(grid_dir / "grid.md", table + "\n")
        print(f"\ngrid: top-1 / Few-shot accuracy (%) by stage-1 variant (rows) and "
              f"stage-2 method (columns)\n{table}\n\nwrote {grid_dir}/grid.json, grid.md",
              flush=True)


def _say(text: str) -> None:
    if distributed.is_main():
        print(text, flush=True)


def _record_seconds(run_dir: Path, seconds: dict[str, float], total: float,
                    resumed: bool = False) -> None:
    """Say how long the run took, by part, and keep it in manifest.json: "seconds", or for
    a resumed run (which counts only what it did) its entry in "resumed"."""
    seconds = {**seconds, "total": total}
    parts = ", ".join(f"{name.replace('_', ' ')} {value:.1f} s" for name, value in
                      seconds.items() if name != "total")
    print(f"done in {total:.1f} s ({parts})", flush=True)
    path = run_dir / "manifest.json"
    manifest = read_manifest(path)
    rounded = {name: round(value, 2) for name, value in seconds.items()}
    if resumed and manifest.get("resumed"):
        manifest["resumed"][-1]["seconds"] = rounded
    else:
        manifest["seconds"] = rounded
    atomic_write_json(path, manifest)


def _run(cfg: Config, data: LongTailData, run_dir: Path, device: torch.device, argv: list[str],
         resumed: bool, seconds: dict[str, float] | None = None) -> dict[str, Any]:
    """The run after its data is read; ``seconds`` (when given) gets each part's time."""
    seconds = {} if seconds is None else seconds
    main = distributed.is_main()
    info = DatasetInfo(data.name, data.num_classes, data.class_names, data.train_counts,
                       data.group_counts)
    if main:
        if resumed:
            _record_resume(run_dir, data, argv)
        else:
            atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
            atomic_write_json(run_dir / "manifest.json", _manifest(cfg, data, device, argv))
            atomic_write_json(run_dir / "dataset.json", asdict(info))
    _say(f"longtail {__version__}: run directory {run_dir}{' (resumed)' if resumed else ''}, "
         f"device {device}, {distributed.world_size()} process(es)")
    _say(dataset_summary(data, cfg.eval.many_threshold, cfg.eval.few_threshold))
    for note in data.notes:
        _say(f"note: {note}")
    from longtail.data import FeatureData

    if isinstance(data, FeatureData):
        start = time.perf_counter()
        metrics = _run_on_features(cfg, data, info, run_dir, device)
        seconds["stage_2_and_report"] = time.perf_counter() - start
        return metrics
    from longtail.models import build_model
    from longtail.stages.joint import train_joint

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, data.num_classes, data.channels, data.image_size,
                        width=cfg.model.width, small_stem=cfg.model.small_stem,
                        pretrained=cfg.model.pretrained, weights=cfg.model.weights)
    if model.weights_note:
        _say(model.weights_note)
    if cfg.stage1.epochs == 0 and cfg.model.weights and not model.classifier_loaded:
        # the joint classifier would be fc's random start, and tau-norm, LWS, ... built on it
        raise LongtailError(
            f"config key stage1.epochs: 0 takes the joint classifier from model.weights, but "
            f"{cfg.model.weights} has none for these {data.num_classes} classes; train it: "
            f"stage1.epochs >= 1 (with model.trainable=[fc], the classifier alone)")
    if cfg.model.trainable is not None:
        trained = model.freeze(cfg.model.trainable)
        _say(f"model.trainable: {len(trained)} of {len(list(model.parameters()))} parameter "
             f"tensors train ({', '.join(cfg.model.trainable)}); the rest is frozen")
    log = ScalarLog(run_dir / "logs", enabled=main)
    start = time.perf_counter()
    # The batch stage 1 takes (capped to one epoch's images) and the lr scaled to it.
    batch = cfg.stage1.real_batch_size(len(data.train.labels), distributed.world_size())
    stem = {None: "", True: ", small 3x3 stem", False: ", 7x7 stem"}[model.small_stem]
    _say(f"\nstage 1: {cfg.model.name} ({model.backbone.feature_dim}-d features, "
         f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters{stem}), "
         f"{cfg.stage1.epochs} epoch{'s' * (cfg.stage1.epochs != 1)}, sampler "
         f"{cfg.stage1.sampler}, batch {batch} over {distributed.world_size()} process(es), lr "
         f"{cfg.stage1.resolved_lr(batch):g}; input {data.image_size} px, flips "
         f"{'on' if data.hflip else 'off'}")
    train_joint(model, data, cfg.stage1, seed=cfg.seed, device=device,
                num_workers=data.num_workers, eval_batch_size=cfg.eval.batch_size,
                checkpoint_path=run_dir / "stage1" / "last.pt", log=log, resume=resumed)
    seconds["stage_1"] = time.perf_counter() - start
    _say(f"stage 1 done in {seconds['stage_1']:.0f} s")

    start = time.perf_counter()
    features = extract_features(model, data, device=device, batch_size=cfg.eval.batch_size,
                                num_workers=data.num_workers, out_dir=run_dir / "features")
    seconds["features"] = time.perf_counter() - start
    _say(f"features of every split in {seconds['features']:.0f} s: "
         + ", ".join(f"{k} {tuple(v.features.shape)}" for k, v in features.items()))
    start = time.perf_counter()
    weight, bias = model.fc.weight.detach().cpu(), model.fc.bias.detach().cpu()
    prefit = _fit_network_methods(cfg, model, data, features, weight, bias, run_dir, device, log)
    metrics: dict[str, Any] = {}
    if main:
        metrics = rebalance_and_report(cfg, info, weight, bias, features, run_dir, device, log,
                                       prefit)
    seconds["stage_2_and_report"] = time.perf_counter() - start
    log.close()
    # The others wait for rank 0's stage 2 (a grid's next row would too): a shutdown or a
    # next row together (distributed.COLLECTIVE_TIMEOUT allows a long stage 2)
    distributed.barrier()
    return metrics


def _run_on_features(cfg: Config, data: FeatureData, info: DatasetInfo, run_dir: Path,
                     device: torch.device) -> dict[str, Any]:
    """The run of ``data.kind: features``: no stage 1 and no network; the joint classifier is a
    linear classifier on the training features (or the training file's own), then stage 2."""
    if not distributed.is_main():  # stage 2 runs on rank 0 only; the others wait for it
        distributed.barrier()
        return {}
    from longtail.stages.linear import joint_on_features

    log = ScalarLog(run_dir / "logs")
    start = time.perf_counter()
    weight, bias, how = joint_on_features(data, cfg.stage1, cfg.seed, device,
                                          run_dir / "stage1" / "joint.pt")
    _say(f"\njoint classifier on {data.feature_dim}-d features: {how} "
         f"({time.perf_counter() - start:.1f} s)")
    try:
        metrics = rebalance_and_report(cfg, info, weight, bias, feature_sets(data), run_dir,
                                       device, log)
    finally:
        log.close()
    distributed.barrier()  # as the others: they end together
    return metrics


def feature_sets(data: FeatureData) -> dict[str, FeatureSet]:
    """Return the splits of a features dataset as stage 2's feature sets, keyed by content."""
    return {name: FeatureSet(split.features, split.labels, key=split.sha256)
            for name, split in data.splits().items()}


def network_methods(cfg: Config) -> list[str]:
    """Return the stage-2 methods of ``cfg`` that need images and the network, not features."""
    online = TRAINED_METHODS if cfg.stage2.features == "online" else ()
    return [n for n in cfg.stage2.methods if n in FINETUNE_METHODS or n in online]


def _fit_network_methods(cfg: Config, model, data: LongTailData,
                         features: dict[str, FeatureSet], weight: torch.Tensor,
                         bias: torch.Tensor, run_dir: Path, device: torch.device,
                         log: ScalarLog) -> dict[str, Prefit]:
    """Fit the methods that run the network (fine-tuning, online cRT / LWS) in every process;
    return them by name. One whose stage2/NAME.pt holds a result for the same inputs is left
    to ``rebalance_and_report`` to reuse."""
    names = [n for n in network_methods(cfg)
             if _cached_result(run_dir, n, cfg, features, weight, bias)[0] is None]
    if not names:
        return {}
    from longtail.stages.online import NetworkStage2

    net = NetworkStage2(model, data, cfg, device, run_dir, log)
    val = features.get("val")
    out: dict[str, Prefit] = {}
    for name in names:
        start = time.perf_counter()
        if name in FINETUNE_METHODS:
            part = "everything" if name == "finetune" else "the last stage and the classifier"
            _say(f"\n{name}: fine-tuning {part} for {cfg.stage2.finetune.epochs} epoch"
                 f"{'s' * (cfg.stage2.finetune.epochs != 1)}, "
                 f"sampler {cfg.stage2.finetune.sampler}")
            tuned = net.finetune(name)
            method = Joint(tuned.fc.weight.detach().cpu(), tuned.fc.bias.detach().cpu()).fit()
            test = net.features(tuned, "test")
        else:
            method = build_rebalancer(name, cfg.stage2, joint_weight=weight, joint_bias=bias,
                                      num_classes=data.num_classes, seed=cfg.seed,
                                      class_counts=data.train_counts, device=device)
            batches, frozen = net.online_batches(method)
            method.fit(batches, None, val.features if val else None, val.labels if val else None)
            test = (net.features(frozen, "test") if cfg.stage2.bn == "train"
                    else features["test"].features)
        out[name] = Prefit(method, test, time.perf_counter() - start)
        _say(f"  {name}: on images in {out[name].seconds:.0f} s")
    return out


def _cached_result(run_dir: Path, name: str, cfg: Config, features: dict[str, FeatureSet],
                   weight: torch.Tensor, bias: torch.Tensor) -> tuple[dict[str, Any] | None, str]:
    """Return stage2/NAME.pt's content when it was fitted on the same inputs (else None), and
    the method's key (``_stage2_key``) for these inputs."""
    key = _stage2_key(name, cfg, features, weight, bias)
    path = run_dir / "stage2" / f"{name}.pt"
    if not path.is_file():
        return None, key
    try:
        cached = load_checkpoint(path, keys=("key", "result", "weight_norms"))
    except LongtailError:  # only a cache: one that cannot be read is fitted again
        return None, key
    if cached.get("key") == key:
        return cached, key
    # a cache written before the key covered only the method's settings has its old key;
    # one written before the key left out eval.* (which only groups the result) has eval's
    older = _stage2_key(name, cfg, features, weight, bias, legacy="settings" not in cached,
                        with_eval=True)
    return (cached if cached.get("key") == older else None), key


def _saved_norms(path: Path) -> Any:
    """Return the class-weight norms a stage-2 result file keeps, or None when there are none
    to read (they only add the method to the norms plot)."""
    if not path.is_file():
        return None
    try:
        return load_checkpoint(path, keys=("weight_norms",))["weight_norms"]
    except LongtailError:
        return None


def check_class_aware(cfg: Config, counts: list[int], stage1_samplers: list | None = None,
                      stage1: bool = True) -> None:
    """Refuse, before any training, a samples_per_class too long for an epoch over the
    training split (class ``counts``) for each class_aware sampler the run uses: stage 1's
    (``stage1_samplers``: a grid's; ``stage1``: whether stage 1 trains at all) and the
    stage-2 methods' (one key, stage2.samples_per_class, for all of them)."""
    s2 = cfg.stage2
    uses = []
    if stage1 and "class_aware" in (stage1_samplers or [cfg.stage1.sampler]):
        uses.append(("stage1.samples_per_class", cfg.stage1.samples_per_class))
    if any(stage2_sampler(s2, m) == "class_aware" for m in s2.methods):
        uses.append(("stage2.samples_per_class", s2.samples_per_class))
    for key, value in uses:
        problem = class_aware_problem(value, counts)
        if problem:
            raise LongtailError(f"config key {key}: {problem}")


def _record_resume(run_dir: Path, data: LongTailData, argv: list[str]) -> None:
    """Check that the data is the run's own and note the resume in manifest.json."""
    path = run_dir / "manifest.json"
    manifest = read_manifest(path)
    recorded = manifest.get("split_sha256", {})
    for split, digest in data.split_sha256.items():
        if recorded.get(split, digest) != digest:
            raise LongtailError(f"--resume {run_dir}: the {split} split differs from the one the "
                                f"run started with (SHA-256 {recorded[split][:12]}... now "
                                f"{digest[:12]}...); start a new run")
    manifest.setdefault("resumed", []).append(
        {"time": datetime.now().isoformat(timespec="seconds"), "command": ["longtail", *argv]})
    atomic_write_json(path, manifest)


def rebalance_run(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Re-run stage 2 and the report of a finished run from its cached features.

    ``overrides`` may change ``stage2.*``, ``eval.*`` and ``device`` keys; the rest is the
    run's own.
    """
    given = check_rebalance_args(run_dir, overrides)  # paths as written, for config.yaml
    cfg = run_paths(run_dir, given)
    # The run's small files first: a damaged one is answered before the features are read.
    metrics_path, manifest_path = run_dir / "metrics.json", run_dir / "manifest.json"
    earlier = read_metrics(metrics_path)["methods"] if metrics_path.is_file() else {}
    manifest = read_manifest(manifest_path)
    info, weight, bias, features = run_inputs(run_dir, cfg)
    check_class_aware(cfg, info.train_counts, stage1=False)
    asked = list(cfg.stage2.methods)
    # config.yaml as it is describes how every result in metrics.json was made
    stale = _stale_kept(load_config(run_dir / "config.yaml", finished=True, run=True), cfg, earlier)
    if stale:  # fitted again, so that config.yaml describes every result metrics.json holds
        methods = sorted({*asked, *stale}, key=lambda m: _METHOD_ORDER.get(m, 99))
        cfg = replace(cfg, stage2=replace(cfg.stage2, methods=methods))
    device = distributed.select_device(cfg.device)
    log = ScalarLog(run_dir / "logs")
    try:
        metrics = rebalance_and_report(cfg, info, weight, bias, features, run_dir, device, log,
                                       earlier=earlier)
    finally:
        log.close()
    # config.yaml holds the latest stage-2 settings (its paths as the run was given them) and
    # every method metrics.json holds, so that a later rebalance or extract covers them all;
    # manifest.json the history of changes.
    written = replace(given, stage2=replace(given.stage2, methods=list(metrics["methods"])))
    atomic_write_text(run_dir / "config.yaml", dump_config(written))
    manifest.setdefault("rebalanced", []).append(
        {"time": datetime.now().isoformat(timespec="seconds"),
         "command": ["longtail", "rebalance", str(run_dir), *overrides],
         "methods": list(cfg.stage2.methods),
         "kept": [m for m in earlier if m not in cfg.stage2.methods],
         **({"fitted_again": stale} if stale else {})})
    atomic_write_json(manifest_path, manifest)
    return metrics


def _stale_kept(before: Config, cfg: Config, earlier: dict[str, Any]) -> list[str]:
    """Return the methods of metrics.json that ``cfg.stage2.methods`` leaves out but whose
    settings differ between the run's config (``before``) and ``cfg`` (balms and las take
    stage2.crt.*; the trained methods share stage2.batch_size, ...), saying so. A method
    fitted on images cannot be fitted again here: refused, before any note."""
    kept = [m for m in earlier if m not in cfg.stage2.methods and m in _METHOD_ORDER]
    on_images = network_methods(replace(cfg, stage2=replace(cfg.stage2, methods=kept)))
    stale = {}
    for name in kept:
        # keys either config makes the method depend on (min_steps 1 and balms' null lr
        # leave theirs out), compared by value
        keys = sorted(method_settings(name, before.stage2).keys()
                      | method_settings(name, cfg.stage2).keys())
        then, now = ({k: get_key(c, k) for k in keys} for c in (before, cfg))
        changed = [k for k in keys if now[k] != then[k]]
        if changed and name in on_images:
            raise LongtailError(f"override {changed[0]}: {name}'s result in metrics.json was "
                                f"made with {changed[0]}={then[changed[0]]!r}, and "
                                f"rebalance cannot fit {name} again (it trains on images); "
                                f"use 'longtail run'")
        if changed:
            stale[name] = ", ".join(f"{k}={then[k]!r} (now {now[k]!r})" for k in changed[:3])
    for name, changes in stale.items():
        _say(f"note: {name} is fitted again too: its result in metrics.json was made with "
             f"{changes}")
    return list(stale)


_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()  # of a split with no image


def run_inputs(run_dir: Path, cfg: Config, command: str = "rebalance",
               ) -> tuple[DatasetInfo, torch.Tensor, torch.Tensor | None, dict[str, FeatureSet]]:
    """Return what stage 2 of a finished run starts from: (dataset info, joint weight, joint
    bias, features by split). ``command`` (rebalance, extract) is named in the messages.

    An image run's are its cached features and its stage-1 classifier; a features run's are
    its feature files (which must be the ones it ran on) and its joint classifier.
    """
    info = _dataset_info(run_dir / "dataset.json")
    manifest = run_dir / "manifest.json"
    recorded = read_manifest(manifest).get("split_sha256", {})
    if cfg.data.kind == "features":
        from longtail.data import build_data

        data = build_data(cfg.data, cfg.seed)
        for split, digest in data.split_sha256.items():
            if recorded.get(split, digest) != digest:
                raise LongtailError(f"{getattr(data, split).source}: the {split} features "
                                    f"differ from those {run_dir} ran on (SHA-256 "
                                    f"{recorded[split][:12]}... now {digest[:12]}...); start a "
                                    f"new run")
        joint = run_dir / "stage1" / "joint.pt"
        if data.train.joint_weight is not None:
            return info, data.train.joint_weight, data.train.joint_bias, feature_sets(data)
        if not joint.is_file():
            raise LongtailError(f"{joint}: not found; "
                                f"{continue_hint(run_dir, 'train the joint classifier')}")
        state = load_checkpoint(joint, keys=("fc.weight", "fc.bias"))
        return info, state["fc.weight"], state["fc.bias"], feature_sets(data)
    stage1 = run_dir / "stage1" / ("best.pt" if cfg.stage1.select == "best_val" else "last.pt")
    if not stage1.is_file():
        raise LongtailError(f"{stage1}: not found; {continue_hint(run_dir, 'finish stage 1')}")
    try:
        state = load_checkpoint(stage1, keys=("model",))["model"]
    except UnreadableFile as e:  # written atomically, so damaged after the fact
        raise LongtailError(f"{e}; the joint classifier is in it: delete it and "
                            f"{resume_command(run_dir)} trains stage 1 again") from None
    # Every split the run was made with (the manifest's), e.g. val, which tau_norm needs; not
    # the empty val that manifests of runs without one recorded before (no features of it).
    made = [split for split, digest in recorded.items() if digest != _EMPTY_SHA256]
    for split in made or ("train", "test"):
        path = run_dir / "features" / f"{split}.pt"
        problem = file_problem(path)
        if problem:
            # something in the way that the --resume would not replace: a file (or broken
            # link) named features, or a folder (FIFO, ...) named like the features file
            fix = ""
            if os.path.lexists(path.parent) and not path.parent.is_dir():
                fix = f"remove {path.parent}, then "
            elif os.path.lexists(path):
                fix = f"remove {path}, then "
            raise LongtailError(f"{path}: {problem}; {command} reads the run's cached {split} "
                                f"features (it does not run the backbone); "
                                f"{fix}{continue_hint(run_dir, 'extract them again')}")
    try:
        features = load_features(run_dir / "features")
    except UnreadableFile as e:  # a resume replaces an unreadable cache (extract_features)
        raise LongtailError(f"{e}; extract the features again with: "
                            f"{resume_command(run_dir)}") from None
    digest = backbone_digest(state)
    stale = [split for split, f in features.items() if f.weights != digest]
    if stale:
        raise LongtailError(f"{run_dir}/features: {', '.join(stale)} features were not made by "
                            f"the backbone in {stage1}; extract them again with: "
                            f"{resume_command(run_dir)}")
    return info, state["fc.weight"], state["fc.bias"], features


def _dataset_info(path: Path) -> DatasetInfo:
    """Return a run's dataset.json; one that does not hold DatasetInfo's fields is refused."""
    fields = read_json(path, ("name", "num_classes", "class_names", "train_counts"))
    try:
        info = DatasetInfo(**fields)
    except TypeError as e:  # a key DatasetInfo does not have
        raise LongtailError(f"{path}: not a run's dataset.json ({e})") from None

    def counts(value: Any) -> bool:
        return (isinstance(value, list) and len(value) == info.num_classes
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                        for n in value))

    # edited or damaged by hand: each field checked, where it would fail deep in stage 2
    n = info.num_classes
    for key, ok, expected in (
            ("num_classes", isinstance(n, int) and not isinstance(n, bool) and n >= 2,
             "an int >= 2"),
            ("class_names", isinstance(info.class_names, list) and len(info.class_names) == n
             and all(isinstance(c, str) for c in info.class_names), f"{n} names (num_classes)"),
            ("train_counts", counts(info.train_counts), f"{n} counts >= 0 (num_classes)"),
            ("group_counts", info.group_counts is None or counts(info.group_counts),
             f"null or {n} counts >= 0 (num_classes)")):
        if not ok:
            raise LongtailError(f"{path}: \"{key}\": expected {expected}, found "
                                f"{shown(fields.get(key))}")
    return info


def rebalance_and_report(cfg: Config, info: DatasetInfo, weight: torch.Tensor,
                         bias: torch.Tensor, features: dict[str, FeatureSet], run_dir: Path,
                         device: torch.device, log: ScalarLog,
                         prefit: dict[str, Prefit] | None = None,
                         earlier: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Fit every stage-2 method on ``features``, evaluate on test, write metrics and report.

    ``prefit`` holds methods already fitted on images (fine-tuning, online stage 2) with the
    test features to evaluate them on. ``earlier`` holds results of methods not fitted now
    (``rebalance`` with a subset of methods): they are kept in metrics.json and the report.
    """
    test = features["test"]
    groups = shot_groups(info.counts_for_groups, cfg.eval.many_threshold,
                         cfg.eval.few_threshold)
    # Online and fine-tuning methods ran the network on images, the rest use cached features.
    on_images = network_methods(cfg)
    where = ("on images" if len(on_images) == len(cfg.stage2.methods) else
             f"({', '.join(on_images)} on images, the rest on cached features)" if on_images
             else "on cached features")
    print(f"\nstage 2 {where}:", flush=True)
    rows, s2 = sum(info.train_counts), cfg.stage2
    if s2.real_batch_size(rows) < s2.batch_size and any(m in TRAINED_METHODS for m in s2.methods):
        print(f"note: stage2.batch_size {s2.batch_size} would leave fewer than {s2.min_steps} "
              f"step{'s' * (s2.min_steps != 1)} an epoch over the {rows} training rows; the "
              f"trained methods take batches of {s2.real_batch_size(rows)} (stage2.min_steps)",
              flush=True)
    largest = max(len(f.labels) for f in features.values()) * weight.shape[1] * len(weight)
    with threads_for(largest, SMALL_STAGE_MACS):
        methods, weight_norms = _fit_and_evaluate(cfg, info, weight, bias, features, run_dir,
                                                  device, log, prefit or {}, groups)
    for name, result in (earlier or {}).items():
        if name in methods:
            continue
        # Regroup with the current thresholds: per-class accuracies do not depend on them.
        methods[name] = {**result, **group_accuracies(result["per_class"], groups)}
        norms = _saved_norms(run_dir / "stage2" / f"{name}.pt")
        if norms is not None:
            weight_norms[name] = norms
    # in the order of the method list, wherever each was fitted
    methods = dict(sorted(methods.items(), key=lambda item: _METHOD_ORDER.get(item[0], 99)))
    metrics = {
        "dataset": {"name": info.name, "num_classes": info.num_classes,
                    "train_counts": info.train_counts, "group_counts": info.counts_for_groups,
                    "shot_groups": groups},
        "methods": methods,
    }
    print(f"\ntest top-1 (%), {len(test.labels)} images; many/medium/few = mean per-class "
          f"accuracy of {len(groups['many'])}/{len(groups['medium'])}/{len(groups['few'])} "
          f"classes\n{format_table(methods)}\n", flush=True)
    write_report(run_dir, metrics, info.class_names, weight_norms,
                 header=f"Config: `config.yaml`. Test images: {len(test.labels)}.")
    print(f"wrote {run_dir}/metrics.json, per_class.csv, report.md, plots/", flush=True)
    return metrics


_METHOD_ORDER = {name: i for i, name in enumerate(STAGE2_METHODS)}


def _fit_and_evaluate(cfg: Config, info: DatasetInfo, weight: torch.Tensor,
                      bias: torch.Tensor, features: dict[str, FeatureSet], run_dir: Path,
                      device: torch.device, log: ScalarLog,
                      prefit: dict[str, Prefit], groups: dict[str, list[int]],
                      ) -> tuple[dict[str, dict[str, Any]], dict[str, list[float]]]:
    """Fit (or reuse) and evaluate each of ``cfg.stage2.methods``, printing the time of each
    (see ``rebalance_and_report``); return the results, their shot ``groups`` those asked
    for, and the class-weight norms by method."""
    methods: dict[str, dict[str, Any]] = {}
    weight_norms: dict[str, list[float]] = {}
    on_images = set(network_methods(cfg))
    train, val, test = features["train"], features.get("val"), features["test"]
    for name in cfg.stage2.methods:
        start = time.perf_counter()
        fit_seconds = 0.0  # of a method fitted on images before, added to its evaluation's
        path = run_dir / "stage2" / f"{name}.pt"
        cached, key = _cached_result(run_dir, name, cfg, features, weight, bias)
        if cached is not None:  # fitted before on the same inputs: reuse, grouped as asked
            result, norms, verb = cached["result"], cached["weight_norms"], "reused"
            result = {**result, **group_accuracies(result["per_class"], groups)}
            if cached["key"] != key:  # an older cache's key: today's, valid for any eval.*
                save_checkpoint({**cached, "key": key,
                                 "settings": method_settings(name, cfg.stage2)}, path)
        else:
            if name in prefit:
                method, test_features = prefit[name].method, prefit[name].test_features
                fit_seconds, verb = prefit[name].seconds, "fitted on images"
            elif name in on_images:
                raise LongtailError(f"stage2.methods: {name} re-runs the network on images, "
                                    f"which 'rebalance' does not; use 'longtail run'")
            else:
                method = build_rebalancer(name, cfg.stage2, joint_weight=weight,
                                          joint_bias=bias, num_classes=info.num_classes,
                                          seed=cfg.seed, class_counts=info.train_counts,
                                          device=device)
                try:
                    method.fit(train.features, train.labels, val.features if val else None,
                               val.labels if val else None)
                except (ValueError, TypeError) as e:  # e.g. NaN features from a broken model
                    raise LongtailError(f"stage 2, {name}: {e}") from None
                test_features, verb = test.features, "fitted"
            try:
                scores = method.logits(test_features)
            except (ValueError, TypeError) as e:
                raise LongtailError(f"stage 2, {name}, test: {e}") from None
            result = evaluate(scores.argmax(1), test.labels, info.counts_for_groups,
                              cfg.eval.many_threshold, cfg.eval.few_threshold, scores=scores)
            if name in ("tau_norm", "logit_adjust"):
                result["tau"] = method.tau_
            weights = method.class_weights()
            norms = weights.norm(dim=1).tolist() if weights is not None else None
            save_checkpoint({"key": key,
                             "settings": method_settings(name, cfg.stage2),
                             "state": method.learned_state(), "result": result,
                             "weight_norms": norms}, path)
        methods[name] = result
        if norms is not None:
            weight_norms[name] = norms
        log.log("stage2", 0, **{f"{name}_{k}": v for k, v in result.items()
                                if isinstance(v, float)})
        extra = f", tau={result['tau']:.2f}" if "tau" in result else ""
        seconds = fit_seconds + time.perf_counter() - start
        print(f"  {name:<14} {verb} in {seconds:6.2f} s{extra}", flush=True)
    return methods, weight_norms


def _stage2_key(name: str, cfg: Config, features: dict[str, FeatureSet], weight: torch.Tensor,
                bias: torch.Tensor, legacy: bool = False, with_eval: bool = False) -> str:
    """SHA-256 of everything a stage-2 method's fit depends on. eval.* is left out: it only
    groups the classes, which a reused result is grouped again by. Older caches' keys, still
    valid for them: ``legacy``, longtail 0.1's (all of stage2.* but the method list, and
    eval.*); ``with_eval``, the method's settings and eval.*."""
    # only the method's own settings: a change of cRT's leaves tau-norm's fit valid
    if legacy:  # every stage2 key but the method list, as 0.1 had them (min_steps 1 then)
        settings = asdict(replace(cfg.stage2, methods=[]))
        if settings["min_steps"] == 1:
            del settings["min_steps"]
        if settings["balms"]["lr"] is None:  # as before the key existed
            del settings["balms"]
    else:
        settings = method_settings(name, cfg.stage2)
    parts = [name, str(cfg.seed), json.dumps(settings, sort_keys=True),
             *([json.dumps(asdict(cfg.eval), sort_keys=True)] if legacy or with_eval else []),
             state_digest({k: v for k, v in (("weight", weight), ("bias", bias))
                           if v is not None}),
             *(f"{k}:{v.key or state_digest({'f': v.features, 'l': v.labels})}"
               for k, v in sorted(features.items()))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def dataset_summary(data: LongTailData, many_threshold: int, few_threshold: int) -> str:
    """Return a printable summary: split sizes, class counts and Many/Medium/Few groups."""
    counts = data.group_counts
    groups = shot_groups(counts, many_threshold, few_threshold)
    sizes = ", ".join(f"{len(ds)} {name}" for name, ds in data.splits().items())
    lines = [f"dataset {data.name}: {data.num_classes} classes; images: {sizes}",
             f"shot groups by training count: many (> {many_threshold}) "
             f"{len(groups['many'])} classes, medium ({few_threshold}..{many_threshold}) "
             f"{len(groups['medium'])}, few (< {few_threshold}) {len(groups['few'])}"]
    empty = [g for g, classes in groups.items() if not classes]
    if empty:  # the paper's thresholds suit ImageNet-LT's counts; small sets often leave a gap
        lines.append(f"note: no class in the {' and '.join(empty)} group{'s' * (len(empty) > 1)}"
                     f" (accuracy shown as -); eval.many_threshold and "
                     f"eval.few_threshold set the groups (training counts from {min(counts)} "
                     f"to {max(counts)} here)")
    group_of = {c: g for g, classes in groups.items() for c in classes}
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    # "train": what stage 1 trains on; with val held out of training, the groups follow the
    # counts listed before the hold-out, shown beside it.
    train, held = data.train_counts, data.counts_before_holdout is not None
    if len(counts) <= 40:
        listed = f" {'listed':>6}" if held else ""
        lines.append(f"  {'class':>5}  {'name':<16} {'train':>6}{listed}  group")
        lines += [f"  {c:>5}  {fit_cell(data.class_names[c], 16)} {train[c]:>6}"
                  + (f" {counts[c]:>6}" if held else "") + f"  {group_of[c]}" for c in order]
    else:
        ranked = sorted(train, reverse=True)
        lines.append(f"  training images per class: max {ranked[0]}, median "
                     f"{ranked[len(ranked) // 2]}, min {ranked[-1]}"
                     + (" (after holding out val)" if held else ""))
    return "\n".join(lines)


def _torchvision_version() -> str | None:
    """torchvision's version, without importing it (2 s) in a run on features."""
    module = sys.modules.get("torchvision")
    if module is not None:
        return module.__version__
    from importlib import metadata

    try:
        return metadata.version("torchvision")
    except metadata.PackageNotFoundError:
        return None


def _manifest(cfg: Config, data: LongTailData, device: torch.device,
              argv: list[str]) -> dict[str, Any]:
    return {
        "command": ["longtail", *argv],
        "argv": sys.argv,
        "started": datetime.now().isoformat(timespec="seconds"),
        "cwd": _working_directory(),  # config.yaml's relative paths are relative to it
        "seed": cfg.seed,
        "device": str(device),
        "world_size": distributed.world_size(),
        "versions": {"longtail": __version__, "python": platform.python_version(),
                     "torch": torch.__version__, "torchvision": _torchvision_version(),
                     "numpy": numpy.__version__},
        "git_commit": git_commit(),
        # run_inputs takes every recorded split as one whose features must exist
        "split_sha256": data.split_sha256,
        # what data.image_size, data.hflip (null) and data.in_memory, data.num_workers (auto)
        # resolved to (not in config.yaml)
        **({"input": {"image_size": data.image_size, "channels": data.channels,
                      "hflip": data.hflip, "mean": list(data.mean), "std": list(data.std),
                      "in_memory": data.in_memory, "num_workers": data.num_workers}}
           if hasattr(data, "image_size") else {}),
        "platform": platform.platform(),
        "config": cfg.to_dict(),
    }


def _working_directory() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # removed while the run started
        return None


def git_commit(package: Path | None = None) -> str | None:
    """Return the commit of longtail's own checkout that ``package`` (the longtail folder) is
    in, else None: installed into a venv inside the user's git repository, ``git rev-parse
    HEAD`` alone would record the user's commit as longtail's."""
    package = package or Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=package,
                              timeout=5).stdout.strip()

    try:
        top = git("rev-parse", "--show-toplevel")
        if not top:
            return None
        ours = Path(top) / "src" / "longtail" / "__init__.py"
        project = Path(top) / "pyproject.toml"
        # this very package in longtail's layout, and the project is longtail (not a copy of
        # the package vendored into another project)
        if not (ours.is_file() and ours.samefile(package / "__init__.py") and project.is_file()
                and re.search(r'(?m)^name\s*=\s*"longtail"', project.read_text("utf-8"))):
            return None
        return git("rev-parse", "HEAD") or None
    except (OSError, UnicodeDecodeError, subprocess.SubprocessError):
        return None
