"""sim_bridge crtp:=true: the fleet is served as simulated Crazyflies on udp://, flown over CRTP by
the real cflib, and the node publishes their ground truth under /sim/<name>/."""

import random
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
cflib_crtp = pytest.importorskip("cflib.crtp")

from cflib.crazyflie import Crazyflie  # noqa: E402
from cflib.crazyflie.syncCrazyflie import SyncCrazyflie  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402

from conftest import spin_until  # noqa: E402
from snn_controller.ros import qos  # noqa: E402

SIM = "snn_controller.ros.sim_bridge"


def connect(uri, logs, deadline=30.0):
    """cflib's connection, retried until the node has opened its port."""
    cflib_crtp.init_drivers()
    end = time.monotonic() + deadline
    while True:
        scf = SyncCrazyflie(uri, cf=Crazyflie())
        try:
            scf.open_link()
            return scf
        except Exception:
            if time.monotonic() > end:
                raise AssertionError(f"no Crazyflie on {uri}\n" + logs())
            time.sleep(0.5)


def test_sim_bridge_serves_the_fleet_on_crtp_and_publishes_ground_truth(processes, ros_context, tmp_path):
    port = random.randint(20000, 29000)
    fleet = tmp_path / "crazyflies.yaml"
    fleet.write_text(f"all: {{drone: cf21}}\nrobots:\n  cf1:\n    uri: udp://127.0.0.1:{port}\n"
                     f"    initial_position: [0.5, -0.5, 0.0]\n  cf2:\n    uri: udp://127.0.0.1:{port + 1}\n"
                     f"    initial_position: [1.5, -0.5, 0.0]\n")
    processes.start(SIM, "-p", f"crazyflies:={fleet}", "-p", "crtp:=true")

    node = rclpy.create_node("probe", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    odom, clock = {"cf1": [], "cf2": []}, []
    for name in odom:
        node.create_subscription(Odometry, f"/sim/{name}/odom",
                                 lambda msg, n=name: odom[n].append(msg.pose.pose.position), qos.STATE)
    node.create_subscription(Odometry, "/cf1/odom", lambda msg: odom.setdefault("plain", []).append(msg), qos.STATE)
    node.create_subscription(Clock, "/clock", lambda msg: clock.append(msg.clock.sec + 1e-9 * msg.clock.nanosec),
                             qos.CLOCK)
    try:
        assert spin_until(executor, lambda: odom["cf1"] and odom["cf2"], 30), "no ground truth\n" + processes.logs()
        assert (odom["cf2"][-1].x, odom["cf2"][-1].y) == pytest.approx((1.5, -0.5), abs=1e-3)
        scf = connect(f"udp://127.0.0.1:{port}", processes.logs)
        try:
            cf = scf.cf
            cf.supervisor.send_arming_request(True)
            spin_until(executor, lambda: False, 0.5)
            cf.high_level_commander.takeoff(0.6, 1.5)
            assert spin_until(executor, lambda: odom["cf1"][-1].z > 0.5, 20), \
                f"cf1 at {odom['cf1'][-1]}\n" + processes.logs()
        finally:
            scf.close_link()
        p = odom["cf1"][-1]
        assert np.hypot(p.x - 0.5, p.y + 0.5) < 0.05 and odom["cf2"][-1].z < 0.02
        assert "plain" not in odom, "ground truth must not be on /cf1/odom (the bridge's topic)"
        assert len(clock) > 10 and clock[-1] > clock[0]
    finally:
        executor.shutdown()
        node.destroy_node()
