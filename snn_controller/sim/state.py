"""Batched rigid-body state of N quadrotors, shared by both engines, the task and the tools.

Frames and units: ``position`` world [m]; ``quaternion`` body->world rotation (w, x, y, z);
``velocity`` world [m/s]; ``angular_velocity`` body [rad/s]; ``rotor_speed`` normalised [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

STATE_KEYS = ("position", "quaternion", "velocity", "angular_velocity", "rotor_speed")
STATE_WIDTHS = {"position": 3, "quaternion": 4, "velocity": 3, "angular_velocity": 3, "rotor_speed": 4}


@dataclass
class DroneState:
    position: torch.Tensor  # (N, 3)
    quaternion: torch.Tensor  # (N, 4) w, x, y, z
    velocity: torch.Tensor  # (N, 3)
    angular_velocity: torch.Tensor  # (N, 3)
    rotor_speed: torch.Tensor  # (N, 4)

    def __post_init__(self):
        n = self.position.shape[0]
        for key in STATE_KEYS:
            t = getattr(self, key)
            if t.ndim != 2 or t.shape != (n, STATE_WIDTHS[key]):
                raise ValueError(f"state '{key}' must have shape ({n}, {STATE_WIDTHS[key]}), got {tuple(t.shape)}")

    @property
    def n(self) -> int:
        return self.position.shape[0]

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, k) for k in STATE_KEYS)

    def clone(self) -> "DroneState":
        return DroneState(*(t.clone() for t in self.tensors()))

    def to(self, dtype: torch.dtype) -> "DroneState":
        return DroneState(*(t.to(dtype) for t in self.tensors()))

    def select(self, index) -> "DroneState":
        return DroneState(*(t[index] for t in self.tensors()))

    def assign(self, index, other: "DroneState") -> None:
        """In place: ``self[index] = other`` for every field."""
        for key in STATE_KEYS:
            getattr(self, key)[index] = getattr(other, key).to(getattr(self, key).dtype)

    def is_finite(self) -> torch.Tensor:
        """(N,) bool: every state value of the drone is finite."""
        return torch.stack([torch.isfinite(t).all(-1) for t in self.tensors()], -1).all(-1)

    def as_numpy(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k).detach().cpu().numpy().copy() for k in STATE_KEYS}

    @staticmethod
    def from_arrays(arrays, dtype: torch.dtype = torch.float64, source: str = "state") -> "DroneState":
        """Build from a mapping of the five keys (numpy or lists); errors name the key."""
        missing = [k for k in STATE_KEYS if k not in arrays]
        if missing:
            raise ValueError(f"{source}: missing key(s) {missing}")
        tensors = []
        for key in STATE_KEYS:
            a = np.asarray(arrays[key], dtype=np.float64)
            if a.ndim == 1:
                a = a[None]
            if a.ndim != 2 or a.shape[1] != STATE_WIDTHS[key]:
                raise ValueError(f"{source}: '{key}' must have shape (N, {STATE_WIDTHS[key]}), got {a.shape}")
            if not np.isfinite(a).all():
                raise ValueError(f"{source}: '{key}' contains NaN or inf")
            tensors.append(torch.as_tensor(a, dtype=dtype))
        n = {t.shape[0] for t in tensors}
        if len(n) != 1:
            raise ValueError(f"{source}: the state arrays disagree on the number of drones: "
                             + ", ".join(f"{k}={t.shape[0]}" for k, t in zip(STATE_KEYS, tensors)))
        q = tensors[1]
        norm = q.norm(dim=-1)
        if (norm < 1e-6).any():
            raise ValueError(f"{source}: 'quaternion' has a zero-length row")
        tensors[1] = q / norm[:, None]
        if ((tensors[4] < 0) | (tensors[4] > 1)).any():
            raise ValueError(f"{source}: 'rotor_speed' must be in [0, 1] (normalised)")
        return DroneState(*tensors)

    @staticmethod
    def hover(n: int, model, position=(0.0, 0.0, 1.0), dtype=torch.float64) -> "DroneState":
        """N drones at rest, level, rotors at hover speed."""
        z = lambda k: torch.zeros(n, k, dtype=dtype)  # noqa: E731
        quat = z(4)
        quat[:, 0] = 1
        pos = torch.as_tensor(position, dtype=dtype).expand(n, 3).clone()
        return DroneState(pos, quat, z(3), z(3), torch.full((n, 4), model.hover_rotor_speed, dtype=dtype))


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) w,x,y,z -> (..., 3, 3) rotation matrix body->world."""
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(q.shape[:-1] + (3, 3))
