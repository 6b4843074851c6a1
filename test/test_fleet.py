"""The sim_bridge core: command validation, the stamp protocol (stale commands, command age,
command delay, lockstep by stamp), watchdog, emergency stop, crash supervisor, reset; and the
controllers' side of the protocol (StampedPilot)."""

import math

import numpy as np
import pytest
import torch

from snn_controller.config import ConfigError
from snn_controller.sim.drone import load_drone
from snn_controller.control.pilot import StampedPilot
from snn_controller.sim.fleet import REST_HEIGHT, CrashLimits, FleetSimulator, RobotConfig, load_fleet
from snn_controller.sim.state import DroneState

HOVER = [0.0] * 4  # some valid command; its value does not matter here


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
    fleet.step()
    assert fleet.commands[0] == pytest.approx([0.1] * 4), "a rejected command must not replace the last good one"
    assert fleet.submit("cf1", [2.0, -3.0, 0.5, 0.5]) == "clamped"
    fleet.step()
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


def place(fleet, name, position, quaternion=(1.0, 0.0, 0.0, 0.0), velocity=(0.0, 0.0, 0.0)):
    """Put one drone into any state, NaN included (DroneState.from_arrays would refuse NaN)."""
    arrays = (position, quaternion, velocity, (0.0, 0.0, 0.0), (0.0,) * 4)
    state = DroneState(*(torch.tensor([v], dtype=torch.float64) for v in arrays))
    fleet.engine.reset(state, [fleet.index[name]])
    fleet._velocity[fleet.index[name]] = velocity


def test_stamps_are_integer_nanoseconds_of_the_step(fleet):
    for _ in range(3):
        fleet.step()
    assert fleet.steps == 3 and fleet.stamp_ns() == 30_000_000 and fleet.stamp_ns(7) == 70_000_000
    assert fleet.step_of_stamp(30_000_000) == 3
    fleet.reset()
    assert fleet.steps == 0 and fleet.stamp_ns() == 0, "the fleet reset sets time back"


def test_commands_answering_older_steps_are_stale_and_future_ones_rejected(fleet):
    fleet.step()
    fleet.step()
    assert fleet.submit("cf1", [0.2] * 4, stamp=3).startswith("rejected: answers step 3")
    assert fleet.submit("cf1", [0.2] * 4, stamp=2) == "ok"
    status = fleet.submit("cf1", [0.9] * 4, stamp=1)
    assert status.startswith("stale: answers step 1"), status
    fleet.step()
    assert fleet.commands[0] == pytest.approx([0.2] * 4), "a stale command must not replace a newer one"
    c = fleet.counters["cf1"]
    assert (c.accepted, c.stale, c.rejected) == (1, 1, 1)
    assert fleet.submit("cf1", [0.3] * 4) == "ok", "an unstamped command answers the current step"
    assert fleet.answered[0] == fleet.steps


def test_command_age_counts_steps_between_the_answered_state_and_its_application(fleet):
    assert fleet.command_age_stats()["cf1"] == {"p50": None, "p99": None, "max": None}
    for k in range(100):
        if k % 10 < 7:  # answered in time; then no answer for 3 steps: the command in force ages 1, 2, 3
            fleet.submit("cf1", HOVER, stamp=fleet.steps)
        fleet.step()
    fleet.submit("cf1", HOVER, stamp=fleet.steps - 1)  # a late answer: to the previous state
    fleet.step()
    stats = fleet.command_age_stats()
    assert stats["cf1"] == {"p50": 0, "p99": 3, "max": 3}, stats
    assert fleet.ages[0][-1] == 1
    assert stats["cf2"] == {"p50": None, "p99": None, "max": None}, "cf2 never had a command"


def test_command_delay_applies_a_command_that_many_steps_after_the_state_it_answers():
    fleet = FleetSimulator(load_drone("cf21"), {"cf1": RobotConfig()}, dt=0.01, command_delay=2, substeps=2)
    try:
        fleet.step()
        k = fleet.steps
        applied = []  # the step the applied command answers, at steps k, k + 1, ...
        for _ in range(50):  # a controller answering every state at once
            fleet.submit("cf1", [0.4] * 4, stamp=fleet.steps)
            fleet.step()
            applied.append(int(fleet.applied_step[0]))
        assert applied[:4] == [-1, -1, k, k + 1], "the answer to step k is first applied at step k + 2"
        assert fleet.command_age_stats()["cf1"] == {"p50": 2, "p99": 2, "max": 2}
    finally:
        fleet.close()


def test_lockstep_needs_answers_to_the_current_step(fleet):
    fleet.step()
    fleet.submit("cf1", HOVER, stamp=0)
    fleet.submit("cf2", HOVER, stamp=1)
    assert fleet.waiting_for() == ["cf1"], "an answer to the previous step does not count"
    fleet.submit("cf1", HOVER, stamp=1)
    assert fleet.ready()


