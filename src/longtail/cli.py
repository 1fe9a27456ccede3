"""The ``longtail`` command line: run, grid, rebalance, extract, make-split, summarize,
config."""

from __future__ import annotations

import argparse
import errno
import glob
import itertools
import json
import math
import os
import shlex
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from longtail import __version__
from longtail.checkpoint import make_dir
from longtail.errors import Interrupted, LongtailError, file_problem, too_long
from longtail.rundir import (
    check_rebalance_args,
    check_resumable,
    check_run_dir,
    default_run_dir,
    probe_write,
    require_run_dir,
    resume_command,
    run_folder_lock,
)

if TYPE_CHECKING:
    from longtail.config import Config

# The shipped configs, package data (configs/ at the repository root links here): a pip install
# has them although the working folder has no configs/.
BUNDLED_CONFIGS = Path(__file__).parent / "configs"

OVERRIDES_HELP = ("config overrides with dotted keys, e.g. stage1.epochs=5 "
                  "stage2.methods=[crt,tau_norm] data.root=/data/imagenet "
                  "(see 'longtail config --keys' for every key)")


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (the usage itself is in --help)."""

    def error(self, message: str):
        command = self.prog.removeprefix("longtail").strip()  # a sub-command's parser
        if _other_rank():
            _leave_the_word_to_the_first()
            sys.exit(2)
        print(f"longtail: error: {command + ': ' if command else ''}{message}; see "
              f"'{self.prog} --help'", file=sys.stderr)
        sys.exit(2)


def _folder(text: str) -> Path:
    """argparse type of a folder option: Path('') would silently be the working directory,
    and '-' (stdout to many commands) a folder of that name."""
    if not text.strip() or text == "-":
        raise argparse.ArgumentTypeError(f"expected a folder, found {text!r}")
    return Path(text)


def _file_name(text: str) -> Path:
    """argparse type of a file option: Path('') would silently be the working directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a file name, found {text!r}")
    return Path(text)


def bundled_configs() -> list[str]:
    """Return the names of the bundled configs (fmnist_lt, ...)."""
    return sorted(p.stem for p in BUNDLED_CONFIGS.glob("*.yaml"))


