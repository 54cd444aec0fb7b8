"""Files diffspace writes, atomically and never over a file it did not create, and the JSON it reads.

Every write goes through a new temp file beside its target (`.NAME.tmpXXXXXXXX.SUFFIX`: hidden, made
exclusively, recognised by `is_temp`, and keeping the suffix, from which numpy, matplotlib and pillow
take the format), fsynced and renamed onto it; readers see the old file or the new one, never half, and
a write that fails leaves nothing behind. A new output a user names (`--out`, `--json`) is checked by
`check_new_files` before any work is done.
"""

import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from diffspace.types import UserError

_TEMP = re.compile(r"\..+\.tmp[a-z0-9_]{8}(\.[^.]+)?")  # `new_temp`'s names (tempfile's 8 characters)


def new_temp(path: str | Path, folder: bool = False) -> Path:
    """A new temp file (or folder) beside `path` that a write goes through, `.NAME.tmpXXXXXXXX.SUFFIX`,
    created exclusively: never a file that was there (a user's own `.NAME.tmp...` stays untouched)."""
    path = Path(path)
    name = {"prefix": f".{path.stem}.tmp", "suffix": path.suffix, "dir": path.parent}
    if folder:
        return Path(tempfile.mkdtemp(**name))
    fd, tmp = tempfile.mkstemp(**name)
    os.close(fd)
    return Path(tmp)


def is_temp(name: str) -> bool:
    """Whether a file name is one of `new_temp`'s (a write cut short by a crash leaves it behind)."""
    return bool(_TEMP.fullmatch(name))


def plain_mode(folder: bool = False) -> int:
    """The mode open() (0666) or mkdir() (0777) gives under the process's umask: what a temp file or folder
    made 0600 / 0700 by tempfile (or safetensors) is given before it becomes an output."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask


def missing_folders(folder: Path) -> list[Path]:
    """`folder` and its parents that do not exist, outermost first: what making it makes."""
    folder = Path(folder).absolute()
    return [p for p in (folder, *folder.parents) if not p.exists() and not p.is_symlink()][::-1]


def make_folders(folder: Path) -> list[Path]:
    """Make `folder` and its missing parents; returns those it made, outermost first (`remove_folders`)."""
    made = missing_folders(folder)
    Path(folder).mkdir(parents=True, exist_ok=True)
    return made


def remove_folders(made: list[Path]) -> None:
    """Remove the folders `make_folders` made, innermost first, while they are empty."""
    for p in reversed(made):
        try:
            p.rmdir()
        except OSError:
            return


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """The temp file for the block to write (`new_temp`; the folders are made); after the block, give it the
    mode a plain open() would (0666 less the umask), fsync it and rename it onto `path`. If the block or
    the rename fails (a full disk; `path` is a folder), the temp file and the folders made are removed and
    the error raised: `path` and its surroundings are as they were."""
    path = Path(path)
    made = make_folders(path.parent)
    tmp = None
    try:
        tmp = new_temp(path)
        yield tmp
        os.chmod(tmp, plain_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        remove_folders(made)
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
    a path that exists, a name ending in '/' (a folder, where a file is meant: give the name as typed,
    a Path drops the '/'), one below a file, or one in a folder this process may not write."""
    for p in paths:
        if str(p).endswith(("/", os.sep)):
            raise UserError(f"{p} names a folder; give a file name")
        p = Path(p)
        if p.exists() or p.is_symlink():
            raise UserError(f"{p} exists; choose a new name (an output you name never replaces a file)")
        folder = next(q for q in p.absolute().parents if q.exists())
        if not folder.is_dir():
            raise UserError(f"cannot write {p}: {folder} is a file, not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(f"cannot write {p}: the folder {folder} is not writable")


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
