"""Run ROS 2 YAML launch files without ``ros2 launch``.

The launch files in launch/ are standard ROS 2 YAML launch files: on a full ROS 2 install,
``ros2 launch snn_controller sim_pid.launch.yaml`` runs them. This module reads the same files
(the one source of truth for which nodes start, with which parameters and remappings) and
starts the same processes on a pip-only install: ``snnctl launch sim_pid.launch.yaml``.

Supported subset of the YAML launch format: ``arg`` (name, default, description), ``node``
(pkg, exec, name, namespace, param [name/value or from], remap [from/to], ros_args, launch-prefix,
output, if/unless), ``group`` with ``push-ros-namespace``/``push_ros_namespace`` and ``scoped``, and the
substitutions ``$(var X)``, ``$(find-pkg-share P)``, ``$(env X [default])``. Anything else is a
clear error, never silently skipped.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import ConfigError, package_root

PACKAGE = "snn_controller"
_SUBST = re.compile(r"\$\((\S+)((?:\s+[^)]*)?)\)")


@dataclass(frozen=True)
class NodeSpec:
    """One process the launch file starts."""

    executable: str
    name: str | None = None
    namespace: str = ""
    parameters: tuple[tuple[str, str], ...] = ()  # name, value (as text, typed by the node like ros2 launch)
    parameter_files: tuple[str, ...] = ()
    remappings: tuple[tuple[str, str], ...] = ()
    extra_ros_args: tuple[str, ...] = ()
    launch_prefix: tuple[str, ...] = ()  # words before the command, e.g. nice -n 10

    def ros_args(self) -> list[str]:
        args = ["--ros-args"]
        if self.name:
            args += ["-r", f"__node:={self.name}"]
        if self.namespace:
            args += ["-r", f"__ns:={self.namespace}"]
        for f in self.parameter_files:
            args += ["--params-file", f]
        for k, v in self.parameters:
            args += ["-p", f"{k}:={v}"]
        for a, b in self.remappings:
            args += ["-r", f"{a}:={b}"]
        return args + list(self.extra_ros_args)

    @property
    def label(self) -> str:
        return "/".join(x for x in (self.namespace.strip("/"), self.name or self.executable) if x)


@dataclass
class LaunchDescription:
    path: Path
    arguments: dict[str, str | None] = field(default_factory=dict)  # name -> default
    descriptions: dict[str, str] = field(default_factory=dict)
    nodes: list[NodeSpec] = field(default_factory=list)


def find_launch_file(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    candidate = package_root() / "launch" / name
    if candidate.is_file():
        return candidate
    available = sorted(p.name for p in (package_root() / "launch").glob("*.launch.yaml"))
    raise ConfigError(f"launch file '{name}' not found; available: {available}")


def parse_launch(path: str | Path, arguments: dict[str, str] | None = None) -> LaunchDescription:
    """Resolve a YAML launch file with ``arguments`` (name -> value) into the nodes it starts."""
    path = find_launch_file(str(path))
    with open(path) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or not isinstance(data.get("launch"), list):
        raise ConfigError(f"{path}: a YAML launch file must hold 'launch:' with a list of actions")
    desc = LaunchDescription(path=path)
    given = dict(arguments or {})
    values: dict[str, str] = {}
    _actions(data["launch"], desc, given, values, "", str(path))
    unknown = sorted(set(given) - set(desc.arguments))
    if unknown:
        raise ConfigError(f"{path}: unknown launch argument(s) {unknown}; declared: {sorted(desc.arguments)}")
    return desc


def _actions(actions, desc, given, values, namespace, where):
    for i, action in enumerate(actions):
        if not isinstance(action, dict) or len(action) != 1:
            raise ConfigError(f"{where}: launch action #{i} must be a mapping with one key")
        (kind, body), = action.items()
        if kind == "arg":
            name = body.get("name")
            if not name:
                raise ConfigError(f"{where}: an 'arg' needs a name")
            default = body.get("default")
            desc.arguments[name] = None if default is None else str(default)
            desc.descriptions[name] = body.get("description", "")
            if name in given:
                values[name] = str(given[name])
            elif default is not None:
                values[name] = _substitute(str(default), values, where)
            else:
                raise ConfigError(f"{where}: launch argument '{name}' is required (pass {name}:=VALUE)")
        elif kind == "node":
            if _condition(body, values, where):
                desc.nodes.append(_node(body, values, namespace, where))
        elif kind == "group":
            ns = body.get("push-ros-namespace", body.get("push_ros_namespace", ""))
            ns = _substitute(str(ns), values, where).strip("/")
            inner = "/".join(x for x in (namespace.strip("/"), ns) if x)
            if _condition(body, values, where):
                _actions(body.get("children", []), desc, given, values, inner, where)
        else:
            raise ConfigError(f"{where}: launch action '{kind}' is not supported by snnctl launch "
                              "(supported: arg, node, group)")


_NODE_KEYS = {"pkg", "exec", "name", "namespace", "param", "remap", "ros_args", "launch-prefix", "output", "if",
              "unless", "args"}


def _node(body, values, namespace, where) -> NodeSpec:
    unknown = sorted(set(body) - _NODE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: node key(s) {unknown} are not supported")
    sub = lambda s: _substitute(str(s), values, where)  # noqa: E731
    if sub(body.get("pkg", "")) != PACKAGE:
        raise ConfigError(f"{where}: snnctl launch starts only {PACKAGE} nodes, not pkg '{body.get('pkg')}'")
    params, files = [], []
    for p in body.get("param", []) or []:
        if "from" in p:
            files.append(sub(p["from"]))
        elif "name" in p and "value" in p:
            value = p["value"]
            text = sub(value) if isinstance(value, str) else _yaml_text(value)
            if not text.strip():  # rcl and ros2 launch refuse an empty value; '' is the empty string
                raise ConfigError(f"{where}: parameter '{p['name']}' of {body.get('exec')} is empty: "
                                  "write '' for an empty string (name:=\"''\" on a command line)")
            params.append((p["name"], text))
        else:
            raise ConfigError(f"{where}: a node param needs 'name' and 'value', or 'from'")
    remaps = tuple((sub(r["from"]), sub(r["to"])) for r in body.get("remap", []) or [])
    ns = sub(body.get("namespace", ""))
    full_ns = ns if ns.startswith("/") else "/".join(x for x in (namespace, ns.strip("/")) if x)
    if full_ns and not full_ns.startswith("/"):
        full_ns = "/" + full_ns
    return NodeSpec(executable=sub(body["exec"]), name=sub(body["name"]) if "name" in body else None,
                    namespace=full_ns, parameters=tuple(params), parameter_files=tuple(files),
                    remappings=remaps,
                    extra_ros_args=tuple(shlex.split(sub(body.get("ros_args", "")))),
                    launch_prefix=tuple(shlex.split(sub(body.get("launch-prefix", "")))))


def _yaml_text(value) -> str:
    """A YAML value as the one-line text ``-p name:=value`` parses back to the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("...").strip()


