"""The reference engine: the same drone model in pybullet, DIRECT (headless) or GUI.

Every rotor's thrust is applied as a force at the rotor's position and the yaw reaction
as a torque, both in the world frame, at every physics substep; the motor lag is solved
exactly over each substep. Mass and inertia come from the drone model, not from the
collision shape (a flat cylinder of the arm's radius). Linear and angular damping are
zeroed, so pybullet integrates the same rigid body as the batched engine.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys

import numpy as np
import pybullet
import torch
from pybullet_utils.bullet_client import BulletClient

from .drone import DroneModel
from .state import DroneState


@contextlib.contextmanager
def _quiet_stdout():
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def xyzw_to_wxyz(q) -> np.ndarray:
    return np.array([q[3], q[0], q[1], q[2]])


def wxyz_to_xyzw(q) -> list[float]:
    return [float(q[1]), float(q[2]), float(q[3]), float(q[0])]


SUBSTEPS = 10  # physics steps per control step, by default (sim_bridge's too)


class PybulletEngine:
    """N drones in one pybullet world.

    Args:
        model: the drone model.
        n: number of drones.
        dt: control period [s].
        substeps: physics steps per control step (pybullet steps at dt / substeps).
        gui: open the pybullet GUI window instead of DIRECT.
        ground: add a ground plane at z = 0 (drones can land and crash on it).
        collide_drones: let drones collide with each other (off for independent task copies).
        ground_effect, drag: enable the optional gym-pybullet-drones effects.
    """

    def __init__(self, model: DroneModel, n: int = 1, dt: float = 0.01, substeps: int = SUBSTEPS, gui: bool = False,
                 ground: bool = True, collide_drones: bool = False, ground_effect: bool = False, drag: bool = False,
                 dtype: torch.dtype = torch.float64):
        if n < 1 or dt <= 0 or substeps < 1:
            raise ValueError(f"need n >= 1, dt > 0, substeps >= 1 (got n={n}, dt={dt}, substeps={substeps})")
        if ground_effect and model.ground_effect is None:
            raise ValueError(f"drone '{model.name}' has no ground_effect parameters")
        if drag and model.drag is None:
            raise ValueError(f"drone '{model.name}' has no drag parameters")
        self.model, self.n, self.dt, self.substeps, self.dtype = model, n, dt, substeps, dtype
        self.ground_effect, self.drag = ground_effect, drag
        with _quiet_stdout():  # pybullet's C code prints 'argv[0]=' to stdout: keep --json output clean
            self.client = BulletClient(connection_mode=pybullet.GUI if gui else pybullet.DIRECT)
        c = self.client
        c.setGravity(0, 0, -model.gravity)
        c.setPhysicsEngineParameter(fixedTimeStep=dt / substeps, numSubSteps=0)
        self.plane = None
        if ground:
            plane_shape = c.createCollisionShape(pybullet.GEOM_PLANE)
            self.plane = c.createMultiBody(0, plane_shape)
        shape = c.createCollisionShape(pybullet.GEOM_CYLINDER, radius=model.arm_length, height=0.02)
        visual = c.createVisualShape(pybullet.GEOM_CYLINDER, radius=model.arm_length, length=0.02,
                                     rgbaColor=[0.2, 0.2, 0.25, 1])
        self.bodies = []
        for i in range(n):
            body = c.createMultiBody(model.mass, shape, visual, basePosition=[2.0 * i, 0, 1])
            c.changeDynamics(body, -1, localInertiaDiagonal=list(model.inertia), linearDamping=0.0,
                             angularDamping=0.0, maxJointVelocity=1e5)
            self.bodies.append(body)
        if not collide_drones:
            for i in range(n):
                for j in range(i + 1, n):
                    c.setCollisionFilterPair(self.bodies[i], self.bodies[j], -1, -1, 0)
        self._rotors = np.array(model.rotor_positions)
        self._dirs = np.array(model.rotor_directions)
        self._rotor_speed = np.full((n, 4), model.hover_rotor_speed)
        self._thrust_scale = np.ones((n, 1))
        self._motor_tau = np.full((n, 1), model.motor_time_constant)
        self.time = 0.0

    def scale_dynamics(self, mass, inertia, thrust, motor_time_constant, index=None) -> None:
        """Per-drone scales (k,) of mass, inertia, rotor thrust and motor time constant, for all
        drones or those selected by ``index`` (domain randomisation; 1 = the drone file)."""
        ids = np.arange(self.n) if index is None else np.atleast_1d(np.arange(self.n)[np.asarray(index)])
        mass, inertia, thrust, tau = (np.broadcast_to(np.asarray(v, dtype=np.float64).reshape(-1), ids.shape)
                                      for v in (mass, inertia, thrust, motor_time_constant))
        for k, i in enumerate(ids):
            self.client.changeDynamics(self.bodies[i], -1, mass=self.model.mass * mass[k],
                                       localInertiaDiagonal=list(np.array(self.model.inertia) * inertia[k]))
        self._thrust_scale[ids, 0] = thrust
        self._motor_tau[ids, 0] = self.model.motor_time_constant * tau
    # --- state ---------------------------------------------------------------------
    @property
    def state(self) -> DroneState:
        c = self.client
        pos, quat, vel, omega = (np.zeros((self.n, k)) for k in (3, 4, 3, 3))
        for i, body in enumerate(self.bodies):
            p, q = c.getBasePositionAndOrientation(body)
            v, w = c.getBaseVelocity(body)
            pos[i], quat[i], vel[i] = p, xyzw_to_wxyz(q), v
            rot = np.array(c.getMatrixFromQuaternion(q)).reshape(3, 3)
            omega[i] = rot.T @ np.array(w)  # body rates
        quat *= np.where(quat[:, :1] < 0, -1.0, 1.0)
        arrays = (pos, quat, vel, omega, self._rotor_speed.copy())
        return DroneState(*(torch.as_tensor(a, dtype=self.dtype) for a in arrays))

    def reset(self, state: DroneState, index=None) -> DroneState:
        """Set the state of all drones, or of those selected by ``index`` (mask or indices)."""
        ids = np.arange(self.n)
        if index is None:
            if state.n != self.n:
                raise ValueError(f"reset state has {state.n} drones, the engine has {self.n}")
            self.time = 0.0
        else:
            ids = ids[np.asarray(index)]
            if ids.ndim == 0:
                ids = ids[None]
        s = state.as_numpy()
        for k, i in enumerate(ids):
            body = self.bodies[i]
            q = wxyz_to_xyzw(s["quaternion"][k])
            self.client.resetBasePositionAndOrientation(body, s["position"][k].tolist(), q)
            rot = np.array(self.client.getMatrixFromQuaternion(q)).reshape(3, 3)
            self.client.resetBaseVelocity(body, s["velocity"][k].tolist(), (rot @ s["angular_velocity"][k]).tolist())
            self._rotor_speed[i] = s["rotor_speed"][k]
        return self.state

    # --- stepping ------------------------------------------------------------------
    def step(self, action, substeps: int | None = None) -> DroneState:
        """Advance all drones by ``dt`` under motor commands ``action`` (N, 4) in [-1, 1]; or by
        ``substeps`` of the ``dt / self.substeps`` physics steps (a firmware tick inside a control
        step: the same physics, held for less time)."""
        action = np.asarray(action.detach().cpu() if isinstance(action, torch.Tensor) else action, dtype=np.float64)
        if action.shape != (self.n, 4):
            raise ValueError(f"action must have shape ({self.n}, 4), got {action.shape}")
        substeps = self.substeps if substeps is None else substeps
        w_cmd = np.clip((action + 1) * 0.5, 0.0, 1.0)
        h = self.dt / self.substeps
        tau = self._motor_tau  # (N, 1)
        lag = self.model.motor_time_constant > 0
        blend = 1.0 - np.exp(-h / tau) if lag else 1.0
        for _ in range(substeps):
            w_start = self._rotor_speed
            w_end = w_start + (w_cmd - w_start) * blend
            # The exact mean of w over the substep keeps the impulse of each rotor right.
            self._apply_rotor_forces(self._mean_speed(w_start, w_cmd, h, tau) if lag else w_end)
            self.client.stepSimulation()
            self._rotor_speed = w_end
        self.time += self.dt if substeps == self.substeps else h * substeps
        return self.state

    @staticmethod
    def _mean_speed(w0, w_cmd, h, tau):
        # mean over [0, h] of w(t) = w_cmd + (w0 - w_cmd) exp(-t / tau)
        return w_cmd + (w0 - w_cmd) * tau / h * (1 - np.exp(-h / tau))

    def _apply_rotor_forces(self, w: np.ndarray) -> None:
        c, m = self.client, self.model
        c0, c1, c2 = m.thrust_coefficients
        thrust = (c0 + c1 * w + c2 * w * w) * self._thrust_scale  # (N, 4)
        for i, body in enumerate(self.bodies):
            pos, quat = c.getBasePositionAndOrientation(body)
            rot = np.array(c.getMatrixFromQuaternion(quat)).reshape(3, 3)
            rotor_world = np.asarray(pos) + self._rotors @ rot.T
            t = thrust[i]
            if self.ground_effect and rot[2, 2] > 0:
                ge = m.ground_effect
                height = np.maximum(rotor_world[:, 2], ge.height_clip)
                t = t * (1 + ge.coefficient * (ge.prop_radius / (4 * height)) ** 2)
            for k in range(4):
                c.applyExternalForce(body, -1, (rot[:, 2] * t[k]).tolist(), rotor_world[k].tolist(), pybullet.WORLD_FRAME)
            torque_body = np.array([0.0, 0.0, float(np.dot(self._dirs, t)) * m.torque_to_thrust])
            if self.drag:
                v, _ = c.getBaseVelocity(body)
                coeff = np.array([m.drag.xy, m.drag.xy, m.drag.z]) * m.max_rpm * 2 * math.pi / 60
                drag_body = -coeff * w[i].sum() * (rot.T @ np.asarray(v))
                c.applyExternalForce(body, -1, (rot @ drag_body).tolist(), list(pos), pybullet.WORLD_FRAME)
            c.applyExternalTorque(body, -1, (rot @ torque_body).tolist(), pybullet.WORLD_FRAME)

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.disconnect()
            except pybullet.error:
                pass
            self.client = None

    def __del__(self):
        self.close()
