"""Run ROS 2 YAML launch files without ``ros2 launch``.

The launch files in launch/ are standard ROS 2 YAML launch files: on a full ROS 2 install,
``ros2 launch snn_controller sim_pid.launch.yaml`` runs them. This module reads the same files
(the one source of truth for which nodes start, with which parameters and remappings) and
starts the same processes on a pip-only install: ``snnctl launch sim_pid.launch.yaml``.

Supported subset of the YAML launch format: ``arg`` (name, default, description, choice),
``node`` (pkg, exec, name, namespace, param [name/value or from], remap [from/to], ros_args,
launch-prefix, output, if/unless), ``group`` with ``push-ros-namespace``/``push_ros_namespace``
and ``scoped``, and the substitutions ``$(var X)``, ``$(find-pkg-share P)``, ``$(env X
[default])``, ``$(equals A B)`` and ``$(not-equals A B)``, nested as in ``$(equals $(var
controller) snn)``. Anything else is a clear error, never silently skipped.

Running (LaunchRunner): every command is built before any process starts, so a launch file that
names a node that does not exist starts nothing and says so. Each node runs in its own process group, its output prefixed with its name. When a node
ends on its own, the runner says which one, why (exit code or signal, the last lines of its
stderr) and stops the rest; stopping sends SIGINT, then SIGTERM, then SIGKILL to what is still
running, as ros2 launch does. SIGTERM to the runner stops it as Ctrl-C does.
"""

from __future__ import annotations

import collections
import os
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
    choices: dict[str, list[str]] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)  # name -> the value the launch ran with
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
    _actions(data["launch"], desc, given, desc.values, "", str(path))
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
            _argument(body, desc, given, values, where)
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


def _argument(body, desc, given, values, where):
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
    if "choice" in body:
        choices = [str(c["value"]) for c in body["choice"]]
        desc.choices[name] = choices
        if values[name] not in choices:
            raise ConfigError(f"{where}: launch argument {name}:={values[name]} is not one of {choices}")


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


def _truth(text: str, where: str) -> bool:
    t = text.strip().lower()
    if t not in ("true", "false", "1", "0"):
        raise ConfigError(f"{where}: condition must be true or false, got {t!r}")
    return t in ("true", "1")


def _condition(body, values, where) -> bool:
    if "if" in body and not _truth(_substitute(str(body["if"]), values, where), where):
        return False
    return not ("unless" in body and _truth(_substitute(str(body["unless"]), values, where), where))


def _substitute(text: str, values: dict, where: str) -> str:
    """Resolve the substitutions in ``text``, inner ones first."""
    result, _ = _scan(text, 0, values, where, inside=False)
    return result


def _scan(text: str, i: int, values: dict, where: str, inside: bool):
    """Read from ``i``: outside a substitution, text up to the end; inside one (after its ``$(``),
    its words up to the closing ``)``, which are then evaluated. Returns (value, next index)."""
    words, word, started = [], [], False
    while i < len(text):
        if text.startswith("$(", i):
            value, i = _scan(text, i + 2, values, where, inside=True)
            word.append(value)
            started = True
        elif inside and text[i] == ")":
            if started:
                words.append("".join(word))
            return _evaluate(words, values, where), i + 1
        elif inside and text[i].isspace():
            if started:
                words.append("".join(word))
            word, started = [], False
            i += 1
        elif inside and text[i] in "'\"":  # a quoted word inside a substitution: '' is the empty string
            end = text.find(text[i], i + 1)
            if end < 0:
                raise ConfigError(f"{where}: unclosed quote in {text!r}")
            word.append(text[i + 1:end])
            started = True
            i = end + 1
        else:
            word.append(text[i])
            started = True
            i += 1
    if inside:
        raise ConfigError(f"{where}: '$(' without its ')' in {text!r}")
    return "".join(word), i


def _equal(a: str, b: str) -> bool:
    """ros2 launch's $(equals): booleans as booleans, numbers as numbers, else the text."""
    bools = ("true", "false", "1", "0")
    if a.lower() in bools and b.lower() in bools:
        return (a.lower() in ("true", "1")) == (b.lower() in ("true", "1"))
    try:
        return abs(float(a) - float(b)) <= 1e-9 * max(abs(float(a)), abs(float(b)))
    except ValueError:
        return a == b