def resolve_config(text: str, notes: list[str] | None = None) -> Path:
    """Return the config file that CONFIG names: the file itself; when there is none, the
    bundled config it names as ``NAME``, ``NAME.yaml`` or ``configs/NAME.yaml`` (the
    documented commands, run where no configs/ folder is), with a note: appended to ``notes``
    (the caller prints it once the config has loaded, so that a mistake stays one line), or
    printed on stderr at once when ``notes`` is None."""
    path = Path(text)
    name = path.name.removesuffix(".yaml")
    bundled = BUNDLED_CONFIGS / f"{name}.yaml"
    # Only a bare name or configs/NAME: another folder's missing file is the user's typo. A
    # bare name that is a folder (an earlier `--out fmnist_lt`) still means the bundled one.
    near = path.parent in (Path("."), Path("configs")) and name in bundled_configs()
    if path.is_dir() and not (near and path.suffix == ""):
        own = path / "config.yaml"  # a run's or an extract's folder: its config is inside
        raise LongtailError(f"{text}: is a folder, not a config file (expected a YAML file, "
                            + (f"e.g. {own}, that folder's config)" if own.is_file() else
                               "e.g. configs/fmnist_lt.yaml, or a bundled config's name)"))
    if os.path.lexists(path) and not path.is_dir():
        return path  # an unreadable file (a FIFO, a link loop) is answered when it is read
    if near:
        note = f"note: using longtail's bundled config {bundled.name}"
        if notes is None:
            print(note, file=sys.stderr)
        else:
            notes.append(note)
        return bundled
    raise LongtailError(f"{text}: config file not found; expected a YAML file or a bundled "
                        f"config: {', '.join(bundled_configs())}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="longtail",
        description="Long-tailed recognition by decoupling representation and classifier: "
                    "train features with plain sampling (stage 1), then re-balance only the "
                    "classifier (cRT, NCM, tau-norm, LWS) and report Many/Medium/Few-shot "
                    "accuracy.",
        epilog="Example: longtail run configs/fmnist_lt.yaml stage1.epochs=5 --out runs/quick. "
               "CONFIG may name a bundled config (" + ", ".join(bundled_configs()) + "); "
               "'longtail config fmnist_lt > my.yaml' writes a copy to edit.")
    parser.add_argument("--version", action="version", version=f"longtail {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="show the full traceback of errors instead of one line")

    run = sub.add_parser(
        "run", parents=[common],
        help="stage 1, features, every stage-2 method, evaluation and report",
        description="Train stage 1, extract features once, fit every stage-2 method in "
                    "stage2.methods on them, evaluate on the test split, print a table and "
                    "write the run directory (config.yaml, metrics.json, per_class.csv, "
                    "report.md, plots/, stage1/last.pt, features/, stage2/).")
    run.add_argument("config", metavar="CONFIG", nargs="?",
                     help="YAML config file, e.g. configs/fmnist_lt.yaml, or a bundled "
                          "config's name, e.g. fmnist_lt (optional with --resume: the run's "
                          "own config.yaml)")
    run.add_argument("overrides", metavar="KEY=VALUE", nargs="*", default=[], help=OVERRIDES_HELP)
    run.add_argument("--out", metavar="DIR", type=_folder,
                     help="run directory (default: runs/<config name>-<timestamp>)")
    run.add_argument("--overwrite", action="store_true",
                     help="allow --out to name a folder that already holds files")
    run.add_argument("--resume", metavar="DIR", type=_folder,
                     help="continue the interrupted run in DIR from its last complete state "
                          "(finished stage-1 epochs, features and stage-2 methods are kept)")

    grid = sub.add_parser(
        "grid", parents=[common],
        help="stage 1 with each of several samplers (and losses), every stage-2 method on each",
        description="For each sampler of --samplers (and each loss of --losses), run stage 1 "
                    "with it and every stage-2 method on its features (as 'run' does, into "
                    "DIR/<sampler>/ or DIR/<sampler>-<loss>/), then write DIR/grid.json "
                    "({row: metrics.json's methods}) and a table like the paper's Figure 1: "
                    "rows = stage-1 variant, columns = method, cells = top-1 / Few.")
    grid.add_argument("config", metavar="CONFIG",
                      help="YAML config file, or a bundled config's name, e.g. fmnist_lt")
    grid.add_argument("overrides", metavar="KEY=VALUE", nargs="*", default=[], help=OVERRIDES_HELP)
    grid.add_argument("--samplers", default=None,
                      help="comma-separated stage-1 samplers: instance, class, sqrt, "
                           "progressive, class_aware or q in [0, 1] (default: "
                           "instance,class,sqrt,progressive; with --losses: stage1.sampler)")
    grid.add_argument("--losses", default=None,
                      help="comma-separated stage-1 losses: ce, logit_adjusted, "
                           "balanced_softmax (default: stage1.loss)")
    grid.add_argument("--out", metavar="DIR", type=_folder,
                      help="grid directory (default: runs/<config name>-grid-<timestamp>)")
    grid.add_argument("--overwrite", action="store_true",
                      help="allow --out to name a folder that already holds files")

    rebalance = sub.add_parser(
        "rebalance", parents=[common],
        help="re-run stage 2 and the report of a finished run, from its features",
        description="Fit the stage-2 methods again on RUN_DIR's cached features and stage-1 "
                    "classifier (no image is read, the backbone does not run), then rewrite "
                    "metrics.json and the report. Overrides may change stage2.*, eval.* and "
                    "device keys, e.g. stage2.crt.epochs=30 stage2.lws.scale_bias=true.")
    rebalance.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a finished run's folder")
    rebalance.add_argument("overrides", metavar="KEY=VALUE", nargs="*", default=[],
                           help="stage2.*, eval.* or device overrides")

    extract = sub.add_parser(
        "extract", parents=[common],
        help="write a run's features (train/val/test) as .npz, .safetensors or .pt files",
        description="Write the cached features and labels of RUN_DIR's train, val and test "
                    "splits to DIR/SPLIT.FORMAT, with the class names; the training file also "
                    "holds the run's joint classifier (joint_weight, joint_bias) and "
                    "group_counts. DIR/config.yaml runs stage 2 on them (data.kind: features) "
                    "and repeats the run's stage-2 results exactly.")
    extract.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a finished run's folder")
    extract.add_argument("--format", choices=["npz", "safetensors", "pt"], default="npz",
                         help="file format (default npz, uncompressed so it can be "
                              "memory-mapped)")
    extract.add_argument("--out", metavar="DIR", type=_folder, required=True,
                         help="folder for the files (created; must be empty)")
    extract.add_argument("--overwrite", action="store_true",
                         help="allow --out to name a folder that already holds files")

    split = sub.add_parser(
        "make-split", parents=[common],
        help="write long-tailed train/val/test lists from a balanced source",
        description="Draw a long-tailed training split (exponential or Pareto profile, fixed "
                    "by --seed) and balanced val/test splits from a balanced source, and write "
                    "them as list files (data.kind: list) with classes.txt and split.json "
                    "(class counts and the SHA-256 of each list). List and image-folder "
                    "sources are referenced in place; CIFAR and Fashion-MNIST images are "
                    "written out as PNG files, their official test set as the test split.")
    split.add_argument("source", choices=["list", "image_folder", "cifar10", "cifar100",
                                          "fmnist"], help="kind of the balanced source")
    split.add_argument("--root", type=_folder, required=True,
                       help="the source's folder (images, CIFAR batches or IDX files)")
    split.add_argument("--list", dest="list_file", type=Path,
                       help="list source: the balanced list file ('relative/path label')")
    split.add_argument("--out", type=_folder, required=True,
                       help="folder for the lists (created; must be empty)")
    split.add_argument("--overwrite", action="store_true",
                       help="allow --out to name a folder that already holds files")
    split.add_argument("--profile", choices=["exponential", "pareto"], default="exponential",
                       help="exponential: n_max * (n_min/n_max)^(i/(C-1)); pareto: "
                            "ImageNet-LT-like (Pareto quantiles, see --alpha)")
    split.add_argument("--n-max", type=int, help="images of the largest class (default: "
                                                 "--n-min x --ratio, else all the smallest "
                                                 "class can give)")
    split.add_argument("--n-min", type=int, help="images of the smallest class (default: "
                                                 "n_max / --ratio)")
    split.add_argument("--ratio", type=float, help="imbalance ratio n_max / n_min (default 100 "
                                                   "unless --n-min); at most two of --n-max, "
                                                   "--n-min and --ratio")
    split.add_argument("--alpha", type=float, default=None,
                       help="--profile pareto: its shape (default 6, as ImageNet-LT)")
    split.add_argument("--val-per-class", type=int, default=20,
                       help="balanced val size per class (default 20)")
    split.add_argument("--test-per-class", type=int, default=None,
                       help="list and image_folder sources: balanced test size per class "
                            "(default 50; 0: no test.txt, bring your own test list); CIFAR "
                            "and Fashion-MNIST use their official test set")
    split.add_argument("--seed", type=int, default=0,
                       help="fixes class order and image choice (0 <= seed < 2^32)")
    split.add_argument("--class-order", choices=["random", "label"], default="random",
                       help="which class gets which size: drawn from --seed, or label order")

    summarize = sub.add_parser(
        "summarize", parents=[common],
        help="mean and spread of several runs (e.g. seeds) as one table",
        description="Read RUN_DIR/metrics.json of each run and print, per method, the mean "
                    "and sample standard deviation of top-1, Many, Medium, Few, ECE and tau.")
    summarize.add_argument("run_dirs", metavar="RUN_DIR", type=Path, nargs="+",
                           help="finished runs' folders")
    summarize.add_argument("--markdown", action="store_true", help="print a Markdown table")
    summarize.add_argument("--json", metavar="FILE", type=_file_name,
                           help="also write the summary as JSON (replacing only an earlier "
                                "summary, unless --overwrite)")
    summarize.add_argument("--overwrite", action="store_true",
                           help="allow --json to replace an existing file that is not an "
                                "earlier summary")
    summarize.add_argument("--ignore", metavar="KEYS",
                           help="comma-separated config keys (or sections, e.g. data) allowed "
                                "to differ between the runs besides seed; by default runs of "
                                "another dataset or setting are refused")

    config = sub.add_parser(
        "config", parents=[common],
        help="print the fully resolved config, or the reference of every key",
        description="Print CONFIG with overrides applied and defaults filled in, as the run "
                    "would use it; or, with --keys, a table of every key, its type, default "
                    "and meaning.")
    config.add_argument("config", metavar="CONFIG", nargs="?",
                        help="YAML config file, or a bundled config's name (its resolved copy: "
                             "longtail config fmnist_lt > my.yaml)")
    config.add_argument("overrides", metavar="KEY=VALUE", nargs="*", default=[],
                        help=OVERRIDES_HELP)
    config.add_argument("--keys", action="store_true", help="print the key reference (Markdown)")
    return parser


def _other_rank() -> bool:
    """True in torchrun's processes other than each node's first (LOCAL_RANK 0) that have not
    joined the group yet: they parse the same command line and config, on the same file
    system, as that one, which reports their mistakes once per node."""
    from longtail.config import env_world_size

    try:
        if env_world_size() == 1 or os.environ.get("LOCAL_RANK", "0").strip() in ("", "0"):
            return False
    except LongtailError:  # a WORLD_SIZE torchrun did not set: the config check says so
        return False
    joined = getattr(sys.modules.get("longtail.distributed"), "joined", False)
    return not joined


# How long a torchrun process that found the same mistake as its node's first process waits
# before it exits: torchrun stops the others (SIGTERM) as soon as one ends, which cut off the
# first one's error line in 4 of 10 tries. The first one ends it sooner (its SIGTERM); 3 s
# was too short on a loaded machine, where the first one had not said its line yet.
OTHER_RANK_WAIT = 15.0


@contextmanager
def _stop_signals_handled(handler) -> Iterator[None]:
    """Handle the stop signals (SIGTERM, SIGHUP, SIGINT) with ``handler`` for the duration;
    the earlier handlers are restored after (for a program that called main() in-process)."""
    import signal

    before = {}
    for name in (*STOP_SIGNALS, "SIGINT"):
        number = getattr(signal, name, None)
        if number is not None:
            before[number] = signal.signal(number, handler)
    try:
        yield
    finally:
        for number, earlier in before.items():
            signal.signal(number, earlier)


def _leave_the_word_to_the_first() -> None:
    """Wait OTHER_RANK_WAIT seconds in silence; torchrun's SIGTERM, sent once the first
    process has said the mistake and ended, ends this one quietly (as a KeyboardInterrupt it
    printed tracebacks and a 'stopped by SIGTERM' line from every other process)."""
    import time

    sys.stdout.flush()
    sys.stderr.flush()
    with _stop_signals_handled(lambda *_: os._exit(2)):
        time.sleep(OTHER_RANK_WAIT)


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Return the parser of each command (run, grid, ...) by name."""
    return next(a.choices for a in parser._actions
                if isinstance(a, argparse._SubParsersAction))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # Options before the command: argparse would only say that COMMAND is missing.
    leading = list(itertools.takewhile(lambda a: a.startswith("-"), argv))
    unknown = [a for a in leading if a != "-h" and not (
        len(a) > 2 and any(o.startswith(a) for o in ("--help", "--version")))]
    if unknown:
        after = argv[len(leading)] if len(argv) > len(leading) else None
        where = (f" (a command's options go after it: longtail {after} {' '.join(unknown)} ...)"
                 if after in _commands(parser) else "")
        parser.error(f"unrecognized arguments: {' '.join(unknown)}{where}")
    # argparse keeps the last of an option given twice: `--samplers a --samplers b` would drop a
    given = [a.split("=", 1)[0] for a in argv if a.startswith("--") and len(a) > 2]
    twice = next((o for i, o in enumerate(given) if o in given[:i]), None)
    if twice:
        parser.error(f"option {twice} given twice; give it once")
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may also come after options (`grid CONFIG --samplers a,b k=v`).
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown or (extra and not hasattr(args, "overrides")):  # said by the command's parser
        _commands(parser)[args.command].error(
            f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    _quiet_fd_sharing_errors()
    try:
        return _dispatch(args, argv)
    except LongtailError as e:
        if getattr(args, "debug", False):
            raise
        if not _other_rank():
            import signal

            # the line is the answer: torchrun's SIGTERM (another process ended) cut it
            with _stop_signals_handled(signal.SIG_IGN):
                print(f"longtail: error: {one_line(str(e))}{_full_disk_hint(str(e))}",
                      file=sys.stderr)
                sys.stderr.flush()
        else:
            _leave_the_word_to_the_first()
        return 2
    # A stop reaches every process: said once, by rank 0 once joined, before that by each
    # node's first process (torchrun's SIGTERM after a mistake can reach the others before
    # they have found it themselves).
    except Interrupted as e:
        _quiet_teardown()
        if not (_follower() or _other_rank()):
            _last_words(f"longtail: {_stop_word()}; {e.hint}")
        return _stop_code()
    except KeyboardInterrupt:
        _quiet_teardown()
        if not (_follower() or _other_rank()):
            _last_words(f"longtail: {_stop_word()}")
        return _stop_code()
    except OSError as e:  # the file system's answer on a path given (too long, a loop, full)
        if getattr(args, "debug", False):
            raise
        print(f"longtail: error: {os_error_line(e)}{_full_disk_hint(str(e))}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        if getattr(args, "debug", False):
            raise
        if _peer_lost(e):  # the process that failed said why; this one only followed it
            if not _follower():  # once, by rank 0 (unless it was the one that ended)
                print(f"longtail: error: another process of this run ended (its message, if "
                      f"any, is above); this one stopped with it{_continue_hint()}",
                      file=sys.stderr)
            return 2
        if not is_out_of_memory(e):
            raise
        print(f"longtail: error: {out_of_memory_line(e)}", file=sys.stderr)
        return 2


# What Gloo and NCCL say in the processes of a run when another one has ended.
PEER_LOST = ("Connection closed by peer", "Connection reset by peer",
             "communicator was aborted")


def _peer_lost(error: BaseException) -> bool:
    """Whether ``error`` is a collective of a joined torchrun group failing because another
    process of the run ended (its own error, a stop, a kill)."""
    joined = getattr(sys.modules.get("longtail.distributed"), "joined", False)
    return joined and any(text in str(error) for text in PEER_LOST)


def _last_words(line: str) -> None:
    """Print the stop line; a terminal that is gone (SIGHUP) cannot take it (EIO), which
    must not turn the stop's exit status into a failure's."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass


def _follower() -> bool:
    """True in a torchrun process other than rank 0 once the group was joined: a stop reaches
    every process, and rank 0 says it (with what a follower may not know, e.g. grid's rows)."""
    loaded = sys.modules.get("longtail.distributed")
    return bool(getattr(loaded, "joined", False) and getattr(loaded, "joined_rank", 0))


def _full_disk_hint(message: str) -> str:
    """Return how to continue a run stopped by a full disk, once there is room (when it has a
    stage-1 checkpoint to continue from), else ""."""
    full = "No space left on device" in message
    return _continue_hint("once there is room, continue with") if full else ""


def _continue_hint(lead: str = "continue with") -> str:
    """Return "; <lead>: <resume command>" for the run this process worked on when it has a
    stage-1 checkpoint to continue from (a process killed alone, say), else ""."""
    pipeline = sys.modules.get("longtail.pipeline")
    run_dir = getattr(pipeline, "active_run", None)
    if run_dir is None or not (run_dir / "stage1" / "last.pt").is_file():
        return ""
    return f"; {lead}: {resume_command(run_dir)}"


def _quiet_fd_sharing_errors() -> None:
    """Drop the connection errors of multiprocessing's resource_sharer thread. A DataLoader
    worker hands its batches over through that thread; when the main process alone is
    stopped mid-transfer (``kill -INT``), the worker's thread printed a BrokenPipeError
    traceback after the stop line. Forked workers inherit the hook; other errors pass on."""
    previous = sys.excepthook
    if getattr(previous, "longtail_quiet", False):
        return

    def hook(kind, value, tb) -> None:
        if issubclass(kind, (ConnectionError, EOFError)) and tb is not None and \
                tb.tb_frame.f_code.co_filename.endswith(
                    os.path.join("multiprocessing", "resource_sharer.py")):
            return
        previous(kind, value, tb)

    hook.longtail_quiet = True
    sys.excepthook = hook


def _quiet_teardown() -> None:
    """After a stop (Ctrl-C, SIGTERM), say nothing more: DataLoader workers the same signal
    killed make the loader's clean-up complain (``Exception ignored in ... __del__``), and
    multiprocessing's threads may raise on their way out (its resource_sharer, serving a
    worker that left mid-way, reports a BrokenPipeError through sys.excepthook); the stop
    line is the whole answer."""
    import threading

    sys.unraisablehook = lambda *_: None
    threading.excepthook = lambda *_: None
    sys.excepthook = lambda *_: None


# The signal that stopped the command, when not Ctrl-C: SIGTERM (kill, timeout, Slurm's end of
# a job) or SIGHUP (the terminal closed, an ssh session dropped). It ends as Ctrl-C does (the
# folder cleaned, what to type to continue), with the shell's status for that signal.
_stopped_by: int | None = None
STOP_SIGNALS = ("SIGTERM", "SIGHUP")


def _on_stop_signal(signum: int, frame: object) -> None:
    global _stopped_by
    if _stopped_by is not None:  # `timeout` signals the process and then its group: one is enough
        return
    if _other_rank():  # before joining, nothing of this process's to clean up or to say
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + signum)
    _stopped_by = signum
    raise KeyboardInterrupt


