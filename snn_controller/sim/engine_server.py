"""An engine served to a remote trainer: the simulator's side of sim-in-the-loop training.

The trainer's :class:`~snn_controller.task.envs.FlightEnv` keeps every line of task logic (starts,
noise, latency, reward, termination); a bridge process only runs the physics of its drones. The
requests, each with an id that its reply echoes (a request seen again is answered again, not
executed again, so the trainer may resend one whose reply it missed):

- ``configure`` (JSON: engine kind, the drone model's constants, dt, dtype, engine options): build
  the engine (the model travels whole, so a bridge needs none of the trainer's files);
- ``reset`` (drone indices and their states (k, 17)): set those drones' states;
- ``scale`` (drone indices and their dynamics scales (k, 4): mass, inertia, thrust, motor time
  constant): domain randomisation;
- ``step`` (actions (n, 4)): advance every drone by dt.

Every reply holds the states (n, 17) after the request. A drone's state is :data:`STATE_SIZE`
float64 values: position (3), quaternion w x y z (4), velocity (3), body rates (3), rotor speeds
(4); float64 carries a float32 engine's state exactly, so a remote engine flies bit for bit as the
same engine in process.
"""

from __future__ import annotations

import json

import numpy as np

from .state import STATE_KEYS, STATE_WIDTHS

STATE_SIZE = sum(STATE_WIDTHS.values())  # 17
SCALES = ("mass", "inertia", "thrust", "motor_time_constant")


def pack_states(state) -> np.ndarray:
    """A DroneState as (n, 17) float64."""
    return np.concatenate([getattr(state, k).detach().cpu().double().numpy() for k in STATE_KEYS], -1)


def unpack_states(values, dtype):
    """(n, 17) values as a DroneState of ``dtype``."""
    import torch

    from .state import DroneState

    values = torch.as_tensor(np.asarray(values, dtype=np.float64).reshape(-1, STATE_SIZE))
    parts, start = [], 0
    for key in STATE_KEYS:
        parts.append(values[:, start:start + STATE_WIDTHS[key]].to(dtype))
        start += STATE_WIDTHS[key]
    return DroneState(*parts)


def engine_spec(kind: str, model, n: int, dt: float, dtype: str, options: dict) -> str:
    """The ``configure`` request's payload: what :func:`~snn_controller.sim.engines.make_engine` is given."""
    from ..config import to_dict

    return json.dumps({"kind": kind, "model": to_dict(model), "n": n, "dt": dt, "dtype": dtype,
                       "options": options}, sort_keys=True)


class EngineServer:
    """Up to ``capacity`` drones of an engine the trainer configures, stepped by request."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"a bridge serves at least one drone, got capacity {capacity}")
        self.capacity = capacity
        self.engine = None
        self.spec = None
        self.last_id, self.last_reply = None, None

    def handle(self, kind: str, request_id: str, payload) -> np.ndarray:
        """The reply (states (n, 17)) to one request; ``payload``: the configure JSON, (indices,
        values) for reset and scale, the actions (n, 4) for step."""
        if request_id == self.last_id:  # a resend: the reply was lost, the request was not
            return self.last_reply
        if kind == "configure":
            self._configure(payload)
        elif self.engine is None:
            raise RuntimeError(f"{kind} before configure: the trainer configures the engine first")
        elif kind == "reset":
            self._reset(*payload)
        elif kind == "scale":
            self._scale(*payload)
        elif kind == "step":
            self._step(payload)
        else:
            raise ValueError(f"unknown request {kind!r}")
        self.last_id, self.last_reply = request_id, pack_states(self.engine.state)
        return self.last_reply

    def _configure(self, spec: str) -> None:
        import torch

        from ..config import build
        from .drone import DroneModel
        from .engines import make_engine

        s = json.loads(spec)
        if not 1 <= s["n"] <= self.capacity:
            raise ValueError(f"the trainer asked for {s['n']} drones, this bridge serves 1 to {self.capacity}")
        if spec != self.spec:  # (the same spec again, from a restarted trainer, keeps the engine)
            if self.engine is not None:
                self.engine.close()
            options = dict(s["options"])
            if s["kind"] == "batched":
                options["dtype"] = getattr(torch, s["dtype"])
            model = build(DroneModel, s["model"], "the trainer's configure request")
            self.engine = make_engine(s["kind"], model, s["n"], dt=s["dt"], **options)
            self.dtype, self.spec = getattr(torch, s["dtype"]), spec

    def _reset(self, indices, states) -> None:
        import torch

        self.engine.reset(unpack_states(states, self.dtype), torch.as_tensor(np.asarray(indices, dtype=np.int64)))

    def _scale(self, indices, scales) -> None:
        import torch

        scales = np.asarray(scales, dtype=np.float64).reshape(-1, len(SCALES))
        self.engine.scale_dynamics(*(torch.as_tensor(v) for v in scales.T),
                                   index=torch.as_tensor(np.asarray(indices, dtype=np.int64)))

    def _step(self, actions) -> None:
        import torch

        actions = torch.as_tensor(np.asarray(actions, dtype=np.float64).reshape(-1, 4))
        self.engine.step(actions.to(self.dtype))

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
