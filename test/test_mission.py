"""Missions: the goal path, loading, flying one in process (ground, take-off, landing, crashes) and
`snnctl eval --mission`."""

import json

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from snn_controller.task import spec as T
from snn_controller.cli import main  # noqa: E402
from snn_controller.config import ConfigError  # noqa: E402
from snn_controller.sim.drone import load_drone  # noqa: E402
from snn_controller.sim.engines import make_engine  # noqa: E402
from snn_controller.sim.batched_engine import GROUND_CLEARANCE  # noqa: E402
from snn_controller.control.controllers import deployed_controller  # noqa: E402
from snn_controller.task.mission import Mission, Segment, fly_mission, load_mission, mission_metrics, observed_positions, OBSERVED_WITHIN  # noqa: E402
from snn_controller.sim.state import DroneState  # noqa: E402

MODEL = "models/td3bc_jsrl_cf21.safetensors"


def test_the_goal_ramps_at_the_segment_speed_and_segments_follow_each_other():
    m = Mission(segments=(Segment(kind="takeoff", height=1.0, speed=0.5, duration=3.0),
                          Segment(kind="goto", position=(0.6, 0.0, 1.0), speed=0.3, duration=3.0),
                          Segment(kind="circle", position=(0.6, 0.0, 1.0), radius=0.2, period=4.0, duration=4.0),
                          Segment(kind="land", speed=0.5, duration=3.0)))
    goal, index = m.goal([0.0, 1.0, 2.5, 3.0 + 1.0, 5.9, 6.0, 8.0, 10.0 + 1.0, 12.9])
    assert index.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3]
    np.testing.assert_allclose(goal[0], [0, 0, 0], atol=1e-12)
    np.testing.assert_allclose(goal[1], [0, 0, 0.5], atol=1e-12)  # 0.5 m/s for 1 s
    np.testing.assert_allclose(goal[2], [0, 0, 1.0], atol=1e-12)  # reached at 2 s, held
    np.testing.assert_allclose(goal[3], [0.3, 0, 1.0], atol=1e-12)  # 0.3 m/s from where the climb ended
    np.testing.assert_allclose(goal[4], [0.6, 0, 1.0], atol=1e-12)
    np.testing.assert_allclose(goal[5], [0.6, 0, 1.0], atol=1e-12)  # the circle starts at its centre
    np.testing.assert_allclose(goal[6], [0.6 - 0.4, 0, 1.0], atol=1e-9)  # half a lap: the far side
    land_start = m.goal([10.0 - 1e-9])[0][0]
    np.testing.assert_allclose(goal[7], land_start - [0, 0, 0.5], atol=1e-6)
    assert goal[8][2] == pytest.approx(0.0)
    assert m.duration == 13.0 and len(m.starts()) == 5


def test_times_the_observer_has_no_state_of_are_not_scored():
    """An observer that joined a second late (seen in CI): the take-off it missed is not scored with
    the position it saw later, and observed_share says how much it saw."""
    m = Mission(segments=(Segment(kind="takeoff", height=1.0, speed=0.5, duration=2.0),
                          Segment(kind="hold", duration=2.0)))
    grid = np.arange(0.0, m.duration, 0.01)
    goals, _ = m.goal(grid)
    times = np.arange(1.0, m.duration, 0.01)  # the first second was missed
    flown = m.goal(times)[0] + [0.0, 0.0, 0.05]  # 5 cm above the goal all the time it was seen
    positions = observed_positions(times, flown, grid)
    assert np.isnan(positions[grid < 1.0 - OBSERVED_WITHIN - 1e-9]).all() and not np.isnan(positions[grid >= 1.0]).any()
    r = mission_metrics(m, grid, positions[None], goals[None])
    d = r["per_drone"][0]
    assert d["observed_share"] == pytest.approx(1 - (1.0 - OBSERVED_WITHIN) / 4, abs=0.01)
    # within OBSERVED_WITHIN the next state stands for the time before it (it moved up to 2.5 cm since)
    assert d["error_mean"] == pytest.approx(0.05, abs=1e-3) and r["segments"][0]["error_max"] < 0.05 + 0.026
    gap = observed_positions(np.array([0.0, 0.2]), np.zeros((2, 3)), np.array([0.0, 0.1, 0.2]))
    assert np.isnan(gap[1]).all(), "a state 0.1 s later does not stand for the time before it"


