"""The crash supervisor, as the Crazyflie firmware's: when a drone counts as crashed.

One rule for every simulator of the project (the ROS fleet simulator and in-process missions):
touching the ground while descending faster than ``landing_speed`` or tilted more than
``contact_tilt_deg``, or tilting past ``tilt_deg`` anywhere, is a crash; a non-finite state, or one
outside the box (``max_distance``, ``max_speed``, below ``min_height``), is a runaway state, which a
simulator must never report as a flight. And the landed state: a drone resting on the ground with
its goal on the ground idles with its motors off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CrashLimits:
    """When the supervisor marks a drone crashed."""

    landing_speed: float = 1.5  # m/s: touching the ground while descending faster is a crash
    contact_tilt_deg: float = 60.0  # touching the ground tilted more than this is a crash
    tilt_deg: float = 90.0  # tilted more than this anywhere (upside down) is a crash
    max_distance: float = 100.0  # m: farther from the origin is a runaway state
    max_speed: float = 50.0  # m/s: faster is a runaway state
    min_height: float = -0.5  # m: below the ground is a runaway state (the body lost its collisions)

    def __post_init__(self):
        for name in ("landing_speed", "max_distance", "max_speed"):
            if not getattr(self, name) > 0:
                raise ValueError(f"crash limit {name} must be > 0, got {getattr(self, name)}")
        for name in ("contact_tilt_deg", "tilt_deg"):
            if not 0 < getattr(self, name) <= 180:
                raise ValueError(f"crash limit {name} must be in (0, 180] degrees, got {getattr(self, name)}")


def tilt_deg(quaternion: np.ndarray) -> np.ndarray:
    """Angle [deg] between body z and world z, quaternions (N, 4) w, x, y, z."""
    qx, qy = quaternion[:, 1], quaternion[:, 2]
    return np.degrees(np.arccos(np.clip(1 - 2 * (qx * qx + qy * qy), -1.0, 1.0)))


def crash_reasons(previous_velocity: np.ndarray, position: np.ndarray, velocity: np.ndarray,
                  quaternion: np.ndarray, on_ground: np.ndarray, limits: CrashLimits) -> tuple[list[str], np.ndarray]:
    """Per drone '' or why it crashed in the step that led from ``previous_velocity`` to this state
    (an impact stops the drone, so the faster descent of the two counts), and the runaway mask.
    ``on_ground`` (N,) bool: in contact with the ground now."""
    finite = np.isfinite(position).all(-1) & np.isfinite(velocity).all(-1) & np.isfinite(quaternion).all(-1)
    with np.errstate(invalid="ignore"):
        runaway = ~finite | (np.linalg.norm(position, axis=-1) > limits.max_distance) \
            | (np.linalg.norm(velocity, axis=-1) > limits.max_speed) | (position[:, 2] < limits.min_height)
        tilt = tilt_deg(quaternion)
        descent = np.maximum(-previous_velocity[:, 2], -velocity[:, 2])
    reasons = []
    for i in range(len(position)):
        if runaway[i]:
            reasons.append(f"runaway state (position {np.round(position[i], 1).tolist()} m, "
                           f"velocity {np.round(velocity[i], 1).tolist()} m/s)")
        elif tilt[i] > limits.tilt_deg:
            reasons.append(f"tipped over ({tilt[i]:.0f} deg tilt)")
        elif on_ground[i] and descent[i] > limits.landing_speed:
            reasons.append(f"hit the ground at {descent[i]:.1f} m/s")
        elif on_ground[i] and tilt[i] > limits.contact_tilt_deg:
            reasons.append(f"touched the ground tilted {tilt[i]:.0f} deg")
        else:
            reasons.append("")
    return reasons, runaway


IDLE_HEIGHT = 0.05  # m above the ground: a drone and its goal both lower than this idle, motors off


def idles_on_ground(goal_height, height, idle_height: float = IDLE_HEIGHT):
    """True where a drone rests on the ground with its goal on the ground (heights above the
    take-off point): its motors stay off, as a Crazyflie's before take-off and after landing. The
    network never learnt to sit on the ground, so it must not be left flying there."""
    return (np.asarray(goal_height) < idle_height) & (np.asarray(height) < idle_height)
