"""The sim_bridge core: command validation, watchdog, lockstep rule, emergency stop, reset."""

import math

import pytest

from snn_controller.config import ConfigError
from snn_controller.drone import load_drone
from snn_controller.fleet import REST_HEIGHT, FleetSimulator, RobotConfig, load_fleet


@pytest.fixture
def fleet():
    robots = {"cf1": RobotConfig(initial_position=(0.0, 0.0, 0.0)),
              "cf2": RobotConfig(initial_position=(1.0, 0.0, 0.0), initial_yaw=math.pi / 2)}
    sim = FleetSimulator(load_drone("cf21"), robots, dt=0.01, command_timeout=0.1, substeps=4)
    yield sim
    sim.close()


def test_drones_start_resting_on_the_ground(fleet):
    out = fleet.outputs()
    assert out["cf1"]["position"] == pytest.approx([0, 0, REST_HEIGHT], abs=1e-9)
    # yaw pi/2 -> quaternion (cos pi/4, 0, 0, sin pi/4)
    assert out["cf2"]["quaternion"] == pytest.approx([math.sqrt(0.5), 0, 0, math.sqrt(0.5)], abs=1e-9)
    for _ in range(20):
        fleet.step()
    # resting, motors off: it stays on the ground, and the accelerometer reads +g along body z
    out = fleet.outputs()
    assert out["cf1"]["position"][2] == pytest.approx(REST_HEIGHT, abs=2e-3)
    assert out["cf1"]["specific_force_body"] == pytest.approx([0, 0, 9.81], abs=0.2)


def test_command_validation_is_counted_and_never_applied(fleet):
    assert fleet.submit("cf1", [0.1, 0.1, 0.1, 0.1]) == "ok"
    assert fleet.submit("cf1", [math.nan, 0, 0, 0]).startswith("rejected")
    assert fleet.submit("cf1", [0.0, 0.0, 0.0]).startswith("rejected: expected 4")
    assert fleet.submit("cf1", [math.inf] * 4).startswith("rejected")
    assert fleet.commands[0] == pytest.approx([0.1] * 4), "a rejected command must not replace the last good one"
    assert fleet.submit("cf1", [2.0, -3.0, 0.5, 0.5]) == "clamped"
    assert fleet.commands[0] == pytest.approx([1.0, -1.0, 0.5, 0.5])
    c = fleet.counters["cf1"]
    assert (c.accepted, c.rejected, c.clamped) == (2, 3, 1)
    with pytest.raises(KeyError, match="unknown drone 'cf9'"):
        fleet.submit("cf9", [0, 0, 0, 0])


def test_stale_commands_stop_the_motors(fleet):
    for _ in range(30):  # 0.3 s of full thrust: climbs
        fleet.submit("cf1", [1.0] * 4)
        fleet.step()
    z_top = fleet.outputs()["cf1"]["position"][2]
    assert z_top > 0.1
    for _ in range(300):  # silence: after command_timeout (0.1 s) the motors stop and it falls back
        fleet.step()
    assert fleet.outputs()["cf1"]["position"][2] < 0.03
    assert fleet.outputs()["cf1"]["rotor_speed"] == pytest.approx([0] * 4, abs=1e-3)
    assert fleet.counters["cf1"].timeouts >= 290
    assert fleet.counters["cf2"].timeouts == 0, "a drone never commanded is not a timeout"


def test_lockstep_rule_and_emergency_stop(fleet):
    assert not fleet.ready()
    fleet.submit("cf1", [0.3] * 4)
    assert not fleet.ready(), "cf2 has not answered yet"
    fleet.submit("cf2", [0.3] * 4)
    assert fleet.ready()
    fleet.step()
    assert not fleet.ready(), "each step needs new commands"
    fleet.emergency_stop("cf2")
    fleet.submit("cf1", [0.3] * 4)
    assert fleet.ready(), "a stopped drone is not waited for"
    for _ in range(30):
        fleet.submit("cf1", [1.0] * 4)
        fleet.submit("cf2", [1.0] * 4)
        fleet.step()
    out = fleet.outputs()
    assert out["cf1"]["position"][2] > 0.1
    assert out["cf2"]["position"][2] < 0.02 and out["cf2"]["stopped"]
    fleet.reset("cf2")
    assert not fleet.outputs()["cf2"]["stopped"]
    fleet.reset()
    assert fleet.outputs()["cf1"]["position"][2] == pytest.approx(REST_HEIGHT, abs=1e-9)


def test_fleet_file_validation(tmp_path):
    assert list(load_fleet().enabled_robots()) == ["cf1", "cf2"]
    f = tmp_path / "crazyflies.yaml"
    f.write_text("robots:\n  cf1: {initial_postion: [0, 0, 0]}\n")
    with pytest.raises(ConfigError, match=r"robots.cf1: unknown key\(s\) \['initial_postion'\]"):
        load_fleet(f)
    f.write_text("robots:\n  cf1: {initial_position: [0, 0]}\n")
    with pytest.raises(ConfigError, match="initial_position: expected 3 values"):
        load_fleet(f)
    f.write_text("robots:\n  cf1: {enabled: false}\n")
    with pytest.raises(ConfigError, match="no robot is enabled"):
        load_fleet(f)
    f.write_text("all: {drone: cf21, colour: red}\nrobots:\n  cf1: {}\n")
    with pytest.raises(ConfigError, match="colour"):
        load_fleet(f)