def test_drone_dropped_from_2_m_crashes_and_its_motors_stay_off(fleet):
    place(fleet, "cf1", (0.0, 0.0, 2.0))
    crashes = {}
    for _ in range(100):
        fleet.submit("cf2", HOVER)
        crashes.update(fleet.step())
    assert "cf1" in crashes and "hit the ground" in crashes["cf1"], crashes
    assert "cf2" not in crashes, "a drone resting on the ground has not crashed"
    for _ in range(50):  # full thrust is ignored until reset
        fleet.submit("cf1", [1.0] * 4)
        fleet.step()
    out = fleet.outputs()["cf1"]
    assert out["crashed"] and out["position"][2] < 0.03 and out["rotor_speed"] == pytest.approx([0] * 4, abs=1e-6)
    assert fleet.counters["cf1"].crashes == 1
    fleet.reset("cf1")
    assert not fleet.outputs()["cf1"]["crashed"]
    for _ in range(30):
        fleet.submit("cf1", [1.0] * 4)
        fleet.step()
    assert fleet.outputs()["cf1"]["position"][2] > 0.1, "after the reset the motors obey again"


def test_gentle_landing_is_not_a_crash(fleet):
    place(fleet, "cf1", (0.0, 0.0, 0.05), velocity=(0.0, 0.0, -0.8))
    for _ in range(30):
        assert fleet.step() == {}
    assert not fleet.crashed.any()


def test_drone_upside_down_in_flight_crashes(fleet):
    place(fleet, "cf1", (0.0, 0.0, 2.0), quaternion=(0.0, 1.0, 0.0, 0.0))  # rolled 180 deg
    crashes = fleet.step()
    assert "tipped over" in crashes.get("cf1", ""), crashes
    fleet.reset()
    assert not fleet.crashed.any() and fleet.counters["cf1"].crashes == 1


def test_touching_the_ground_tilted_is_a_crash(fleet):
    tilt = math.radians(70)
    place(fleet, "cf1", (0.0, 0.0, 0.04), quaternion=(math.cos(tilt / 2), math.sin(tilt / 2), 0.0, 0.0))
    crashes = {}
    for _ in range(30):
        crashes.update(fleet.step())
    assert "touched the ground tilted" in crashes.get("cf1", ""), crashes


@pytest.mark.parametrize("position, velocity, rest_xy", [
    ((math.nan, 0.0, 1.0), (0.0, 0.0, 0.0), (0.0, 0.0)),  # not finite: back at its initial x, y
    ((0.3, -0.2, 1500.0), (0.0, 0.0, 0.0), (0.3, -0.2)),  # km high: on the ground below
    ((5000.0, 0.0, 1.0), (0.0, 0.0, 0.0), (0.0, 0.0)),  # far away: back at its initial x, y
    ((0.5, 0.5, 1.0), (80.0, 0.0, 0.0), (1.3, 0.5)),  # far too fast: down where one step took it
])
def test_runaway_state_never_reaches_the_outputs(fleet, position, velocity, rest_xy):
    place(fleet, "cf1", position, velocity=velocity)
    crashes = {}
    for _ in range(20):
        fleet.submit("cf1", [1.0] * 4)
        crashes.update(fleet.step())
        out = fleet.outputs()
        for name in ("cf1", "cf2"):
            assert all(np.isfinite(v).all() for v in out[name].values())
            assert np.linalg.norm(out[name]["position"]) < 100 and np.linalg.norm(out[name]["velocity_world"]) < 50
    assert "runaway state" in crashes["cf1"], crashes
    p = fleet.outputs()["cf1"]["position"]
    assert p[:2] == pytest.approx(rest_xy, abs=1e-3) and p[2] == pytest.approx(REST_HEIGHT, abs=2e-3)
    assert fleet.outputs()["cf1"]["crashed"] and not fleet.outputs()["cf2"]["crashed"]


def test_crash_limits_are_validated():
    with pytest.raises(ValueError, match="landing_speed must be > 0"):
        CrashLimits(landing_speed=0)
    with pytest.raises(ValueError, match=r"tilt_deg must be in \(0, 180\]"):
        CrashLimits(tilt_deg=200)


class CountingController:
    def __init__(self):
        self.observations, self.resets = [], 0

    def __call__(self, obs):
        self.observations.append(obs.actor[0])
        return np.zeros((1, 4))

    def reset(self, mask=None):
        self.resets += 1


def hover_state(z=0.011):
    return {"position": np.array([0.0, 0.0, z]), "quaternion": np.array([1.0, 0, 0, 0]),
            "velocity_world": np.zeros(3), "angular_velocity_body": np.zeros(3)}


