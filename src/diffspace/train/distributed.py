"""Several processes under `torchrun`: process group set-up and tear-down, work split, gathering.

torchrun starts one process per device and sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT; `init_distributed` joins the process group from them (NCCL on CUDA, gloo on CPU). With
WORLD_SIZE unset or 1 every function here is a no-op, so one code path serves one and many processes.

Training equals one process because the trainer draws the *global* batch on every rank and keeps a
slice (see train/loop.py); sampling equals one process because sample i depends only on
(seed, i // chunk) and whole chunks are dealt to ranks (`chunk_seeds`, `map_chunks`).

A peer that dies makes the next collective fail (its sockets close) or time out after
DIFFSPACE_DIST_TIMEOUT seconds (a peer that hangs); `peer_guard` turns that into one line.
"""

import os
import re
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from diffspace.types import TrainingError, UserError

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 600.0  # what NCCL uses by default: long enough for a slow checkpoint write


def _timeout() -> timedelta:
    text = os.environ.get("DIFFSPACE_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise UserError(f"DIFFSPACE_DIST_TIMEOUT={text!r}: expected a positive number of seconds")
    return timedelta(seconds=seconds)


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Terminated(TrainingError):
    """SIGTERM arrived: torchrun stops every rank when one fails; schedulers do so at a time limit."""


def _stop_on_sigterm(signum, frame) -> None:
    # why: without a handler a terminated rank vanishes silently. Raising unwinds through the trainer
    # (checkpoint writes are atomic, so the last good one stays) to the CLI's one-line message.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut that message short
    raise Terminated(f"rank {world()[0]} received SIGTERM")


# Words in the errors that gloo and NCCL raise (often as a bare RuntimeError, e.g. from DDP's
# gradient all-reduce) when a peer's connection closes or a collective times out.
_COMM_MARKERS = ("gloo", "NCCL", "Connection reset", "Connection closed", "Broken pipe", "timed out",
                 "Timed out")


def _is_comm_error(e: RuntimeError) -> bool:
    return isinstance(e, dist.DistError) or (world()[1] > 1 and any(m in str(e) for m in _COMM_MARKERS))


def init_distributed(device: torch.device) -> torch.device:
    """Join torchrun's process group when WORLD_SIZE > 1; return the device this rank should use.

    On CUDA each rank takes GPU LOCAL_RANK and the NCCL backend; on CPU the gloo backend.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=_timeout(), device_id=device if backend == "nccl" else None)
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
    return device


def shutdown() -> None:
    """Leave the process group (at the end of a command; harmless when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    return world()[0] == 0


@contextmanager
def peer_guard(hint: str) -> Iterator[None]:
    """Turn a lost peer (a failed or timed-out collective) or torchrun's SIGTERM into one line,
    a TrainingError ending with `hint`: what is left intact and how to go on."""
    try:
        yield
    except Terminated as e:
        raise TrainingError(f"{e}; {hint}") from None
    except RuntimeError as e:
        if isinstance(e, TrainingError) or not _is_comm_error(e):
            raise
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # torchrun's SIGTERM follows: let the line out
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        first = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0]  # drop gloo's source location
        rank, size = world()
        raise TrainingError(f"rank {rank} of {size} lost contact with another rank ({first[:160]}); "
                            f"{hint}") from None


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def my_share(items: Sequence[T]) -> list[T]:
    """The items this rank handles: every world-size-th one from its rank on (round robin keeps the
    load even when the last chunk is short). `gather_shares` puts the results back in order."""
    rank, size = world()
    return list(items[rank::size])


def gather_shares(results: list[T]) -> list[T] | None:
    """On rank 0, every rank's `my_share` results (picklable, e.g. CPU tensors) in the original item
    order; None on the other ranks."""
    rank, size = world()
    if size == 1:
        return results
    per_rank: list[list[T]] | None = [[] for _ in range(size)] if rank == 0 else None
    dist.gather_object(results, per_rank, dst=0)
    if per_rank is None:
        return None
    n = sum(len(r) for r in per_rank)
    return [per_rank[k % size][k // size] for k in range(n)]  # item k went to rank k % size


def chunk_seeds(n: int, seed: int, chunk: int) -> list[tuple[int, int, int]]:
    """(start, stop, seed) per chunk: item i's randomness depends only on (seed, i // chunk), so the
    result does not depend on how chunks are spread over processes."""
    return [(lo, min(lo + chunk, n), seed * 1_000_003 + k) for k, lo in enumerate(range(0, n, chunk))]


def map_chunks(fn: Callable[[int, int, int], T], n: int, seed: int, chunk: int) -> list[T] | None:
    """fn(start, stop, chunk_seed) for the chunks of n items, the chunks dealt to the ranks: rank 0 gets
    every result in chunk order (the same as one process), the other ranks None."""
    return gather_shares([fn(*c) for c in my_share(chunk_seeds(n, seed, chunk))])


def stop_together(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision for all ranks (e.g. a wall-clock limit, which each rank measures differently)."""
    if world()[1] == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())
