"""snn_policy as a separate process: flies the shipped model with sim_bridge (one drone, or a
fleet from one node); failsafe on NaN and stale odometry."""

import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402

from test_ros_nodes import SIM, Probe  # noqa: E402
from snn_controller.ros import qos
from snn_controller.ros.monitor import FleetMonitor  # noqa: E402
from snn_controller.ros.conversions import time_from_ns  # noqa: E402

SNN = "snn_controller.ros.snn_policy"
MODEL = Path(__file__).resolve().parents[1] / "models" / "td3bc_jsrl_cf21.safetensors"


class SNNProbe(Probe):
    def __init__(self, context):
        super().__init__(context)
        self.policy_status = {}  # the last snn_policy status of any drone
        self.policy_statuses = {}  # drone -> its last snn_policy status (and "message")
        self.commands = 0
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_policy_diag, qos.STATE)
        self.node.create_subscription(JointState, "/cf1/cmd_motors_stamped", self._on_cmd, qos.COMMAND)
        self.odom_pub = self.node.create_publisher(Odometry, "/cf1/odom", qos.STATE)
        self.stamp_ns = 0

    def _on_policy_diag(self, msg):
        for status in msg.status:
            if status.name.startswith("snn_policy"):
                self.policy_status = {kv.key: kv.value for kv in status.values}
                self.policy_statuses[status.hardware_id] = {**self.policy_status, "message": status.message}

    def _on_cmd(self, _msg):
        self.commands += 1

    def hover_odom(self, nan=False):
        """A hover state with a new stamp (10 ms after the last): the node answers each stamp once."""
        self.stamp_ns += 10_000_000
        msg = Odometry()
        msg.header.frame_id = "world"
        msg.header.stamp = time_from_ns(self.stamp_ns)
        msg.pose.pose.position.z = float("nan") if nan else 1.0
        msg.pose.pose.orientation.w = 1.0
        return msg


@pytest.fixture
def snn_probe(ros_context):
    p = SNNProbe(ros_context)
    yield p
    p.close()


def test_shipped_model_flies_sim_drone_to_goal(processes, snn_probe, one_drone_fleet):
    probe = snn_probe
    processes.start(SIM, "-p", f"crazyflies:={one_drone_fleet}", "-p", "mode:=realtime")
    processes.start(SNN, "-r", "__ns:=/cf1", "-p", f"model:={MODEL}")
    goal = np.array([0.2, 0.1, 0.8])
    assert probe.spin_until(lambda: probe.odom, 20), processes.logs()
    probe.send_goal(goal)
    hold = probe.hold_errors(goal)
    # the latency-robust model holds 2.6 cm off on average in process (docs/latency.md), up to ~5 cm
    assert hold.mean() < 0.06 and hold.max() < 0.07, f"holding: mean {hold.mean():.3f} m, max {hold.max():.3f} m"
    assert probe.spin_until(lambda: probe.policy_status.get("flying") == "network", 5), probe.policy_status
    assert probe.policy_status["faults"] == "0"
    spikes = eval(probe.policy_status["spikes_per_step"])  # a list literal written by the node
    assert len(spikes) == 2 and min(spikes) > 0, "the network must be spiking while it flies"


def test_one_snn_policy_node_flies_every_drone_of_the_fleet_file(processes, snn_probe, tmp_path):
    probe = snn_probe
    fleet = tmp_path / "crazyflies.yaml"
    fleet.write_text("robots:\n  cf1: {initial_position: [0, 0, 0]}\n  cf2: {initial_position: [1, 0.5, 0]}\n")
    monitor = FleetMonitor(["cf1", "cf2"], context=probe.node.context)
    probe.executor.add_node(monitor)
    try:
        processes.start(SIM, "-p", f"crazyflies:={fleet}", "-p", "mode:=realtime")
        processes.start(SNN, "-p", f"crazyflies:={fleet}", "-p", f"model:={MODEL}", "-p", "takeoff_height:=0.5")
        cf2_goal = probe.node.create_publisher(PoseStamped, "/cf2/goal_pose", qos.LATCHED)
        msg = PoseStamped()
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = 1.2, 0.3, 0.7
        msg.pose.orientation.w = 1.0
        cf2_goal.publish(msg)  # latched: the node gets it whenever it subscribes
        goals = {"cf1": np.array([0.0, 0.0, 0.511]), "cf2": np.array([1.2, 0.3, 0.7])}  # cf1: takeoff height

        def hovering():  # every drone within 5 cm of its own goal for the last second
            windows = {n: monitor.window(n, 1.0) for n in goals}
            return all(len(w) > 50 and w[-1, 0] > 1.5 and np.linalg.norm(w[:, 1:4] - goals[n], axis=1).max() < 0.05
                       for n, w in windows.items())

        assert probe.spin_until(hovering, 40), f"{monitor.summary()}\n" + processes.logs()
        networks = lambda: all(probe.policy_statuses.get(n, {}).get("message") == "network flying"  # noqa: E731
                               for n in goals)
        assert probe.spin_until(networks, 10), probe.policy_statuses
        assert probe.spin_until(lambda: all(monitor.command_age(n)["p50"] is not None for n in goals), 5)
        summary = monitor.summary()
        for name in goals:
            assert summary[name]["crashes"] == 0 and summary[name]["command_age"]["p50"] <= 2, summary
            assert probe.policy_statuses[name]["faults"] == "0", probe.policy_statuses[name]
    finally:
        probe.executor.remove_node(monitor)
        monitor.destroy_node()


