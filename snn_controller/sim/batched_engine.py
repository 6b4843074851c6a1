"""Batched rigid-body quadrotor model in torch: thousands of drones stepped at once.

Equations of motion (world frame z-up, body rates in the body frame, docs/task.md):

    T_i   = c0 + c1 w_i + c2 w_i^2                       rotor thrust [N]
    p'    = v
    v'    = R(q) (0, 0, sum T_i) / m - (0, 0, g)  [+ drag / m]
    q'    = 1/2 q (x) (0, omega)
    I omega' = tau - omega x I omega,   tau = sum r_i x (0, 0, T_i) + (0, 0, sum d_i k_tau T_i)
    w'    = (w_cmd - w) / tau_m                           (w = w_cmd at once when tau_m = 0)

with per-drone scales of m, I, T_i (and the yaw torque with it) and tau_m for domain randomisation
(:meth:`BatchedEngine.scale_dynamics`; 1 = the drone file's values),

integrated with one RK4 (or Euler) step per ``dt`` (``substeps`` splits it), quaternion
renormalised after each step, as in L2F. With ``ground`` a flat ground at z = 0 holds the body
centre at ``GROUND_CLEARANCE`` (pybullet's collision cylinder): a plastic contact that stops the
descent, levels the drone (keeping its yaw) and stops its rotation, so a drone can rest, take off and
land; it does not model bouncing or tipping over (pybullet does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .drone import DroneModel
from .state import DroneState, quaternion_to_matrix

GROUND_CLEARANCE = 0.01  # m: body centre above the ground at rest (half the collision cylinder's height)


@dataclass(frozen=True)
class _Constants:
    """The drone model as tensors on the engine's dtype (captured by the step function)."""

    thrust_c: torch.Tensor  # (3,)
    torque_map: torch.Tensor  # (4, 3): tau_body = T @ torque_map
    inertia: torch.Tensor  # (3,)
    rotor_z: torch.Tensor  # (4, 3) rotor positions (for ground effect heights)
    mass: float
    gravity: float
    motor_tau: float
    ground_effect: tuple | None  # (coefficient, prop_radius, height_clip)
    drag: torch.Tensor | None  # (3,) per-axis coefficients times max rad/s per unit w
    ground: bool  # a ground plane at z = 0


def _constants(model: DroneModel, dtype, ground_effect: bool, drag: bool, ground: bool) -> _Constants:
    r = torch.tensor(model.rotor_positions, dtype=dtype)
    dirs = torch.tensor(model.rotor_directions, dtype=dtype)
    torque_map = torch.stack([r[:, 1], -r[:, 0], dirs * model.torque_to_thrust], -1)
    if ground_effect and model.ground_effect is None:
        raise ValueError(f"drone '{model.name}' has no ground_effect parameters")
    if drag and model.drag is None:
        raise ValueError(f"drone '{model.name}' has no drag parameters")
    ge = None
    if ground_effect:
        g = model.ground_effect
        ge = (g.coefficient, g.prop_radius, g.height_clip)
    drag_c = None
    if drag:
        rad_per_w = model.max_rpm * 2 * torch.pi / 60
        drag_c = torch.tensor([model.drag.xy, model.drag.xy, model.drag.z], dtype=dtype) * rad_per_w
    return _Constants(
        thrust_c=torch.tensor(model.thrust_coefficients, dtype=dtype), torque_map=torque_map,
        inertia=torch.tensor(model.inertia, dtype=dtype), rotor_z=r, mass=model.mass,
        gravity=model.gravity, motor_tau=model.motor_time_constant, ground_effect=ge, drag=drag_c, ground=ground,
    )


