"""The CTBR action of the task (docs/ctbr.md): network outputs in [-1, 1] -> firmware rate-mode setpoints.

Plain numbers and numpy, free of torch, so the numpy PID guide (control/pid.py) uses the same scaling as FlightEnv.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import ConfigError


@dataclass(frozen=True)
class CtbrScaling:
    """Action u (N, 4) in [-1, 1] -> setpoint [thrust, p, q, r]: thrust = (u0 + 1) / 2 (the PWM ratio),
    rates = u_i * max rate.

    The thrust map is the motor task's w_cmd = (a + 1) / 2, so under the firmware model's PWM ratio =
    w_cmd the hovering thrust output equals the motor task's hover command (cf21: 0.320). The firmware's
    rate mode limits no rate (the gyro saturates at 2000 deg/s = 34.9 rad/s); these limits cover the PID
    guide's own rate commands (config/controllers/pid.yaml: 13.8 and 4.3 rad/s) so that it can teach, and
    go no wider, to keep the network's resolution where flight happens.
    """

    max_rate_xy: float = 14.0  # rad/s, roll and pitch rate at |u| = 1
    max_rate_z: float = 4.5  # rad/s, yaw rate at |u| = 1

    def __post_init__(self):
        if self.max_rate_xy <= 0 or self.max_rate_z <= 0:
            raise ConfigError(f"ctbr max rates must be > 0, got {self.max_rate_xy}, {self.max_rate_z}")

    @property
    def scale(self) -> tuple[float, float, float, float]:
        """setpoint = u * scale + offset, per column."""
        return (0.5, self.max_rate_xy, self.max_rate_xy, self.max_rate_z)

    @property
    def offset(self) -> tuple[float, float, float, float]:
        return (0.5, 0.0, 0.0, 0.0)

    # The action that idles on the ground: thrust 0 (the firmware stops the motors), no rates.
    IDLE = (-1.0, 0.0, 0.0, 0.0)

    def setpoint(self, action) -> np.ndarray:
        """[thrust (PWM ratio), p, q, r (rad/s)] of outputs u (..., 4) in [-1, 1] (numpy)."""
        return np.asarray(action, dtype=np.float64) * self.scale + self.offset
