"""pid_controller: the cascaded PID flies one drone, or every drone of a fleet file, to its goal.

Per drone: subscribes odom (nav_msgs/Odometry, newest state only: qos.LATEST_STATE) and
goal_pose (geometry_msgs/PoseStamped, world frame, yaw from its orientation); publishes
cmd_motors_stamped (sensor_msgs/JointState, see conversions.py: header.stamp = the stamp of the
odometry it answers, effort = 4 motor commands in [-1, 1]) once per new state, so it runs at the
simulator's (or the drone's) rate and works in lockstep mode. A copy of the state just answered
(lockstep re-sends it when the answer is missing) is not computed again: the same answer goes out
again. An older stamp (the simulation was reset) resets the controller and is answered.
Until a goal arrives it holds ``takeoff_height`` above the first odometry position.

Parameters: ``crazyflies`` (fleet file; '' = fly the one drone of the node's namespace, relative
topics; else every enabled drone <name> of the file on /<name>/odom, /<name>/goal_pose,
/<name>/cmd_motors_stamped), ``drone`` (the drone model; '' = the fleet file's ``all.drone``, or
without a fleet file the package's config/crazyflies.yaml's, as sim_bridge), ``gains``, ``rate``,
``takeoff_height``, ``action`` (motors: cmd_motors_stamped; ctbr: the PID stops at the body rates and
publishes CTBR setpoints on cmd_ctbr_stamped for the firmware's rate loop, docs/ctbr.md). Topic names:
topics.py.
"""

from __future__ import annotations

import numpy as np
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rclpy.node import Node
from sensor_msgs.msg import JointState

from ..control.handover import SupervisedPolicy
from ..control.pid import PIDController, load_pid_gains
from ..control.pilot import StampedPilot
from ..sim.drone import load_drone
from ..sim.fleet import controlled_drones, load_fleet
from ..io import topics
from . import qos
from ..task.ctbr import CtbrScaling
from .conversions import command_msg, command_topic, odometry_arrays, pose_target, stamp_ns
from .node_main import run


class PIDControllerNode(Node):
    def __init__(self):
        super().__init__("pid_controller")
        self.declare_parameter("crazyflies", "")  # fleet file: fly all its drones; '' = the namespace's drone
        self.declare_parameter("drone", "")  # drone model name or path; '' = the fleet file's all.drone
        self.declare_parameter("gains", "")  # PID gains YAML; '' = config/controllers/pid.yaml
        self.declare_parameter("rate", 100.0)  # Hz, the odometry (control) rate
        self.declare_parameter("takeoff_height", 0.5)  # m above the start, held until a goal arrives
        self.declare_parameter("action", "motors")  # motors | ctbr: what the commands drive
        fleet_file, drone, gains_file, rate, takeoff_height, action = (self.get_parameter(n).value for n in (
            "crazyflies", "drone", "gains", "rate", "takeoff_height", "action"))
        if rate <= 0:
            raise ValueError(f"parameter rate must be > 0, got {rate}")
        if action not in ("motors", "ctbr"):
            raise ValueError(f"parameter action must be 'motors' or 'ctbr', got {action!r}")
        self.ctbr = CtbrScaling() if action == "ctbr" else None
        model = load_drone(drone or load_fleet(fleet_file or None).all.drone)
        gains = load_pid_gains(gains_file or None)
        self.rejected = 0
        self.pilots, self.cmd_pubs = {}, {}
        for name, prefix in controlled_drones(fleet_file, self.get_namespace()).items():
            # the PID behind the deployed controller's failsafe (no network): a non-finite state is refused
            controller = SupervisedPolicy(None, PIDController(model, 1, dt=1.0 / rate, gains=gains, ctbr=self.ctbr))
            self.pilots[name] = StampedPilot(controller, takeoff_height, ctbr=self.ctbr)
            self.cmd_pubs[name] = self.create_publisher(JointState, prefix + command_topic(self.ctbr), qos.COMMAND)
            self.create_subscription(Odometry, prefix + topics.ODOM, lambda m, n=name: self.on_odom(n, m),
                                     qos.LATEST_STATE)
            self.create_subscription(PoseStamped, prefix + topics.GOAL_POSE, lambda m, n=name: self.on_goal(n, m),
                                     qos.LATCHED)
        self.get_logger().info(f"flying {list(self.pilots)} ({model.name})")

    def on_goal(self, name: str, msg: PoseStamped) -> None:
        goal, yaw = pose_target(msg)
        if not self.pilots[name].set_goal(goal, yaw):
            self.get_logger().warn(f"{name}: ignoring a goal_pose with NaN or inf", throttle_duration_sec=2.0)
            return
        # throttled: a mission_sequencer moves the goal at 20 Hz
        self.get_logger().info(f"{name}: goal {np.round(goal, 3).tolist()} yaw {yaw:.2f} rad", throttle_duration_sec=1.0)

    def on_odom(self, name: str, msg: Odometry) -> None:
        pilot = self.pilots[name]
        if pilot.admit(stamp_ns(msg.header.stamp)) and pilot.act(odometry_arrays(msg)) is None:
            self.rejected += 1
            self.get_logger().warn(f"{name}: ignoring odometry with NaN or inf ({self.rejected} so far)",
                                   throttle_duration_sec=2.0)
        # else a copy of the state just answered: its answer again, not computed again
        if pilot.last_action is not None:
            self.cmd_pubs[name].publish(command_msg(msg.header.stamp, pilot.last_action, self.ctbr))


def main(args=None):
    raise SystemExit(run(PIDControllerNode, args))


if __name__ == "__main__":
    main()
