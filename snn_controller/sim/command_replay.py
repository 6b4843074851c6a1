"""Replay recorded motor commands from given initial states on either engine (``snnctl sim replay``).

Input (.npz): position (N,3) world m, quaternion (N,4) w,x,y,z, velocity (N,3) world m/s,
angular_velocity (N,3) body rad/s, rotor_speed (N,4) normalised, actions (N,T,4) in [-1, 1];
optional dt (s). Output (.npz): the five state keys with shape (N, T+1, ...), index 0 the
initial state, plus ``time`` (T+1,) and ``dt``.

Replaying a recorded flight (``snnctl sim replay --bag``, replay.py): :func:`replay_flight` flies
the commands as the simulator did, with a ground and the crash supervisor. A bag with sim_bridge's
motor_state says which command the simulator flew at each step. For a bag without it (recorded
before the topic existed, or with a topic list that left it out), :func:`bridge_schedule` works
out which command the simulator (``sim/fleet.py``) had in force at each step from the commands'
stamps and the step each reached it at (:func:`arrival_steps`): the same rules again, held equal
to FleetSimulator by a test, exact in lockstep where the recorder lost no command.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .drone import DroneModel
from .engines import make_engine
from .state import DroneState
from .supervisor import CrashLimits, crash_reasons


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
    if engine == "batched":
        engine_options.setdefault("dtype", torch.float64)
    else:
        engine_options.setdefault("ground", False)
    out, _ = _fly(make_engine(engine, model, actions.shape[0], dt=dt, **engine_options), state, actions, dt)
    return out


def replay_flight(model: DroneModel, engine: str, state: DroneState, actions: np.ndarray, dt: float,
                  crash: CrashLimits | None = None, ctbr: bool = False,
                  **engine_options) -> tuple[dict[str, np.ndarray], list]:
    """Replay as the ROS simulator flies: a ground at z = 0 and its crash supervisor (a crashed
    drone's motors stay off). ``ctbr``: the actions are CTBR setpoints ([thrust, p, q, r], docs/ctbr.md)
    flown through the firmware's rate loop, with its ticks on the physics steps sim_bridge's fleet
    uses (pybullet: 10 per control step, 2 per tick), so a simulated CTBR flight replays exactly.
    Returns the trajectories (as :func:`replay`) and per drone None or {"step": the step after
    which it crashed, "reason"}."""
    if engine == "batched":
        engine_options.setdefault("dtype", torch.float64)
    n = actions.shape[0]
    if not ctbr:
        return _fly(make_engine(engine, model, n, dt=dt, ground=True, **engine_options), state, actions, dt,
                    crash or CrashLimits())
    from .firmware import ATTITUDE_RATE, RateControlledEngine
    from .pybullet_engine import SUBSTEPS

    if engine == "pybullet":  # the fleet's physics steps, a tick's share of them at a time
        engine_options.setdefault("substeps", SUBSTEPS // round(dt * ATTITUDE_RATE))
    sim = RateControlledEngine(lambda inner_dt: make_engine(engine, model, n, dt=inner_dt, ground=True,
                                                            **engine_options), dt=dt)
    return _fly(sim, state, actions, dt, crash or CrashLimits())


def _fly(sim, state: DroneState, actions: np.ndarray, dt: float, crash: CrashLimits | None = None):
    """Step ``sim`` from ``state`` under ``actions`` (N, T, 4); with ``crash``, supervise as sim/fleet.py does."""
    n, steps = actions.shape[:2]
    crashes = [None] * n
    try:
        sim.reset(state)
        out = {k: np.zeros((n, steps + 1, v.shape[-1])) for k, v in state.as_numpy().items()}
        for k, v in sim.state.as_numpy().items():
            out[k][:, 0] = v
        act = np.array(actions, dtype=np.float64)
        for t in range(steps):
            down = np.array([c is not None for c in crashes])
            act[down, t] = -1.0  # the supervisor keeps a crashed drone's motors off
            for k, v in sim.step(torch.as_tensor(act[:, t])).as_numpy().items():
                out[k][:, t + 1] = v
            if crash is not None:
                reasons, _ = crash_reasons(out["velocity"][:, t], out["position"][:, t + 1], out["velocity"][:, t + 1],
                                           out["quaternion"][:, t + 1], _on_ground(sim), crash)
                for k, why in enumerate(reasons):
                    if why and crashes[k] is None:
                        crashes[k] = {"step": t, "reason": why}
    finally:
        sim.close()
    out["time"] = np.arange(steps + 1) * dt
    out["dt"] = np.asarray(dt)
    return out, crashes


def _on_ground(sim) -> np.ndarray:
    """(N,) bool: in contact with the ground: pybullet's contact points, or resting on the batched
    engine's flat ground."""
    sim = getattr(sim, "engine", sim)  # the engine behind a rate loop
    if getattr(sim, "plane", None) is not None:
        return np.array([bool(sim.client.getContactPoints(bodyA=b, bodyB=sim.plane)) for b in sim.bodies])
    from .batched_engine import GROUND_CLEARANCE

    return sim.state.position[:, 2].numpy() < GROUND_CLEARANCE + 0.005


# --- which command the simulator applied when -----------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    """What sim/fleet.py's FleetSimulator had in force at each step of one drone."""

    commands: np.ndarray  # (T, 4) the motor commands applied at each step (-1: motors off)
    answered: np.ndarray  # (T,) the step the applied command answers; -1 where the motors were off
    off: np.ndarray  # (T,) bool: no command yet, or the command watchdog stopped the motors

    @property
    def age(self) -> np.ndarray:
        """(T,) command age [steps] at each step with a command in force (the simulator's definition)."""
        steps = np.arange(len(self.answered))
        return (steps - self.answered)[~self.off]


def bridge_schedule(answered: np.ndarray, arrival: np.ndarray, values: np.ndarray, steps: int,
                    command_delay: int = 0, timeout_steps: float = 50.0) -> Schedule:
    """The commands FleetSimulator applied at steps 0..steps-1, given each received command's
    ``answered`` step (the state it answers; -1: unstamped), its ``arrival`` step (the simulator's
    step counter when it took the command: it can apply from that step on) and its 4 ``values``,
    in the order received. For the replay of a bag without motor_state: a bag with it says what
    FleetSimulator flew (its ``last_flown``).

    The rules are FleetSimulator.submit and .step's: a command answering a step not simulated yet,
    or with NaN / inf, is rejected; one answering an older step than one already received is stale
    (ignored); a second answer to the same step replaces the first; values are clipped to [-1, 1];
    a command answering step k applies from step k + ``command_delay``, the newest due one wins;
    ``timeout_steps`` (command_timeout / dt) after the last command received, the motors stop.
    A test holds this function and FleetSimulator to the same commands.
    """
    order = np.argsort(arrival, kind="stable")  # arrival order keeps the received order within a step
    commands, applied, off = np.full((steps, 4), -1.0), np.full(steps, -1), np.ones(steps, dtype=bool)
    in_force, in_force_step = np.full(4, -1.0), -1
    pending: deque = deque()  # (answered step, values), oldest first
    newest, received, k = -1, -np.inf, 0
    for s in range(steps):
        while k < len(order) and arrival[order[k]] <= s:
            i = order[k]
            k += 1
            step = int(answered[i]) if answered[i] >= 0 else s  # unstamped: answers the current step
            v = np.asarray(values[i], dtype=np.float64)
            if step > s or not np.isfinite(v).all() or step < newest:
                continue  # rejected or stale: the command in force stays
            if pending and pending[-1][0] == step:
                pending.pop()
            pending.append((step, np.clip(v, -1.0, 1.0)))
            newest, received = step, s
        while pending and pending[0][0] + command_delay <= s:
            in_force_step, in_force = pending.popleft()
        if in_force_step >= 0 and not s - received > timeout_steps:
            commands[s], applied[s], off[s] = in_force, in_force_step, False
    return Schedule(commands, applied, off)


def arrival_steps(answered: np.ndarray, receive_ns: np.ndarray, step_receive_ns: np.ndarray) -> np.ndarray:
    """The step at which each recorded command reached the simulator (its step counter then).

    ``answered`` (C,): the step each command answers (-1: unstamped); ``receive_ns`` (C,): when the
    recorder got it; ``step_receive_ns`` (S,): when the recorder first got the state of step s.

    A stamped command is taken to have reached the simulator while it was at the step it answers.
    That is exact in lockstep (the simulator does not step until every flying drone's answer is
    in) and whenever every answer is in before the next step. The recorder's receive times cannot
    do better in realtime: they are noisier than a step (measured, docs/design.md). An unstamped
    command answers whatever step the simulator was at: the newest state the recorder had received
    when it got the command.
    """
    step_receive_ns = np.maximum.accumulate(step_receive_ns)  # a step's state goes out after the last one's
    by_receipt = np.maximum(np.searchsorted(step_receive_ns, receive_ns, side="right") - 1, 0)
    return np.where(answered >= 0, answered, by_receipt)
