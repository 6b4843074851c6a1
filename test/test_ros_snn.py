"""snn_policy as a separate process: flies the shipped model with sim_bridge; failsafe on NaN and stale odometry."""

import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from std_msgs.msg import Float32MultiArray  # noqa: E402

from test_ros_nodes import SIM, Probe  # noqa: E402
from snn_controller.ros import qos  # noqa: E402

SNN = "snn_controller.ros.snn_policy"
MODEL = Path(__file__).resolve().parents[1] / "models" / "td3bc_jsrl_cf21.safetensors"


class SNNProbe(Probe):
    def __init__(self, context):
        super().__init__(context)
        self.policy_status = {}
        self.commands = 0
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_policy_diag, qos.STATE)
        self.node.create_subscription(Float32MultiArray, "/cf1/cmd_motors", self._on_cmd, qos.COMMAND)
        self.odom_pub = self.node.create_publisher(Odometry, "/cf1/odom", qos.STATE)

    def _on_policy_diag(self, msg):
        for status in msg.status:
            if status.name.startswith("snn_policy"):
                self.policy_status = {kv.key: kv.value for kv in status.values}

    def _on_cmd(self, _msg):
        self.commands += 1

    def hover_odom(self, nan=False):
        msg = Odometry()
        msg.header.frame_id = "world"
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
    assert hold.mean() < 0.03 and hold.max() < 0.04, f"holding: mean {hold.mean():.3f} m, max {hold.max():.3f} m"
    assert probe.spin_until(lambda: probe.policy_status.get("flying") == "network", 5), probe.policy_status
    assert probe.policy_status["faults"] == "0"
    spikes = eval(probe.policy_status["spikes_per_step"])  # a list literal written by the node
    assert len(spikes) == 2 and min(spikes) > 0, "the network must be spiking while it flies"


def test_failsafe_on_nan_and_stale_odometry(processes, snn_probe):
    probe = snn_probe
    processes.start(SNN, "-r", "__ns:=/cf1", "-p", f"model:={MODEL}", "-p", "odom_timeout:=0.1")
    assert probe.spin_until(lambda: probe.odom_pub.get_subscription_count() > 0
                            and probe.node.count_publishers("/cf1/cmd_motors") > 0, 20), processes.logs()

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