def _evaluate(words: list[str], values: dict, where: str) -> str:
    if not words:
        raise ConfigError(f"{where}: empty substitution $()")
    kind, rest = words[0], words[1:]
    if kind == "var":
        if len(rest) != 1 or rest[0] not in values:
            raise ConfigError(f"{where}: $(var {' '.join(rest)}) names no declared argument")
        return values[rest[0]]
    if kind == "find-pkg-share":
        if rest != [PACKAGE]:
            raise ConfigError(f"{where}: $(find-pkg-share {' '.join(rest)}): only {PACKAGE} is known here")
        return str(package_root())
    if kind == "env":
        if not rest:
            raise ConfigError(f"{where}: $(env) needs a variable name")
        if rest[0] in os.environ:
            return os.environ[rest[0]]
        if len(rest) > 1:
            return " ".join(rest[1:])
        raise ConfigError(f"{where}: environment variable {rest[0]} is not set")
    if kind in ("equals", "not-equals"):
        if len(rest) != 2:
            raise ConfigError(f"{where}: $({kind} A B) takes two words, got {rest}")
        return str(_equal(*rest) == (kind == "equals")).lower()
    raise ConfigError(f"{where}: substitution $({kind}) is not supported")


# --- running ---------------------------------------------------------------------------------
def node_command(spec: NodeSpec) -> list[str]:
    from . import NODES  # the table of installed node executables

    if spec.executable not in NODES:
        raise ConfigError(f"unknown node executable '{spec.executable}'; known: {sorted(NODES)}")
    return [*spec.launch_prefix, sys.executable, "-m", NODES[spec.executable]] + spec.ros_args()


def launch_commands(desc: LaunchDescription) -> list[list[str]]:
    """Every node's command, or an error naming the launch file and the node that cannot start."""
    commands = []
    for spec in desc.nodes:
        try:
            commands.append(node_command(spec))
        except ConfigError as exc:
            raise ConfigError(f"{desc.path.name}: cannot start node {spec.label}: {exc}") from None
    return commands


def exit_reason(code: int) -> str:
    """'exit code 2' or 'killed by signal SIGSEGV' for a Popen return code."""
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# Return codes of a node that stopped when asked: a clean exit, or the signal's default action
STOPPED_CODES = (0, -signal.SIGINT, 128 + signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGTERM)


