"""ros2 launch and snnctl launch start the same processes: what each launch file describes, read
here the way ros2 launch reads the YAML format, against the commands ``snnctl launch --print``
shows; the runner's substitutions and argument choices."""

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

from snn_controller.cli import main as snnctl
from snn_controller.config import ConfigError
from snn_controller.ros import NODES
from snn_controller.ros.launch import launch_commands, parse_launch

ROOT = Path(__file__).resolve().parents[1]
MODULES = {module: name for name, module in NODES.items()}


def ros2_launch_reading(path: Path, args: dict) -> list[dict]:
    """The nodes a YAML launch file starts for ``args``, read independently of snn_controller's
    launch module, with ros2 launch's rules: each arg takes its given value or its default
    (substituted), a node starts when its ``if`` is true and its ``unless`` false, substitutions
    resolve innermost first, a parameter's value is typed as YAML (launch_ros types a substituted
    string that way), ``launch-prefix`` words go before the command."""
    values = {}

    def sub(text: str) -> str:
        innermost = re.compile(r"\$\(([^$()]*)\)")
        while m := innermost.search(text):
            kind, *rest = shlex.split(m.group(1))
            if kind == "var":
                value = values[rest[0]]
            elif kind == "find-pkg-share":
                assert rest == ["snn_controller"]
                value = str(ROOT)
            elif kind in ("equals", "not-equals"):
                value = str((rest[0] == rest[1]) == (kind == "equals")).lower()
            else:
                raise AssertionError(f"this reading does not know $({kind})")
            text = text[:m.start()] + value + text[m.end():]
        return text

    nodes = []
    for action in yaml.safe_load(path.read_text())["launch"]:
        (kind, body), = action.items()
        if kind == "arg":
            values[body["name"]] = args[body["name"]] if body["name"] in args else sub(str(body["default"]))
            if "choice" in body:
                assert values[body["name"]] in [c["value"] for c in body["choice"]]
        elif kind == "node":
            if "if" in body and sub(body["if"]) not in ("true", "1"):
                continue
            if "unless" in body and sub(body["unless"]) in ("true", "1"):
                continue
            nodes.append({
                "executable": body["exec"], "name": body.get("name"), "namespace": body.get("namespace", ""),
                "prefix": shlex.split(body.get("launch-prefix", "")),
                "parameters": {p["name"]: yaml.safe_load(sub(p["value"])) if isinstance(p["value"], str) else p["value"]
                               for p in body.get("param", [])}})
        else:
            raise AssertionError(f"{path.name}: this reading does not know '{kind}'")
    return nodes


def command_reading(command: list[str]) -> dict:
    """A node command of ``snnctl launch --print`` taken apart: what the process gets."""
    start = command.index(sys.executable)
    assert command[start + 1] == "-m" and command[start + 3] == "--ros-args", command
    node = {"executable": MODULES[command[start + 2]], "name": None, "namespace": "", "prefix": command[:start],
            "parameters": {}}
    words = command[start + 4:]
    assert len(words) % 2 == 0, words
    for flag, value in zip(words[::2], words[1::2]):
        key, _, text = value.partition(":=")
        if flag == "-r" and key in ("__node", "__ns"):
            node["name" if key == "__node" else "namespace"] = text
        elif flag == "-p":
            node["parameters"][key] = yaml.safe_load(text)  # as rcl types a -p value
        else:
            raise AssertionError(f"unexpected {flag} {value}")
    return node


