"""snn_policy: a spiking network flies one drone, keeping its membrane state from step to step.

Subscribes odom (nav_msgs/Odometry) and goal_pose (PoseStamped); on every odometry message it
builds the 18-value observation and steps the network (numpy path, no torch), publishing
cmd_motors. The guide (PID) flies the first ``warmup_steps`` while the network runs on the same
observations, then the network flies (the paper's handover). Failsafe: a non-finite
observation, or odometry older than ``odom_timeout``, hands control to the guide and resets the
network, which takes over again after a fresh warm-up. ``~/reset`` zeroes the state.
Diagnostics at 1 Hz on /diagnostics: spikes per step per layer, inference latency, who flies.
"""

from __future__ import annotations

import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rclpy.node import Node
from std_msgs.msg import Float32MultiArray
from std_srvs.srv import Trigger

from ..config import package_root
from ..drone import load_drone
from ..geometry import observation
from ..pid import PIDController, load_pid_gains
from ..policy import SupervisedPolicy
from ..snn_numpy import NumpySpikingActor
from . import qos
from .conversions import odometry_arrays, pose_target
from .node_main import run

DEFAULT_MODEL = "models/td3bc_jsrl_cf21.safetensors"


class SNNPolicyNode(Node):
    def __init__(self):
        super().__init__("snn_policy")
        self.declare_parameter("model", "")  # model file; '' = the shipped models/td3bc_jsrl_cf21.safetensors
        self.declare_parameter("drone", "cf21")  # must match the model's drone
        self.declare_parameter("warmup_steps", 50)  # guide steps before the network flies (0: no handover)
        self.declare_parameter("odom_timeout", 0.1)  # s without odometry -> failsafe
        self.declare_parameter("envelope", 0.5)  # m; farther from the goal on any axis, the guide flies
        self.declare_parameter("takeoff_height", 0.5)  # m above the start, held until a goal arrives
        self.declare_parameter("guide_gains", "")  # PID gains YAML; '' = config/controllers/pid.yaml
        model, drone, warmup, self.odom_timeout, envelope, self.takeoff_height, gains = (
            self.get_parameter(n).value for n in ("model", "drone", "warmup_steps", "odom_timeout", "envelope",
                                                  "takeoff_height", "guide_gains"))
        network = NumpySpikingActor.from_file(model or package_root() / DEFAULT_MODEL, drone=drone)
        guide = PIDController(load_drone(drone), 1, dt=network.manifest["dt"], gains=load_pid_gains(gains or None))
        self.policy = SupervisedPolicy(network, guide, warmup_steps=warmup, envelope=envelope)
        self.goal, self.goal_yaw, self.last_odom = None, 0.0, None
        self.latencies = []
        self.cmd_pub = self.create_publisher(Float32MultiArray, "cmd_motors", qos.COMMAND)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", qos.STATE)
        self.create_subscription(Odometry, "odom", self.on_odom, qos.STATE)
        self.create_subscription(PoseStamped, "goal_pose", self.on_goal, qos.LATCHED)
        self.create_service(Trigger, "~/reset", self.on_reset)
        self.create_timer(self.odom_timeout / 2, self.on_watchdog)
        self.create_timer(1.0, self.on_diagnostics)
        self.get_logger().info(f"flying {model or DEFAULT_MODEL} ({drone}), guide warm-up {warmup} steps")

    def on_goal(self, msg: PoseStamped) -> None:
        goal, yaw = pose_target(msg)
        if np.isfinite(goal).all() and np.isfinite(yaw):
            self.goal, self.goal_yaw = goal, yaw
        else:
            self.get_logger().warn("ignoring a goal_pose with NaN or inf", throttle_duration_sec=2.0)

    def on_odom(self, msg: Odometry) -> None:
        s = odometry_arrays(msg)
        if self.goal is None and np.isfinite(s["position"]).all():
            self.goal = s["position"] + np.array([0.0, 0.0, self.takeoff_height])
        obs = observation(s["position"], s["quaternion"], s["velocity_world"], s["angular_velocity_body"],
                          self.goal if self.goal is not None else s["position"])[0]
        start = time.perf_counter()
        action = self.policy.step(obs, yaw=self.goal_yaw)
        self.latencies.append(time.perf_counter() - start)
        if action is None:  # invalid observation: the failsafe has reset the network
            self.get_logger().warn(f"non-finite odometry: {self.policy.status()['last_fault']}",
                                   throttle_duration_sec=2.0)
            return
        self.last_odom = time.monotonic()
        self.cmd_pub.publish(Float32MultiArray(data=[float(a) for a in action]))

    def on_watchdog(self) -> None:
        if self.last_odom is not None and time.monotonic() - self.last_odom > self.odom_timeout:
            self.policy.fault(f"odometry older than {self.odom_timeout} s")
            self.get_logger().warn("stale odometry: the guide flies when it resumes", throttle_duration_sec=2.0)
            self.last_odom = None

    def on_reset(self, request, response):
        self.policy.reset()
        response.success, response.message = True, "network state zeroed"
        return response

    def on_diagnostics(self) -> None:
        status = self.policy.status()
        lat = np.array(self.latencies[-1000:]) * 1e6
        self.latencies = self.latencies[-1000:]
        values = {**{k: str(v) for k, v in status.items()},
                  "latency_p50_us": f"{np.percentile(lat, 50):.1f}" if len(lat) else "nan",
                  "latency_p99_us": f"{np.percentile(lat, 99):.1f}" if len(lat) else "nan"}
        level = DiagnosticStatus.WARN if status["flying"] == "guide" and status["faults"] else DiagnosticStatus.OK
        msg = DiagnosticArray()
        msg.status.append(DiagnosticStatus(level=level, name=f"{self.get_name()}: {self.get_namespace()}",
                                           hardware_id=self.get_namespace(), message=f"{status['flying']} flying",
                                           values=[KeyValue(key=k, value=v) for k, v in values.items()]))
        self.diag_pub.publish(msg)


def main(args=None):
    raise SystemExit(run(SNNPolicyNode, args))


if __name__ == "__main__":
    main()
