"""Strict TOML configs as nested dataclasses.

Unknown keys, wrong types and bad values fail with one line (UserError) naming the key and the file.
Each field may declare `choices` in its metadata; a dataclass may define `validate(src)` for checks
across fields; `key=value` overrides (the CLI's `--set`) are parsed as TOML values.
"""

import copy
import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

from diffspace.types import UserError


def choice(default, *options):
    """A field whose value must be one of `options`."""
    return field(default=default, metadata={"choices": options})


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_value(value: Any, tp, key: str, src: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _check_value(value, args[0], key, src)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{src}: [{key}] must be a table, got {value!r}")
        return build(tp, value, src, prefix=key + ".")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"{src}: {key} must be a list, got {value!r}")
        return [_check_value(v, item, key, src) for v in value]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{src}: {key} must be a finite number, got {value!r}")
    if tp is Any or (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    raise UserError(f"{src}: {key} must be {_type_name(tp)}, got {value!r}")


def build(cls, data: dict, src: str = "<config>", prefix: str = ""):
    """Instantiate dataclass `cls` from a dict, strictly."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            raise UserError(f"{src}: unknown key '{prefix}{k}' (valid: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = prefix + name
        value = _check_value(data[name], hints[name], key, src)
        options = f.metadata.get("choices")
        if options and value not in options:
            raise UserError(f"{src}: {key} = {value!r} is not one of {', '.join(map(repr, options))}")
        kwargs[name] = value
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        check(src)
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.steps=100' -> (['train', 'steps'], 100). Values are TOML; bare words become strings."""
    if "=" not in text:
        raise UserError(f"an override must be key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str] = ()) -> dict:
    """A copy of the nested dict `data` with each 'a.b=value' override set."""
    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise UserError(f"override {text!r}: {k!r} is not a table")
        node[keys[-1]] = value
    return data


# the configs shipped in the package: src/diffspace/configs is a link to the repository's configs/, whose
# files the wheel carries as package data
CONFIGS = Path(__file__).resolve().parent / "configs"


def shipped_configs() -> list[str]:
    """Names of the configs shipped with diffspace (`diffspace train demo`)."""
    return sorted(p.stem for p in CONFIGS.glob("*.toml"))


def config_file(name: str | Path) -> Path:
    """`name` itself when it is a file, else the shipped config of that name ("demo" or "demo.toml", no
    folder), else `name` (which then does not exist)."""
    p = Path(name)
    if p.is_file() or p.parent != Path("."):
        return p
    shipped = CONFIGS / (p.name if p.suffix == ".toml" else f"{p.name}.toml")
    return shipped if shipped.is_file() else p


def load_toml(path: str | Path, overrides: list[str] = ()) -> dict:
    """Read a TOML file (or a shipped config by name, `config_file`) into a dict and apply overrides;
    UserError if missing, not a regular file (a directory, /dev/null) or malformed."""
    p = config_file(path)
    if p.is_dir():
        raise UserError(f"config file {p} is a directory, expected a TOML config file")
    if p.exists() and not p.is_file():
        raise UserError(f"config file {p} is not a regular file, expected a TOML config file")
    if not p.is_file():
        raise UserError(f"config file not found: {p} (shipped configs: {', '.join(shipped_configs())})")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: malformed TOML ({e})") from None
    return apply_overrides(data, overrides)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def to_toml(data: dict, prefix: str = "") -> str:
    """Write a nested dict of scalars/lists as TOML (enough for our configs)."""
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict) and v is not None}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines = [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
    out = ([f"[{prefix}]"] if prefix and lines else []) + lines
    for k, v in tables.items():
        sub = to_toml(v, f"{prefix}.{k}" if prefix else k)
        if sub:
            out += ["", sub] if out else [sub]
    return "\n".join(out)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)
