"""crazyflie_bridge's ROS wiring, in process, over a fake link (the cflib side is test_crazyflie_bridge.py's,
against simulated Crazyflies): topics, frames and stamps as sim_bridge's, services, diagnostics, and
the safety machine's actions reaching the link."""

import math
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import BatteryState, Imu  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402

from conftest import spin_until  # noqa: E402
from snn_controller.crazyflie.link import StateSample  # noqa: E402
from snn_controller.crazyflie.safety import Send  # noqa: E402
from snn_controller.ros import qos  # noqa: E402
from snn_controller.ros.conversions import ctbr_command_msg  # noqa: E402
from snn_controller.ros.crazyflie_bridge import CrazyflieBridge  # noqa: E402


class FakeLink:
    """CrazyflieLink's interface: records what is sent; the test plays the drone."""

    made = {}

    def __init__(self, uri, on_state, on_battery, on_link, state_period_ms, retry, toc_cache):
        self.uri, self.on_state, self.on_battery, self.on_link = uri, on_state, on_battery, on_link
        self.sent, self.extposes, self.closed = [], [], False
        self.position, self.yaw, self.reports = [0.1, 0.2, 0.0], math.pi / 2, 0
        FakeLink.made[uri] = self

    def open(self):
        self.on_link(True, "fake")

    def poll(self, now):
        pass

    def quality(self, now):
        return 97.0

    def send(self, action):
        self.sent.append(action)

    def send_extpose(self, position, quaternion):
        self.extposes.append((position, quaternion))

    def close(self):
        self.closed = True

    def report(self, vbat=4.0):
        position, yaw = self.position, self.yaw
        q = np.array([math.cos(yaw / 2), 0, 0, math.sin(yaw / 2)])
        self.reports += 1
        self.on_state(StateSample(time.monotonic(), 20 * self.reports, {  # the drone's clock: every 20 ms
            "position": np.array(position, float), "quaternion": q, "velocity_world": np.array([1.0, 0, 0]),
            "velocity_body": np.array([math.cos(yaw), -math.sin(yaw), 0]),
            "angular_velocity_body": np.array([0.1, 0.2, 0.3])}))
        self.on_battery(vbat, 0, 0x0a)  # supervisor.info: armed, can fly