def install_stop_handlers() -> None:
    """Make SIGTERM and SIGHUP stop the command as Ctrl-C does; one set to be ignored stays
    so (`nohup longtail run ...` outlives its terminal)."""
    import signal

    for name in STOP_SIGNALS:
        number = getattr(signal, name, None)  # no SIGHUP on Windows
        if number is not None and signal.getsignal(number) is not signal.SIG_IGN:
            signal.signal(number, _on_stop_signal)


def _stop_word() -> str:
    import signal

    return ("interrupted" if _stopped_by is None
            else f"stopped by {signal.Signals(_stopped_by).name}")


def _stop_code() -> int:
    return 130 if _stopped_by is None else 128 + _stopped_by


def os_error_line(e: OSError) -> str:
    """Return an OSError as one line: the path (shortened when very long), what the system
    said, and for a path part over the file system's limit, which limit."""
    name = str(e.filename) if e.filename is not None else ""
    shown = name if len(name) <= 120 else f"{name[:60]}...{name[-40:]}"
    why = e.strerror or type(e).__name__
    if e.errno == errno.ENAMETOOLONG:
        why += f" ({too_long(name)})"
    return f"{shown}: {why}" if shown else why


def out_of_memory_line(e: BaseException) -> str:
    """Return a failed allocation as one line: how much was asked for, and what to lower."""
    import re

    asked = re.search(r"[Tt]ried to allocate (\d+) bytes|[Tt]ried to allocate ([\d.]+ ?[KMGT]i?B)",
                      str(e))
    size = ("" if asked is None else f": tried to allocate {int(asked[1]) / 2**30:.1f} GiB"
            if asked[1] else f": tried to allocate {asked[2]}")
    return (f"out of memory{size}; lower stage1.batch_size, eval.batch_size, data.image_size "
            f"or model.width")


