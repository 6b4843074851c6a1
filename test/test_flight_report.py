"""`snnctl bag report` and `snnctl sim replay --bag` on flights recorded here: two drones fly a
short mission through the ROS nodes (`snnctl launch ... record:=true --monitor`), once in lockstep
and once in realtime, each once for the whole module."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import conftest
from snn_controller.cli import main
from snn_controller.io.bag import BagWriter
from snn_controller.io.flight_log import read_flight_log
from snn_controller.replay import recorded_schedule

SHORT_MISSION = """name: short_hop
segments:
  - {kind: takeoff, height: 1.0, speed: 0.5, duration: 3.5}
  - {kind: goto, position: [0.3, 0.0, 1.0], speed: 0.5, duration: 2.5}
  - {kind: land, speed: 0.5, duration: 3.0}
"""
# Measured on lockstep and realtime flights of this mission, replaying the applied commands
# (motor_state) on pybullet open loop from the reset: 0 m (bit-identical), on either drone, also
# when the recorder joined at step 5; started again from a recorded state in flight (after a gap
# in the recording), 3e-6 m at most: the state as odometry carries it (the body velocity turned
# back into the world frame) differs in its last bits, which open-loop flight amplifies.
PYBULLET_REPLAY_MAX_M = 1e-4
# The batched engine (another model of the same drone), started again from the recording every
# second: 0.14-0.25 cm at most.
BATCHED_1S_REPLAY_MAX_M = 0.01
# A CTBR flight (the PID's setpoints through the rate loop), the same way: 1.7 cm at most (mean 0.12 cm),
# since each restart also starts the firmware's rate PIDs again from zero integrals (every 0.5 s: 0.4 cm).
BATCHED_1S_CTBR_REPLAY_MAX_M = 0.03
def run_launch(args, env, timeout):
    """snnctl launch in its own process group; on a timeout it is interrupted (so it stops its
    nodes) before it is killed."""
    proc = subprocess.Popen([sys.executable, "-m", "snn_controller.cli", "launch", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"the launch did not end within {timeout} s:\n{out[-2000:]}\n{err[-2000:]}")
    return proc.returncode, out, err


def fly(tmp_path_factory, mode: str, launch=("sim_snn.launch.yaml",)):
    """(bag, mission file, what --monitor reported) of a flight of the short mission in ``mode``
    (``launch``: the launch file and its extra arguments)."""
    tmp = tmp_path_factory.mktemp(f"{mode}_{launch[0].split('.')[0]}_flight")
    env = {**os.environ, "ROS_DOMAIN_ID": str(next(conftest._domains)), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
           "ROS_LOG_DIR": str(tmp / "ros_log"), "PYTHONUNBUFFERED": "1",
           "FASTDDS_DEFAULT_PROFILES_FILE": str(conftest.ROOT / "config" / "fastdds_fast_discovery.xml")}
    bag, mission = tmp / "flight", tmp / "short_hop.yaml"
    mission.write_text(SHORT_MISSION)
    # the take-off 3 s after the start: the recorder, whose discovery takes seconds on a loaded machine (a
    # full CI run: it joined after a 1 s start), records the drones idling first, so the replays can start
    # from the simulator's reset (motors known off until then)
    code, out, err = run_launch([*launch, f"mission:={mission}", "mission_start:=3.0", f"mode:={mode}",
                                 "record:=true", f"bag:={bag}", "--duration", "120", "--monitor", "--json"], env, 180)
    lines = out.strip().splitlines()
    assert lines and lines[-1].startswith("{"), f"exit {code}\n{out[-3000:]}\n{err[-3000:]}"
    result = json.loads(lines[-1])
    # The flight, not the launch's shutdown, is under test here (test_bag.py tests the launch): a
    # node that fails while it is being stopped still leaves a complete bag.
    monitored = result["mission"]
    assert monitored and monitored["crashed"] == 0 and monitored["landed"] == 2, (result, err[-3000:])
    assert all(d["flew_whole_mission"] for d in monitored["per_drone"]), monitored
    return bag, mission, monitored


@pytest.fixture(scope="module")
def flight(tmp_path_factory):
    """A lockstep flight of the short mission: (bag, mission file, what --monitor reported)."""
    return fly(tmp_path_factory, "lockstep")


@pytest.fixture(scope="module")
def realtime_flight(tmp_path_factory):
    """The same in realtime: commands may miss their step, which only motor_state can tell."""
    return fly(tmp_path_factory, "realtime")


DT_NS = 10_000_000  # the flights' control period (sim_bridge's default rate, 100 Hz)


def copy_bag(src: Path, dst: Path, dropped) -> Path:
    """A copy of bag ``src`` without the messages ``dropped(topic, step of its stamp)`` says (what a
    recorder that lost them, or did not record a topic, would have written)."""
    from rosbags.highlevel import AnyReader

    with AnyReader([src]) as reader, BagWriter(dst) as out:
        for c in reader.connections:
            out.add_topic(c.topic, c.msgtype)
        for c, timestamp, raw in reader.messages():
            msg = reader.deserialize(raw, c.msgtype)
            step = None
            if hasattr(msg, "header"):
                step = (msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec) // DT_NS
            if not dropped(c.topic, step):
                out.write(c.topic, timestamp, raw)
    return dst


def run_json(capsys, *argv):
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_the_reader_gives_the_recorded_flight_of_each_drone(flight):
    bag, _, _ = flight
    log = read_flight_log(bag)
    assert list(log.drones) == ["cf1", "cf2"] and log.dt == pytest.approx(0.01)
    assert log.mission.name == "short_hop" and log.mission.done[-1]
    for d in log.drones.values():
        steps = d.odometry.stamp_ns // log.dt_ns
        # lockstep: each step's state once, in order; a recorder that falls more than its queue
        # behind on a loaded machine loses a few (seen: 10 steps of 1000)
        assert (np.diff(steps) >= 1).all() and len(steps) > 0.9 * (steps[-1] - steps[0] + 1)
        # (states recorded before the recorder found the command topic cannot show their answer:
        # on a busy machine it subscribes to the drone's topics up to a second apart)
        listening = d.odometry.receive_ns[:-1] >= d.commands.receive_ns.min()
        answered = np.isin(d.odometry.stamp_ns[:-1][listening], d.commands.answered_ns)
        assert answered.mean() > 0.95, "states are answered by commands carrying their stamps"
        assert np.abs(d.commands.values).max() <= 1
        assert d.goals.position[:, 2].max() == pytest.approx(1.01), "the goal rises 1 m above the take-off point"
        assert d.policy.network_flies.any() and np.nanmax(d.policy.spikes_per_step) > 0
        assert np.nanmax(d.bridge.command_age) == 0, "lockstep: every command applied at the step it answers"
        assert d.bridge.first_crash() is None
        m = d.motor_state
        flown = m.stamp_ns // log.dt_ns
        assert (np.diff(flown) == 1).mean() > 0.9, "what the simulator flew, a message per step, in order"
        assert 0 <= m.rotor_speed.min() and m.rotor_speed.max() <= 1 and m.rotor_speed.max() > 0.3
        # lockstep: the command flown over each step is the (last) answer to its state, clipped
        c = d.commands
        answers = {stamp: np.clip(values, -1, 1) for stamp, values in zip(c.answered_ns, c.values)}
        checked = [k for k, stamp in enumerate(m.stamp_ns) if stamp in answers]
        assert len(checked) > 0.9 * len(flown)
        assert all((m.command[k] == answers[m.stamp_ns[k]]).all() for k in checked)


def test_the_report_writes_its_plots_and_page_and_scores_the_mission_as_the_monitor_did(flight, capsys, tmp_path):
    bag, mission, monitored = flight
    out = tmp_path / "report"
    code, metrics = run_json(capsys, "bag", "report", str(bag), "--mission", str(mission), "--out", str(out))
    assert code == 0, metrics
    page = (out / "index.html").read_text()
    for png in ("trajectory", "position_error", "motor_commands", "spikes", "who_flies", "command_age"):
        assert (out / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="{png}.png"' in page
    assert json.loads((out / "metrics.json").read_text()) == metrics
    scored = metrics["mission"]
    assert (scored["crashed"], scored["landed"]) == (monitored["crashed"], monitored["landed"])
    # the same odometry on the same grid: the same numbers, unless the monitor missed messages (it then
    # scores the nearest state within 50 ms; with a training run on both cores: 2.8 mm apart on a
    # segment whose goal moves at 0.5 m/s)
    for mine, theirs in zip(scored["segments"], monitored["segments"]):
        assert mine["name"] == theirs["name"] and mine["reached"] == theirs["reached"]
        assert mine["error_mean"] == pytest.approx(theirs["error_mean"], abs=0.005)
        assert mine["error_max"] == pytest.approx(theirs["error_max"], abs=0.01)
        assert mine["reach_time_mean"] == pytest.approx(theirs["reach_time_mean"], abs=0.05)
        # who flew comes from 1 Hz reports placed by receive time, by the recorder and the monitor each
        assert mine["network_share"] == pytest.approx(theirs["network_share"], abs=0.25)
    for d in scored["per_drone"]:
        assert d["flew_whole_mission"] and [s["name"] for s in d["segments"]] == [s["name"] for s in scored["segments"]]
    for name in ("cf1", "cf2"):
        assert metrics["per_drone"][name]["command_age"]["p99"] == 0


def test_the_report_needs_the_mission_file_of_a_mission_outside_config(flight, capsys, tmp_path):
    bag, _, _ = flight
    code, result = run_json(capsys, "bag", "report", str(bag), "--out", str(tmp_path / "report"))
    assert code == 2 and "mission 'short_hop'" in result["error"] and "--mission FILE" in result["error"]


@pytest.mark.parametrize("mode", ["lockstep", "realtime"])
def test_a_flight_replayed_on_pybullet_from_its_applied_commands_is_its_recording(mode, request, capsys, tmp_path):
    bag, _, _ = request.getfixturevalue("flight" if mode == "lockstep" else "realtime_flight")
    for drone in ("cf1", "cf2"):
        code, r = run_json(capsys, "sim", "replay", "--bag", str(bag), "--drone", drone, "--engine", "pybullet",
                           "--out", str(tmp_path))
        assert code == 0, r
        # (the recorder joins after the first steps: the replay starts from the reset, or, had it
        # joined after the take-off, from its first state, in the air)
        assert r["commands"] == "applied" and r["command_delay"] is None, r
        assert r["replay_crash"] is None and r["error"]["max"] < PYBULLET_REPLAY_MAX_M, r
    saved = json.loads(Path(r["json"]).read_text())
    assert saved["error"] == r["error"] and Path(r["png"]).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("mode", ["lockstep", "realtime"])
def test_the_batched_engine_replays_each_second_of_the_flight_within_a_centimetre(mode, request, capsys, tmp_path):
    bag, _, _ = request.getfixturevalue("flight" if mode == "lockstep" else "realtime_flight")
    code, r = run_json(capsys, "sim", "replay", "--bag", str(bag), "--drone", "cf1", "--engine", "batched",
                       "--horizon", "1", "--out", str(tmp_path))
    assert code == 0 and r["commands"] == "applied", r
    assert r["error"]["max"] < BATCHED_1S_REPLAY_MAX_M, r["error"]


def resting_steps(motor_state, dt_ns: int, count: int) -> range:
    """``count`` steps flown with the rotors at rest (on the ground before the take-off), and the step
    after them too."""
    steps = motor_state.stamp_ns // dt_ns
    rest = steps[(motor_state.rotor_speed == 0).all(1)]
    first = rest[0] + 1
    assert set(range(first, first + count + 1)) <= set(rest), "the recorder joined after the take-off"
    return range(first, first + count)


def test_steps_the_recorder_missed_are_flown_through_or_started_again_after(flight, capsys, tmp_path):
    """A recorder that lost messages: the motor_state of 10 steps on the ground (the rotors at rest
    after them say the motors were off), of 10 steps in flight (a gap: the replay starts again at
    the next step with its state and motor_state), and 5 states in flight (flown through)."""
    bag, _, _ = flight
    log = read_flight_log(bag)
    on_ground = resting_steps(log.drone("cf1").motor_state, log.dt_ns, 10)
    in_flight = range(600, 610)  # 6 s: the goto segment, 1 m up
    lost = copy_bag(bag, tmp_path / "lossy", lambda topic, step: topic == "/cf1/motor_state" and (
        step in on_ground or step in in_flight) or topic == "/cf1/odom" and step in range(800, 805))
    code, r = run_json(capsys, "sim", "replay", "--bag", str(lost), "--drone", "cf1", "--out", str(tmp_path))
    assert code == 0 and r["commands"] == "applied" and r["start"] == "reset", r
    gaps = r["recorder_gaps"]  # (steps from the reset; a loaded machine's recorder may have lost more)
    assert [600, 609] in gaps and r["segments"] >= 2, r
    assert not any(a <= k <= b for a, b in gaps for k in on_ground), "the motors were off: no gap"
    assert r["error"]["max"] < PYBULLET_REPLAY_MAX_M, r


def test_a_bag_without_motor_state_replays_from_commands_reconstructed_as_the_simulator_applies_them(
        flight, capsys, tmp_path):
    """A bag recorded before motor_state existed (or without it): the fallback works out the
    commands from the recorded ones; in lockstep it finds what the simulator flew."""
    bag, _, _ = flight
    old = copy_bag(bag, tmp_path / "old", lambda topic, step: topic.endswith("/motor_state"))
    code, r = run_json(capsys, "sim", "replay", "--bag", str(old), "--drone", "cf2", "--out", str(tmp_path))
    assert code == 0 and r["commands"] == "reconstructed" and r["command_delay"] == 0, r
    assert r["replay_crash"] is None, r
    # the reconstruction against what the simulator says it flew (the original bag's motor_state)
    log, old_log = read_flight_log(bag), read_flight_log(old)
    m, d = log.drone("cf2").motor_state, old_log.drone("cf2")
    assert not len(d.motor_state.stamp_ns)
    begin, schedule = recorded_schedule(old_log, d, 0)
    at = m.stamp_ns // log.dt_ns - begin
    inside = (at >= 0) & (at < len(schedule.commands))
    same = (schedule.commands[at[inside]] == m.command[inside]).all(1)
    # every step in lockstep, unless the recorder lost a command (then the one before stays in force)
    assert same.mean() > 0.99, np.flatnonzero(~same)
    if same.all():
        assert r["start"] == "reset" and r["error"]["max"] < PYBULLET_REPLAY_MAX_M, r


def test_replaying_an_unknown_drone_or_a_missing_bag_is_an_error_naming_it(flight, capsys, tmp_path):
    bag, _, _ = flight
    code, r = run_json(capsys, "sim", "replay", "--bag", str(bag), "--drone", "cf9")
    assert code == 2 and "no drone 'cf9'" in r["error"] and "['cf1', 'cf2']" in r["error"]
    missing = tmp_path / "no_bag"
    for argv in (("sim", "replay", "--bag", str(missing), "--drone", "cf1"), ("bag", "report", str(missing))):
        code, r = run_json(capsys, *argv)
        assert code == 2 and f"{missing}: no such bag" in r["error"]
    assert not (tmp_path / "no_bag_report").exists()


@pytest.fixture(scope="module")
def ctbr_flight(tmp_path_factory):
    """A lockstep flight of the short mission by the PID on CTBR setpoints (cmd_ctbr_stamped)."""
    return fly(tmp_path_factory, "lockstep", ["sim_pid.launch.yaml", "action:=ctbr"])


def test_a_ctbr_flight_replays_through_the_rate_loop_as_it_flew(ctbr_flight, capsys, tmp_path):
    """The setpoints a CTBR controller sent, flown through the rate-loop model from the reset, are the
    flight (pybullet, as sim_bridge flew them); a real Crazyflie's bag replays the same way."""
    bag, _, _ = ctbr_flight
    log = read_flight_log(bag)
    assert len(log.drone("cf1").ctbr_commands.values) > 500 and not len(log.drone("cf1").commands.values)
    code, r = run_json(capsys, "sim", "replay", "--bag", str(bag), "--drone", "cf1", "--engine", "pybullet",
                       "--out", str(tmp_path))
    assert code == 0 and r["commands"] == "ctbr" and r["start"] == "reset", r
    assert r["replay_crash"] is None and r["error"]["max"] < PYBULLET_REPLAY_MAX_M, r
    code, r = run_json(capsys, "sim", "replay", "--bag", str(bag), "--drone", "cf2", "--engine", "batched",
                       "--horizon", "1", "--out", str(tmp_path))
    assert code == 0 and r["commands"] == "ctbr" and r["error"]["max"] < BATCHED_1S_CTBR_REPLAY_MAX_M, r["error"]
