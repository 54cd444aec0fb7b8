"""What a training run shows while it runs, beside RUN/log.jsonl:

- `Progress`: a tqdm bar on a terminal; when stderr is not a terminal (a log file, a batch job, a pipe)
  one log line every `LINE_SECONDS` instead of a bar redrawn into the file. Both account for the
  wall-clock cap `train.minutes`: the bar's total and the time left shrink to what the cap allows.
- `TensorBoard`: event files in RUN/tensorboard (scalars loss, lr, grad norm, it/s at every log row;
  weight histograms and a picture of samples at every checkpoint) through `torch.utils.tensorboard`,
  which needs the optional `tensorboard` package (`pip install diffspace[tensorboard]`); without it
  training goes on with one note.
- `Interrupts`: Ctrl-C (SIGINT) asks the loop to stop after the current step, so the checkpoint written
  then is consistent and `--resume` continues exactly; a second Ctrl-C stops at once.
"""

import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from torch import Tensor, nn

log = logging.getLogger("diffspace")
LINE_SECONDS = 30.0  # a progress line at most this often when stderr is not a terminal


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


class Progress:
    """Progress of steps start..total; `minutes` > 0 caps the wall-clock time (elapsed counts from the
    run's first step, resumed runs included)."""

    def __init__(self, total: int, start: int, minutes: float, enabled: bool, tty: bool | None = None):
        from tqdm import tqdm

        self.total, self.cap = total, 60 * minutes
        self.enabled = enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.last_line = -math.inf
        self.bar = tqdm(total=total, initial=start, disable=not (enabled and self.tty), dynamic_ncols=True,
                        desc="train")

    def _left(self, step: int, its: float, elapsed: float) -> tuple[float, bool]:
        """(seconds left, whether the time cap ends the run before train.steps)."""
        by_steps = (self.total - step) / its if its > 0 else math.inf
        by_cap = max(self.cap - elapsed, 0.0) if self.cap > 0 else math.inf
        return min(by_steps, by_cap), by_cap < by_steps

    def update(self, step: int, elapsed: float, loss: float | None = None, its: float | None = None) -> None:
        """Called after every step; loss and its (steps per second) when a log row was written."""
        if not self.enabled:
            return
        if self.tty:
            if its is not None:
                left, capped = self._left(step, its, elapsed)
                if capped:  # why: the bar should end where the cap will stop the run
                    self.bar.total = min(self.total, step + max(1, round(its * left)))
                self.bar.set_postfix(loss=f"{loss:.4g}", it_s=f"{its:.1f}", refresh=False)
            self.bar.update(step - self.bar.n)
            return
        now = time.monotonic()
        if its is None or (now - self.last_line < LINE_SECONDS and step < self.total):
            return
        self.last_line = now
        left, capped = self._left(step, its, elapsed)
        cap = f" (the {self.cap / 60:g}-minute cap)" if capped else ""
        log.info("step %d/%d (%d%%)  loss %.4g  %.1f it/s  elapsed %s  left %s%s", step, self.total,
                 100 * step // self.total, loss, its, _clock(elapsed),
                 "?" if math.isinf(left) else _clock(left), cap)

    def close(self) -> None:
        self.bar.close()


class TensorBoard:
    """Event files in `run_dir`/tensorboard, or nothing (with one note) where the package is missing."""

    def __init__(self, run_dir: Path, preview: Callable[[nn.Module], Tensor] | None = None):
        self.writer, self.preview = None, preview
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("train.tensorboard is on but the tensorboard package is missing (pip install "
                     "'diffspace[tensorboard]'); logging to log.jsonl only")
            return
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def scalars(self, step: int, row: dict[str, float]) -> None:
        if self.writer is not None:
            for key in ("loss", "lr", "grad_norm", "it_s"):
                self.writer.add_scalar(f"train/{key}", row[key], step)

    def snapshot(self, step: int, model: nn.Module, ema: nn.Module) -> None:
        """Weight histograms of the trained model and, with a preview hook, a picture of samples drawn
        from the EMA weights (images (N, C, H, W) in [-1, 1], tiled by TensorBoard)."""
        if self.writer is None:
            return
        for name, p in model.named_parameters():
            self.writer.add_histogram(f"weights/{name}", p.detach().float().cpu(), step)
        if self.preview is not None:
            was = ema.training
            x = self.preview(ema.eval())
            ema.train(was)
            self.writer.add_images("samples", ((x.float().cpu() + 1) / 2).clamp(0, 1), step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Interrupts:
    """Within `with Interrupts() as stop:` a first SIGINT sets `stop.asked` (the loop finishes its step,
    checkpoints and raises KeyboardInterrupt); a second one raises KeyboardInterrupt at once. Only
    in the main thread of a single process: under torchrun the launcher stops every rank (SIGTERM)."""

    def __init__(self, active: bool = True):
        self.asked = False
        self.active = active and threading.current_thread() is threading.main_thread()
        self.previous = None

    def _handle(self, signum, frame) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        log.warning("interrupted: saving a checkpoint after this step (Ctrl-C again to stop at once)")

    def __enter__(self) -> "Interrupts":
        if self.active:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            signal.signal(signal.SIGINT, self.previous)