def is_out_of_memory(e: BaseException) -> bool:
    """True for torch's and Python's failures to allocate memory (CPU or GPU)."""
    text = str(e)
    return isinstance(e, MemoryError) or "out of memory" in text or \
        "can't allocate memory" in text


class _PipeSafe:
    """A stream whose reader may leave (``longtail ... | head -1``): what is written after
    that goes to /dev/null, so the work goes on and its files are written as without the pipe
    (Python would raise BrokenPipeError from the next print)."""

    def __init__(self, stream, name: str) -> None:
        # a closed stream (`longtail ... >&-`): its output discarded, as with > /dev/null
        self._stream = stream if stream is not None else open(os.devnull, "w")
        self._name = name

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_devnull()
            return len(text)
        except OSError as e:  # e.g. > /dev/full: the error line says which stream
            e.filename = e.filename or self._name
            raise

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()
        except OSError as e:
            e.filename = e.filename or self._name
            raise

    def _to_devnull(self) -> None:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())  # also for what torch or C code writes
            os.close(devnull)
        except (OSError, ValueError):  # a stream without a file descriptor
            self._stream = open(os.devnull, "w")

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def entry() -> None:
    """The ``longtail`` command: ``main``, then, once torch is loaded, an exit without the
    interpreter's teardown of its modules. That teardown does no work of ours but took 0.8 s
    (torch) to 1.3 s (the pipeline's modules) on 2 CPU cores, after the last line was printed,
    and a Ctrl-C in it printed "Exception ignored" tracebacks. atexit's handlers still run."""
    import atexit
    import multiprocessing
    import signal
    import threading

    install_stop_handlers()
    sys.stdout, sys.stderr = _PipeSafe(sys.stdout, "stdout"), _PipeSafe(sys.stderr, "stderr")
    code = main()
    if "torch" not in sys.modules or multiprocessing.active_children() or any(
            t.is_alive() and not t.daemon for t in threading.enumerate()
            if t is not threading.main_thread()):
        sys.exit(code)  # nothing to save, or processes and threads to wait for: the usual way
    # An interrupt now leaves at once, silently: the work is done and its files written.
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    atexit._run_exitfuncs()  # e.g. multiprocessing's clean-up
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or stream: nothing to say
            pass
    os._exit(code)


def one_line(message: str) -> str:
    """Return the user's message of an error; one raised in a DataLoader worker arrives wrapped
    in the worker's traceback, whose last line is the message."""
    if "Original Traceback" in message:
        message = message.strip().splitlines()[-1].split(": ", 1)[-1]
    # a value of 100,000 characters (a pasted file as model.name) would be the whole line
    return " ".join(word if len(word) <= 200 else
                    f"{word[:80]}...{word[-40:]} ({len(word)} characters)"
                    for word in message.split())


def _print_notes(notes: list[str]) -> None:
    """Print the notes held back until the command line and config passed their checks (once
    under torchrun: by rank 0)."""
    for note in notes if not _other_rank() else ():
        print(note, file=sys.stderr)
    notes.clear()


# What shows that a machine may have a GPU torch can use as "cuda": NVIDIA's driver (also in
# containers), WSL 2's GPU, ROCm (AMD, "cuda" to torch), Jetson's integrated GPU.
GPU_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidia*", "/dev/dxg", "/dev/kfd",
                    "/dev/nvhost-*", "/dev/nvgpu*")