def test_pilot_computes_each_state_once_and_resets_when_time_goes_back():
    controller = CountingController()
    pilot = StampedPilot(controller, takeoff_height=1.0)
    answered = [stamp for stamp in (0, 10, 10, 20, 20, 20, 30) if pilot.admit(stamp)]
    assert answered == [0, 10, 20, 30] and pilot.duplicates == 3 and controller.resets == 0
    assert pilot.last_action is None, "admit only decides; act computes"
    assert pilot.admit(0), "an older stamp is a simulation reset: answer it"
    assert controller.resets == 1 and pilot.time_jumps == 1
    assert pilot.act(hover_state()) is pilot.last_action, "the answer kept for a copy of the state"
    assert controller.observations[-1][:3] == pytest.approx([0, 0, -1.0]), "holds takeoff_height above the start"
    assert not pilot.set_goal([math.nan, 0, 1], 0.0) and pilot.set_goal([1.0, 0, 1], 0.5)
    pilot.act(hover_state())
    assert controller.observations[-1][:3] == pytest.approx([-1.0, 0, -0.989])


def test_pilot_idles_on_the_ground_also_when_the_goal_came_before_the_first_state():
    """A mission's first goal (on the ground) can reach the controller before the simulator's first
    odometry: the drone must still idle, motors off, not sit on the ground at hover thrust."""
    pilot = StampedPilot(CountingController(), takeoff_height=0.0)
    assert pilot.set_goal([0.0, 0.0, 0.01], 0.0)
    rest = {**hover_state(), "position": np.array([0.0, 0.0, REST_HEIGHT])}
    assert pilot.act(rest).tolist() == [-1.0] * 4 and pilot.ground_z == REST_HEIGHT
    assert pilot.set_goal([0.0, 0.0, 1.0], 0.0)
    assert pilot.act(rest).tolist() != [-1.0] * 4, "a goal in the air takes off"


def _airborne_fleet(**options):
    robots = {"cf1": RobotConfig(initial_position=(0.0, 0.0, 1.0)), "cf2": RobotConfig(initial_position=(1.0, 0.0, 1.0))}
    return FleetSimulator(load_drone("cf21"), robots, dt=0.01, **options)


def test_ctbr_setpoints_fly_the_firmware_rate_loop_and_motor_drones_fly_as_before():
    """A CTBR drone of the fleet flies as RateControlledEngine on pybullet (sim/firmware.py) does; a drone
    on motor commands beside it flies exactly as in a fleet without CTBR (the ticks only slice the step)."""
    from snn_controller.sim.firmware import RateControlledEngine, hover_thrust
    from snn_controller.sim.fleet import initial_state
    from snn_controller.sim.pybullet_engine import PybulletEngine

    model = load_drone("cf21")
    setpoints = [np.array([hover_thrust(model) + 0.02 * np.sin(k / 7), 0.5 * np.cos(k / 5), -0.3, 0.2])
                 for k in range(60)]
    motors = [np.full(4, model.hover_action + 0.05 * np.sin(k / 3)) for k in range(60)]
    mixed, plain = _airborne_fleet(), _airborne_fleet()
    reference = RateControlledEngine(PybulletEngine(model, 1, dt=0.002, substeps=2, ground=True), dt=0.01)
    reference.reset(initial_state([mixed.robots["cf1"]]))
    try:
        for sp, m in zip(setpoints, motors):
            assert mixed.submit("cf1", sp, ctbr=True) == "ok"
            mixed.submit("cf2", m)
            plain.submit("cf1", m)
            plain.submit("cf2", m)
            mixed.step()
            plain.step()
            expected = reference.step(torch.as_tensor(sp[None]))
        a, b = mixed.outputs(), plain.outputs()
        assert a["cf1"]["position"] == pytest.approx(expected.position[0].numpy(), abs=1e-9)
        assert a["cf1"]["angular_velocity_body"] == pytest.approx(expected.angular_velocity[0].numpy(), abs=1e-9)
        assert np.abs(a["cf1"]["angular_velocity_body"]).max() > 0.1  # it really rotated
        for key in ("position", "quaternion", "velocity_world", "rotor_speed"):
            np.testing.assert_array_equal(a["cf2"][key], b["cf2"][key])
        assert mixed.last_flown.ctbr.tolist() == [True, False]
        assert mixed.last_flown.command[1] == pytest.approx(motors[-1])
    finally:
        for sim in (mixed, plain):
            sim.close()
        reference.close()


def test_ctbr_commands_are_validated():
    sim = _airborne_fleet()
    try:
        assert sim.submit("cf1", [1.5, 40.0, 0.0, 0.0], ctbr=True) == "clamped"  # thrust is a ratio; rates unlimited
        sim.step()
        assert sim.commands[0].tolist() == [1.0, 40.0, 0.0, 0.0]
        assert sim.submit("cf1", [0.5, math.nan, 0.0, 0.0], ctbr=True).startswith("rejected: command contains NaN")
        assert sim.submit("cf1", [0.5, 0.0, 0.0], ctbr=True) == "rejected: expected 4 CTBR values, got 3"
    finally:
        sim.close()
    sim = _airborne_fleet(substeps=4)
    try:
        assert "multiple of the rate loop's 5 ticks" in sim.submit("cf1", [0.5, 0, 0, 0], ctbr=True)
    finally:
        sim.close()
