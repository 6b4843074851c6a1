"""Message <-> array conversions (named functions, no logic)."""

from __future__ import annotations

import math

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import Imu

from ..geometry import quat_to_matrix, yaw_of


def time_msg(seconds: float) -> Time:
    sec = math.floor(seconds)
    return Time(sec=int(sec), nanosec=int(round((seconds - sec) * 1e9)) % 1_000_000_000)


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
