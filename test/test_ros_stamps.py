"""The stamp protocol across processes: each command answers a known state.

A controller's command carries the stamp of the odometry it answers; it computes each state
once (a copy gets the same answer again), answers the newest state after a stall, and lockstep
runs are bit-identical; sim_bridge reports the command age on /diagnostics, the monitor shows it.
"""

import os
import signal
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402

from conftest import Processes  # noqa: E402
from test_ros_nodes import PID, SIM, Probe  # noqa: E402
from snn_controller.ros import qos
from snn_controller.ros.conversions import stamp_ns, time_from_ns, time_msg  # noqa: E402
from snn_controller.ros.monitor import FleetMonitor  # noqa: E402

MS = 1_000_000  # ns
HISTORY = QoSProfile(depth=1000, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)


class StampProbe(Probe):
    """Plays sim_bridge for one controller: publishes /cf1/odom, records /cf1/cmd_motors_stamped."""

    def __init__(self, context):
        super().__init__(context)
        self.answers = []  # (stamp ns, names, efforts, positions)
        self.state_pub = self.node.create_publisher(Odometry, "/cf1/odom", qos.STATE)
        self.node.create_subscription(JointState, "/cf1/cmd_motors_stamped", self._on_answer, HISTORY)

    def _on_answer(self, msg):
        self.answers.append((stamp_ns(msg.header.stamp), list(msg.name), list(msg.effort), list(msg.position)))

    def send_state(self, stamp):
        msg = Odometry()
        msg.header.stamp, msg.header.frame_id = time_from_ns(stamp), "world"
        msg.pose.pose.position.z = 0.5
        msg.pose.pose.orientation.w = 1.0
        self.state_pub.publish(msg)

    def answered(self, stamp, timeout=10.0):
        return self.spin_until(lambda: any(a[0] == stamp for a in self.answers), timeout)

    def connect(self, processes):
        """Until the controller answers: new stamps (1 ms, 2 ms, ...) every 50 ms. Returns the last one."""
        stamp, end = 0, time.monotonic() + 30
        while time.monotonic() < end:
            stamp += MS
            self.send_state(stamp)
            if self.spin_until(lambda: self.answers, 0.05):
                assert self.answered(stamp), "the controller must answer the newest state"
                return stamp
        raise AssertionError("the controller never answered\n" + processes.logs())


@pytest.fixture
def stamp_probe(ros_context):
    p = StampProbe(ros_context)
    yield p
    p.close()


@pytest.fixture
def sim_probe(ros_context):
    p = Probe(ros_context)
    yield p
    p.close()


def test_command_carries_the_stamp_of_the_state_it_answers_and_copies_are_not_recomputed(processes, stamp_probe):
    probe = stamp_probe
    processes.start(PID, "-r", "__ns:=/cf1", "-p", "takeoff_height:=0.05")  # 5 cm off: commands not saturated
    stamp = probe.connect(processes) + 1000 * MS
    probe.send_state(stamp)
    assert probe.answered(stamp), processes.logs()
    first = [a for a in probe.answers if a[0] == stamp]
    assert len(first) == 1
    _, names, efforts, positions = first[0]
    assert names == ["m1", "m2", "m3", "m4"] and len(efforts) == 4 and positions == []
    assert all(-1.0 <= e <= 1.0 for e in efforts)
    # A copy (lockstep re-sends a state whose answer it misses) gets the same answer, not a new
    # computation: the PID's observer and motor model would move on and answer differently.
    probe.send_state(stamp)
    probe.send_state(stamp + 10 * MS)
    assert probe.answered(stamp + 10 * MS), processes.logs()
    copies = [a for a in probe.answers if a[0] == stamp]
    assert all(a[2] == efforts for a in copies), "a copy must not step the controller again"
    assert [a for a in probe.answers if a[0] == stamp + 10 * MS][0][2] != efforts, \
        "the next state (same pose) is computed anew"
    # Time goes back: the simulation was reset. The controller starts again and answers.
    probe.send_state(5 * MS)
    assert probe.answered(5 * MS), "a stamp older than the last answered is a reset: answer it"


def test_stalled_controller_answers_the_newest_state_not_a_queue_of_old_ones(processes, stamp_probe):
    probe = stamp_probe
    controller = processes.start(PID, "-r", "__ns:=/cf1")
    stamp = probe.connect(processes)
    os.kill(controller.pid, signal.SIGSTOP)  # the controller stalls (a busy core) ...
    try:
        newer = [stamp + k * 10 * MS for k in range(1, 11)]
        for s in newer:  # ... while ten new states arrive
            probe.send_state(s)
            probe.spin_for(0.01)
        probe.spin_for(0.3)
    finally:
        os.kill(controller.pid, signal.SIGCONT)
    assert probe.answered(newer[-1]), processes.logs()
    probe.spin_for(0.3)
    late = [a[0] for a in probe.answers if a[0] in newer]
    # Depth 1: what waited is the newest state (a depth-10 queue would answer all ten, in order).
    assert late[-1] == newer[-1] and len(late) <= 5, f"answered {[(s - stamp) // MS for s in late]} ms"


