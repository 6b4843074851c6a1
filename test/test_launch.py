"""Launch files: one source of truth for ros2 launch and snnctl launch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from snn_controller.config import ConfigError
from snn_controller.ros.launch import LaunchRunner, find_launch_file, node_command, parse_launch
from snn_controller.ros import NODES
from snn_controller.ros.flight_recorder import FLEET_TOPICS, recorded_topics
from snn_controller.io.topics import DRONE_TOPICS, FLIGHT_TOPICS

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.yaml"))


def test_installed_console_scripts_are_the_node_table():
    """The installed package declares one console script per node of the table, plus snnctl."""
    from importlib.metadata import distribution

    scripts = {ep.name: ep.value for ep in distribution("snn_controller").entry_points
               if ep.group == "console_scripts"}
    assert scripts == {**{name: f"{module}:main" for name, module in NODES.items()},
                       "snnctl": "snn_controller.cli:main"}
    for module in NODES.values():
        assert "def main(" in (ROOT / (module.replace(".", "/") + ".py")).read_text(), f"{module} has no main()"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_is_standard_yaml_launch_and_resolves(path):
    data = yaml.safe_load(path.read_text())
    assert list(data) == ["launch"]
    desc = parse_launch(path)
    assert desc.nodes, "a launch file that starts nothing"
    for node in desc.nodes:
        assert node.executable in NODES
        cmd = node_command(node)[len(node.launch_prefix):]
        assert cmd[1:3] == ["-m", NODES[node.executable]]
        for name, value in node.parameters:
            assert "$(" not in value, f"unresolved substitution in {name}={value}"


@pytest.mark.parametrize("launch, controller", [("sim_pid.launch.yaml", "pid_controller"),
                                                ("sim_snn.launch.yaml", "snn_policy")])
def test_one_controller_node_flies_the_fleet_file_the_simulator_simulates(launch, controller, tmp_path):
    fleet = tmp_path / "three.yaml"
    fleet.write_text("robots:\n  a: {}\n  b: {initial_position: [1, 0, 0]}\n  c: {enabled: false}\n")
    arguments = {"mode": "lockstep", "drone": "cf2x", "crazyflies": str(fleet)}
    desc = parse_launch(launch, {**arguments, "record": "true"} if "record" in parse_launch(launch).arguments
                        else arguments)
    by_exec = {}
    for n in desc.nodes:
        by_exec.setdefault(n.executable, []).append(n)
    assert len(by_exec["sim_bridge"]) == 1 and dict(by_exec["sim_bridge"][0].parameters)["mode"] == "lockstep"
    assert len(by_exec[controller]) == 1, "one controller process for the whole fleet"
    params = dict(by_exec[controller][0].parameters)
    assert params["crazyflies"] == str(fleet) == dict(by_exec["sim_bridge"][0].parameters)["crazyflies"]
    assert params["drone"] == "cf2x" and by_exec[controller][0].namespace == ""
    if "flight_recorder" in by_exec:  # the recorder derives the per-drone topics from the same file
        recorder = dict(by_exec["flight_recorder"][0].parameters)
        assert recorder["crazyflies"] == str(fleet)
        # the demo's lighter set (docs/benchmarks.md): topics.FLIGHT_TOPICS per drone, no /clock
        assert tuple(yaml.safe_load(recorder["drone_topics"])) == FLIGHT_TOPICS
        topics = recorded_topics((), recorder["crazyflies"], yaml.safe_load(recorder["drone_topics"]),
                                 yaml.safe_load(recorder["fleet_topics"]))
        assert {"/a/cmd_motors_stamped", "/b/cmd_motors_stamped", "/a/odom", "/diagnostics"} <= set(topics)
        assert not any(t.startswith("/c/") for t in topics), "a disabled drone is not recorded"


def ros2_launch_value(text: str):
    """A parameter value as ros2 launch types it (launch_ros evaluate_parameter_dict): YAML, and
    only bool, int, float, str or a non-empty list of one of them; anything else is refused."""
    value = yaml.safe_load(text)
    if isinstance(value, list):
        assert value and type(value[0]) in (bool, int, float, str) and all(type(v) is type(value[0]) for v in value), \
            f"ros2 launch refuses the list {text!r}"
    else:
        assert type(value) in (bool, int, float, str), f"ros2 launch refuses the value {text!r}"
    return value


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_the_drone_model_comes_from_the_fleet_and_model_files(path):
    """No launch file names a drone model: sim_bridge and pid_controller take the fleet file's
    all.drone, snn_policy its model file's (and refuses a fleet of another drone). Every value
    is one ros2 launch accepts, the empty string ('') included."""
    every_node = {"record": "true"} if "record" in parse_launch(path).arguments else {}
    for node in parse_launch(path, every_node).nodes:
        params = {name: ros2_launch_value(value) for name, value in node.parameters}
        if node.executable in ("sim_bridge", "pid_controller", "snn_policy"):
            assert params["drone"] == "", f"{node.executable} must take the drone from its file"
    if "drone" not in parse_launch(path).arguments:  # a launch that flies no drone (sil_train: the config's)
        return
    overridden = parse_launch(path, {"drone": "cf2x"}).nodes
    assert all(dict(n.parameters)["drone"] == "cf2x" for n in overridden if "drone" in dict(n.parameters))


def test_launch_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="unknown launch argument"):
        parse_launch("sim_pid.launch.yaml", {"no_such_arg": "1"})
    with pytest.raises(ConfigError, match="not found"):
        parse_launch("missing.launch.yaml")
    bad = tmp_path / "bad.launch.yaml"
    bad.write_text("launch:\n  - include: {file: x}\n")
    with pytest.raises(ConfigError, match="'include' is not supported"):
        parse_launch(bad)
    bad.write_text("launch:\n  - node: {pkg: snn_controller, exec: nope, name: x}\n")
    with pytest.raises(ConfigError, match="unknown node executable 'nope'"):
        node_command(parse_launch(bad).nodes[0])
    bad.write_text("launch:\n  - arg: {name: a}\n  - node: {pkg: snn_controller, exec: sim_bridge}\n")
    with pytest.raises(ConfigError, match="'a' is required"):
        parse_launch(bad)
    with pytest.raises(ConfigError, match="parameter 'drone' of sim_bridge is empty: write ''"):
        parse_launch("sim_pid.launch.yaml", {"drone": ""})


def test_substitutions_conditions_and_groups(tmp_path, monkeypatch):
    monkeypatch.setenv("SNN_TEST_RATE", "250.0")
    f = tmp_path / "x.launch.yaml"
    f.write_text("""
