"""A model of the stock Crazyflie firmware's rate mode, in front of either engine (ROS-free, batched).

An off-board CTBR policy (collective thrust + body rates, sent through the commander at 50-100 Hz)
flies through the firmware's PID controller (``controller_pid.c``) in rate mode: at
``ATTITUDE_RATE`` = 500 Hz (``stabilizer_types.h``) the attitude-rate PIDs (``pid.c``,
``attitude_pid_controller.c``) turn the rate error into int16 roll/pitch/yaw outputs, and the legacy
power distribution (``power_distribution_quadrotor.c``) mixes them with the thrust into four uint16
PWM values. :class:`RateController` does exactly that arithmetic for N drones; :class:`RateControlledEngine`
runs it ``round(dt * rate_hz)`` times per control step on an inner engine stepped at ``1 / rate_hz``.

Firmware: bitcraze/crazyflie-firmware at commit 2a18fc29.

Units and conventions
---------------------
Setpoint (N, 4): ``[thrust, p, q, r]``.
  * ``thrust``: ``thrust="normalized"`` (default) a PWM ratio in [0, 1] (x 65535), or ``thrust="pwm"``
    the commander's uint16 value 0..65535. As ``crtp_commander_rpyt.c``: truncated to an integer,
    below ``MIN_THRUST`` = 1000 it is 0 (motors off, PIDs reset), above ``MAX_THRUST`` = 60000 capped.
  * ``p, q, r``: desired body rates [rad/s] about our body axes x forward, y left, z up (the
    firmware's body frame too; DroneState.angular_velocity). The firmware works in deg/s with its own
    signs (``controller_pid.c``): roll rate = +p, **pitch rate = -q** (it feeds ``-gyro.y`` to the
    pitch-rate PID, so its positive pitch is nose up), yaw rate = +r. The conversion is done here.
    On the radio, ``crtp_commander_rpyt.c`` also inverts the legacy yaw-rate input
    (``attitudeRate.yaw = -values->yaw``): a client would send (deg(p), -deg(q), -deg(r)) as
    (roll, pitch, yaw) in rate mode - check the client library's own sign flips in the next step.

Per 500 Hz tick (``controllerPid`` with ``mode.roll = mode.pitch = modeVelocity``, ``mode.yaw =
modeVelocity``, ``mode.z = modeDisable``):
  1. yaw is **not** a pure rate loop: the yaw-rate setpoint moves the yaw attitude setpoint
     (``attitudeDesired.yaw += yawrate * dt``, wrapped to +-180 deg; ``YAW_MAX_DELTA`` = 0: no clamp)
     and the yaw attitude PID (kp 6, ki 1, kd 0.35, ilimit 360) gives the yaw-rate setpoint of the yaw-rate
     PID. The estimator's yaw is taken as the true yaw (ZYX Euler angle of the quaternion).
  2. rate PIDs (``pidUpdate``): e = desired - measured; P = kp e; D = kd * -(measured - prev) / dt
     (derivative of the measurement, no filter: ``ATTITUDE_RATE_LPF_ENABLE`` false for cf2,
     ``CONTROLLER_PID_FILTER_ALL`` off by default); integ = clamp(integ + e dt, +-ilimit); I = ki integ;
     no output limit; then ``saturateSignedInt16`` (+-32767, C truncation toward zero).
     Gains (``platform_defaults_cf2.h``): roll/pitch rate kp 250, ki 500, kd 2.5, ilimit 33.3;
     yaw rate kp 120, ki 16.7, kd 0, ilimit 166.7.
  3. ``control->yaw = -yawOutput``; with thrust 0 all outputs are 0 and the PIDs are reinitialised.
  4. legacy mix: r = (int16)(roll / 2), p = (int16)(pitch / 2);
     m1 = T - r + p + yaw, m2 = T - r - p - yaw, m3 = T + r - p + yaw, m4 = T + r + p - yaw (float,
     stored in int32: truncation); ``powerDistributionCap``: if the largest exceeds 65535 all four drop
     by the excess, then negatives become 0 (idle thrust 0).

Motor order: the mix puts M1 front right, M2 back right, M3 back left, M4 front left (roll output
raises M3, M4 = +y; pitch (nose up) raises M1, M4 = +x) and the yaw output raises M2, M4 for a
positive (counter-clockwise) yaw rate. config/drones/cf21.yaml has the same order (rotor 0 at
(+x, -y), 1 (-x, -y), 2 (-x, +y), 3 (+x, +y)) and rotor_directions (-1, 1, -1, 1) put the positive yaw
reaction torque on M2, M4: the firmware's m1..m4 are our rotors 0..3 with no remapping
(test/test_firmware.py checks the signs against the model's torque map).

PWM to rotor speed (an assumption): the PWM ratio m / 65535 is taken as the normalised rotor-speed
command, w_cmd = m / 65535, i.e. motor command a = 2 m / 65535 - 1; the engine's first-order motor
lag and thrust curve T(w) do the rest. Not modelled: the thrust battery compensation
(``CONFIG_ENABLE_THRUST_BAT_COMPENSATED``, PWM -> voltage -> thrust), motor deadband / idle thrust,
the IMU's gyro low-pass filter and the state estimator (true rates and yaw are used), sensor noise and
delay, radio latency, and the 1 kHz stabilizer loop's sub-ticks (the controller only changes on the
500 Hz attitude ticks, so the motors see a 500 Hz zero-order hold either way).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PWM_MAX = 65535  # UINT16_MAX
INT16_LIMIT = 32767  # saturateSignedInt16 clamps to +-INT16_MAX
MIN_THRUST, MAX_THRUST = 1000, 60000  # crtp_commander_rpyt.c
ATTITUDE_RATE = 500  # Hz, stabilizer_types.h


@dataclass(frozen=True)
class PidGains:
    kp: float
    ki: float
    kd: float
    integration_limit: float


# platform_defaults_cf2.h
ROLL_RATE = PidGains(250.0, 500.0, 2.5, 33.3)
PITCH_RATE = PidGains(250.0, 500.0, 2.5, 33.3)
YAW_RATE = PidGains(120.0, 16.7, 0.0, 166.7)
YAW_ATTITUDE = PidGains(6.0, 1.0, 0.35, 360.0)


def _wrap180(x: torch.Tensor) -> torch.Tensor:
    """The firmware's single +-360 correction (pid.c for the yaw error, capAngle for the setpoint)."""
    return torch.where(x > 180.0, x - 360.0, torch.where(x < -180.0, x + 360.0, x))


