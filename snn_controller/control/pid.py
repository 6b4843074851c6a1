"""Cascaded PID controller: position -> attitude -> body rates -> per-rotor commands.

Batched numpy (N drones) and free of torch, so the deployment path and the ROS nodes can
use it without the training stack. It is the guide for the spiking policy's warm-up and the
failsafe, and it flies drones through the ROS ``pid_controller`` node.

Loops (all gains per second, SI units):
1. position:  a_cmd = kp e_p + ki int(e_p) + kd (v_ref - v), horizontal part clipped to
   ``max_tilt_deg`` worth of acceleration; thrust vector F = m (a_cmd + g z).
2. attitude (tilt-prioritised, Brescianini & D'Andrea 2018): the error quaternion
   q_e = q^-1 q_des is split into a tilt part and a yaw part; omega_des = 2 k_tilt q_tilt,xy + 2 k_yaw q_yaw,z,
   so the drone rights itself before it turns, and can recover from any tilt.
3. rates: tau = I (k_rate (omega_des - omega)) + omega x I omega.
4. mixer with priorities: collective thrust and roll/pitch are kept, yaw gets what is left
   within the rotors' thrust range; thrust is inverted through the drone's thrust curve.
5. motor lag: a model of the rotor lag, fed with the controller's own commands, adds a lead
   of ``lag_compensation`` times the dead-beat correction.
With a :class:`~snn_controller.task.ctbr.CtbrScaling` (``ctbr=``) it stops after loop 2 and returns the
CTBR action of the task (docs/ctbr.md): the collective thrust as the rotor speed that makes it (the
firmware model's PWM ratio) and the body-rate setpoint, for the firmware's rate loop to track.
Observation noise is filtered by a fixed-gain position/velocity observer in the error frame.

Loop delay (``delay_compensation`` = d control steps between the observation and the step its
command reaches the motors): the controller keeps the commands of the last d steps, which are
still on their way, and predicts the state at the moment its new command takes effect (a Smith
predictor): the rotor model runs those commands through the motor lag, and the rigid body is
integrated d steps with the thrust and torques they make. The loops then act on the predicted
state; the rotor model is fed each command d steps late, when it reaches the motors. d is the
gains file's, or per drone (:meth:`PIDController.set_delay_compensation`): a privileged guide in
training is told each episode's true delay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..config import build, load_yaml, package_root
from ..sim.drone import DroneModel
from ..sim.rotations import matrix_to_quat, quat_multiply
from ..task.ctbr import CtbrScaling
from ..task.observation import OBS_DIM


@dataclass(frozen=True)
class PIDGains:
    """Gains of the cascaded controller; the values live in config/controllers/pid.yaml."""

    kp_xy: float  # 1/s^2
    kp_z: float
    kd_xy: float  # 1/s
    kd_z: float
    ki_xy: float  # 1/s^3
    ki_z: float
    integral_limit: float  # m s, per axis
    integral_zone: float  # m, integrate only while the position error is smaller
    max_tilt_deg: float  # horizontal acceleration limit as a tilt angle
    max_accel_z: float  # m/s^2, vertical acceleration command limit
    k_tilt: float  # 1/s, tilt angle error -> body rate
    k_yaw: float  # 1/s
    max_rate_xy: float  # rad/s, body rate command limit
    max_rate_z: float
    k_rate_xy: float  # 1/s, rate error -> angular acceleration
    k_rate_z: float
    lag_compensation: float  # fraction of the dead-beat motor lead (0: none, 1: dead-beat)
    observer_position_gain: float  # per step, position correction of the observer (1: no filter)
    observer_velocity_gain: float  # per step, velocity correction from the measured velocity
    observer_cross_gain: float  # per step, velocity correction from the position innovation
    delay_compensation: int = 0  # control steps of loop delay the controller predicts across (0: none)

    def __post_init__(self):
        if self.delay_compensation < 0:
            raise ValueError(f"delay_compensation must be >= 0 control steps, got {self.delay_compensation}")


def load_pid_gains(path=None) -> PIDGains:
    """Gains from a YAML file; default: the package's config/controllers/pid.yaml."""
    path = path or package_root() / "config" / "controllers" / "pid.yaml"
    return build(PIDGains, load_yaml(path), str(path))


