"""Run directories that never lose a user's files.

A run directory holds what diffspace writes for one run: a marker file written at creation
(`.diffspace-run`), config.toml, checkpoints/, log.jsonl and the pictures, metrics and grids that
commands compute from its weights. The rules, all checked before anything is written:

- a new run goes into a directory that does not exist, is empty, or is a diffspace run whose start
  failed before its first checkpoint (nothing to lose; a retry just works); a new run that fails before
  it logs anything takes back what it wrote (`undo_start`);
- `overwrite` replaces a trained run only in a directory diffspace created (the marker), holding
  nothing but diffspace's own files, and never the current directory, one of its parents, the home
  directory or the file-system root; it removes those files one by one, never the folder wholesale;
- `resume` works on the directory it is given, wherever it was copied or moved to;
- files computed from a run's weights (metrics, grids, samples, reports) go only into a run directory
  diffspace created, never beside weights in a user's folder (a diffusers folder, an exported file);
- files computed from older weights (metrics, grids, samples, pictures) are moved to
  `stale/step_<N>/` when training continues, so no later command reads them as current.
Every file is written atomically (temp file, fsync, rename).
"""

import json
import os
import re
import shutil
from pathlib import Path

from diffspace import __version__
from diffspace.files import is_temp, remove_folders, write_text
from diffspace.types import UserError

MARKER = ".diffspace-run"
CONFIG = "config.toml"
CHECKPOINT = Path("checkpoints") / "last.safetensors"
# computed from the weights at some step: retired to stale/ when training continues
DERIVED = ("metrics.json", "grids.json", "samples.npz", "samples.npy", "samples.csv", "samples.png",
           "samples.txt", "denoising.png", "nfe.json", "nfe.png", "report.html", "guidance.png")
# everything else diffspace writes into a run directory
OWN = (MARKER, CONFIG, "checkpoints", "log.jsonl", "loss.png", "featurenet.safetensors", "featurenet.json",
       "stale", "tensorboard", *DERIVED)


def checkpoint_of(path: str | Path) -> Path:
    """The checkpoint file of a run directory (or the file itself); UserError if there is none."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.is_file():
        raise UserError(f"no checkpoint at {p} (expected a run directory or a .safetensors file)")
    return p


def run_dir_of(ckpt: Path) -> Path:
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def check_run_dir(run_dir: Path, what: str, hint: str = "") -> None:
    """Refuse (UserError) to write `what` into a folder diffspace did not create: one without the marker
    (or, for runs made before the marker, without checkpoints/last.safetensors) — a diffusers folder, or
    the folder of a checkpoint file among a user's own files, where it could replace one of them."""
    run_dir = Path(run_dir)
    if not ((run_dir / MARKER).is_file() or (run_dir / CHECKPOINT).is_file()):
        raise UserError(f"{run_dir} is not a diffspace run directory (no {MARKER}), so {what} is not "
                        f"written there{hint}")


def _protected(run_dir: Path) -> str | None:
    """Why run_dir may never be cleared (the working directory, one of its parents, home, root)."""
    here, target = Path.cwd().resolve(), run_dir.resolve()
    if target == here:
        return "it is the current directory"
    if target in here.parents:
        return "it contains the current directory"
    if target == Path.home().resolve() or target == Path(target.anchor):
        return "it is the home directory or the file-system root"
    return None


# what diffspace writes inside its own folders (paths relative to the folder)
_INSIDE = {"checkpoints": re.compile(r"(last|step_\d{8})\.safetensors"),
           "tensorboard": re.compile(r"events\.out\.tfevents\..*"),
           "stale": re.compile(r"step_\d+/(" + "|".join(map(re.escape, DERIVED)) + ")")}


def _foreign(run_dir: Path) -> list[str]:
    """Paths in run_dir that diffspace did not write, its own folders searched too (its temp files too:
    `files.is_temp`)."""
    out = []
    for p in run_dir.iterdir():
        if p.name not in OWN and not is_temp(p.name):
            out.append(p.name)
        elif p.name in _INSIDE and p.is_dir() and not p.is_symlink():
            inside = (q.relative_to(p).as_posix() for q in p.rglob("*")
                      if not q.is_dir() and not is_temp(q.name))
            out += [f"{p.name}/{rel}" for rel in inside if not _INSIDE[p.name].fullmatch(rel)]
    return sorted(out)


def plan_start(run_dir: Path, *, resume: bool, overwrite: bool) -> str:
    """Check a run directory before training writes anything: 'resume', 'create' (new or empty, or a
    failed start to clear) or 'replace' (overwrite a trained run). Raises UserError otherwise."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} is a file")
    if run_dir.is_symlink() and not run_dir.exists():
        raise UserError(f"run directory {run_dir} is a link to {os.readlink(run_dir)}, which does not exist")
    if resume:
        if not (run_dir / CHECKPOINT).is_file():
            raise UserError(f"--resume: no checkpoint in {run_dir} (expected {run_dir / CHECKPOINT})")
        return "resume"
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return "create"
    ours = (run_dir / MARKER).is_file()
    foreign = _foreign(run_dir)
    if not ours:
        raise UserError(f"run directory {run_dir} is not empty and was not created by diffspace (no "
                        f"{MARKER}); choose another run.dir")
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UserError(f"run directory {run_dir} holds files diffspace did not write ({shown}); move "
                        "them or choose another run.dir")
    if not (run_dir / CHECKPOINT).is_file():
        return "create"  # a start that failed before its first checkpoint: nothing to lose
    if not overwrite:
        raise UserError(f"run directory {run_dir} holds a trained run; use --resume to continue it or "
                        "--overwrite to replace it")
    why = _protected(run_dir)
    if why:
        raise UserError(f"--overwrite refuses to clear {run_dir}: {why}")
    return "replace"


def _clear_own(run_dir: Path) -> None:
    for name in OWN:
        p = run_dir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def start(run_dir: Path, plan: str, config_toml: str) -> None:
    """Carry out a plan of `plan_start` (rank 0 only): clear what diffspace wrote if needed, then write
    the marker and config.toml."""
    run_dir = Path(run_dir)
    if plan in ("create", "replace") and run_dir.exists():
        _clear_own(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / MARKER).is_file():
        write_text(run_dir / MARKER, json.dumps({"created_by": f"diffspace {__version__}"}) + "\n")
    write_text(run_dir / CONFIG, config_toml + "\n")


def undo_start(run_dir: Path, made: list[Path]) -> None:
    """After a new run failed before it logged anything (out of memory at the first step, a bad batch): remove
    what `start` wrote, the marker and config.toml, and the folders in `made` (the run directory and the
    parents it needed, as `files.missing_folders` listed them before the start), so the failed command
    leaves the place as it found it. A run that wrote more (log rows, pictures) is left as it is, for the
    user to see why it stopped."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or any(p.name not in (MARKER, CONFIG) for p in run_dir.iterdir()):
        return
    for name in (MARKER, CONFIG):
        (run_dir / name).unlink(missing_ok=True)
    remove_folders(made)


def retire_derived(run_dir: Path, step: int) -> list[str]:
    """Move files computed from the weights at `step` into stale/step_<step>/; returns their names."""
    moved = []
    for name in DERIVED:
        src = Path(run_dir) / name
        if src.exists():
            dest = Path(run_dir) / "stale" / f"step_{step:08d}"
            dest.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest / name)
            moved.append(name)
    return moved