def check_device(device: str) -> None:
    """Refuse config key ``device`` naming a device this machine surely lacks, as
    ``distributed.select_device`` would, but without importing torch (seconds): cuda or cuda:N
    on Linux without any GPU driver's files, mps anywhere but macOS. Where it cannot tell
    (another system, a driver present), torch decides later."""
    from longtail.config import missing_device_message

    kind = device.partition(":")[0]
    if (kind == "mps" and sys.platform != "darwin") or (
            kind == "cuda" and sys.platform.startswith("linux")
            and not any(glob.glob(pattern) for pattern in GPU_DRIVER_FILES)):
        raise LongtailError(f"config key device: {missing_device_message(device)}")


def _override_key(item: str) -> tuple[str, str]:
    key, _, value = item.partition("=")
    return key.strip(), value


def _check_grid_overrides(args: argparse.Namespace) -> None:
    """Refuse a stage1.sampler or stage1.loss override that grid replaces by each row's entry
    of --samplers or --losses: silently dropped, it would look used."""
    import yaml

    for item in args.overrides:
        key, value = _override_key(item)
        found = {}
        if key in ("stage1.sampler", "stage1.loss"):
            found = {key.removeprefix("stage1."): value.strip()}
        elif key == "stage1":  # the whole section, e.g. stage1={epochs: 3, sampler: sqrt}
            try:
                section = yaml.safe_load(value)
            except (yaml.YAMLError, RecursionError):
                section = None  # load_config names the mistake
            if isinstance(section, dict):
                found = {n: section[n] for n in ("sampler", "loss") if n in section}
        for name, given in found.items():
            option = "--samplers" if name == "sampler" else "--losses"
            listed = args.samplers if name == "sampler" else args.losses
            if listed is not None:
                shown = f"{option} {listed}"
            elif name == "sampler" and args.losses is None:
                shown = f"{option} (default instance,class,sqrt,progressive)"
            else:  # stage1.sampler with --losses alone, stage1.loss without --losses: used
                continue
            fix = (f"drop the override ({given} is in {option} already)"
                   if str(given) in [x.strip() for x in (listed or "").split(",")]
                   else f"drop the override, or put {given} in {option}")
            raise LongtailError(f"grid: override {item} conflicts with {shown}: grid sets "
                                f"stage1.{name} of each row from {option}; {fix}")


def _check_ignore(text: str | None) -> list[str]:
    """Return summarize's --ignore keys; refuse one that is no config key or section."""
    from longtail.config import close_keys, key_names

    ignore = [k.strip() for k in (text or "").split(",") if k.strip()]
    for key in ignore:
        if key not in key_names():
            close = close_keys(key)
            hint = (f"; did you mean {', '.join(close)}?" if close
                    else "; see 'longtail config --keys'")
            raise LongtailError(f"summarize --ignore: expected config keys or sections, found "
                                f"unknown key {key}{hint}")
    return ignore


def _earlier_summary(path: Path) -> bool:
    """True for a file summarize wrote: a JSON object of "runs" (a list of folder names) and
    "methods" (an object), nothing else."""
    try:
        if path.stat().st_size > 2**24:  # a summary is a few kB; do not read a large file
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable, not UTF-8 or not JSON: not ours
        return False
    return (isinstance(data, dict) and set(data) == {"runs", "methods"}
            and isinstance(data["runs"], list) and all(isinstance(r, str) for r in data["runs"])
            and isinstance(data["methods"], dict))


def _dispatch(args: argparse.Namespace, argv: list[str]) -> int:
    commands = {"config": _config, "run": _run, "grid": _grid, "rebalance": _rebalance,
                "extract": _extract, "make-split": _make_split, "summarize": _summarize}
    return commands[args.command](args, argv)


def _refuse_override_as_config(args: argparse.Namespace) -> None:
    """``longtail COMMAND k=v``: an override where the CONFIG goes (a file named like k=v is
    a config), said as such rather than "k=v: config file not found"."""
    if args.config is not None and "=" in args.config and not Path(args.config).is_file():
        raise LongtailError(f"{args.command}: expected a CONFIG file first, found "
                            f"{args.config!r}; e.g. longtail {args.command} "
                            f"configs/fmnist_lt.yaml {args.config}")


def _config(args: argparse.Namespace, argv: list[str]) -> int:
    _one_process("config", "it prints a config")
    from longtail.config import config_reference, dump_config, load_config, template_gaps

    if args.keys and (args.config is not None or args.overrides):
        # the reference is the same for every config: silently ignoring them would mislead
        raise LongtailError("config --keys lists every key; it takes no CONFIG or overrides")
    _refuse_override_as_config(args)
    if args.keys:
        print(config_reference(), end="")
        return 0
    notes: list[str] = []  # printed once the config has loaded: a mistake stays one line
    path = None if args.config is None else resolve_config(args.config, notes)
    cfg = load_config(path, args.overrides, template=True)
    missing = template_gaps(cfg)
    if missing:  # what a run of it asks for (data.root, ...): said, not refused
        notes.append(f"note: fill in before 'longtail run': {'; '.join(missing)}")
    text = dump_config(cfg)
    _print_notes(notes)
    print(text, end="")
    return 0


def _check_data_files(cfg: Config, config: str | Path) -> None:
    """Check the data's files before any work; a data.root gone while the config's own folder
    holds the files it names (an extract's folder moved or copied) says so."""
    from longtail.data.preflight import check_data_files
    from longtail.data.record import SPLITS

    try:
        check_data_files(cfg.data)
    except LongtailError as error:
        d = cfg.data
        here = Path(config).absolute().parent
        given = [getattr(d, s) for s in SPLITS if getattr(d, s)]
        if not d.root or Path(d.root).is_dir() or not given or not all(
                not Path(g).is_absolute() and (here / g).exists() for g in given):
            raise
        raise LongtailError(f"{error}; the config's folder holds {', '.join(given)}: add "
                            f"data.root={shlex.quote(str(here))}") from None


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from longtail.config import check_timm_installed, ignored_overrides, load_config

    if args.resume is not None and args.config is not None and "=" in args.config \
            and not Path(args.config).is_file():  # `--resume D k=v`: an override
        args.overrides.insert(0, args.config)
        args.config = None
    _refuse_override_as_config(args)
    if args.config is None and args.resume is None:
        raise LongtailError("run: expected a CONFIG file (e.g. configs/fmnist_lt.yaml), or "
                            "--resume DIR")
    if args.resume is not None:
        if args.overwrite:
            raise LongtailError("--resume continues a run and --overwrite replaces one; give "
                                "one of them")
        require_run_dir(args.resume, "--resume")
        if args.out is not None and args.out != args.resume:
            raise LongtailError("--out and --resume name different folders; --resume "
                                "continues the run where it is")
    notes: list[str] = []
    if args.config is not None:
        args.config = resolve_config(args.config, notes)
    cfg = None
    if args.config is not None or args.overrides:
        # Overrides without CONFIG apply to the resumed run's own config.
        base = args.config or args.resume / "config.yaml"
        # before torch is imported: fast errors; a new run's weights file checked too
        cfg = load_config(base, args.overrides, new_run=args.resume is None,
                          run=args.config is None)
    out = args.out
    if args.resume is None:
        out = out or default_run_dir(Path(args.config).stem)
        check_run_dir(out, args.overwrite)
        _check_out_outside_image_folder(out, cfg, args.out is not None)
        check_timm_installed(cfg)
        _check_data_files(cfg, args.config)
        notes += ignored_overrides(cfg, args.overrides)
    else:
        cfg = check_resumable(args.resume, cfg)
    check_device(cfg.device)
    _print_notes(notes)
    # a folder to resume or overwrite: refused at once while another command works in it,
    # before the data is read (the pipeline locks a new folder once it has made it)
    with run_folder_lock(args.resume or out):
        from longtail.pipeline import run

        # without --out, the default name is claimed when the folder is made (another run
        # started the same second takes the next one)
        run(cfg, config_name=Path(args.config or "run").stem,
            out=args.out if args.resume is None else out, overwrite=args.overwrite,
            resume=args.resume, argv=argv)
    return 0


