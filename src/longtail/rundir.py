"""Run directories: the default name and the checks made before any work (no torch here, so
the command line answers a bad --out at once)."""

from __future__ import annotations

import os
import shlex
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from longtail.errors import LongtailError, file_problem

if TYPE_CHECKING:
    from longtail.config import Config


def default_run_dir(config_name: str) -> Path:
    """Return ``runs/<config name>-<timestamp>``, with ``-2``, ``-3``, ... when that folder
    exists (runs started within the same second)."""
    base = Path("runs") / f"{config_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return next(p for p in _numbered(base) if not os.path.lexists(p))


def _numbered(base: Path) -> Iterator[Path]:
    yield base
    k = 2
    while True:
        yield base.with_name(f"{base.name}-{k}")
        k += 1


def claim_run_dir(path: Path) -> Path:
    """Create the default-named run folder ``path`` and return it; when another process made
    it meanwhile (seeds started together with ``&``), the next free ``-2``, ``-3``, ...: each
    run gets its own folder, never one another run is writing."""
    for candidate in _numbered(path):
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as e:
            raise LongtailError(f"{candidate}: cannot create the folder ({e.strerror})") from None
    raise AssertionError("unreachable")


def require_run_dir(run_dir: Path, option: str = "") -> Path:
    """Return ``run_dir``'s config.yaml; refuse a folder that has none (``option``, e.g.
    "--resume", prefixes the message)."""
    path = run_dir / "config.yaml"
    if run_dir.is_file():
        raise LongtailError(f"{option + ' ' if option else ''}{run_dir}: is a file, expected a "
                            f"run folder (the folder that holds config.yaml)")
    if not path.is_file():
        raise LongtailError(f"{option + ' ' if option else ''}{run_dir}: not a run directory "
                            f"(no config.yaml)")
    if not (run_dir / "manifest.json").is_file():  # written with config.yaml by every run
        raise LongtailError(f"{option + ' ' if option else ''}{run_dir}: not a run directory "
                            f"(config.yaml but no manifest.json; a folder written by extract? "
                            f"start a run of it: longtail run "
                            f"{shlex.quote(str(path))} --out DIR)")
    return path