def printed_commands(capsys, file: str, args: dict) -> list[list[str]]:
    code = snnctl(["launch", file, *(f"{k}:={v}" for k, v in args.items()), "--print", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out.strip().splitlines()[-1])["commands"]


def cases(tmp):
    fleet, gains = tmp / "fleet.yaml", tmp / "gains.yaml"
    return {
        "sim_snn.launch.yaml": [
            {},
            {"record": "true"},
            {"use_mission": "false", "mode": "lockstep", "model": str(tmp / "m.safetensors"), "drone": "cf2x",
             "crazyflies": str(fleet), "guide_gains": str(gains), "record": "true", "bag": str(tmp / "b"),
             "record_drone_topics": "[odom, pose]", "bag_max_duration": "30", "mission": "hop"}],
        "sim_pid.launch.yaml": [
            {},
            {"record": "true", "gains": str(gains), "use_mission": "false", "mode": "fast", "command_delay": "2"}],
        "real_flight.launch.yaml": [
            {},
            {"controller": "snn", "use_mission": "true", "record": "false", "gains": str(gains)},
            {"controller": "none", "command_timeout": "0.2", "geofence": "[-1.0, -1.0, 0.0, 1.0, 1.0, 2.0]"}],
    }


@pytest.mark.parametrize("file", ["sim_snn.launch.yaml", "sim_pid.launch.yaml", "real_flight.launch.yaml"])
def test_snnctl_launch_starts_what_the_launch_file_describes(file, tmp_path, capsys):
    """Every node the file describes for the given arguments, and no other, with its executable,
    name, namespace, parameters (typed) and prefix, in order."""
    for args in cases(tmp_path)[file]:
        expected = ros2_launch_reading(ROOT / "launch" / file, args)
        assert expected, (file, args)
        started = [command_reading(c) for c in printed_commands(capsys, file, args)]
        assert started == expected, (file, args)


def test_the_controller_argument_picks_the_real_flight_controller():
    nodes = lambda args: [n.executable for n in parse_launch("real_flight.launch.yaml", args).nodes]  # noqa: E731
    assert nodes({}) == ["crazyflie_bridge", "pid_controller", "flight_recorder"]
    assert nodes({"controller": "snn", "use_mission": "true", "record": "false"}) == [
        "crazyflie_bridge", "snn_policy", "mission_sequencer"]
    assert nodes({"controller": "none", "record": "false"}) == ["crazyflie_bridge"]
    with pytest.raises(ConfigError, match=r"controller:=mpc is not one of \['snn', 'pid', 'none'\]"):
        parse_launch("real_flight.launch.yaml", {"controller": "mpc"})
    params = dict(parse_launch("real_flight.launch.yaml").nodes[0].parameters)
    assert params["crazyflies"].endswith("config/crazyflies.yaml")
    assert params["config"].endswith("config/crazyflie_bridge.yaml")
    assert params["command_timeout"] == params["geofence"] == "''", "the config file's unless given"
    pid = dict(parse_launch("real_flight.launch.yaml").nodes[1].parameters)
    assert pid["action"] == "ctbr", "a real drone flies rate-mode setpoints"


def test_the_runner_starts_several_simulators_and_a_trainer(tmp_path):
    """Sim-in-the-loop training's shape: two sim_bridge instances under their own names and
    namespaces, each with its fleet, and a trainer node."""
    f = tmp_path / "train.launch.yaml"
    f.write_text("""
launch:
  - arg: {name: fleets, default: "$(find-pkg-share snn_controller)/config/crazyflies.yaml"}
  - group:
      push-ros-namespace: sim_a
      children:
        - node: {pkg: snn_controller, exec: sim_bridge, name: sim_bridge_a, param: [{name: mode, value: lockstep},
                 {name: crazyflies, value: "$(var fleets)"}], remap: [{from: /clock, to: /sim_a/clock}]}
  - node: {pkg: snn_controller, exec: sim_bridge, name: sim_bridge_b, namespace: sim_b,
           param: [{name: mode, value: fast}]}
  - node: {pkg: snn_controller, exec: trainer, name: trainer, param: [{name: seed, value: 3}]}
""")
    desc = parse_launch(f)
    assert [(n.executable, n.name, n.namespace) for n in desc.nodes] == [
        ("sim_bridge", "sim_bridge_a", "/sim_a"), ("sim_bridge", "sim_bridge_b", "/sim_b"), ("trainer", "trainer", "")]
    commands = launch_commands(desc)
    assert commands[0][3:] == ["--ros-args", "-r", "__node:=sim_bridge_a", "-r", "__ns:=/sim_a", "-p", "mode:=lockstep",
                               "-p", f"crazyflies:={ROOT}/config/crazyflies.yaml", "-r", "/clock:=/sim_a/clock"]
    assert commands[1][3:] == ["--ros-args", "-r", "__node:=sim_bridge_b", "-r", "__ns:=/sim_b", "-p", "mode:=fast"]
    assert commands[2][2] == NODES["trainer"] and "seed:=3" in commands[2]


def test_nested_substitutions_quotes_and_choices(tmp_path):
    f = tmp_path / "x.launch.yaml"
    f.write_text("""
launch:
  - arg: {name: controller, default: snn, choice: [{value: snn}, {value: pid}]}
  - arg: {name: flag, default: "True"}
  - arg: {name: empty, default: "''"}
  - node: {pkg: snn_controller, exec: snn_policy, if: "$(equals $(var controller) snn)"}
  - node: {pkg: snn_controller, exec: pid_controller, if: "$(not-equals $(var controller) snn)"}
  - node: {pkg: snn_controller, exec: sim_bridge, if: "$(equals $(var flag) 1)",
           param: [{name: drone, value: "$(var empty)"}, {name: x, value: "$(env SNN_TEST_UNSET 'a b')"}]}
""")
    assert [n.executable for n in parse_launch(f).nodes] == ["snn_policy", "sim_bridge"]
    assert dict(parse_launch(f).nodes[1].parameters) == {"drone": "''", "x": "a b"}
    assert [n.executable for n in parse_launch(f, {"controller": "pid", "flag": "false"}).nodes] == ["pid_controller"]
    with pytest.raises(ConfigError, match="controller:=x is not one of"):
        parse_launch(f, {"controller": "x"})
    f.write_text("launch:\n  - node: {pkg: snn_controller, exec: sim_bridge, if: \"$(equals a\"}\n")
    with pytest.raises(ConfigError, match=r"'\$\(' without its '\)'"):
        parse_launch(f)
