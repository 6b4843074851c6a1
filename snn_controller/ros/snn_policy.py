"""snn_policy: a spiking network flies one drone, or every drone of a fleet file, keeping each
drone's membrane state from step to step.

Per drone: subscribes odom (nav_msgs/Odometry, newest state only: qos.LATEST_STATE) and goal_pose
(PoseStamped); on every new state it builds the 18-value observation once and steps the
drone's network (numpy path, no torch), publishing cmd_motors_stamped (sensor_msgs/JointState,
see conversions.py: header.stamp = the stamp of the odometry it answers), or for a model whose
outputs are CTBR setpoints (its manifest's ``action``) cmd_ctbr_stamped, with a CTBR guide. A copy of the state
just answered (lockstep re-sends it when the answer is missing) does not step the network or the
guide again: the same answer goes out again. An older stamp (the simulation was reset) resets the
drone's network and guide and is answered. The guide (PID) flies the first
``warmup_steps`` while the network runs on the same observations, then the network flies (the
paper's handover). Failsafe: a non-finite observation, or odometry older than ``odom_timeout``,
hands control to the guide and resets the network, which takes over again after a fresh warm-up.
``~/reset`` zeroes every drone's state. Diagnostics at 1 Hz on /diagnostics, one status per drone
("snn_policy: <name>"): who flies, spikes per step per layer, inference latency, faults, and
state_copies (copies of a state answered again without stepping the network).

Parameters: ``crazyflies`` (fleet file; '' = fly the one drone of the node's namespace, relative
topics; else every enabled drone <name> of the file on /<name>/odom, /<name>/goal_pose,
/<name>/cmd_motors_stamped, one network and guide per drone), ``model``, ``drone``,
``warmup_steps``, ``odom_timeout``, ``envelope``, ``takeoff_height``, ``guide_gains``. Topic
names: topics.py.

The drone model is the model file's (its manifest's ``drone``): the node refuses to start when the
fleet file's ``all.drone``, or a ``drone`` parameter given, names another drone (sim_bridge would
simulate that one). ``drone`` '' (the default) = the model's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rclpy.node import Node
from rclpy.publisher import Publisher
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger

from ..config import ConfigError, package_root
from ..control.handover import SupervisedPolicy
from ..control.pid import PIDController, load_pid_gains
from ..control.pilot import StampedPilot
from ..io.model_file import load_model, model_ctbr
from ..networks.spiking_numpy import NumpySpikingActor
from ..sim.drone import load_drone
from ..sim.fleet import controlled_drones, load_fleet
from ..io import topics
from . import qos
from .conversions import command_msg, command_topic, odometry_arrays, pose_target, stamp_ns
from .node_main import run

DEFAULT_MODEL = "models/td3bc_jsrl_cf21.safetensors"


def model_drone(model_file, fleet_file: str = "", drone: str = "") -> str:
    """The drone the model file was trained for (its manifest's ``drone``). Refuses a ``drone``
    parameter, or else a fleet file's ``all.drone``, that names another: the network would fly a
    drone it was never trained for."""
    trained_for = load_model(model_file)[1]["drone"]
    if drone:  # an override of the fleet file's drone (the launch files pass it to sim_bridge too)
        told, remedy = f"parameter drone is '{drone}'", "leave drone '' (the model's drone)"
    elif fleet_file:
        drone = load_fleet(fleet_file).all.drone
        told, remedy = f"the fleet file {fleet_file} flies drone '{drone}' (all.drone)", \
            f"set all.drone: {trained_for} in {fleet_file}"
    if drone and drone != trained_for:
        raise ConfigError(f"{told}, but the model file {model_file} was trained for '{trained_for}': {remedy}, "
                          f"or give a model trained for {drone}")
    return trained_for


@dataclass
class FlownDrone:
    policy: SupervisedPolicy
    pilot: StampedPilot
    cmd_pub: Publisher
    latencies: list = field(default_factory=list)  # s per answer, the last 1000
    last_odom: float | None = None  # wall time of the last state answered


class SNNPolicyNode(Node):
    def __init__(self):
        super().__init__("snn_policy")
        self.declare_parameter("crazyflies", "")  # fleet file: fly all its drones; '' = the namespace's drone
        self.declare_parameter("model", "")  # model file; '' = the shipped models/td3bc_jsrl_cf21.safetensors
        self.declare_parameter("drone", "")  # '' = the model's drone; else it must be the model's
        self.declare_parameter("warmup_steps", 50)  # guide steps before the network flies (0: no handover)
        self.declare_parameter("odom_timeout", 0.1)  # s without odometry -> failsafe
        self.declare_parameter("envelope", 0.5)  # m; farther from the goal on any axis, the guide flies
        self.declare_parameter("takeoff_height", 0.5)  # m above the start, held until a goal arrives
        self.declare_parameter("guide_gains", "")  # PID gains YAML; '' = config/controllers/pid.yaml
        fleet_file, model, drone, warmup, self.odom_timeout, envelope, takeoff_height, gains = (
            self.get_parameter(n).value for n in ("crazyflies", "model", "drone", "warmup_steps", "odom_timeout",
                                                  "envelope", "takeoff_height", "guide_gains"))
        model_file = model or package_root() / DEFAULT_MODEL
        drone = model_drone(model_file, fleet_file, drone)
        drone_model, guide_gains = load_drone(drone), load_pid_gains(gains or None)
        tensors, manifest = load_model(model_file, drone=drone)  # read once: every drone's network is built from it
        self.ctbr = model_ctbr(manifest)  # what the outputs drive: motors, or CTBR setpoints (and so the guide)
        self.drones: dict[str, FlownDrone] = {}
        for name, prefix in controlled_drones(fleet_file, self.get_namespace()).items():
            network = NumpySpikingActor(tensors, manifest)
            guide = PIDController(drone_model, 1, dt=manifest["dt"], gains=guide_gains, ctbr=self.ctbr)
            policy = SupervisedPolicy(network, guide, warmup_steps=warmup, envelope=envelope)
            pilot = StampedPilot(policy, takeoff_height, ctbr=self.ctbr)
            self.drones[name] = FlownDrone(policy, pilot, self.create_publisher(
                JointState, prefix + command_topic(self.ctbr), qos.COMMAND))
            self.create_subscription(Odometry, prefix + topics.ODOM, lambda m, n=name: self.on_odom(n, m),
                                     qos.LATEST_STATE)
            self.create_subscription(PoseStamped, prefix + topics.GOAL_POSE, lambda m, n=name: self.on_goal(n, m),
                                     qos.LATCHED)
        self.diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, qos.STATE)
        self.create_service(Trigger, "~/reset", self.on_reset)
        self.create_timer(self.odom_timeout / 2, self.on_watchdog)
        self.create_timer(1.0, self.on_diagnostics)
        self.get_logger().info(f"flying {list(self.drones)} with {model or DEFAULT_MODEL} ({drone}, "
                               f"{'CTBR setpoints' if self.ctbr else 'motor commands'}), guide warm-up {warmup} steps")

    def on_goal(self, name: str, msg: PoseStamped) -> None:
        if not self.drones[name].pilot.set_goal(*pose_target(msg)):
            self.get_logger().warn(f"{name}: ignoring a goal_pose with NaN or inf", throttle_duration_sec=2.0)

    def on_odom(self, name: str, msg: Odometry) -> None:
        d = self.drones[name]
        if d.pilot.admit(stamp_ns(msg.header.stamp)):
            start = time.perf_counter()
            action = d.pilot.act(odometry_arrays(msg))
            d.latencies.append(time.perf_counter() - start)
            if action is None:  # invalid observation: the failsafe has reset the network
                self.get_logger().warn(f"{name}: non-finite odometry: {d.policy.status()['last_fault']}",
                                       throttle_duration_sec=2.0)
                return
            d.last_odom = time.monotonic()
        elif d.pilot.last_action is None:
            return
        # (else a copy of the state just answered: its answer again, the network not stepped again)
        d.cmd_pub.publish(command_msg(msg.header.stamp, d.pilot.last_action, self.ctbr))

    def on_watchdog(self) -> None:
        for name, d in self.drones.items():
            if d.last_odom is not None and time.monotonic() - d.last_odom > self.odom_timeout:
                d.policy.fault(f"odometry older than {self.odom_timeout} s")
                self.get_logger().warn(f"{name}: stale odometry: the guide flies when it resumes",
                                       throttle_duration_sec=2.0)
                d.last_odom = None

    def on_reset(self, request, response):
        for d in self.drones.values():
            d.policy.reset()
        response.success, response.message = True, "network state zeroed"
        return response

    def on_diagnostics(self) -> None:
        msg = DiagnosticArray()
        for name, d in self.drones.items():
            status = d.policy.status()
            d.latencies = d.latencies[-1000:]
            lat = np.array(d.latencies) * 1e6
            values = {**{k: str(v) for k, v in status.items()}, "state_copies": str(d.pilot.duplicates),
                      "latency_p50_us": f"{np.percentile(lat, 50):.1f}" if len(lat) else "nan",
                      "latency_p99_us": f"{np.percentile(lat, 99):.1f}" if len(lat) else "nan"}
            level = DiagnosticStatus.WARN if status["flying"] == "guide" and status["faults"] else DiagnosticStatus.OK
            msg.status.append(DiagnosticStatus(level=level, name=f"{self.get_name()}: {name}", hardware_id=name,
                                               message=f"{status['flying']} flying",
                                               values=[KeyValue(key=k, value=v) for k, v in values.items()]))
        self.diag_pub.publish(msg)


def main(args=None):
    raise SystemExit(run(SNNPolicyNode, args))


if __name__ == "__main__":
    main()