def _condition(body, values, where) -> bool:
    def truth(text):
        t = _substitute(str(text), values, where).strip().lower()
        if t not in ("true", "false", "1", "0"):
            raise ConfigError(f"{where}: condition must be true or false, got {t!r}")
        return t in ("true", "1")

    if "if" in body and not truth(body["if"]):
        return False
    return not ("unless" in body and truth(body["unless"]))


def _substitute(text: str, values: dict, where: str) -> str:
    def repl(m):
        kind, rest = m.group(1), m.group(2).split()
        if kind == "var":
            if not rest or rest[0] not in values:
                raise ConfigError(f"{where}: $(var {' '.join(rest)}) names no declared argument")
            return values[rest[0]]
        if kind == "find-pkg-share":
            if rest != [PACKAGE]:
                raise ConfigError(f"{where}: $(find-pkg-share {' '.join(rest)}): only {PACKAGE} is known here")
            return str(package_root())
        if kind == "env":
            if rest[0] in os.environ:
                return os.environ[rest[0]]
            if len(rest) > 1:
                return " ".join(rest[1:])
            raise ConfigError(f"{where}: environment variable {rest[0]} is not set")
        raise ConfigError(f"{where}: substitution $({kind}) is not supported")

    return _SUBST.sub(repl, text)


# --- running ---------------------------------------------------------------------------------
def node_command(spec: NodeSpec) -> list[str]:
    from . import NODES  # the table of installed node executables

    if spec.executable not in NODES:
        raise ConfigError(f"unknown node executable '{spec.executable}'; known: {sorted(NODES)}")
    return [*spec.launch_prefix, sys.executable, "-m", NODES[spec.executable]] + spec.ros_args()


class LaunchRunner:
    """Start the nodes of a launch description as processes; stop them all on exit.

    Output lines are prefixed with the node's label. ``stop()`` sends SIGINT, waits, then kills.
    """

    def __init__(self, desc: LaunchDescription, env: dict | None = None, output=None):
        self.desc = desc
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        # Faster discovery on one machine (~0.7 s instead of up to 3 s), unless the user set a profile.
        self.env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(package_root() / "config" / "fastdds_fast_discovery.xml"))
        self.output = output or sys.stdout
        self.processes: list[tuple[NodeSpec, subprocess.Popen]] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for spec in self.desc.nodes:
            proc = subprocess.Popen(node_command(spec), env=self.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)
            self.processes.append((spec, proc))
            t = threading.Thread(target=self._pump, args=(spec.label, proc), daemon=True)
            t.start()
            self._threads.append(t)

    def _pump(self, label, proc):
        for line in proc.stdout:
            try:
                self.output.write(f"[{label}] {line}")
                self.output.flush()
            except ValueError:  # output closed at exit
                return

    def failed(self) -> list[tuple[str, int]]:
        """Nodes that exited on their own, with their exit codes."""
        return [(spec.label, proc.returncode) for spec, proc in self.processes if proc.poll() is not None]

    def wait(self, duration: float | None = None) -> None:
        """Until ``duration`` passes, a node exits, or Ctrl-C."""
        end = None if duration is None else time.monotonic() + duration
        while end is None or time.monotonic() < end:
            if self.failed():
                return
            time.sleep(0.1)

    def stop(self, timeout: float = 5.0) -> None:
        for _, proc in self.processes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        for _, proc in self.processes:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for t in self._threads:
            t.join(timeout=1.0)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