def die_with_parent() -> None:
    """In a child process before it runs: SIGTERM when its parent dies, however it dies (SIGKILL
    included), so that no node outlives the runner (or the test) that started it: a node's own
    session keeps it from Ctrl-C, and nothing else would stop it. Linux's PR_SET_PDEATHSIG; elsewhere
    nothing."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


@dataclass
class NodeProcess:
    spec: NodeSpec
    proc: subprocess.Popen
    stderr_tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=12))
    threads: list = field(default_factory=list)  # the pumps of its stdout and stderr
    ended_on_its_own: bool = False  # it ended before the runner stopped it
    killed: bool = False  # it did not stop on SIGINT and SIGTERM

    def failure(self) -> dict | None:
        """Why this node failed, or None: it died (a non-zero exit on its own), or had to be killed."""
        code = self.proc.returncode
        if code is None:
            return None
        if self.ended_on_its_own and code != 0:
            why = exit_reason(code)
        elif self.killed:
            why = "did not stop on SIGINT and SIGTERM: killed"
        elif not self.ended_on_its_own and code not in STOPPED_CODES:
            why = f"failed while stopping: {exit_reason(code)}"
        else:
            return None
        return {"node": self.spec.label, "code": code, "why": why, "stderr": list(self.stderr_tail)}


class LaunchRunner:
    """Start the nodes of a launch description as processes; stop them all on exit.

    Output lines are prefixed with the node's label. ``stop()`` sends SIGINT, waits up to
    ``timeout`` s, then SIGTERM, waits up to ``term_timeout`` s, then kills what is left.
    """

    def __init__(self, desc: LaunchDescription, env: dict | None = None, output=None, timeout: float = 10.0,
                 term_timeout: float = 5.0):
        self.desc = desc
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        # Faster discovery on one machine (~0.7 s instead of up to 3 s), unless the user set a profile.
        self.env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(package_root() / "config" / "fastdds_fast_discovery.xml"))
        self.output = output or sys.stdout
        self.timeout, self.term_timeout = timeout, term_timeout
        self.nodes: list[NodeProcess] = []
        self._lock = threading.RLock()  # reentrant: a signal handler in the main thread may write too
        self._stopping = False
        self._previous_sigterm = None

    @property
    def processes(self) -> list[tuple[NodeSpec, subprocess.Popen]]:
        return [(n.spec, n.proc) for n in self.nodes]

    def say(self, text: str) -> None:
        self._write(f"[launch] {text}\n")

    def _write(self, text: str) -> None:
        with self._lock:
            try:
                self.output.write(text)
                self.output.flush()
            except ValueError:  # output closed at exit
                pass

    def start(self) -> None:
        commands = launch_commands(self.desc)  # all of them first: a node that cannot start starts nothing
        try:
            for spec, command in zip(self.desc.nodes, commands):
                proc = subprocess.Popen(command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, start_new_session=True, preexec_fn=die_with_parent)
                node = NodeProcess(spec, proc)
                self.nodes.append(node)
                self.say(f"started {spec.label} (pid {proc.pid})")
                for stream, tail in ((proc.stdout, None), (proc.stderr, node.stderr_tail)):
                    t = threading.Thread(target=self._pump, args=(spec.label, stream, tail), daemon=True)
                    t.start()
                    node.threads.append(t)
        except BaseException:
            self.stop()
            raise

    def _pump(self, label, stream, tail):
        for line in stream:
            if tail is not None:
                tail.append(line.rstrip("\n"))
            self._write(f"[{label}] {line}")

    def failed(self) -> list[tuple[str, int]]:
        """Nodes that ended on their own (before stop), with their exit codes."""
        self._mark_ended()
        return [(n.spec.label, n.proc.returncode) for n in self.nodes if n.ended_on_its_own]

    def failures(self) -> list[dict]:
        """The nodes that died (ended on their own with a non-zero exit) or had to be killed, and why."""
        self._mark_ended()
        return [f for f in (n.failure() for n in self.nodes) if f is not None]

    def _mark_ended(self) -> None:
        if self._stopping:
            return
        for n in self.nodes:
            if not n.ended_on_its_own and n.proc.poll() is not None:
                n.ended_on_its_own = True

    def wait(self, duration: float | None = None) -> None:
        """Until ``duration`` passes, a node exits, or Ctrl-C."""
        end = None if duration is None else time.monotonic() + duration
        while end is None or time.monotonic() < end:
            if self.failed():
                return
            time.sleep(0.1)

    def stop(self) -> None:
        """Say which node ended on its own and why, then stop the rest: SIGINT, SIGTERM, SIGKILL.
        Signals to the runner meanwhile do not interrupt this."""
        if self._stopping:
            return
        self._mark_ended()
        self._stopping = True
        previous = self._hold_signals()
        try:
            ended = [n for n in self.nodes if n.ended_on_its_own]
            for n in ended:
                code = n.proc.wait()
                for t in n.threads:  # its last lines first
                    t.join(timeout=2.0)
                if code == 0:
                    self.say(f"{n.spec.label} ended (exit code 0)")
                else:
                    tail = "".join(f"\n[launch]   {line}" for line in n.stderr_tail) or " (none)"
                    self.say(f"{n.spec.label} died: {exit_reason(code)}; the last lines of its stderr:{tail}")
            if ended and any(n.proc.poll() is None for n in self.nodes):
                self.say("stopping the other nodes")
            for sig, wait_s in ((signal.SIGINT, self.timeout), (signal.SIGTERM, self.term_timeout),
                                (signal.SIGKILL, 5.0)):
                running = [n for n in self.nodes if n.proc.poll() is None]
                if not running:
                    break
                if sig != signal.SIGINT:
                    self.say(f"{[n.spec.label for n in running]} still running: sending {sig.name}")
                for n in running:
                    n.killed = sig == signal.SIGKILL
                    try:
                        os.killpg(n.proc.pid, sig)
                    except ProcessLookupError:
                        pass
                deadline = time.monotonic() + wait_s
                for n in running:
                    try:
                        n.proc.wait(max(deadline - time.monotonic(), 0.1))
                    except subprocess.TimeoutExpired:
                        pass
            for t in (t for n in self.nodes for t in n.threads):
                t.join(timeout=1.0)
        finally:
            self._restore_signals(previous)

    def _hold_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return None
        held = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in held:
            signal.signal(s, lambda *_: self.say("stopping the nodes; please wait"))
        return held

    @staticmethod
    def _restore_signals(previous):
        for s, handler in (previous or {}).items():
            signal.signal(s, handler)

    def __enter__(self):
        # SIGTERM stops the runner as Ctrl-C does (KeyboardInterrupt), so its nodes are stopped too
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            self.start()
        except BaseException:
            self._restore_signals({signal.SIGTERM: self._previous_sigterm} if self._previous_sigterm else None)
            raise
        return self

    def __exit__(self, *exc):
        self.stop()
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
