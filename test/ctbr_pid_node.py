"""A CTBR controller for the crazyflie_bridge tests, until main's controllers send cmd_ctbr_stamped:
control/pid.py's PIDController(..., ctbr=CtbrScaling()) behind the same StampedPilot as pid_controller,
flying every enabled drone of ``-p crazyflies:=FILE`` to its /<name>/goal_pose (until one arrives it
holds ``takeoff_height`` above its first position), answering each /<name>/odom with one
/<name>/cmd_ctbr_stamped carrying the odometry's stamp. On the ground with its goal on the ground it
sends thrust 0 (motors off). ``-p nan_after:=S`` makes it send NaN thrust from S s after its first
command on (a controller gone wrong)."""

import time

import numpy as np
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rclpy.node import Node
from sensor_msgs.msg import JointState

from snn_controller.control.handover import SupervisedPolicy
from snn_controller.control.pid import PIDController
from snn_controller.control.pilot import StampedPilot
from snn_controller.io import topics
from snn_controller.ros import qos
from snn_controller.ros.conversions import ctbr_command_msg, odometry_arrays, pose_target, stamp_ns
from snn_controller.ros.node_main import run
from snn_controller.sim.drone import load_drone
from snn_controller.sim.fleet import load_fleet
from snn_controller.task.ctbr import CtbrScaling


class CtbrPid(Node):
    def __init__(self):
        super().__init__("ctbr_pid")
        self.declare_parameter("crazyflies", "")
        self.declare_parameter("takeoff_height", 0.0)
        self.declare_parameter("nan_after", -1.0)
        fleet_file, height, self.nan_after = (self.get_parameter(n).value for n in ("crazyflies", "takeoff_height",
                                                                                   "nan_after"))
        fleet = load_fleet(fleet_file or None)
        model, scaling = load_drone(fleet.all.drone), CtbrScaling()
        self.scale, self.offset = np.array(scaling.scale), np.array(scaling.offset)
        self.pilots, self.pubs, self.started = {}, {}, None
        for name in fleet.enabled_robots():
            pid = PIDController(model, 1, dt=0.01, ctbr=scaling)
            self.pilots[name] = StampedPilot(SupervisedPolicy(None, pid), height)
            self.pubs[name] = self.create_publisher(JointState, topics.drone_topic(name, topics.CMD_CTBR_STAMPED),
                                                    qos.COMMAND)
            self.create_subscription(Odometry, topics.drone_topic(name, topics.ODOM),
                                     lambda m, n=name: self.on_odom(n, m), qos.LATEST_STATE)
            self.create_subscription(PoseStamped, topics.drone_topic(name, topics.GOAL_POSE),
                                     lambda m, n=name: self.pilots[n].set_goal(*pose_target(m)), qos.LATCHED)

    def on_odom(self, name, msg):
        pilot = self.pilots[name]
        if pilot.admit(stamp_ns(msg.header.stamp)):
            pilot.act(odometry_arrays(msg))
        if pilot.last_action is None:
            return
        setpoint = np.zeros(4) if pilot.idle else pilot.last_action * self.scale + self.offset
        self.started = self.started or time.monotonic()
        if 0 <= self.nan_after < time.monotonic() - self.started:
            setpoint = np.array([np.nan, 0.0, 0.0, 0.0])
        self.pubs[name].publish(ctbr_command_msg(msg.header.stamp, setpoint))


if __name__ == "__main__":
    raise SystemExit(run(CtbrPid))
