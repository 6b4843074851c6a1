"""pid_controller: the cascaded PID flies one drone to a goal.

Subscribes odom (nav_msgs/Odometry) and goal_pose (geometry_msgs/PoseStamped, world frame, yaw
from its orientation); publishes cmd_motors (std_msgs/Float32MultiArray) once per odometry
message, so it runs at the simulator's (or the drone's) rate and works in lockstep mode.
Until a goal arrives it holds ``takeoff_height`` above the first odometry position.
"""

from __future__ import annotations

import numpy as np
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rclpy.node import Node
from std_msgs.msg import Float32MultiArray

from ..drone import load_drone
from ..geometry import observation
from ..pid import PIDController, load_pid_gains
from . import qos
from .conversions import odometry_arrays, pose_target
from .node_main import run


class PIDControllerNode(Node):
    def __init__(self):
        super().__init__("pid_controller")
        self.declare_parameter("drone", "cf21")  # drone model name or path
        self.declare_parameter("gains", "")  # PID gains YAML; '' = config/controllers/pid.yaml
        self.declare_parameter("rate", 100.0)  # Hz, the odometry (control) rate
        self.declare_parameter("takeoff_height", 0.5)  # m above the start, held until a goal arrives
        drone, gains_file, rate, self.takeoff_height = (self.get_parameter(n).value for n in (
            "drone", "gains", "rate", "takeoff_height"))
        if rate <= 0:
            raise ValueError(f"parameter rate must be > 0, got {rate}")
        gains = load_pid_gains(gains_file or None)
        self.controller = PIDController(load_drone(drone), 1, dt=1.0 / rate, gains=gains)
        self.goal, self.goal_yaw = None, 0.0
        self.rejected = 0
        self.cmd_pub = self.create_publisher(Float32MultiArray, "cmd_motors", qos.COMMAND)
        self.create_subscription(Odometry, "odom", self.on_odom, qos.STATE)
        self.create_subscription(PoseStamped, "goal_pose", self.on_goal, qos.LATCHED)

    def on_goal(self, msg: PoseStamped) -> None:
        goal, yaw = pose_target(msg)
        if not (np.isfinite(goal).all() and np.isfinite(yaw)):
            self.get_logger().warn("ignoring a goal_pose with NaN or inf", throttle_duration_sec=2.0)
            return
        self.goal, self.goal_yaw = goal, yaw
        self.get_logger().info(f"goal {np.round(goal, 3).tolist()} yaw {yaw:.2f} rad")

    def on_odom(self, msg: Odometry) -> None:
        state = odometry_arrays(msg)
        if not all(np.isfinite(v).all() for v in state.values()):
            self.rejected += 1
            self.get_logger().warn(f"ignoring odometry with NaN or inf ({self.rejected} so far)",
                                   throttle_duration_sec=2.0)
            return
        if self.goal is None:
            self.goal = state["position"] + np.array([0.0, 0.0, self.takeoff_height])
        obs = observation(state["position"], state["quaternion"], state["velocity_world"],
                          state["angular_velocity_body"], self.goal)
        action = self.controller(obs, target_yaw=np.array([self.goal_yaw]))[0]
        self.cmd_pub.publish(Float32MultiArray(data=[float(a) for a in action]))


def main(args=None):
    raise SystemExit(run(PIDControllerNode, args))


if __name__ == "__main__":
    main()