@pytest.mark.parametrize("text, message", [
    ("segments: []\n", "'segments' must list at least one segment"),
    ("segments:\n  - {kind: jump, duration: 1.0}\n", "segments[0]: kind: 'jump' is not one of"),
    ("segments:\n  - {kind: goto, duration: 1.0, speeed: 2}\n", "unknown key(s) ['speeed']"),
    ("segments:\n  - {kind: goto, duration: -1.0}\n", "duration, speed and period must be > 0"),
    ("segmnts: []\n", "'segments' must list"),
])
def test_a_bad_mission_file_names_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_mission(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_the_shipped_missions_load_by_name():
    for name in ("hop", "circle", "figure8"):
        m = load_mission(name)
        assert m.name == name and m.segments[0].kind == "takeoff" and m.segments[-1].kind == "land"


@pytest.mark.parametrize("kind", ["batched", "pybullet"])
def test_a_drone_rests_on_the_ground_and_takes_off_when_thrust_exceeds_weight(kind):
    model = load_drone("cf21")
    engine = make_engine(kind, model, 1, dtype=torch.float64, ground=True)
    try:
        start = DroneState.hover(1, model, position=(0.0, 0.0, 0.3))
        start.rotor_speed[:] = 0.0
        engine.reset(start)
        for _ in range(100):  # motors off: falls 0.3 m and stays down
            s = engine.step(-torch.ones(1, 4, dtype=torch.float64))
        assert s.position[0, 2].item() == pytest.approx(GROUND_CLEARANCE, abs=2e-3)
        assert s.velocity.norm().item() < 0.05
        climb = torch.full((1, 4), 2 * 0.75 - 1, dtype=torch.float64)  # above the hover rotor speed
        for _ in range(100):
            s = engine.step(climb)
        assert s.position[0, 2].item() > 0.3 and s.velocity[0, 2].item() > 0.3
    finally:
        engine.close()


def test_the_engines_agree_on_a_take_off_from_the_ground():
    model = load_drone("cf21")
    heights = []
    for kind in ("batched", "pybullet"):
        engine = make_engine(kind, model, 1, dtype=torch.float64, ground=True)
        start = DroneState.hover(1, model, position=(0.0, 0.0, GROUND_CLEARANCE))
        start.rotor_speed[:] = 0.0
        engine.reset(start)
        for k in range(150):
            s = engine.step(torch.full((1, 4), -1.0 if k < 20 else 2 * 0.72 - 1, dtype=torch.float64))
        heights.append(s.position[0, 2].item())
        engine.close()
    assert heights[0] > 0.2  # it really climbed
    assert heights[0] == pytest.approx(heights[1], abs=0.02)


@pytest.mark.parametrize("engine", ["batched", "pybullet"])
def test_the_pid_flies_the_hop_mission_and_lands(engine):
    drones = 6 if engine == "batched" else 2
    task = T.TaskConfig()
    r = fly_mission(load_mission("hop"), deployed_controller("pid", "cf21", drones, task.dt), task, drones=drones,
                    engine=engine)
    assert r["crashed"] == 0 and r["landed"] == drones, r["per_drone"]
    for seg in r["segments"]:
        assert seg["reached"] == drones, seg  # every waypoint reached by every drone
        assert seg["error_mean"] < 0.2 and seg["network_share"] is None
    assert r["error_mean"] < 0.15


def test_the_shipped_network_flies_the_mission_after_its_warm_up_under_latency():
    drones = 6
    task = T.TaskConfig(latency=T.Latency(action_delay=(0, 1)))
    controller = deployed_controller(MODEL, "cf21", drones, task.dt)
    r = fly_mission(load_mission("hop"), controller, task, drones=drones)
    assert r["crashed"] == 0 and r["landed"] == drones, r["per_drone"]
    shares = [s["network_share"] for s in r["segments"]]
    assert shares[0] < 1.0  # the guide flew the warm-up at take-off
    assert min(shares[1:-1]) > 0.9  # then the network flew the waypoints
    assert shares[-1] > 0.5  # and the landing, until the drones idle on the ground with their motors off
    assert all(s["reached"] == drones for s in r["segments"])


class CutsMotors:
    """A controller that flies the PID, then stops the motors at 1 m up: a fall."""

    def __init__(self, n, dt):
        self.pid, self.network_flew, self.steps = deployed_controller("pid", "cf21", n, dt), None, 0

    def reset(self, mask=None):
        self.pid.reset(mask)

    def __call__(self, obs):
        self.steps += 1
        action = self.pid(obs)
        return action if self.steps < 300 else -np.ones_like(action)


def test_a_fall_is_a_crash_with_its_time_and_reason():
    task = T.TaskConfig()
    r = fly_mission(load_mission("hop"), CutsMotors(2, task.dt), task, drones=2)
    assert r["crashed"] == 2 and r["landed"] == 0
    crash = r["per_drone"][0]["crash"]
    assert 3.0 < crash["time"] < 4.0 and crash["reason"].startswith("hit the ground at")
    assert r["segments"][-1]["drones"] == 0  # nothing after the crash is scored


def test_snnctl_eval_mission_reports_segments_as_json(capsys):
    code = main(["eval", "pid", "--mission", "hop", "--episodes", "2", "--delay", "1", "--json"])
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and r["mission"] == "hop" and r["drones"] == 2 and len(r["segments"]) == 5
    assert r["conditions"]["latency"]["action_delay"] == [1, 1]
    assert main(["eval", "pid", "--mission", "no_such_mission", "--json"]) == 2
    assert "no_such_mission" in capsys.readouterr().out