def _derivative(c: _Constants, s: tuple, p, q, v, omega, w, w_cmd):
    """Time derivative of the state (p, q, v, omega, w) under rotor command w_cmd; ``s`` holds the
    per-drone scales (mass, inertia, thrust, motor time constant), each (N, 1)."""
    mass_s, inertia_s, thrust_s, tau_s = s
    thrust = (c.thrust_c[0] + w * (c.thrust_c[1] + w * c.thrust_c[2])) * thrust_s  # (N, 4)
    qw, qx, qy, qz = q.unbind(-1)
    if c.ground_effect is not None:
        coeff, radius, clip = c.ground_effect
        # rotor height = p_z + (R r_i)_z, with R's last row (2(xz - wy), 2(yz + wx), 1 - 2(x^2 + y^2))
        r3 = torch.stack([2 * (qx * qz - qw * qy), 2 * (qy * qz + qw * qx), 1 - 2 * (qx * qx + qy * qy)], -1)
        height = (p[:, 2:3] + r3 @ c.rotor_z.T).clamp(min=clip)
        upright = (r3[:, 2:3] > 0).to(thrust.dtype)  # gym-pybullet-drones applies it only while |roll|,|pitch| < 90 deg
        thrust = thrust * (1 + upright * coeff * (radius / (4 * height)) ** 2)
    collective = thrust.sum(-1)
    torque = thrust @ c.torque_map
    # body z axis in world coordinates = third column of R(q)
    body_z = torch.stack([2 * (qx * qz + qw * qy), 2 * (qy * qz - qw * qx), 1 - 2 * (qx * qx + qy * qy)], -1)
    mass = c.mass * mass_s  # (N, 1)
    accel = body_z * collective[:, None] / mass
    accel = accel - torch.tensor([0.0, 0.0, c.gravity], dtype=p.dtype)
    if c.drag is not None:
        rot = quaternion_to_matrix(q)
        v_body = (rot.transpose(-1, -2) @ v[..., None])[..., 0]
        drag_body = -c.drag * w.sum(-1, keepdim=True) * v_body
        accel = accel + (rot @ drag_body[..., None])[..., 0] / mass
    wx, wy, wz = omega.unbind(-1)
    dq = 0.5 * torch.stack([
        -qx * wx - qy * wy - qz * wz,
        qw * wx + qy * wz - qz * wy,
        qw * wy - qx * wz + qz * wx,
        qw * wz + qx * wy - qy * wx,
    ], -1)
    inertia = c.inertia * inertia_s  # (N, 3)
    domega = (torque - torch.linalg.cross(omega, omega * inertia)) / inertia
    dw = (w_cmd - w) / (c.motor_tau * tau_s) if c.motor_tau > 0 else torch.zeros_like(w)
    return v, dq, accel, domega, dw


def _rk4(c: _Constants, s: tuple, dt: float, x, w_cmd):
    k1 = _derivative(c, s, *x, w_cmd)
    k2 = _derivative(c, s, *(a + 0.5 * dt * b for a, b in zip(x, k1)), w_cmd)
    k3 = _derivative(c, s, *(a + 0.5 * dt * b for a, b in zip(x, k2)), w_cmd)
    k4 = _derivative(c, s, *(a + dt * b for a, b in zip(x, k3)), w_cmd)
    return tuple(a + dt / 6 * (b1 + 2 * b2 + 2 * b3 + b4) for a, b1, b2, b3, b4 in zip(x, k1, k2, k3, k4))


def _euler(c: _Constants, s: tuple, dt: float, x, w_cmd):
    return tuple(a + dt * b for a, b in zip(x, _derivative(c, s, *x, w_cmd)))


def _step(c: _Constants, s: tuple, dt: float, substeps: int, integrator: str, p, q, v, omega, w, action):
    w_cmd = ((action + 1) * 0.5).clamp(0.0, 1.0)
    if c.motor_tau <= 0:
        w = w_cmd  # no lag: rotors follow the command at once (gym-pybullet-drones)
    x = (p, q, v, omega, w)
    h = dt / substeps
    for _ in range(substeps):
        x = (_rk4 if integrator == "rk4" else _euler)(c, s, h, x, w_cmd)
        p, q, v, omega, w = x
        q = q / q.norm(dim=-1, keepdim=True)
        if c.ground:
            p, q, v, omega = _ground_contact(p, q, v, omega)
        x = (p, q, v, omega, w.clamp(0.0, 1.0))
    return x