launch:
  - arg: {name: with_pid, default: "false"}
  - node:
      pkg: snn_controller
      exec: sim_bridge
      param:
        - {name: rate, value: "$(env SNN_TEST_RATE)"}
        - {name: crazyflies, value: "$(find-pkg-share snn_controller)/config/crazyflies.yaml"}
      remap:
        - {from: /clock, to: /sim_clock}
  - group:
      push-ros-namespace: swarm
      children:
        - node: {pkg: snn_controller, exec: pid_controller, name: pid, namespace: cf1, if: "$(var with_pid)"}
""")
    off = parse_launch(f)
    assert [n.executable for n in off.nodes] == ["sim_bridge"]
    sim = off.nodes[0]
    assert dict(sim.parameters)["rate"] == "250.0"
    assert Path(dict(sim.parameters)["crazyflies"]).is_file()
    assert ("/clock", "/sim_clock") in sim.remappings
    on = parse_launch(f, {"with_pid": "true"})
    assert on.nodes[1].namespace == "/swarm/cf1"
    assert "-r" in on.nodes[1].ros_args() and "__ns:=/swarm/cf1" in on.nodes[1].ros_args()


def test_snnctl_launch_flies_the_fleet(ros_env):
    """The README's main command, shortened: both drones take off and hover under the PID."""
    out = subprocess.run(
        [sys.executable, "-m", "snn_controller.cli", "launch", "sim_pid.launch.yaml", "--duration", "12",
         "--monitor", "--json"], env=ros_env, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["failed"] == []
    for name, start_x in (("cf1", 0.0), ("cf2", 1.0)):
        s = result["summary"][name]
        assert s["messages"] > 300, s
        x, y, z = s["position"]
        # takeoff_height 1.0 above the resting position (centre 0.011 m above the ground)
        assert abs(x - start_x) < 0.03 and abs(y) < 0.03 and abs(z - 1.011) < 0.03, s
        assert s["hover_spread_m"] < 0.02, s
        # the simulator's command age per drone (sim_bridge's /diagnostics), in control steps
        assert all(isinstance(s["command_age"][k], int) for k in ("p50", "p99", "max")), s
        assert s["command_age"]["p50"] <= s["command_age"]["p99"] <= s["command_age"]["max"], s
        assert s["crashes"] == 0, s


def test_launch_runner_stops_every_process(ros_env):
    desc = parse_launch("sim_pid.launch.yaml", {"mode": "fast"})
    import io

    runner = LaunchRunner(desc, env=ros_env, output=io.StringIO())
    with runner:
        runner.wait(2.0)
        assert not runner.failed(), runner.output.getvalue()
    assert all(proc.poll() is not None for _, proc in runner.processes)


def test_a_launch_prefix_goes_before_the_node_command():
    """The recorder runs niced in sim_snn.launch.yaml: it can wait, the control loop cannot."""
    desc = parse_launch(find_launch_file("sim_snn.launch.yaml"), {"record": "true"})
    recorder = next(n for n in desc.nodes if n.executable == "flight_recorder")
    assert node_command(recorder)[:3] == ["nice", "-n", "10"]
    bridge = next(n for n in desc.nodes if n.executable == "sim_bridge")
    assert node_command(bridge)[0] == sys.executable


@pytest.mark.parametrize("launch", ["sim_snn.launch.yaml", "sim_pid.launch.yaml"])
def test_the_recorder_records_the_flight_topics_of_every_enabled_drone_of_the_fleet_file(ros_context, tmp_path,
                                                                                        launch):
    """The simulated launches' recorder, as started (its parameters from the launch file, the rest
    the node's defaults), records topics.FLIGHT_TOPICS of each enabled drone of the fleet file,
    whatever its drones are called: the launch file names no drone."""
    from rclpy.parameter import Parameter

    from snn_controller.ros.flight_recorder import FlightRecorder

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("robots:\n  alpha: {}\n  beta: {initial_position: [1, 0, 0]}\n  gamma: {enabled: false}\n")
    desc = parse_launch(launch, {"record": "true", "crazyflies": str(fleet), "bag": str(tmp_path / "bag")})
    spec = next(n for n in desc.nodes if n.executable == "flight_recorder")
    overrides = [Parameter(name, value=yaml.safe_load(value)) for name, value in spec.parameters]
    recorder = FlightRecorder(context=ros_context, parameter_overrides=overrides)
    try:
        assert recorder.wanted == [*(f"/{name}/{t}" for name in ("alpha", "beta") for t in FLIGHT_TOPICS),
                                   "/diagnostics", "/mission/status"]
        assert "/clock" in FLEET_TOPICS, "the recorder's own default has the clock; the demo leaves it out"
    finally:
        recorder.destroy_node()
    # the subset: the flight without pose and imu (they repeat odom), named once in topics.py
    assert set(FLIGHT_TOPICS) == set(DRONE_TOPICS) - {"pose", "imu"}