def check_run_dir(run_dir: Path, overwrite: bool, resumable: bool = True) -> None:
    """Refuse a ``run_dir`` that already holds files unless ``overwrite`` (``resumable``: a run
    folder, which --resume could continue), or one that cannot be written (see
    ``check_out_creatable``)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise LongtailError(f"--out {run_dir}: exists and is not a folder")
    if _holds_files(run_dir) and not overwrite:
        resume = f", --resume {shlex.quote(str(run_dir))} to continue it," if resumable else ""
        raise LongtailError(f"--out {run_dir}: folder exists and is not empty; pass --overwrite "
                            f"to replace its files{resume} or choose another --out")
    check_out_creatable(run_dir)


def _holds_files(folder: Path) -> bool:
    """Whether ``folder`` exists and holds files; False when it vanishes as it is looked at
    (another process's probe: torchrun's rank 0 makes and removes the folder it checks)."""
    try:
        return folder.is_dir() and any(folder.iterdir())
    except FileNotFoundError:
        return False


def check_out_creatable(out: Path) -> None:
    """Refuse an --out that cannot become a folder we write in, before any data is read: a
    dangling symbolic link, a path under a file, or a place the file system refuses (/sys, a
    read-only mount; os.access cannot tell for root). The folders are made and removed again,
    so nothing is left behind."""
    # abspath also folds `..` (`new/../out`: mkdir of `new/..` would fail on a missing `new`)
    target = Path(os.path.abspath(out))
    missing, existing = [], target
    while not existing.exists():
        if existing.is_symlink():
            if file_problem(existing) == "is in a loop of symbolic links":
                raise LongtailError(f"--out {out}: {existing} is in a loop of symbolic links; "
                                    f"remove the links or choose another --out")
            raise LongtailError(f"--out {out}: {existing} is a symbolic link to "
                                f"{os.readlink(existing)}, which does not exist; remove the "
                                f"link or choose another --out")
        missing.append(existing)
        existing = existing.parent
    if not existing.is_dir():
        raise LongtailError(f"--out {out}: {existing} is a file, not a folder")
    if _torchrun_other_rank():  # rank 0 probes: two probes would race on the same folders
        return
    for attempt in range(3):
        made: list[Path] = []
        try:
            for folder in reversed(missing):
                try:
                    folder.mkdir()
                except FileExistsError:  # made meanwhile by another process: not ours to remove
                    continue
                made.append(folder)
            probe_write(target)
            return
        except OSError as e:
            # a folder another command made (and probes) vanished as its probe removed it
            if isinstance(e, FileNotFoundError) and len(made) < len(missing) and attempt < 2:
                continue
            where = made[-1] if made else existing
            raise LongtailError(f"--out {out}: cannot write in {where} ({e.strerror}); choose "
                                f"another --out") from None
        finally:
            for folder in reversed(made):
                try:
                    folder.rmdir()
                except OSError:  # something else put a file there meanwhile: keep it
                    break


def _torchrun_other_rank() -> bool:
    """Whether this is one of torchrun's processes other than rank 0, which leave the run
    folder (its checks, lock and files) to rank 0."""
    return os.environ.get("WORLD_SIZE", "").strip() not in ("", "1") and \
        os.environ.get("RANK", "0").strip() not in ("", "0")


def probe_write(folder: Path) -> None:
    """Create and remove a file in ``folder``: OSError where the file system refuses."""
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".longtail-probe-")
    os.close(fd)
    os.unlink(probe)


def load_run_config(run_dir: Path, overrides: list[str] = ()) -> Config:
    """Return the config.yaml of the run in ``run_dir`` with ``overrides``, its relative paths
    taken from where the run started (``run_paths``)."""
    from longtail.config import load_config

    return run_paths(run_dir, load_config(run_dir / "config.yaml", overrides, run=True))


def run_paths(run_dir: Path, cfg: Config) -> Config:
    """Return ``cfg`` (the run's config.yaml, as written) with its relative paths taken from
    the directory the run started in (manifest.json's ``cwd``), so that resume, rebalance and
    extract read the same data from any working directory."""
    import json

    from longtail.config import rebase_paths

    try:
        origin = json.loads((run_dir / "manifest.json").read_text("utf-8")).get("cwd")
    except (OSError, ValueError, AttributeError):  # none yet, or damaged: reported elsewhere
        origin = None
    return rebase_paths(cfg, origin) if isinstance(origin, str) and origin else cfg


def check_rebalance_args(run_dir: Path, overrides: list[str]) -> Config:
    """Refuse a folder that is not a run, or overrides of keys that rebalance cannot change;
    return the run's config with the overrides (its paths as written)."""
    from longtail.config import load_config, override_key

    require_run_dir(run_dir)
    for key in overrides:
        name = override_key(key)
        if not (name in ("stage2", "eval", "device") or name.startswith(("stage2.", "eval."))):
            raise LongtailError(f"override {key}: rebalance only changes stage2.*, eval.* and "
                                f"device keys; start a new run for the others")
    cfg = load_config(run_dir / "config.yaml", overrides, run=True)
    given = {o.partition("=")[0].strip(): o for o in overrides}
    if "stage2.features" in given and cfg.stage2.features == "online":
        raise LongtailError(f"override {given['stage2.features']}: rebalance fits stage 2 on "
                            f"the run's cached features and never runs the network; for "
                            f"online stage 2 start a new run (longtail run CONFIG "
                            f"stage2.features=online)")
    from longtail.config import FINETUNE_METHODS

    for name in cfg.stage2.methods:  # said now, not after torch is loaded and the fits begun
        if name in FINETUNE_METHODS and not (run_dir / "stage2" / f"{name}.pt").is_file():
            raise LongtailError(f"stage2.methods: {name} re-runs the network on images, which "
                                f"'rebalance' does not; use 'longtail run'")
    for name in ("metrics.json", "per_class.csv", "report.md", "config.yaml"):
        if (run_dir / name).is_dir():  # to be replaced after the fits: said now
            raise LongtailError(f"{run_dir / name}: a folder where rebalance writes the file; "
                                f"move it away")
    try:  # a read-only copy of a run: said now, not by TensorBoard's thread after the fits
        probe_write(run_dir)
    except OSError as e:
        raise LongtailError(f"{run_dir}: cannot write in the run folder ({e.strerror}); "
                            f"rebalance writes stage2/, metrics.json and the report there: "
                            f"copy the run folder somewhere writable") from None
    return cfg


def check_resumable(run_dir: Path, cfg: Config | None) -> Config:
    """Return the config of the interrupted run in ``run_dir`` (relative paths from where it
    started: ``run_paths``); a given ``cfg`` must agree with it except for keys that do
    not change results (``config.PLACE_KEYS``). Here, without torch, so that a changed key is
    answered at once."""
    from dataclasses import replace

    from longtail.config import PLACE_KEYS, flatten, load_config

    written = load_config(require_run_dir(run_dir, "--resume"), run=True)
    saved = run_paths(run_dir, written)
    # a features run's work is all rank 0's, and so is what is left once stage 1 has ended
    # (its features cached, or no epoch to train)
    if written.data.kind != "features" and written.stage1.epochs > 0 and \
            not (run_dir / "features" / "train.pt").is_file():
        _check_same_processes(run_dir)
    if cfg is None:
        return saved
    ours, theirs = flatten(cfg), flatten(written)  # as written: as the user gives it
    changed = [k for k in ours if ours[k] != theirs.get(k) and k not in PLACE_KEYS]
    if changed:
        diffs = ", ".join(f"{k}: {theirs.get(k)!r} -> {ours[k]!r}" for k in changed[:5])
        # stage-2 settings are what rebalance changes, on the run's cached features
        from longtail.config import FINETUNE_METHODS

        # (not those rebalance refuses: the network on images, fine-tuning)
        other = (f"; stage-2 keys alone: longtail rebalance {shlex.quote(str(run_dir))} "
                 f"KEY=VALUE ... (once stage 1 has finished)"
                 if all(k.startswith("stage2.") and not k.startswith(
                     ("stage2.finetune", "stage2.features", "stage2.bn")) for k in changed)
                 and not set(ours.get("stage2.methods") or []) & set(FINETUNE_METHODS)
                 else "")
        raise LongtailError(f"--resume {run_dir}: the config differs from the run's own "
                            f"config.yaml ({diffs}); resume without changes, or start a new "
                            f"run{other}")
    # a data.root given now (the data moved) is the user's, from the working directory: one
    # spelled as the run's own too, when it names a folder here
    given = cfg.data.root != theirs["data.root"] or (cfg.data.root is not None
                                                     and Path(cfg.data.root).is_dir())
    root = cfg.data.root if given else saved.data.root
    return replace(saved, device=cfg.device,
                   data=replace(saved.data, root=root, num_workers=cfg.data.num_workers))


def resume_command(run_dir: Path, processes: int | None = None) -> str:
    """Return the command that continues the run in ``run_dir``, quoted for a shell (a hint is
    pasted, and a folder may hold spaces or quotes): under torchrun, with this launch's
    process count (a resume must keep it), or with ``processes`` on one machine when given."""
    from longtail.config import env_world_size

    world = processes or env_world_size()  # from torchrun's environment: the group may be gone
    per_node = world if processes else int(os.environ.get("LOCAL_WORLD_SIZE") or world)
    nodes = f"--nnodes {world // per_node} " if per_node < world else ""
    launcher = f"torchrun {nodes}--nproc-per-node {per_node} -m longtail" if world > 1 \
        else "longtail"
    return f"{launcher} run --resume {shlex.quote(str(run_dir))}"


def _check_same_processes(run_dir: Path) -> None:
    """Refuse to continue a run with another process count than it started with: each process
    draws its shard of the sampler stream and BatchNorm sees its own part of a batch, so the
    continued stage 1 would not compute what the uninterrupted one does."""
    import json

    from longtail.config import env_world_size

    try:
        started = json.loads((run_dir / "manifest.json").read_text()).get("world_size", 1)
    except (OSError, ValueError, AttributeError):  # the manifest's own reader says what is wrong
        return
    now = env_world_size()
    if isinstance(started, int) and started != now:
        again = (f"torchrun with {started} processes in all (on one machine: "
                 f"{resume_command(run_dir, started)})" if started > 1 else
                 f"{resume_command(run_dir, 1)} (without torchrun)")
        raise LongtailError(f"--resume {run_dir}: the run's stage 1 started on {started} "
                            f"process{'es' * (started > 1)}, this is {now}; continue it with "
                            f"the same count: {again}")


@contextmanager
def run_folder_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder ``run_dir`` while a command writes in it, so that a
    second command on the same run (``--resume`` or ``rebalance`` while the run goes on, which
    would write into the same files) is refused in one line. An advisory flock on the folder
    itself: no lock file is left behind, and the lock ends with the process, however it ends.
    Only torchrun's rank 0 takes it (the others run the same command); where there is no flock
    (Windows, some network file systems) nothing is locked."""
    real = os.path.realpath(run_dir)
    if _torchrun_other_rank() or not run_dir.is_dir() or real in _LOCKED:  # (held here: go on)
        yield
        return
    try:
        fd = _try_lock(run_dir)
    except BlockingIOError:
        raise LongtailError(f"{run_dir}: another longtail command is working in this "
                            f"folder; wait until it ends (or stop it) and try again") from None
    if fd is None:  # nothing to lock with here: go on unlocked
        yield
        return
    _LOCKED.add(real)
    try:
        yield
    finally:
        _LOCKED.discard(real)
        os.close(fd)


def folder_in_use(run_dir: Path) -> bool:
    """Whether another process holds ``run_dir``'s lock (``run_folder_lock``): a run still
    going there, whose missing stages a --resume would be refused to finish."""
    if os.path.realpath(run_dir) in _LOCKED:
        return False
    try:
        fd = _try_lock(run_dir)
    except BlockingIOError:
        return True
    if fd is not None:
        os.close(fd)
    return False


def _try_lock(run_dir: Path) -> int | None:
    """Take the exclusive flock of folder ``run_dir`` without waiting: return the descriptor
    that holds it (closing it ends the lock), None where nothing can be locked (no fcntl, a
    file system without flock, a folder that cannot be opened); BlockingIOError while another
    process holds it."""
    try:
        import fcntl

        fd = os.open(run_dir, os.O_RDONLY)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if isinstance(e, BlockingIOError):
            raise
        return None
    return fd


# The run folders this process holds locked: a lock taken again (the command line locks a
# folder to resume before reading the data, the pipeline where it starts) is the same lock;
# flock would refuse a second descriptor of the same process.
_LOCKED: set[str] = set()
