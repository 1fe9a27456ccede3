"""torchrun's environment in one place: process group, device, rank helpers and gathers.

A plain ``longtail run`` is one process; under ``torchrun --nproc-per-node N -m longtail run``
each process trains on its shard of the sampler's stream (DistributedDataParallel), and only
rank 0 writes files and prints tables.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from longtail.config import env_world_size, missing_device_message
from longtail.errors import LongtailError

# Set once this process has joined torchrun's group: errors before that come from the command
# line, config or environment, the same in every process (the CLI reports them on rank 0 only).
joined = False
joined_rank = 0  # this process's rank in it (kept after the group ends, for the last words)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True in the process that writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def select_device(preference: str) -> torch.device:
    """Return the device named by config key ``device`` (auto: cuda, then mps, then cpu).

    Under torchrun, ``cuda`` and ``auto`` mean this process's GPU (LOCAL_RANK).
    """
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if preference == "auto":
        if not torch.cuda.is_available():
            return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
        preference = "cuda"  # GPU LOCAL_RANK, which must exist
    try:
        return resolve_device(preference, local_rank)
    except ValueError as e:
        raise LongtailError(f"config key device: {e}") from None


def resolve_device(name: str | torch.device, local_rank: int | None = None) -> torch.device:
    """Return the device ``name`` (cpu, cuda, cuda:N or mps; a bare cuda is GPU
    ``local_rank`` when given, else torch's current one), or raise ValueError saying what
    this machine lacks."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"expected cpu, cuda, cuda:N or mps, found {name!r}") from None
    if device.type not in ("cpu", "cuda", "mps"):  # meta, xpu, ...: nothing is tested there
        raise ValueError(f"expected cpu, cuda, cuda:N or mps, found {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(missing_device_message(str(device)))
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"found {str(device)!r}, but this machine has "
                             f"{torch.cuda.device_count()} GPU(s) (cuda:0 to "
                             f"cuda:{torch.cuda.device_count() - 1})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(missing_device_message("mps"))
    return device


# How long a collective may wait: the other processes wait in one while rank 0 alone fits
# stage 2 and writes the report (hours for iNaturalist's features on a CPU), where NCCL's
# default would abort them after 10 minutes, Gloo's after 30. A process that dies is
# torchrun's to notice: it stops the others.
COLLECTIVE_TIMEOUT = timedelta(hours=12)
JOIN_NOTE_AFTER_S = 3.0


def _join_stoppably(backend: str, device: torch.device) -> None:
    """``dist.init_process_group(backend)``, waited for from the main thread: the join blocks
    in C++, where Python runs no signal handler, so Ctrl-C and SIGTERM went unheard until the
    other processes came (never, for a WORLD_SIZE left set by hand). A stop now ends the wait;
    the thread left waiting is a daemon, which does not hold the exit."""
    failed: list[BaseException] = []

    def join() -> None:
        try:
            if device.type == "cuda":  # the current GPU is per thread: this one's too, so
                torch.cuda.set_device(device)  # that NCCL never binds every rank to GPU 0
            dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
        except BaseException as e:  # raised again in the main thread
            failed.append(e)

    waiter = threading.Thread(target=join, name="longtail-join", daemon=True)
    waiter.start()
    while waiter.is_alive():
        waiter.join(0.2)
    if failed:
        raise failed[0]


def _check_master_addr() -> None:
    """Refuse a MASTER_ADDR that does not resolve: torch would retry it forever, printing a
    warning line every few seconds."""
    import socket

    addr = os.environ["MASTER_ADDR"].strip()
    try:
        socket.getaddrinfo(addr, None)
    except socket.gaierror as e:
        if e.errno != socket.EAI_NONAME:  # a DNS server slow to answer: torch retries
            return
        raise LongtailError(f"MASTER_ADDR: cannot find the host {addr!r} ({e.strerror}); "
                            f"torchrun sets it to the first machine's address") from None
    except UnicodeError as e:  # a name IDNA cannot encode (an empty label, 64+ characters)
        raise LongtailError(f"MASTER_ADDR: not a host name: {addr!r} ({e})") from None


@contextmanager
def session(device: torch.device) -> Iterator[None]:
    """Join torchrun's process group for the duration (when WORLD_SIZE > 1 and not joined yet):
    NCCL on GPUs, Gloo on CPUs."""
    start = env_world_size() > 1 and not dist.is_initialized()
    if start:
        _check_master_addr()
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # Joining waits, silently, until every process has come: say so when it takes a
        # while (a WORLD_SIZE left in the environment waits for processes that never start).
        note = threading.Timer(JOIN_NOTE_AFTER_S, lambda: print(
            f"note: waiting for all {os.environ['WORLD_SIZE']} processes (WORLD_SIZE) to join "
            f"at {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}, this one "
            f"rank {os.environ.get('RANK')}; started by hand? unset WORLD_SIZE, RANK, "
            f"MASTER_ADDR and MASTER_PORT to run one process", file=sys.stderr, flush=True))
        note.daemon = True
        note.start()
        try:
            _join_stoppably("nccl" if device.type == "cuda" else "gloo", device)
        finally:
            note.cancel()
        global joined, joined_rank
        joined, joined_rank = True, dist.get_rank()
    try:
        yield
    finally:
        if start:
            dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        if dist.get_backend() == "nccl":  # its GPU said, not guessed (with a warning per rank)
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Return the sum of ``values`` over all processes (the tensor itself in one process)."""
    if world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
    return values


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Return every process's ``rows`` concatenated in rank order (shards may differ in length)."""
    if world_size() == 1:
        return rows
    sizes = [torch.zeros(1, dtype=torch.long, device=rows.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([len(rows)], device=rows.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    padded[: len(rows)] = rows
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def broadcast_object(obj: object) -> object:
    """Return rank 0's ``obj`` in every process."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics).

    DistributedDataParallel broadcasts buffers at the start of each forward, so after the last
    training step each process holds the statistics of its own last batch; evaluation and
    feature extraction must all use the ones that are saved (rank 0's).
    """
    if world_size() > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
