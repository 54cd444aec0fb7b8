"""Files diffspace writes, atomically and never over a file it did not create, and the JSON it reads.

Every write goes through a temp file beside its target (`.NAME.tmp.SUFFIX`: hidden, recognised by
`is_temp`, and keeping the suffix, from which numpy, matplotlib and pillow take the format), fsynced
and renamed onto it; readers see the old file or the new one, never half. A new output a user names
(`--out`, `--json`) is checked by `check_new_files` before any work is done.
"""

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from diffspace.types import UserError

_TEMP = re.compile(r"\..+\.tmp(\.[^.]+)?")


def temp_path(path: str | Path) -> Path:
    """The temp file (or folder) beside `path` that a write goes through: `.NAME.tmp.SUFFIX`."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp{path.suffix}")


def is_temp(name: str) -> bool:
    """Whether a file name is one of `temp_path`'s (a write cut short leaves it behind)."""
    return bool(_TEMP.fullmatch(name))


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """The temp file for the block to write (its folders are made); after the block, fsync it and rename
    it onto `path`. A write that fails in the block leaves its torn temp file aside (the target is
    untouched); a rename that fails (`path` is a folder) removes the temp file and raises OSError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    yield tmp
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    try:
        os.replace(tmp, path)  # atomic on POSIX
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # why: the rename itself survives a crash
    finally:
        os.close(dir_fd)


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically (`atomic_write`)."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def check_new_files(*paths: str | Path) -> None:
    """Refuse (UserError), before any work, an output that would replace something or cannot be written:
    a path that exists, a name ending in '/' (a folder, where a file is meant), or one below a file."""
    for p in paths:
        if str(p).endswith(("/", os.sep)):
            raise UserError(f"{p} names a folder; give a file name")
        p = Path(p)
        if p.exists() or p.is_symlink():
            raise UserError(f"{p} exists; choose a new name (diffspace replaces only files it created)")
        folder = next(q for q in p.absolute().parents if q.exists())
        if not folder.is_dir():
            raise UserError(f"cannot write {p}: {folder} is a file, not a folder")


_JSON_NAMES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def read_json(path: Path, kind: type = dict) -> Any:
    """The JSON value of a file (a run's metrics.json, nfe.json, grids.json; a diffusers or scheduler config),
    which must be a `kind` (dict: an object, list: an array); UserError naming the file if it cannot be
    read, is not JSON (a hand edit, a copy cut short) or holds another kind of value."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise UserError(f"{path}: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, kind):
        raise UserError(f"{path}: expected a JSON {_JSON_NAMES[kind]}, found "
                        f"{_JSON_NAMES.get(type(data), type(data).__name__)}")
    return data
