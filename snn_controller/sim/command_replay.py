"""Replay recorded motor commands from given initial states on either engine (``snnctl sim replay``).

Input (.npz): position (N,3) world m, quaternion (N,4) w,x,y,z, velocity (N,3) world m/s,
angular_velocity (N,3) body rad/s, rotor_speed (N,4) normalised, actions (N,T,4) in [-1, 1];
optional dt (s). Output (.npz): the five state keys with shape (N, T+1, ...), index 0 the
initial state, plus ``time`` (T+1,) and ``dt``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .drone import DroneModel
from .engines import make_engine
from .state import DroneState


def load_replay_input(path: str | Path) -> tuple[DroneState, np.ndarray, float | None]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        data = dict(np.load(path, allow_pickle=False))
    except Exception as exc:  # zip/format errors of a corrupt file
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from exc
    state = DroneState.from_arrays(data, source=str(path))
    if "actions" not in data:
        raise ValueError(f"{path}: missing key 'actions' (N, T, 4)")
    actions = np.asarray(data["actions"], dtype=np.float64)
    if actions.ndim != 3 or actions.shape[0] != state.n or actions.shape[2] != 4:
        raise ValueError(f"{path}: 'actions' must have shape ({state.n}, T, 4), got {actions.shape}")
    if not np.isfinite(actions).all():
        raise ValueError(f"{path}: 'actions' contains NaN or inf")
    if (np.abs(actions) > 1).any():
        raise ValueError(f"{path}: 'actions' must be in [-1, 1]")
    dt = None
    if "dt" in data:
        dt = float(np.asarray(data["dt"]))
        if not np.isfinite(dt) or dt <= 0:
            raise ValueError(f"{path}: 'dt' must be a positive number, got {dt}")
    return state, actions, dt


def replay(model: DroneModel, engine: str, state: DroneState, actions: np.ndarray, dt: float,
           **engine_options) -> dict[str, np.ndarray]:
    """Trajectories (N, T+1, ...) of every state key under the recorded ``actions``."""
    n, steps = actions.shape[:2]
    if engine == "batched":
        engine_options.setdefault("dtype", torch.float64)
    else:
        engine_options.setdefault("ground", False)
    sim = make_engine(engine, model, n, dt=dt, **engine_options)
    try:
        sim.reset(state)
        out = {k: np.zeros((n, steps + 1, v.shape[-1])) for k, v in state.as_numpy().items()}
        for k, v in sim.state.as_numpy().items():
            out[k][:, 0] = v
        act = torch.as_tensor(actions, dtype=torch.float64)
        for t in range(steps):
            for k, v in sim.step(act[:, t]).as_numpy().items():
                out[k][:, t + 1] = v
    finally:
        sim.close()
    out["time"] = np.arange(steps + 1) * dt
    out["dt"] = np.asarray(dt)
    return out
