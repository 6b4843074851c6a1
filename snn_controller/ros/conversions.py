"""Message <-> array conversions (named functions, no logic).

Motor commands from our controllers are ``sensor_msgs/JointState`` (:func:`motor_command_msg`):
a standard message (no custom .msg has to be built, which a pip-only install cannot do reliably),
with a header whose stamp says which odometry the command answers, and a name per motor
(``m1``..``m4``, the motor order of docs/task.md) with the command in ``effort`` (action units,
[-1, 1]); position and velocity stay empty. Stamps are built from integer nanoseconds.

CTBR commands (:func:`ctbr_command_msg`, topic cmd_ctbr_stamped) are the same message with the names
``thrust, roll_rate, pitch_rate, yaw_rate`` and the setpoint in ``position``: the collective thrust
as the PWM ratio in [0, 1] (the commander's thrust / 65535) and the body rates p, q, r in rad/s about
the body axes x forward, y left, z up (docs/ctbr.md); the header stamp as for motor commands.
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import Imu, JointState

from ..io import topics
from ..sim.fleet import NS_PER_S
from ..sim.rotations import quat_to_matrix, yaw_of
from ..task.ctbr import CtbrScaling

MOTOR_NAMES = ["m1", "m2", "m3", "m4"]
CTBR_NAMES = ["thrust", "roll_rate", "pitch_rate", "yaw_rate"]


def time_from_ns(nanoseconds: int) -> Time:
    sec, nanosec = divmod(int(nanoseconds), NS_PER_S)
    return Time(sec=sec, nanosec=nanosec)


def time_msg(seconds: float) -> Time:
    """Seconds as a Time, rounded to the nanosecond (1.9999999999 s is sec=2, nanosec=0)."""
    return time_from_ns(round(seconds * NS_PER_S))


def stamp_ns(stamp: Time) -> int:
    return stamp.sec * NS_PER_S + stamp.nanosec


def motor_command_msg(stamp: Time, action) -> JointState:
    """A command answering the odometry stamped ``stamp``: 4 motor commands in [-1, 1]."""
    msg = JointState(name=MOTOR_NAMES, effort=[float(a) for a in action])
    msg.header.stamp = stamp
    return msg


def ctbr_command_msg(stamp: Time, setpoint) -> JointState:
    """A CTBR command answering the odometry stamped ``stamp``: [thrust (PWM ratio), p, q, r (rad/s)]."""
    msg = JointState(name=CTBR_NAMES, position=[float(v) for v in setpoint])
    msg.header.stamp = stamp
    return msg


def ctbr_setpoint(msg: JointState) -> np.ndarray:
    """The [thrust, p, q, r] of a CTBR command; a message whose names are not CTBR_NAMES raises ValueError."""
    if list(msg.name) != CTBR_NAMES or len(msg.position) != 4:
        raise ValueError(f"a CTBR command has names {CTBR_NAMES} and 4 positions, got {list(msg.name)} "
                         f"and {len(msg.position)}")
    return np.asarray(msg.position, dtype=float)


def command_topic(ctbr: CtbrScaling | None) -> str:
    """Where a controller's commands go: cmd_motors_stamped, or (``ctbr``) cmd_ctbr_stamped."""
    return topics.CMD_MOTORS_STAMPED if ctbr is None else topics.CMD_CTBR_STAMPED


def command_msg(stamp: Time, action, ctbr: CtbrScaling | None) -> JointState:
    """A controller's outputs in [-1, 1] as its command: motor commands, or (``ctbr``) their CTBR setpoint."""
    return motor_command_msg(stamp, action) if ctbr is None else ctbr_command_msg(stamp, ctbr.setpoint(action))


def motor_state_msg(stamp: Time, rotor_speed, command) -> JointState:
    """What the simulator flew over the step from the state stamped ``stamp``: the rotor speeds at
    that state in ``velocity`` (normalized, the engines' units) and the motor commands it flew in
    ``effort`` ([-1, 1]), per motor m1..m4."""
    msg = JointState(name=MOTOR_NAMES, velocity=[float(w) for w in rotor_speed], effort=[float(a) for a in command])
    msg.header.stamp = stamp
    return msg


def _set_quaternion(msg_q, q_wxyz) -> None:
    msg_q.w, msg_q.x, msg_q.y, msg_q.z = (float(v) for v in q_wxyz)


def odometry_msg(out: dict, stamp: Time, frame_id: str, child_frame_id: str) -> Odometry:
    """Pose in the world frame; twist in the body (child) frame, as nav_msgs/Odometry defines."""
    msg = Odometry()
    msg.header.stamp, msg.header.frame_id, msg.child_frame_id = stamp, frame_id, child_frame_id
    p = msg.pose.pose.position
    p.x, p.y, p.z = (float(v) for v in out["position"])
    _set_quaternion(msg.pose.pose.orientation, out["quaternion"])
    t = msg.twist.twist
    t.linear.x, t.linear.y, t.linear.z = (float(v) for v in out["velocity_body"])
    t.angular.x, t.angular.y, t.angular.z = (float(v) for v in out["angular_velocity_body"])
    return msg


def pose_msg(out: dict, stamp: Time, frame_id: str) -> PoseStamped:
    msg = PoseStamped()
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    p = msg.pose.position
    p.x, p.y, p.z = (float(v) for v in out["position"])
    _set_quaternion(msg.pose.orientation, out["quaternion"])
    return msg


def imu_msg(out: dict, stamp: Time, frame_id: str) -> Imu:
    msg = Imu()
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    _set_quaternion(msg.orientation, out["quaternion"])
    a, w = msg.linear_acceleration, msg.angular_velocity
    a.x, a.y, a.z = (float(v) for v in out["specific_force_body"])
    w.x, w.y, w.z = (float(v) for v in out["angular_velocity_body"])
    return msg


def odometry_arrays(msg: Odometry) -> dict[str, np.ndarray]:
    """position (3,), quaternion (4,) w,x,y,z, world velocity (3,), body rates (3,)."""
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    t = msg.twist.twist
    quaternion = np.array([q.w, q.x, q.y, q.z])
    norm = np.linalg.norm(quaternion)
    if norm > 0:
        quaternion = quaternion / norm
    velocity_body = np.array([t.linear.x, t.linear.y, t.linear.z])
    return {
        "position": np.array([p.x, p.y, p.z]), "quaternion": quaternion,
        "velocity_world": quat_to_matrix(quaternion) @ velocity_body,
        "angular_velocity_body": np.array([t.angular.x, t.angular.y, t.angular.z]),
    }


def pose_target(msg: PoseStamped) -> tuple[np.ndarray, float]:
    """Goal position (3,) and yaw [rad] from a PoseStamped."""
    p, q = msg.pose.position, msg.pose.orientation
    return np.array([p.x, p.y, p.z]), float(yaw_of(np.array([q.w, q.x, q.y, q.z])))