def lockstep_flight(ros_env, log_dir, probe, fleet, steps):
    """Odometry of every drone for ``steps`` lockstep steps: {(name, stamp ns): position}."""
    positions = {}

    def record(name):
        def on_odom(msg):
            p = msg.pose.pose.position
            positions[(name, stamp_ns(msg.header.stamp))] = (p.x, p.y, p.z)
        return on_odom

    subs = [probe.node.create_subscription(Odometry, f"/{n}/odom", record(n), HISTORY) for n in ("cf1", "cf2")]
    log_dir.mkdir()
    processes = Processes(ros_env, log_dir)
    try:
        # lockstep_timeout: never step without a controller's answer (that would depend on timing)
        processes.start(SIM, "-p", f"crazyflies:={fleet}", "-p", "mode:=lockstep", "-p", "lockstep_timeout:=100.0")
        # Until a controller answers, sim_bridge re-sends state 0: once the probe has it, it sees every step.
        assert probe.spin_until(lambda: ("cf1", 0) in positions and ("cf2", 0) in positions, 30), processes.logs()
        processes.start(PID, "-p", f"crazyflies:={fleet}", "-p", "takeoff_height:=0.5")
        end_stamp = steps * 10 * MS
        done = probe.spin_until(lambda: all((n, end_stamp) in positions for n in ("cf1", "cf2")), 60)
        assert done, f"lockstep reached {max((s for _, s in positions), default=None)} ns\n" + processes.logs()
    finally:
        processes.stop()
        for sub in subs:
            probe.node.destroy_subscription(sub)
    return {k: v for k, v in positions.items() if k[1] <= end_stamp}


def test_lockstep_flights_are_bit_identical(ros_env, sim_probe, tmp_path):
    fleet = tmp_path / "crazyflies.yaml"
    fleet.write_text("robots:\n  cf1: {initial_position: [0, 0, 0]}\n  cf2: {initial_position: [1, 0, 0]}\n")
    first = lockstep_flight(ros_env, tmp_path / "first", sim_probe, fleet, 300)
    second = lockstep_flight(ros_env, tmp_path / "second", sim_probe, fleet, 300)
    common = sorted(set(first) & set(second))
    assert len(common) > 0.9 * 2 * 301, f"only {len(common)} states seen in both flights"
    assert [first[k] for k in common] == [second[k] for k in common], "lockstep must be deterministic"
    assert first[("cf1", 300 * 10 * MS)][2] > 0.2, "the drones took off"


def test_command_age_is_reported_on_diagnostics(processes, sim_probe, one_drone_fleet):
    probe = sim_probe
    processes.start(SIM, "-p", f"crazyflies:={one_drone_fleet}", "-p", "mode:=lockstep", "-p", "command_delay:=2",
                    "-p", "lockstep_timeout:=100.0")
    processes.start(PID, "-r", "__ns:=/cf1")
    reported = probe.spin_until(lambda: probe.diagnostics.get("cf1", {}).get("command_age_max") == "2", 30)
    assert reported, f"{probe.diagnostics}\n" + processes.logs()
    d = probe.diagnostics["cf1"]
    # lockstep answers every state at once: the age is exactly the delay added on purpose
    assert (d["command_age_p50"], d["command_age_p99"]) == ("2", "2"), d
    assert int(d["stale"]) >= 0 and int(d["rejected"]) == 0, d
    assert (d["crashed"], d["crashes"]) == ("False", "0"), d
    assert np.isfinite(probe.position()).all()


def test_time_msg_rounds_to_the_nanosecond_and_carries_into_seconds():
    assert (time_msg(1.9999999999).sec, time_msg(1.9999999999).nanosec) == (2, 0)
    assert (time_msg(0.5).sec, time_msg(0.5).nanosec) == (0, 500_000_000)
    assert stamp_ns(time_from_ns(123 * 10_000_000)) == 1_230_000_000


def test_monitor_shows_the_command_age_of_each_drone(ros_context):
    monitor = FleetMonitor(["cf1", "cf2"], context=ros_context)
    try:
        odom = Odometry()
        odom.header.stamp = time_from_ns(1_500 * MS)
        odom.pose.pose.orientation.w = 1.0
        monitor._on_odom("cf1", odom)
        values = {"command_age_p50": "0", "command_age_p99": "1", "command_age_max": "3", "stale": "2",
                  "crashes": "0", "crashed": "False"}
        monitor._on_diagnostics(DiagnosticArray(status=[DiagnosticStatus(
            name="sim_bridge: cf1", hardware_id="cf1", values=[KeyValue(key=k, value=v) for k, v in values.items()])]))
        line = monitor.status_line()
        assert "cf1 t=  1.5s" in line and "age p50/p99/max=0/1/3" in line and "cf2 waiting" in line, line
        s = monitor.summary()["cf1"]
        assert s["command_age"] == {"p50": 0, "p99": 1, "max": 3} and s["stale_commands"] == 2, s
    finally:
        monitor.destroy_node()
