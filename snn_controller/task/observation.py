"""The observation layout, defined once, and the observation every controller reads (docs/task.md section 2).

The actor observation has 18 values: position error p - p_target (3), rotation matrix row-major
(9), world velocity (3), body rates (3). The privileged observation (the guide's and the
critics' input) appends the last 32 actions, 4 each, oldest first: 146 values.

:class:`Observation` carries N drones' observations with named views. Its arrays are numpy or
CPU torch tensors; :meth:`Observation.numpy` is the one crossing from the environment (torch) to
the controllers (numpy). This module imports neither torch nor anything else of the package, so
the deployment path and the model-file format use it too.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

# (name, size) of each part of the actor observation, in order: the layout model files record.
PARTS = (("position_error", 3), ("rotation_matrix", 9), ("velocity_world", 3), ("angular_velocity_body", 3))
HISTORY = 32  # actions in the privileged observation


def _slices() -> dict[str, slice]:
    out, start = {}, 0
    for name, size in PARTS:
        out[name] = slice(start, start + size)
        start += size
    return out


SLICES = _slices()
POSITION_ERROR, ROTATION, VELOCITY, ANGULAR_VELOCITY = SLICES.values()
OBS_DIM = ANGULAR_VELOCITY.stop  # 18
PRIVILEGED_OBS_DIM = OBS_DIM + 4 * HISTORY  # 146
OBS_LAYOUT = [f"{name}:{size}" for name, size in PARTS]
PRIVILEGED_OBS_LAYOUT = OBS_LAYOUT + [f"last_actions:{HISTORY}x4"]
# Units and frames of each part, for whoever builds the inputs outside this package (the exported
# C module's header, docs/onboard.md). World frame z up; the network holds yaw 0, nose along world x.
MEANINGS = {
    "position_error": "p - p_target [m], world frame",
    "rotation_matrix": "R body->world, row-major R00 R01 R02 R10 ... R22 (column j: body axis j in world)",
    "velocity_world": "v [m/s], world frame",
    "angular_velocity_body": "body rates [rad/s] about body x (forward), y (left), z (up, along the thrust)",
    "last_actions": "the last 32 actions, 4 each, oldest first",
}


def assemble(out, position_error, rotation_matrix, velocity, angular_velocity):
    """Write the parts into ``out`` (N, 18), numpy or torch, by the named slices; returns ``out``."""
    out[:, POSITION_ERROR] = position_error
    out[:, ROTATION] = rotation_matrix.reshape(-1, 9)
    out[:, VELOCITY] = velocity
    out[:, ANGULAR_VELOCITY] = angular_velocity
    return out


@dataclass
class Observation:
    """What the controllers see at one step, for N drones.

    ``actor`` (N, 18): the (noisy) actor observation; ``privileged`` (N, 146): it and the last 32
    actions, the guide's input; ``critic`` (N, 146): the true 18 values and the actions, the
    critics' input (training only); ``target_yaw`` (N,) [rad]: the goal's yaw (None: 0).
    """

    actor: np.ndarray
    privileged: np.ndarray | None = None
    critic: np.ndarray | None = None
    target_yaw: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.actor)

    @property
    def position_error(self):
        return self.actor[:, POSITION_ERROR]

    @property
    def rotation(self):
        """(N, 3, 3) body-to-world rotation matrices."""
        return self.actor[:, ROTATION].reshape(-1, 3, 3)

    @property
    def velocity(self):
        return self.actor[:, VELOCITY]

    @property
    def angular_velocity(self):
        return self.actor[:, ANGULAR_VELOCITY]

    def view(self, name: str):
        """The input of a network by name: ``actor`` or ``privileged``."""
        return getattr(self, name)

    def numpy(self) -> "Observation":
        """The same observation with numpy arrays (torch tensors converted, numpy kept)."""
        convert = lambda x: x.numpy() if hasattr(x, "numpy") and not isinstance(x, np.ndarray) else x  # noqa: E731
        return Observation(**{f.name: None if getattr(self, f.name) is None else convert(getattr(self, f.name))
                              for f in fields(self)})
