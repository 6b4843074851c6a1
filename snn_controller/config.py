"""Validated configuration: YAML files loaded into frozen dataclasses.

Every loader goes through :func:`build`, which rejects unknown keys, reports missing
keys and names the file and the key in every error, so a typo fails at load time and
not with a KeyError deep inside a run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml


class ConfigError(ValueError):
    """A configuration file or value is invalid. The message names the source and key."""


def package_root() -> Path:
    """Directory that holds config/, launch/ and models/.

    Works for a source checkout, an editable install and a normal install (where the
    data files live in ``share/snn_controller`` of the environment prefix).
    """
    here = Path(__file__).resolve().parent
    candidates = [here.parent]
    env = os.environ.get("SNN_CONTROLLER_SHARE")
    if env:
        candidates.insert(0, Path(env))
    import sys

    candidates.append(Path(sys.prefix) / "share" / "snn_controller")
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / "share" / "snn_controller")
    for candidate in candidates:
        if (candidate / "config" / "drones").is_dir():
            return candidate
    raise ConfigError(
        "cannot find the snn_controller data files (config/, launch/, models/); "
        "set SNN_CONTROLLER_SHARE to the directory that holds them"
    )


def load_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _convert(value, non_none[0], where)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return build(hint, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def build(cls, data: Mapping, source: str = "<config>"):
    """Build the frozen dataclass ``cls`` from ``data``; errors name ``source`` and the key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    kwargs = {}
    for name, field in fields.items():
        where = f"{source}: {name}"
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], where)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing key '{name}'")
    try:
        return cls(**kwargs)
    except (ConfigError, ValueError, TypeError) as exc:  # __post_init__ checks: add the file (and section)
        raise ConfigError(f"{source}: {exc}") from exc


def to_dict(obj) -> dict:
    """A dataclass as plain data (tuples become lists) for YAML/JSON logs and checkpoints."""

    def plain(v):
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(obj))