class PIDController:
    """Batched cascaded controller for ``n`` drones of one model.

    A controller (control/handover.py): call with an :class:`~snn_controller.task.observation.Observation`
    of N drones (it reads the named views of the actor observation and ``target_yaw`` [rad]);
    optional ``target_velocity`` (N, 3) and ``target_acceleration`` (N, 3) [m/s^2, world], a
    feed-forward added to the position loop's acceleration (a trajectory's). Returns motor commands
    (N, 4) in [-1, 1], or with ``ctbr`` the CTBR action (N, 4) in [-1, 1] in that scaling.
    ``reset(mask)`` clears the state of some drones.

    With ``ctbr`` the delay compensation is off: its predictor runs motor commands in flight through the
    rotor lag; predicting across CTBR setpoints would need the firmware's rate loop in it (not done).
    """

    def __init__(self, model: DroneModel, n: int = 1, dt: float = 0.01, gains: PIDGains | None = None,
                 ctbr: CtbrScaling | None = None):
        self.model, self.n, self.dt, self.ctbr = model, n, dt, ctbr
        self.gains = gains or load_pid_gains()
        if ctbr is not None:
            self.gains = replace(self.gains, delay_compensation=0)
        g = self.gains
        r = np.array(model.rotor_positions)
        d = np.array(model.rotor_directions)
        # [f, tau_x, tau_y, tau_z] = A @ T
        self.allocation = np.stack([np.ones(4), r[:, 1], -r[:, 0], d * model.torque_to_thrust])
        self.allocation_inv = np.linalg.inv(self.allocation)
        c0, c1, c2 = model.thrust_coefficients
        w_min_thrust = min(max(-c1 / (2 * c2), 0.0), 1.0) if c2 else 0.0
        self.thrust_min = max(model.thrust(w_min_thrust), 0.0)
        self.thrust_max = model.thrust(1.0)
        self.inertia = np.array(model.inertia)
        tau = model.motor_time_constant
        self.motor_blend = 1 - math.exp(-dt / tau) if tau > 0 else 1.0
        self.max_accel_xy = model.gravity * math.tan(math.radians(g.max_tilt_deg))
        self.delay_steps = np.full(n, g.delay_compensation, dtype=np.int64)  # per drone
        self.in_flight = np.zeros((n, g.delay_compensation, 4))
        self.reset()

    def set_delay_compensation(self, steps, mask=None) -> None:
        """Predict across ``steps`` (scalar or (N,)) control steps of loop delay, for all drones or
        those where ``mask`` is True; their commands in flight restart at hover."""
        rows = np.ones(self.n, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        steps = np.broadcast_to(np.asarray(steps, dtype=np.int64), (self.n,))
        if (steps < 0).any():
            raise ValueError(f"delay compensation must be >= 0 control steps, got {steps.min()}")
        if self.ctbr is not None and steps.any():
            raise ValueError("the CTBR output has no delay compensation (see PIDController)")
        self.delay_steps[rows] = steps[rows]
        grow = int(self.delay_steps.max()) - self.in_flight.shape[1]
        if grow > 0:  # more room for commands in flight (the newest stay last)
            self.in_flight = np.concatenate([np.zeros((self.n, grow, 4)), self.in_flight], 1)
        self.in_flight[rows] = self.model.hover_rotor_speed

    def reset(self, mask=None) -> None:
        """Zero the integrators and observers (all drones, or those where ``mask`` is True)."""
        if mask is None:
            self.integral = np.zeros((self.n, 3))
            self.rotor_estimate = np.full((self.n, 4), self.model.hover_rotor_speed)
            self.p_hat = np.zeros((self.n, 3))
            self.v_hat = np.zeros((self.n, 3))
            self.initialised = np.zeros(self.n, dtype=bool)
            self.last_accel = np.zeros((self.n, 3))
            self.in_flight[:] = self.model.hover_rotor_speed  # rotor speed commands of the last steps, newest last
            return
        mask = np.asarray(mask, dtype=bool)
        self.integral[mask] = 0
        self.rotor_estimate[mask] = self.model.hover_rotor_speed
        self.in_flight[mask] = self.model.hover_rotor_speed
        self.initialised[mask] = False
        self.last_accel[mask] = 0

    def _observe(self, p_err, v):
        """Fixed-gain observer of position error and velocity (filters observation noise)."""
        g, dt = self.gains, self.dt
        fresh = ~self.initialised
        self.p_hat[fresh], self.v_hat[fresh] = p_err[fresh], v[fresh]
        self.initialised[:] = True
        p_pred = self.p_hat + self.v_hat * dt + 0.5 * self.last_accel * dt * dt
        v_pred = self.v_hat + self.last_accel * dt
        innov = p_err - p_pred
        self.p_hat = p_pred + g.observer_position_gain * innov
        self.v_hat = v_pred + g.observer_velocity_gain * (v - v_pred) + g.observer_cross_gain * innov / dt
        return self.p_hat, self.v_hat

    def __call__(self, obs, target_velocity: np.ndarray | None = None,
                 target_acceleration: np.ndarray | None = None) -> np.ndarray:
        if np.shape(obs.actor) != (self.n, OBS_DIM):
            raise ValueError(f"observation must have shape ({self.n}, {OBS_DIM}), got {np.shape(obs.actor)}")
        g, m = self.gains, self.model
        as64 = lambda x: np.asarray(x, dtype=np.float64)  # noqa: E731
        rot, omega = as64(obs.rotation), as64(obs.angular_velocity)
        p_err, v = self._observe(as64(obs.position_error), as64(obs.velocity))
        rotor = self.rotor_estimate
        if self.delay_steps.any():
            p_err, v, rot, omega, rotor = self._predict(p_err, v, rot, omega)
        v_ref = np.zeros((self.n, 3)) if target_velocity is None else np.asarray(target_velocity)

        # 1. position loop -> desired acceleration
        kp = np.array([g.kp_xy, g.kp_xy, g.kp_z])
        kd = np.array([g.kd_xy, g.kd_xy, g.kd_z])
        ki = np.array([g.ki_xy, g.ki_xy, g.ki_z])
        # Integrate only near the target: during a transient the integral would only wind up.
        near = np.linalg.norm(p_err, axis=-1, keepdims=True) < g.integral_zone
        self.integral = np.clip(self.integral - near * p_err * self.dt, -g.integral_limit, g.integral_limit)
        accel = -kp * p_err + kd * (v_ref - v) + ki * self.integral
        if target_acceleration is not None:
            accel = accel + target_acceleration
        horiz = np.linalg.norm(accel[:, :2], axis=-1, keepdims=True)
        accel[:, :2] *= np.minimum(1.0, self.max_accel_xy / np.maximum(horiz, 1e-9))
        accel[:, 2] = np.clip(accel[:, 2], -0.8 * m.gravity, g.max_accel_z)
        force = m.mass * (accel + np.array([0.0, 0.0, m.gravity]))
        body_z = rot[:, :, 2]
        collective = np.maximum(np.einsum("ni,ni->n", force, body_z), 4 * self.thrust_min)
        self.last_accel = body_z * (collective / m.mass)[:, None] - np.array([0.0, 0.0, m.gravity])

        # 2. desired attitude from thrust direction and yaw, tilt-prioritised error
        yaw = np.zeros(self.n) if obs.target_yaw is None else as64(obs.target_yaw)
        z_des = force / np.linalg.norm(force, axis=-1, keepdims=True)
        x_c = np.stack([np.cos(yaw), np.sin(yaw), np.zeros(self.n)], -1)
        y_des = np.cross(z_des, x_c)
        y_des /= np.linalg.norm(y_des, axis=-1, keepdims=True)
        x_des = np.cross(y_des, z_des)
        q_des = matrix_to_quat(np.stack([x_des, y_des, z_des], -1))
        q = matrix_to_quat(rot)
        q_e = quat_multiply(q * np.array([1, -1, -1, -1]), q_des)  # q^-1 q_des, in the body frame
        w, x, y, z = np.moveaxis(q_e, -1, 0)
        norm_wz = np.sqrt(w * w + z * z) + 1e-12
        tilt_x = (w * x - y * z) / norm_wz
        tilt_y = (w * y + x * z) / norm_wz
        yaw_z = np.sign(w + 1e-12) * z / norm_wz
        rate_des = np.stack([2 * g.k_tilt * tilt_x, 2 * g.k_tilt * tilt_y, 2 * g.k_yaw * yaw_z], -1)
        rate_des = np.clip(rate_des, [-g.max_rate_xy, -g.max_rate_xy, -g.max_rate_z],
                           [g.max_rate_xy, g.max_rate_xy, g.max_rate_z])
        if self.ctbr is not None:
            return self._ctbr_action(collective, rate_des)

        # 3. rate loop -> body torque
        k_rate = np.array([g.k_rate_xy, g.k_rate_xy, g.k_rate_z])
        i_omega = self.inertia * omega
        torque = self.inertia * (k_rate * (rate_des - omega)) + np.cross(omega, i_omega)

        # 4. mixer with priorities
        thrust = self._mix(collective, torque)
        w_des = self._rotor_speed_for(thrust)

        # 5. motor lag lead, from the rotor speed when this command arrives
        w_cmd = w_des
        if self.motor_blend < 1.0:
            lead = g.lag_compensation * (1 / self.motor_blend - 1)
            w_cmd = np.clip(w_des + lead * (w_des - rotor), 0.0, 1.0)
        # the rotor model takes the command that reaches the motors now: this one, or the oldest in flight
        slots = self.in_flight.shape[1]
        arriving = w_cmd
        if slots:
            sent_then = self.in_flight[np.arange(self.n), np.clip(slots - self.delay_steps, 0, slots - 1)]
            arriving = np.where((self.delay_steps > 0)[:, None], sent_then, w_cmd)
            self.in_flight = np.concatenate([self.in_flight[:, 1:], w_cmd[:, None]], 1)
        self.rotor_estimate = self.rotor_estimate + (arriving - self.rotor_estimate) * self.motor_blend
        return 2 * w_cmd - 1

    def _ctbr_action(self, collective, rate_des):
        """Collective thrust and body rates as the CTBR action: thrust output 2 w - 1 with w the rotor
        speed giving a quarter of the collective on each rotor (PWM ratio = w_cmd), rates / max rates."""
        w = self._rotor_speed_for(np.clip(collective / 4, self.thrust_min, self.thrust_max))
        scale, offset = np.array(self.ctbr.scale), np.array(self.ctbr.offset)
        setpoint = np.concatenate([w[:, None], rate_des], -1)
        return np.clip((setpoint - offset) / scale, -1.0, 1.0)

    def _predict(self, p_err, v, rot, omega):
        """The state each drone's delay steps ahead under its commands in flight (Euler steps)."""
        m, dt = self.model, self.dt
        c0, c1, c2 = m.thrust_coefficients
        gravity = np.array([0.0, 0.0, m.gravity])
        rotor = self.rotor_estimate
        slots, rows = self.in_flight.shape[1], np.arange(self.n)
        for k in range(int(self.delay_steps.max())):
            going = (k < self.delay_steps)[:, None]  # drones still predicting at step k
            sent = self.in_flight[rows, np.clip(slots - self.delay_steps + k, 0, slots - 1)]
            force_torque = (c0 + c1 * rotor + c2 * rotor * rotor) @ self.allocation.T  # [f, tau_x, tau_y, tau_z]
            accel = rot[:, :, 2] * (force_torque[:, :1] / m.mass) - gravity
            domega = (force_torque[:, 1:] - np.cross(omega, self.inertia * omega)) / self.inertia
            p_err = np.where(going, p_err + v * dt + 0.5 * accel * dt * dt, p_err)
            v = np.where(going, v + accel * dt, v)
            rot = np.where(going[:, :, None], rot @ _rotation(omega * dt), rot)
            omega = np.where(going, omega + domega * dt, omega)
            rotor = np.where(going, rotor + (sent - rotor) * self.motor_blend, rotor)
        return p_err, v, rot, omega, rotor

    def _mix(self, collective, torque):
        lo, hi = self.thrust_min, self.thrust_max
        a_inv = self.allocation_inv
        base = np.zeros((self.n, 4))
        base[:, 0] = collective
        base[:, 1:3] = torque[:, :2]
        t_rp = base @ a_inv.T  # collective + roll/pitch
        mean = t_rp.mean(-1, keepdims=True)
        diff = t_rp - mean
        span = diff.max(-1, keepdims=True) - diff.min(-1, keepdims=True)
        diff *= np.minimum(1.0, (hi - lo) / np.maximum(span, 1e-12))  # keep roll/pitch ratio, shrink if needed
        mean = np.clip(mean, lo - diff.min(-1, keepdims=True), hi - diff.max(-1, keepdims=True))  # then collective
        t_rp = mean + diff
        yaw_basis = np.zeros((self.n, 4))
        yaw_basis[:, 3] = torque[:, 2]
        d_yaw = yaw_basis @ a_inv.T
        with np.errstate(divide="ignore", invalid="ignore"):
            room = np.where(d_yaw > 0, (hi - t_rp) / d_yaw, np.where(d_yaw < 0, (lo - t_rp) / d_yaw, np.inf))
        scale = np.clip(room.min(-1, keepdims=True), 0.0, 1.0)  # yaw gets what is left
        return np.clip(t_rp + scale * d_yaw, lo, hi)

    def _rotor_speed_for(self, thrust):
        c0, c1, c2 = self.model.thrust_coefficients
        if c2 == 0:
            return np.clip((thrust - c0) / c1, 0.0, 1.0)
        disc = np.maximum(c1 * c1 - 4 * c2 * (c0 - thrust), 0.0)
        return np.clip((-c1 + np.sqrt(disc)) / (2 * c2), 0.0, 1.0)


def _rotation(angle_axis: np.ndarray) -> np.ndarray:
    """Rotation matrices (N, 3, 3) of rotation vectors (N, 3) [rad] (Rodrigues)."""
    angle = np.linalg.norm(angle_axis, axis=-1)[:, None, None]
    x, y, z = np.moveaxis(angle_axis, -1, 0)
    zero = np.zeros_like(x)
    k = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(-1, 3, 3)
    safe = np.maximum(angle, 1e-12)
    return np.eye(3) + np.sin(angle) / safe * k + (1 - np.cos(angle)) / (safe * safe) * (k @ k)