def _grid(args: argparse.Namespace, argv: list[str]) -> int:
    from longtail.config import (
        LOSSES,
        SAMPLER_PRESETS,
        ConfigError,
        check_timm_installed,
        ignored_overrides,
        load_config,
        parse_sampler_spec,
    )

    _check_grid_overrides(args)
    notes: list[str] = []
    args.config = resolve_config(args.config, notes)
    cfg = load_config(args.config, args.overrides, new_run=True)
    if cfg.data.kind == "features":
        raise ConfigError("config key data.kind: grid trains stage 1 (the representation) "
                          "once per sampler, and data.kind: features has none; use "
                          "'longtail run' (stage1.sampler sets the joint classifier's)")
    if args.samplers is None:
        args.samplers = (str(cfg.stage1.sampler) if args.losses
                         else "instance,class,sqrt,progressive")
    items = [s.strip() for s in args.samplers.split(",")]
    if "" in items and any(items):  # 'instance,' or 'a,,b': a sampler left out by mistake?
        raise ConfigError(f"--samplers: expected comma-separated samplers, found an empty "
                          f"one in {args.samplers!r}")
    samplers = []
    for item in filter(None, items):
        try:
            samplers.append(parse_sampler_spec(item))
        except ValueError as e:
            raise ConfigError(f"--samplers {item}: {e}") from None
    if not samplers:
        raise ConfigError(f"--samplers: expected one or more comma-separated samplers, e.g. "
                          f"instance,class,sqrt, found {args.samplers!r}")
    # instance, class and sqrt are q = 1, 0 and 0.5: '1,instance' trains the same twice.
    qs = [SAMPLER_PRESETS.get(s, s) for s in samplers]
    again = next((i for i, q in enumerate(qs) if q in qs[:i]), None)
    if not samplers or again is not None:
        first = samplers[qs.index(qs[again])] if again is not None else None
        why = (f"; {first} and {samplers[again]} are both q={qs[again]:g}"
               if first is not None and first != samplers[again] else "")
        raise ConfigError(f"--samplers: expected distinct samplers, found "
                          f"{args.samplers!r}{why}")
    losses = None
    if args.losses is not None:
        items = [x.strip() for x in args.losses.split(",")]
        losses = [x for x in items if x]
        bad = [x for x in losses if x not in LOSSES]
        if not losses or "" in items:
            raise ConfigError(f"--losses: expected comma-separated losses of "
                              f"{', '.join(LOSSES)}, found {args.losses!r}")
        if bad:
            raise ConfigError(f"--losses {bad[0]}: expected one of {', '.join(LOSSES)}")
        if len(set(losses)) != len(losses):
            raise ConfigError(f"--losses: expected distinct losses, found {args.losses!r}")
    out = args.out or default_run_dir(f"{Path(args.config).stem}-grid")
    check_run_dir(out, args.overwrite, resumable=False)
    check_timm_installed(cfg)
    _check_data_files(cfg, args.config)
    from dataclasses import replace

    # the grid's rows set stage1.sampler and stage1.loss: a key of one of theirs is used
    rows = replace(cfg, stage1=replace(
        cfg.stage1, sampler="class_aware" if "class_aware" in samplers else cfg.stage1.sampler,
        loss="logit_adjusted" if "logit_adjusted" in (losses or []) else cfg.stage1.loss))
    notes += ignored_overrides(rows, args.overrides)
    check_device(cfg.device)
    _print_notes(notes)
    from longtail.pipeline import grid

    grid(cfg, samplers, losses, config_name=Path(args.config).stem, out=args.out,
         overwrite=args.overwrite, argv=argv)
    return 0


def _one_process(command: str, work: str = "stage 2 and files on features") -> None:
    """Refuse ``command`` under torchrun: its work is one process's (each process would do
    all of it and write the same files, or print the same text)."""
    from longtail.config import env_world_size

    if env_world_size() > 1:
        raise LongtailError(f"{command} works in one process ({work}); run 'longtail "
                            f"{command} ...' without torchrun")


def _rebalance(args: argparse.Namespace, argv: list[str]) -> int:
    _one_process("rebalance")
    more = next((o for o in args.overrides if "=" not in o and Path(o).is_dir()), None)
    if more is not None:  # `rebalance RUN1 RUN2`: said better than "expected KEY=VALUE"
        raise LongtailError(f"rebalance: expected one run folder, found a second: {more} "
                            f"(rebalance each on its own: longtail rebalance "
                            f"{shlex.quote(more)})")
    from longtail.config import ignored_overrides

    # before torch is imported
    cfg = check_rebalance_args(args.run_dir, args.overrides)
    check_device(cfg.device)
    _print_notes(ignored_overrides(cfg, args.overrides))
    with run_folder_lock(args.run_dir):  # not while the run (or another rebalance) writes
        if (args.run_dir / "metrics.json").is_file():
            from longtail.report import read_metrics

            read_metrics(args.run_dir / "metrics.json")
        from longtail.pipeline import rebalance_run

        rebalance_run(args.run_dir, args.overrides)
    return 0