@pytest.fixture
def bridge(ros_context, tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("robots:\n  cf1: {uri: 'udp://127.0.0.1:19850'}\n  cf2: {uri: 'udp://127.0.0.1:19851'}\n")
    config = tmp_path / "bridge.yaml"
    config.write_text("manoeuvres: {land_duration: 0.5, land_grace: 0.5}\n")  # stopping lands cf2 (on the ground)
    FakeLink.made.clear()
    node = CrazyflieBridge(link_factory=FakeLink, context=ros_context, parameter_overrides=[
        Parameter("crazyflies", value=str(fleet)), Parameter("config", value=str(config)),
        Parameter("command_timeout", value=0.5),
        Parameter("toc_cache", value=str(tmp_path / "toc")),
        Parameter("geofence", value=[-1.0, -1.0, -0.2, 1.0, 1.0, 1.5])])
    probe = rclpy.create_node("probe", context=ros_context)
    probe.create_timer(0.02, lambda: [link.report() for link in FakeLink.made.values()])  # the drones' log
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    executor.add_node(probe)
    yield node, probe, executor, FakeLink.made
    executor.shutdown()
    probe.destroy_node()
    node.destroy_node()


def call(probe, executor, kind, name, request):
    client = probe.create_client(kind, name)
    assert client.wait_for_service(timeout_sec=10)
    future = client.call_async(request)
    assert spin_until(executor, future.done, 10)
    return future.result()


def test_topics_services_and_the_safety_machine_through_a_fake_link(bridge):
    node, probe, executor, links = bridge
    cf1, cf2 = links["udp://127.0.0.1:19850"], links["udp://127.0.0.1:19851"]
    assert node.config.command.timeout == 0.5 and node.config.geofence.max == (1.0, 1.0, 1.5)
    got = {"odom": [], "imu": [], "battery": [], "diag": []}
    probe.create_subscription(Odometry, "/cf1/odom", got["odom"].append, qos.STATE)
    probe.create_subscription(Imu, "/cf1/imu", got["imu"].append, qos.STATE)
    probe.create_subscription(BatteryState, "/cf1/battery", got["battery"].append, qos.STATE)
    probe.create_subscription(DiagnosticArray, "/diagnostics", got["diag"].append, qos.STATE)
    cmd = probe.create_publisher(type(ctbr_command_msg(None, [0, 0, 0, 0])), "/cf1/cmd_ctbr_stamped", qos.COMMAND)
    assert spin_until(executor, lambda: cmd.get_subscription_count() and probe.count_subscribers("/cf1/odom"), 10)
    before = node.clock_ns(time.monotonic())
    assert spin_until(executor, lambda: got["odom"] and got["battery"] and got["imu"], 10)
    odom = got["odom"][-1]
    assert odom.header.frame_id == "world" and odom.child_frame_id == "cf1"
    stamp = odom.header.stamp.sec * 10**9 + odom.header.stamp.nanosec  # the bridge's clock, on the 10 ms grid
    assert before - 10**7 <= stamp <= node.clock_ns(time.monotonic()) + 10**7 and stamp % 10**7 == 0
    assert (odom.pose.pose.position.x, odom.twist.twist.linear.y) == pytest.approx((0.1, -1.0))
    assert got["imu"][-1].linear_acceleration_covariance[0] == -1.0 and got["battery"][-1].voltage == 4.0

    cmd.publish(ctbr_command_msg(odom.header.stamp, [0.6, 0.0, 0.0, 0.0]))
    spin_until(executor, lambda: False, 0.3)
    assert cf1.sent == [], "nothing is sent before arm"
    reply = call(probe, executor, SetBool, "/crazyflie_bridge/arm", SetBool.Request(data=True))
    assert reply.success and "cf1: armed" in reply.message and "cf2: armed" in reply.message
    assert [a.send for a in cf1.sent] == [Send.ARM] and [a.send for a in cf2.sent] == [Send.ARM]
    cmd.publish(ctbr_command_msg(odom.header.stamp, [0.6, 0.1, 0.0, 0.0]))
    assert spin_until(executor, lambda: cf1.sent[-1].send == Send.RATE, 5)
    assert cf1.sent[-1].values == pytest.approx((0.6, 0.1, 0.0, 0.0))
    bad = ctbr_command_msg(odom.header.stamp, [0.6, 0.0, 0.0, 0.0])
    bad.name = ["m1", "m2", "m3", "m4"]  # motor commands on the CTBR topic
    cmd.publish(bad)
    assert spin_until(executor, lambda: node.drones["cf1"].safety.counters["rejected"] == 1, 5)

    mocap = probe.create_publisher(PoseStamped, "/cf1/mocap_pose", qos.STATE)
    pose = PoseStamped()
    pose.pose.position.x, pose.pose.orientation.w = 0.25, 1.0
    assert spin_until(executor, lambda: mocap.get_subscription_count() > 0, 5)
    mocap.publish(pose)
    assert spin_until(executor, lambda: cf1.extposes, 5)
    assert cf1.extposes[-1] == ((0.25, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0))
    reply = call(probe, executor, Trigger, "/cf2/takeoff", Trigger.Request())
    assert reply.success and cf2.sent[-1].send == Send.TAKEOFF
    reply = call(probe, executor, Trigger, "/cf2/go_to", Trigger.Request())
    assert not reply.success and "no /cf2/goal_pose" in reply.message
    reply = call(probe, executor, Trigger, "/cf1/emergency_stop", Trigger.Request())
    assert reply.success and cf1.sent[-1].send == Send.EMERGENCY_STOP

    def cf1_status():
        for msg in reversed(got["diag"]):
            for s in msg.status:
                if s.name == "crazyflie_bridge: cf1":
                    return {kv.key: kv.value for kv in s.values}, s
        return None, None

    assert spin_until(executor, lambda: cf1_status()[0] and cf1_status()[0]["mode"] == "emergency", 5)
    values, status = cf1_status()
    assert status.level == status.ERROR and values["rejected"] == "1" and values["link_quality"] == "97.0"
    assert "emergency" in values["events"] and "names ['thrust', 'roll_rate'" in values["last_rejected"]


def test_bad_parameters_and_fleet_files_are_refused_naming_the_problem(ros_context, tmp_path):
    from snn_controller.config import ConfigError

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("robots:\n  cf1: {uri: 'udp://127.0.0.1:19850'}\n")
    no_uri = tmp_path / "no_uri.yaml"
    no_uri.write_text("robots:\n  cf1: {}\n")
    for overrides, error, message in [
        ([Parameter("crazyflies", value=str(no_uri))], ConfigError, r"robots \['cf1'\] have no uri"),
        ([Parameter("crazyflies", value=str(fleet)), Parameter("rate", value=30.0)], ValueError, "whole 10 ms"),
        ([Parameter("crazyflies", value=str(fleet)), Parameter("geofence", value=[0.0, 1.0])], ConfigError,
         r"parameter geofence must be \[xmin"),
        ([Parameter("crazyflies", value=str(fleet)), Parameter("geofence", value=[0.0, 0.0, 0.0, -1.0, 1.0, 1.0])],
         ConfigError, "parameter geofence: geofence.min must be below"),
        ([Parameter("crazyflies", value=str(fleet)), Parameter("command_timeout", value=-0.1)], ConfigError,
         "parameter command_timeout: command.timeout must be > 0"),
    ]:
        with pytest.raises(error, match=message):
            CrazyflieBridge(link_factory=FakeLink, context=ros_context, parameter_overrides=overrides)
