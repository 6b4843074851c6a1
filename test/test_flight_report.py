"""`snnctl bag report` and `snnctl sim replay --bag` on a flight recorded here: two drones fly a
short mission in lockstep through the ROS nodes (`snnctl launch ... record:=true --monitor`), once
for the whole module."""

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
from snn_controller.io.flight_log import read_flight_log

SHORT_MISSION = """name: short_hop
segments:
  - {kind: takeoff, height: 1.0, speed: 0.5, duration: 3.5}
  - {kind: goto, position: [0.3, 0.0, 1.0], speed: 0.5, duration: 2.5}
  - {kind: land, speed: 0.5, duration: 3.0}
"""
# Measured on lockstep flights of hop and of this mission: the pybullet replay is bit-identical
# (0 m; 1e-9 m where the recorder had lost steps and the rotor speeds after them were fitted);
# the batched engine, started again from the recording every second, stayed within 0.2 cm.
PYBULLET_REPLAY_MAX_M = 1e-3
PYBULLET_LATE_START_1S_MAX_M = 2e-3
BATCHED_1S_REPLAY_MAX_M = 0.01


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


@pytest.fixture(scope="module")
def flight(tmp_path_factory):
    """(bag, mission file, what --monitor reported) of a lockstep flight of the short mission."""
    tmp = tmp_path_factory.mktemp("flight")
    env = {**os.environ, "ROS_DOMAIN_ID": str(next(conftest._domains)), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
           "ROS_LOG_DIR": str(tmp / "ros_log"), "PYTHONUNBUFFERED": "1",
           "FASTDDS_DEFAULT_PROFILES_FILE": str(conftest.ROOT / "config" / "fastdds_fast_discovery.xml")}
    bag, mission = tmp / "flight", tmp / "short_hop.yaml"
    mission.write_text(SHORT_MISSION)
    code, out, err = run_launch(["sim_snn.launch.yaml", f"mission:={mission}", "mission_start:=1.0", "mode:=lockstep",
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
    # the same odometry on the same grid: the same numbers, unless the monitor missed a message
    for mine, theirs in zip(scored["segments"], monitored["segments"]):
        assert mine["name"] == theirs["name"] and mine["reached"] == theirs["reached"]
        assert mine["error_mean"] == pytest.approx(theirs["error_mean"], abs=0.002)
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


def test_a_lockstep_flight_replayed_on_pybullet_matches_its_recording(flight, capsys, tmp_path):
    bag, _, _ = flight
    code, r = run_json(capsys, "sim", "replay", "--bag", str(bag), "--drone", "cf2", "--engine", "pybullet",
                       "--out", str(tmp_path))
    assert code == 0, r
    assert r["command_delay"] == 0
    if r["first_step"] > 0:
        # The recorder found the odometry after the first steps (a busy machine): the replay starts at
        # the first state it has, in a fresh pybullet world whose contact solver state is not the
        # bridge's, and open-loop flight amplifies that difference. Started again from the recording
        # every second, the engine still follows it (measured: 0.4 mm at most with first_step 10).
        code, r = run_json(capsys, "sim", "replay", "--bag", str(bag), "--drone", "cf2", "--engine", "pybullet",
                           "--horizon", "1", "--out", str(tmp_path))
        assert code == 0 and r["error"]["max"] < PYBULLET_LATE_START_1S_MAX_M, r
    else:
        assert r["replay_crash"] is None and r["error"]["max"] < PYBULLET_REPLAY_MAX_M, r
    saved = json.loads(Path(r["json"]).read_text())
    assert saved["error"] == r["error"] and Path(r["png"]).read_bytes()[:4] == b"\x89PNG"


def test_the_batched_engine_replays_each_second_of_the_flight_within_a_centimetre(flight, capsys, tmp_path):
    bag, _, _ = flight
    code, r = run_json(capsys, "sim", "replay", "--bag", str(bag), "--drone", "cf1", "--engine", "batched",
                       "--horizon", "1", "--out", str(tmp_path))
    assert code == 0, r
    assert r["error"]["max"] < BATCHED_1S_REPLAY_MAX_M, r["error"]


def test_replaying_an_unknown_drone_or_a_missing_bag_is_an_error_naming_it(flight, capsys, tmp_path):
    bag, _, _ = flight
    code, r = run_json(capsys, "sim", "replay", "--bag", str(bag), "--drone", "cf9")
    assert code == 2 and "no drone 'cf9'" in r["error"] and "['cf1', 'cf2']" in r["error"]
    missing = tmp_path / "no_bag"
    for argv in (("sim", "replay", "--bag", str(missing), "--drone", "cf1"), ("bag", "report", str(missing))):
        code, r = run_json(capsys, *argv)
        assert code == 2 and f"{missing}: no such bag" in r["error"]
    assert not (tmp_path / "no_bag_report").exists()