def _extract(args: argparse.Namespace, argv: list[str]) -> int:
    _one_process("extract")
    require_run_dir(args.run_dir)
    out = args.out
    if out.exists() and not out.is_dir():
        raise LongtailError(f"--out {out}: exists and is not a folder")
    if out.resolve() == args.run_dir.resolve() or args.run_dir.resolve() in out.resolve().parents:
        raise LongtailError(f"--out {out}: inside the run folder {args.run_dir}; its config.yaml "
                            f"would be replaced: choose a folder outside the run")
    if (out / "manifest.json").is_file():  # another run: --overwrite would not make it one
        raise LongtailError(f"--out {out}: a run folder (it holds manifest.json), whose "
                            f"config.yaml extract would replace; choose another --out")
    check_run_dir(out, args.overwrite, resumable=False)
    from longtail.extract import extract_run

    undo = _undo_out(out)
    try:
        files = extract_run(args.run_dir, args.format, out)
    except BaseException as e:  # stopped or failed: half the files are no use to anyone
        undo()
        if isinstance(e, OSError) and e.filename is None:  # a write: say where it went
            raise LongtailError(f"extract --out {out}: cannot write the files "
                                f"({e.strerror or e})") from None
        raise
    for path in files.values():
        print(f"wrote {path}")
    # quoted: the command is pasted into a shell, and --out may hold spaces
    print(f"wrote {out / 'config.yaml'}\nuse it: longtail run "
          f"{shlex.quote(str(out / 'config.yaml'))}")
    return 0


def _check_out_outside_image_folder(out: Path, cfg, given: bool) -> None:
    """Refuse a run folder inside data.root of an image_folder dataset, which reads every
    sub-folder there as a class: the run's folder would become a class of the next run."""
    if cfg.data.kind != "image_folder" or cfg.data.root is None:
        return
    root = os.path.realpath(os.path.expanduser(cfg.data.root))
    target = os.path.realpath(out)
    if target.startswith(root.rstrip(os.sep) + os.sep):
        raise LongtailError(f"--out {out}: inside data.root {cfg.data.root}, where data.kind "
                            f"image_folder reads every sub-folder as a class (the run's folder "
                            f"would become one); choose an --out outside it"
                            + ("" if given else " (the default runs/ is in the working "
                               "folder)"))


SPLIT_FILES = ("train.txt", "val.txt", "test.txt", "classes.txt")


def _check_split_out(args: argparse.Namespace) -> None:
    """Refuse an --out whose lists make-split would write over but did not write: the --list
    read, or a folder of lists without split.json (e.g. the balanced source's own train.txt,
    val.txt and test.txt), even with --overwrite."""
    for name in SPLIT_FILES:
        target = args.out / name
        if args.list_file is not None and target.exists() and args.list_file.exists() and \
                os.path.samefile(target, args.list_file):
            raise LongtailError(f"make-split --out {args.out}: would write {name} over the "
                                f"--list it reads ({args.list_file}); choose another --out")
    if args.source == "image_folder":  # its sub-folders are the classes, read again by runs
        root, target = os.path.realpath(args.root), os.path.realpath(args.out)
        if target == root or target.startswith(root.rstrip(os.sep) + os.sep):
            raise LongtailError(f"make-split --out {args.out}: inside --root {args.root}, "
                                f"where every sub-folder is read as a class (the split's "
                                f"folder would become one); choose an --out outside it")
    held = [n for n in SPLIT_FILES if (args.out / n).exists()]
    if held and not (args.out / "split.json").is_file():
        raise LongtailError(f"make-split --out {args.out}: holds {', '.join(held)} that "
                            f"make-split did not write (no split.json), which it would "
                            f"replace; choose another --out")


def _undo_out(out: Path):
    """Return a function that removes what a command that failed or was stopped wrote for
    ``out``: the folders it made (from the topmost), or what it put into an ``out`` that was
    an empty folder; nothing of a folder that held files before."""
    out = Path(os.path.abspath(out))
    made = None
    if not os.path.lexists(out):
        made = out
        while not os.path.lexists(made.parent):
            made = made.parent
    was_empty = made is None and out.is_dir() and not any(out.iterdir())

    def undo() -> None:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        elif was_empty:
            for child in list(out.iterdir()):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
    return undo


def _make_split(args: argparse.Namespace, argv: list[str]) -> int:
    _one_process("make-split", "list files and images")
    # Checked before NumPy and torch are imported: a mistake is answered at once. Every option
    # given is used, or refused: none is silently ignored.
    for option, value, low in (("--n-max", args.n_max, 1), ("--n-min", args.n_min, 1),
                               ("--val-per-class", args.val_per_class, 0),
                               ("--test-per-class", args.test_per_class, 0)):
        if value is not None and value < low:
            raise LongtailError(f"make-split {option}: expected an integer >= {low}, found "
                                f"{value}")
    if args.ratio is not None and not (math.isfinite(args.ratio) and args.ratio >= 1):
        raise LongtailError(f"make-split --ratio: expected a finite number >= 1, found "
                            f"{args.ratio}")
    if not 0 <= args.seed < 2**32:  # NumPy's seed range
        raise LongtailError(f"make-split --seed: expected an integer in [0, 2^32), found "
                            f"{args.seed}")
    from longtail.config import PARETO_ALPHA

    if args.alpha is not None and not PARETO_ALPHA[0] <= args.alpha <= PARETO_ALPHA[1]:
        raise LongtailError(f"make-split --alpha: expected a number in [{PARETO_ALPHA[0]:g}, "
                            f"{PARETO_ALPHA[1]:g}] (ImageNet-LT's is 6), found {args.alpha:g}")
    if args.alpha is not None and args.profile != "pareto":
        raise LongtailError(f"make-split --alpha: expected only with --profile pareto (its "
                            f"shape), found --alpha {args.alpha:g} with --profile "
                            f"{args.profile}")
    if args.n_max is not None and args.n_min is not None and args.n_min > args.n_max:
        raise LongtailError(f"make-split --n-min: expected at most --n-max ({args.n_max}), "
                            f"found {args.n_min}")
    if None not in (args.n_max, args.n_min, args.ratio):
        raise LongtailError(f"make-split --ratio: expected at most two of --n-max, --n-min and "
                            f"--ratio (ratio = n_max / n_min), found all three (--n-max "
                            f"{args.n_max} --n-min {args.n_min} --ratio {args.ratio:g})")
    if args.source == "list" and args.list_file is None:
        raise LongtailError("make-split list: expected --list FILE (the balanced list)")
    if args.source != "list" and args.list_file is not None:
        raise LongtailError(f"make-split --list: expected only with the list source, found "
                            f"with {args.source} (whose images are found under --root)")
    arrays = args.source in ("cifar10", "cifar100", "fmnist")
    if arrays and args.test_per_class is not None:
        raise LongtailError(f"make-split --test-per-class: expected only with the list and "
                            f"image_folder sources, found with {args.source}, whose test split "
                            f"is its official test set")
    if args.root.exists() and not args.root.is_dir():
        raise LongtailError(f"make-split --root {args.root}: is a file, expected the source's "
                            f"folder")
    if not args.root.is_dir():
        raise LongtailError(f"make-split --root {args.root}: folder not found")
    check_run_dir(args.out, args.overwrite, resumable=False)
    _check_split_out(args)
    from longtail.data.makesplit import TEST_LIST, SplitRequest, make_split
    from longtail.data.profiles import DEFAULT_RATIO, ratio_shortfall

    undo = _undo_out(args.out)
    # Made now, to be locked: a second make-split into the same --out, started together, is
    # refused (two wrote one staging folder; one then removed the other's announced split).
    make_dir(args.out)
    with run_folder_lock(args.out):
        check_run_dir(args.out, args.overwrite, resumable=False)  # again: one may have ended
        try:
            summary = make_split(SplitRequest(
                source=args.source, root=args.root, out=args.out, list_file=args.list_file,
                profile=args.profile, n_max=args.n_max, n_min=args.n_min,
                imbalance_ratio=args.ratio, alpha=6.0 if args.alpha is None else args.alpha,
                val_per_class=args.val_per_class,
                test_per_class=50 if args.test_per_class is None else args.test_per_class,
                seed=args.seed, class_order=args.class_order))
        except BaseException as e:  # stopped or failed: a half-written split is of no use
            undo()
            if isinstance(e, OSError) and e.filename is None:  # a write: say where it went
                raise LongtailError(f"make-split --out {args.out}: cannot write the split "
                                    f"({e.strerror or e})") from None
            raise
    for name, info in summary["files"].items():
        print(f"{args.out / name}: {info['images']} images, sha256 {info['sha256']}")
    train = summary["counts"]["train"]
    print(f"train: {len(train)} classes, {max(train)}..{min(train)} images per class "
          f"({summary['profile']['kind']} profile, seed {summary['seed']})")
    if args.n_min is None:  # the smallest class came from a ratio, which it may not meet
        short = ratio_shortfall([max(train), min(train)], args.ratio or DEFAULT_RATIO)
        if short:
            print(f"note: {short}; --n-min sets it")
    print(f"summary: {args.out / 'split.json'}\nuse it: {summary['usage']}")
    if "val.txt" not in summary["files"]:  # --val-per-class 0: the bundled configs need val
        print("no val.txt (--val-per-class 0): tau_norm's and logit_adjust's tau are chosen on "
              "val, so add data.val_from_train=N (N images per class held out of train) to "
              "that command, or fix them (stage2.tau_norm.tau=1.0 stage2.logit_adjust.tau=1.0)")
    if "test.txt" not in summary["files"]:  # --test-per-class 0
        print(f"{TEST_LIST}: your own test list ('relative/path label' lines); "
              f"--test-per-class 0 wrote no test.txt")
    return 0