def _ground_contact(p, q, v, omega):
    """Drones below the clearance: put on the ground, level (same yaw), at rest unless climbing."""
    contact = (p[:, 2] < GROUND_CLEARANCE)[:, None]
    p = torch.where(contact, torch.cat([p[:, :2], p[:, 2:].clamp(min=GROUND_CLEARANCE)], -1), p)
    qw, qz = q[:, 0], q[:, 3]
    yaw_norm = (qw * qw + qz * qz).sqrt().clamp(min=1e-12)
    level = torch.stack([qw / yaw_norm, torch.zeros_like(qw), torch.zeros_like(qw), qz / yaw_norm], -1)
    q = torch.where(contact, level, q)
    climbing = torch.zeros_like(v)
    climbing[:, 2] = v[:, 2].clamp(min=0.0)
    v = torch.where(contact, climbing, v)
    omega = torch.where(contact, torch.zeros_like(omega), omega)
    return p, q, v, omega


class BatchedEngine:
    """N quadrotors of one model in tensors; the training engine.

    Args:
        model: the drone model.
        n: number of drones.
        dt: control period [s]; one call of :meth:`step` advances by ``dt``.
        dtype: torch.float32 (fast) or torch.float64 (reference accuracy).
        integrator: ``rk4`` (as L2F) or ``euler``.
        substeps: integration steps per control step.
        ground_effect, drag: enable the optional gym-pybullet-drones effects.
        ground: a ground plane at z = 0 (a plastic contact, see the module docstring).
        compile: fuse the step with torch.compile (needs a C++ compiler; first call compiles).

    Drones fly through each other, and through the ground unless ``ground`` is set.
    """

    def __init__(self, model: DroneModel, n: int, dt: float = 0.01, dtype: torch.dtype = torch.float32,
                 integrator: str = "rk4", substeps: int = 1, ground_effect: bool = False, drag: bool = False,
                 ground: bool = False, compile: bool = False):
        if integrator not in ("rk4", "euler"):
            raise ValueError(f"integrator must be 'rk4' or 'euler', got {integrator!r}")
        if n < 1 or dt <= 0 or substeps < 1:
            raise ValueError(f"need n >= 1, dt > 0, substeps >= 1 (got n={n}, dt={dt}, substeps={substeps})")
        self.model, self.n, self.dt, self.dtype = model, n, dt, dtype
        self.integrator, self.substeps = integrator, substeps
        self._c = _constants(model, dtype, ground_effect, drag, ground)
        self._step_fn = _step
        if compile:
            self._step_fn = torch.compile(_step, dynamic=False, fullgraph=True)
        self.state = DroneState.hover(n, model, dtype=dtype)
        self.scales = tuple(torch.ones(n, 1, dtype=dtype) for _ in range(4))
        self.time = 0.0

    def scale_dynamics(self, mass, inertia, thrust, motor_time_constant, index=None) -> None:
        """Per-drone scales (k,) of mass, inertia, rotor thrust and motor time constant, for all
        drones or those selected by ``index`` (domain randomisation; 1 = the drone file)."""
        for scale, value in zip(self.scales, (mass, inertia, thrust, motor_time_constant)):
            value = torch.as_tensor(value, dtype=self.dtype).reshape(-1, 1)
            if index is None:
                scale[:] = value
            else:
                scale[index] = value
    def reset(self, state: DroneState, index=None) -> DroneState:
        """Set the state of all drones, or of those selected by ``index`` (mask or indices)."""
        if index is None:
            if state.n != self.n:
                raise ValueError(f"reset state has {state.n} drones, the engine has {self.n}")
            self.state = state.to(self.dtype).clone()
            self.time = 0.0
        else:
            self.state.assign(index, state)
        return self.state

    @torch.no_grad()
    def step(self, action: torch.Tensor) -> DroneState:
        """Advance all drones by ``dt`` under motor commands ``action`` (N, 4) in [-1, 1]."""
        if action.shape != (self.n, 4):
            raise ValueError(f"action must have shape ({self.n}, 4), got {tuple(action.shape)}")
        s = self.state
        out = self._step_fn(self._c, self.scales, self.dt, self.substeps, self.integrator, *s.tensors(), action.to(self.dtype))
        self.state = DroneState(*out)
        self.time += self.dt
        return self.state

    def close(self) -> None:
        pass