def test_failsafe_on_nan_and_stale_odometry(processes, snn_probe):
    probe = snn_probe
    processes.start(SNN, "-r", "__ns:=/cf1", "-p", f"model:={MODEL}", "-p", "odom_timeout:=0.1")
    assert probe.spin_until(lambda: probe.odom_pub.get_subscription_count() > 0
                            and probe.node.count_publishers("/cf1/cmd_motors_stamped") > 0, 20), processes.logs()

    def stream_until(predicate, timeout, nan_at=None):
        """Publish hover odometry at ~100 Hz until ``predicate`` holds (the node must never starve)."""
        end, k = time.monotonic() + timeout, 0
        while time.monotonic() < end:
            probe.odom_pub.publish(probe.hover_odom(nan=(k == nan_at)))
            k += 1
            probe.spin_until(lambda: False, 0.01)
            if predicate():
                return True
        return False

    status = probe.policy_status
    assert stream_until(lambda: probe.policy_status.get("flying") == "network", 5), probe.policy_status
    faults = int(probe.policy_status["faults"])
    before = probe.commands
    assert stream_until(lambda: probe.policy_status.get("invalid_observations") == "1", 4, nan_at=0), status
    status = probe.policy_status
    assert int(status["faults"]) == faults + 1 and status["last_fault"] == "non-finite observation"
    assert stream_until(lambda: probe.policy_status.get("flying") == "network", 4), "network back after warm-up"
    assert probe.commands > before, "commands keep flowing after the fault"
    faults = int(probe.policy_status["faults"])
    probe.spin_until(lambda: False, 0.4)  # odometry stops: stale
    assert stream_until(lambda: int(probe.policy_status.get("faults", 0)) > faults, 4), probe.policy_status
    assert probe.policy_status["last_fault"] == "odometry older than 0.1 s"
    assert stream_until(lambda: probe.policy_status.get("flying") == "network", 4), "network back after stale"
    assert processes.procs[0][1].poll() is None, processes.logs()


def test_the_drone_model_is_the_model_files_and_a_fleet_of_another_drone_is_refused(tmp_path):
    from snn_controller.config import ConfigError
    from snn_controller.ros.snn_policy import model_drone

    cf21, cf2x = tmp_path / "cf21.yaml", tmp_path / "cf2x.yaml"
    cf21.write_text("all: {drone: cf21}\nrobots:\n  cf1: {}\n")
    cf2x.write_text("all: {drone: cf2x}\nrobots:\n  cf1: {}\n")
    assert model_drone(MODEL) == model_drone(MODEL, str(cf21)) == model_drone(MODEL, "", "cf21") == "cf21"
    with pytest.raises(ConfigError) as refused:
        model_drone(MODEL, str(cf2x))
    message = str(refused.value)  # names both files and both drones, and the remedy
    assert str(cf2x) in message and str(MODEL) in message and "'cf2x'" in message and "'cf21'" in message
    assert f"set all.drone: cf21 in {cf2x}" in message
    with pytest.raises(ConfigError, match="parameter drone is 'cf2x'.*trained for 'cf21'"):
        model_drone(MODEL, str(cf21), "cf2x")


def test_snn_policy_exits_on_a_fleet_of_another_drone_than_its_models(processes, tmp_path):
    """Not silently: sim_bridge would simulate the fleet's drone, the network was trained for another."""
    fleet = tmp_path / "cf2x_fleet.yaml"
    fleet.write_text("all: {drone: cf2x}\nrobots:\n  cf1: {}\n")
    node = processes.start(SNN, "-p", f"crazyflies:={fleet}", "-p", f"model:={MODEL}")
    assert node.wait(60) == 2, processes.logs()
    log = processes.logs()
    assert f"error: the fleet file {fleet} flies drone 'cf2x' (all.drone), but the model file {MODEL} was " \
           "trained for 'cf21'" in log, log