def _summarize(args: argparse.Namespace, argv: list[str]) -> int:
    _one_process("summarize", "it prints a table of finished runs")
    from longtail.checkpoint import atomic_write_json, read_manifest
    from longtail.config import flatten, load_config
    from longtail.report import comparable_runs, format_summary, read_metrics, summarize

    # The command line first: its mistakes are answered before any run is read.
    ignore = _check_ignore(args.ignore)
    if args.json:
        if str(args.json) == "-":  # not stdout, which has the table: a file named '-' it was
            raise LongtailError("--json -: expected a file name for the JSON summary (the "
                                "table goes to stdout)")
        if args.json.is_dir():
            raise LongtailError(f"--json {args.json}: expected a file name for the summary, "
                                f"found a folder")
        if args.json.exists() and not args.json.is_file():  # /dev/full, /dev/stdout, a FIFO
            raise LongtailError(f"--json {args.json}: expected a file name for the summary, "
                                f"found a device, FIFO or socket (the table goes to stdout)")
        if args.json.parent.exists() and not args.json.parent.is_dir():
            raise LongtailError(f"--json {args.json}: {args.json.parent} is a file, not a "
                                f"folder")
        if not args.json.parent.is_dir():
            raise LongtailError(f"--json {args.json}: folder {args.json.parent} not found")
        try:  # before the table is printed: the file is written after it
            probe_write(args.json.parent)
        except OSError as e:
            raise LongtailError(f"--json {args.json}: cannot write in {args.json.parent} "
                                f"({e.strerror})") from None
        if args.json.exists() and not args.overwrite and not _earlier_summary(args.json):
            raise LongtailError(f"--json {args.json}: expected a new file or a summary written "
                                f"by summarize before (JSON of \"runs\" and \"methods\"), "
                                f"found another file; pass --overwrite to replace it, or choose "
                                f"another --json")
    if args.json:
        written = os.path.realpath(args.json)
        for run_dir in args.run_dirs:  # a summary over a run's own metrics.json, even asked
            inside = os.path.realpath(run_dir)
            if written == inside or written.startswith(inside.rstrip(os.sep) + os.sep):
                raise LongtailError(f"--json {args.json}: inside the run folder {run_dir}, "
                                    f"whose files summarize reads; write the summary outside "
                                    f"the runs")
    seen: dict[Path, Path] = {}
    runs, configs, splits = [], [], []
    for run_dir in args.run_dirs:
        real = Path(os.path.realpath(run_dir))  # (Path.resolve raises on a link loop)
        if real in seen:
            raise LongtailError(f"summarize: {run_dir} is given twice (as {seen[real]}); each "
                                f"run once")
        seen[real] = run_dir
        if run_dir.exists() and not run_dir.is_dir():
            raise LongtailError(f"summarize: {run_dir} is a file, not a run folder; expected "
                                f"finished runs' folders (each holding metrics.json)")
        path = run_dir / "metrics.json"
        problem = file_problem(path)
        if problem:
            inner = sorted(p.parent for p in run_dir.glob("*/metrics.json")) if \
                run_dir.is_dir() else []
            if problem == "not found" and inner:  # a grid's folder, or a folder of runs
                shown = " ".join(shlex.quote(str(p)) for p in inner[:4])
                raise LongtailError(f"{path}: not found; {run_dir} holds runs in its folders: "
                                    f"summarize them, e.g. longtail summarize {shown}"
                                    + (" ..." if len(inner) > 4 else ""))
            raise LongtailError(f"{path}: {problem} (is {run_dir} a finished run?)")
        runs.append(read_metrics(path))
        manifest = run_dir / "manifest.json"
        splits.append(read_manifest(manifest).get("split_sha256", {}))
        configs.append(flatten(load_config(run_dir / "config.yaml", finished=True, run=True))
                       if (run_dir / "config.yaml").is_file() else {})
    problem = comparable_runs(args.run_dirs, configs, splits, ignore)
    if problem:
        raise LongtailError(f"summarize: {problem}")
    for run_dir, config in zip(args.run_dirs, configs):
        if not config and len(configs) > 1:
            print(f"note: {run_dir} has no config.yaml; its settings are not compared with the "
                  f"other runs'", file=sys.stderr)
    summary = summarize(runs)
    n = len(runs)
    print(f"{n} runs: mean ± sample std of test accuracy (%); (n=K) marks a cell over fewer runs"
          if n > 1 else "1 run: test accuracy (%), no spread from a single run")
    print(format_summary(summary, markdown=args.markdown, runs=n))
    if args.json:
        atomic_write_json(args.json, {"runs": [str(r) for r in args.run_dirs],
                                      "methods": summary})
    return 0