def yaw_deg(quaternion: torch.Tensor) -> torch.Tensor:
    """ZYX yaw [deg] of body->world quaternions (w, x, y, z), (N,)."""
    w, x, y, z = quaternion.unbind(-1)
    return torch.rad2deg(torch.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


class RateController:
    """The firmware's rate-mode PID and legacy power distribution for N drones (see the module doc).

    State per drone: rate-PID integrals and previous measurements (deg/s), the yaw attitude PID's
    integral and previous yaw (deg), the yaw attitude setpoint (deg). A drone after :meth:`reset` is
    reinitialised on its next tick as ``controllerPidReinitialize`` does on a setpoint-mode change:
    integrals 0, previous rates 0 (so a drone already rotating gets the firmware's one-tick D kick),
    previous yaw = yaw; the yaw setpoint is set to the current yaw.
    """

    def __init__(self, n: int, rate_hz: float = ATTITUDE_RATE, thrust: str = "normalized",
                 dtype: torch.dtype = torch.float64):
        if thrust not in ("normalized", "pwm"):
            raise ValueError(f"thrust must be 'normalized' or 'pwm', got {thrust!r}")
        self.n, self.dt, self.thrust_units, self.dtype = n, 1.0 / rate_hz, thrust, dtype
        g = (ROLL_RATE, PITCH_RATE, YAW_RATE)
        t = lambda v: torch.tensor(v, dtype=dtype)  # noqa: E731
        self.kp, self.ki, self.kd = t([x.kp for x in g]), t([x.ki for x in g]), t([x.kd for x in g])
        self.ilimit = t([x.integration_limit for x in g])
        self.rate_integral = torch.zeros(n, 3, dtype=dtype)
        self.rate_previous = torch.zeros(n, 3, dtype=dtype)
        self.yaw_integral = torch.zeros(n, dtype=dtype)
        self.yaw_previous = torch.zeros(n, dtype=dtype)
        self.yaw_setpoint = torch.zeros(n, dtype=dtype)
        self.fresh = torch.ones(n, dtype=torch.bool)
        # PWM floor of powerDistributionCap per drone: CONFIG_MOTORS_DEFAULT_IDLE_THRUST on a firmware that
        # requires arming, while the motors may run (set by the caller); 0 otherwise (the default)
        self.idle_thrust = torch.zeros(n, dtype=dtype)

    def reset(self, mask=None) -> None:
        """Reinitialise all drones, or those selected by ``mask`` (bool mask or indices), on their next tick."""
        if mask is None:
            self.fresh[:] = True
        else:
            self.fresh[mask] = True

    def _reinitialize(self, mask: torch.Tensor, yaw: torch.Tensor) -> None:
        m1 = mask[:, None]
        self.rate_integral = torch.where(m1, 0.0, self.rate_integral)
        self.rate_previous = torch.where(m1, 0.0, self.rate_previous)
        self.yaw_integral = torch.where(mask, 0.0, self.yaw_integral)
        self.yaw_previous = torch.where(mask, yaw, self.yaw_previous)

    def thrust_pwm(self, thrust: torch.Tensor) -> torch.Tensor:
        """The commander's thrust: uint16 (truncated), 0 below MIN_THRUST, at most MAX_THRUST."""
        raw = thrust * PWM_MAX if self.thrust_units == "normalized" else thrust
        raw = torch.trunc(raw.clamp(0.0, PWM_MAX))
        return torch.where(raw < MIN_THRUST, torch.zeros_like(raw), raw.clamp(max=MAX_THRUST))

    def pwm(self, setpoint: torch.Tensor, body_rates: torch.Tensor, quaternion: torch.Tensor) -> torch.Tensor:
        """One 500 Hz tick: motor PWM (N, 4) in 0..65535 (float tensor of integers), updating the PID state.

        ``setpoint`` (N, 4) [thrust, p, q, r] (rad/s), ``body_rates`` (N, 3) measured rad/s (our body
        frame), ``quaternion`` (N, 4) body->world (w, x, y, z), for the yaw attitude loop."""
        setpoint, body_rates = setpoint.to(self.dtype), body_rates.to(self.dtype)
        if setpoint.shape != (self.n, 4) or body_rates.shape != (self.n, 3):
            raise ValueError(f"need setpoint ({self.n}, 4) and body_rates ({self.n}, 3), "
                             f"got {tuple(setpoint.shape)} and {tuple(body_rates.shape)}")
        yaw = yaw_deg(quaternion.to(self.dtype))
        sign = torch.tensor([1.0, -1.0, 1.0], dtype=self.dtype)  # controller_pid.c: (gyro.x, -gyro.y, gyro.z)
        measured = torch.rad2deg(body_rates) * sign
        wanted = torch.rad2deg(setpoint[:, 1:]) * sign
        fresh = self.fresh
        if fresh.any():
            self._reinitialize(fresh, yaw)
            self.yaw_setpoint = torch.where(fresh, yaw, self.yaw_setpoint)
            self.fresh = torch.zeros_like(fresh)
        dt = self.dt
        # yaw attitude loop (controllerPid, modeVelocity yaw; pidUpdate with isYawAngle)
        self.yaw_setpoint = _wrap180(self.yaw_setpoint + wanted[:, 2] * dt)
        a = YAW_ATTITUDE
        error = _wrap180(self.yaw_setpoint - yaw)
        delta = _wrap180(-(yaw - self.yaw_previous))
        self.yaw_integral = (self.yaw_integral + error * dt).clamp(-a.integration_limit, a.integration_limit)
        yaw_rate_wanted = a.kp * error + a.kd * delta / dt + a.ki * self.yaw_integral
        self.yaw_previous = yaw
        desired = torch.cat([wanted[:, :2], yaw_rate_wanted[:, None]], -1)
        # rate PIDs (pidUpdate, attitudeControllerCorrectRatePID)
        error = desired - measured
        derivative = -(measured - self.rate_previous) / dt
        self.rate_integral = torch.maximum(torch.minimum(self.rate_integral + error * dt, self.ilimit), -self.ilimit)
        out = self.kp * error + self.kd * derivative + self.ki * self.rate_integral
        self.rate_previous = measured
        out = torch.trunc(out.clamp(-INT16_LIMIT, INT16_LIMIT))  # saturateSignedInt16
        roll, pitch, yaw_out = out.unbind(-1)
        yaw_out = -yaw_out  # control->yaw = -control->yaw
        thrust = self.thrust_pwm(setpoint[:, 0])
        off = thrust == 0
        if off.any():  # controllerPid: thrust 0 -> zero outputs, reinitialise, yaw setpoint = yaw
            self._reinitialize(off, yaw)
            self.yaw_setpoint = torch.where(off, yaw, self.yaw_setpoint)
        # powerDistributionLegacy
        r, p = torch.trunc(roll / 2), torch.trunc(pitch / 2)
        motors = torch.stack([thrust - r + p + yaw_out, thrust - r - p - yaw_out,
                              thrust + r - p + yaw_out, thrust + r + p - yaw_out], -1)
        motors = torch.where(off[:, None], thrust[:, None].expand(-1, 4), torch.trunc(motors))
        # powerDistributionCap
        reduction = (motors.max(-1, keepdim=True).values - PWM_MAX).clamp(min=0)
        return torch.maximum(motors - reduction, self.idle_thrust[:, None])  # capMinThrust

    def motor_commands(self, setpoint: torch.Tensor, body_rates: torch.Tensor, quaternion: torch.Tensor) -> torch.Tensor:
        """One tick as motor commands (N, 4) in [-1, 1]: a = 2 PWM / 65535 - 1 (PWM ratio = w_cmd)."""
        return pwm_to_action(self.pwm(setpoint, body_rates, quaternion))


def pwm_to_action(pwm: torch.Tensor) -> torch.Tensor:
    return 2.0 * pwm / PWM_MAX - 1.0


class RateControlledEngine:
    """An engine that takes CTBR setpoints (N, 4) (see the module doc) instead of motor commands.

    ``engine``: an engine stepping at the rate-loop period ``1 / rate_hz`` (the control period ``dt``
    defaults to that and must be a whole number of its steps), or a factory ``f(inner_dt) -> engine``
    (then ``dt`` is required and the inner engine is built with ``dt / round(dt * rate_hz)``).
    One :meth:`step` runs the rate loop and one inner step per tick, ``inner_steps`` times, with the
    setpoint held. Same interface as the engines: reset/step/state/time/close/scale_dynamics.
    """

    def __init__(self, engine, dt: float | None = None, rate_hz: float = ATTITUDE_RATE, thrust: str = "normalized"):
        if callable(engine) and not hasattr(engine, "step"):
            if dt is None:
                raise ValueError("give the control period dt with an engine factory")
            self.inner_steps = max(1, round(dt * rate_hz))
            engine = engine(dt / self.inner_steps)
        else:
            dt = engine.dt if dt is None else dt
            self.inner_steps = max(1, round(dt / engine.dt))
            if abs(self.inner_steps * engine.dt - dt) > 1e-9 * dt:
                raise ValueError(f"dt={dt} is not a whole number of engine steps of {engine.dt}")
        if abs(engine.dt * rate_hz - 1) > 1e-6:
            raise ValueError(f"the inner engine steps at {engine.dt} s, the rate loop at {1 / rate_hz} s")
        self.engine, self.dt = engine, dt
        self.model, self.n = engine.model, engine.n
        self.dtype = getattr(engine, "dtype", torch.float64)
        self.controller = RateController(self.n, rate_hz=rate_hz, thrust=thrust, dtype=self.dtype)
        self.last_pwm = torch.zeros(self.n, 4, dtype=self.dtype)

    @property
    def state(self):
        return self.engine.state

    @property
    def time(self) -> float:
        return self.engine.time

    def scale_dynamics(self, *args, **kwargs) -> None:
        self.engine.scale_dynamics(*args, **kwargs)

    def reset(self, state, index=None):
        out = self.engine.reset(state, index)
        if index is None:
            self.controller.reset()
        else:
            mask = torch.zeros(self.n, dtype=torch.bool)
            mask[torch.as_tensor(index)] = True
            self.controller.reset(mask)
        return out

    @torch.no_grad()
    def step(self, setpoint: torch.Tensor):
        """Advance by ``dt`` under CTBR setpoints (N, 4) [thrust, p, q, r (rad/s)], held for the step."""
        setpoint = torch.as_tensor(setpoint)
        if setpoint.shape != (self.n, 4):
            raise ValueError(f"setpoint must have shape ({self.n}, 4), got {tuple(setpoint.shape)}")
        state = self.engine.state
        for _ in range(self.inner_steps):
            self.last_pwm = self.controller.pwm(setpoint, state.angular_velocity, state.quaternion)
            state = self.engine.step(pwm_to_action(self.last_pwm).to(self.dtype))
        return state

    def close(self) -> None:
        self.engine.close()


def hover_thrust(model) -> float:
    """Normalised thrust setpoint (PWM ratio) that holds a hover under the PWM = w_cmd assumption."""
    return model.hover_rotor_speed


__all__ = ["RateController", "RateControlledEngine", "PidGains", "pwm_to_action", "yaw_deg", "hover_thrust",
           "ROLL_RATE", "PITCH_RATE", "YAW_RATE", "YAW_ATTITUDE", "PWM_MAX"]
