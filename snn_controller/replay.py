"""Replaying a recorded flight in the simulator: ``snnctl sim replay --bag``.

``replay_comparison`` replays one drone of a recorded flight on either engine and writes the
position error between replay and recording: the commands the simulator says it flew and its rotor
speeds (motor_state), or, for a bag without them, the commands worked out from the recorded ones
(sim/command_replay.py), or for a drone flown by CTBR setpoints (cmd_ctbr_stamped: a CTBR controller
in simulation, or a real Crazyflie through crazyflie_bridge) those setpoints through the firmware's
rate loop; from the simulator's reset when the engine reaches the first recorded
state from there, else from that state.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .io.flight_log import DroneLog, FlightLog, FlightLogError, read_flight_log
from .report import add_legend, default_out_dir, new_figure, save_figure
from .sim.fleet import step_of_stamp

DIVERGED_M = 0.01  # a replay has left its recording once they are this far apart [m]


# --- replaying a recorded drone ------------------------------------------------------------------
# Which command the simulator flew at each step comes from one of two sources. "applied": the
# simulator's own account, motor_state (the commands the engine flew and the rotor speeds, which
# odometry does not carry): nothing to reconstruct. "reconstructed", the fallback for a bag without
# motor_state (recorded before it existed, or with a topic list that left it out): the commands
# worked out from the recorded ones (sim/command_replay.py's bridge_schedule, which repeats the
# simulator's rules) and the rotor speeds from the engines' motor lag or fitted to the recording;
# exact only in lockstep, and only where the recorder lost no command.
@dataclass(frozen=True)
class ReplayPlan:
    """What a replay of one drone flies, over steps first..first+T (array index 0 is step ``first``)."""

    source: str  # "applied" (motor_state), "reconstructed" (the fallback) or "ctbr" (CTBR setpoints, reconstructed)
    first: int  # the step the replay starts at
    from_reset: bool  # it starts where the simulator's reset put the drone, not at a recorded state
    commands: np.ndarray  # (T, 4) the command of each step; NaN where unknown (never flown)
    recorded: dict  # recorded_states (T + 1, k), NaN where the recorder missed the state
    segments: list  # (begin, end): flown from start(begin, ...) under commands[begin:end]
    start: Callable  # (begin, the replay's rotor speeds there or None) -> the DroneState to start at
    gaps: list  # (first, last) steps the recorder missed, after each of which the replay starts again
    command_delay: int | None  # the command_delay the reconstruction assumed; None for "applied"
    ctbr: bool = False  # the commands are CTBR setpoints, flown through the firmware's rate loop


def inferred_command_delay(d: DroneLog) -> int:
    """sim_bridge's command_delay (not in the bag): no command applies younger than it, and in
    lockstep every one applies at exactly that age, so the smallest command-age p50 it reported."""
    p50 = d.bridge.command_age[:, 0] if len(d.bridge.command_age) else np.zeros(0)
    p50 = p50[~np.isnan(p50)]
    return int(p50.min()) if len(p50) else 0


def recorded_schedule(log: FlightLog, d: DroneLog, command_delay: int, command_timeout: float = 0.5,
                      ctbr: bool = False):
    """The fallback's commands: (first step, Schedule) of what the simulator applied to drone ``d``
    at each step, from the first recorded command or state (whichever is earlier: the recorder may
    find the command topics before the odometry) to the last recorded state, worked out from the
    commands' stamps (sim/command_replay.py); ``ctbr``: of its CTBR setpoints."""
    from .sim.command_replay import arrival_steps, bridge_schedule

    recorded_steps = step_of_stamp(d.odometry.stamp_ns, log.dt_ns)
    c = d.ctbr_commands if ctbr else d.commands
    answered = np.where(c.answered_ns >= 0, step_of_stamp(c.answered_ns, log.dt_ns), -1)
    arrival = arrival_steps(answered, c.receive_ns, _step_receive_ns(log))
    first = int(min(recorded_steps[0], arrival.min(initial=recorded_steps[0])))
    shift = np.where(answered >= 0, first, 0)
    schedule = bridge_schedule(answered - shift, arrival - first, c.values, int(recorded_steps[-1]) - first,
                               command_delay=command_delay, timeout_steps=command_timeout / log.dt)
    return first, schedule


def rotors_at_first_state(model, schedule, steps_before: int, from_reset: bool, dt: float) -> np.ndarray:
    """The fallback's rotor speeds at the first recorded state: the engines' first-order motor lag,
    solved exactly, run over the ``steps_before`` scheduled commands that precede it. From the
    simulator's start or reset (step 0) the rotors start off; a schedule that begins later starts
    them at its first command's speed (the lag's end point)."""
    commands = schedule.commands[:steps_before]
    w = np.zeros(4) if from_reset or not len(schedule.commands) else np.clip((schedule.commands[0] + 1) / 2, 0, 1)
    keep = math.exp(-dt / model.motor_time_constant) if model.motor_time_constant > 0 else 0.0
    for a in commands:
        target = np.clip((a + 1) / 2, 0.0, 1.0)
        w = target + (w - target) * keep
    return w


def _step_receive_ns(log: FlightLog) -> np.ndarray:
    """When the recorder first got each step's state, over every drone (the simulator publishes
    them together); a step no state of which was recorded takes the next step's time."""
    steps = step_of_stamp(np.concatenate([d.odometry.stamp_ns for d in log.drones.values()]), log.dt_ns)
    receive = np.concatenate([d.odometry.receive_ns for d in log.drones.values()])
    first = np.full(int(steps.max()) + 1, np.iinfo(np.int64).max)
    np.minimum.at(first, steps, receive)
    return np.minimum.accumulate(first[::-1])[::-1]


def recorded_states(log: FlightLog, d: DroneLog, first: int, steps: int) -> dict[str, np.ndarray]:
    """The recorded state at steps first..first+steps (position, quaternion, velocity, body rates:
    (steps + 1, k) each; NaN where no state of that step was recorded)."""
    at = step_of_stamp(d.odometry.stamp_ns, log.dt_ns) - first
    inside = (at >= 0) & (at <= steps)
    o = d.odometry
    states = {}
    for key, values in (("position", o.position), ("quaternion", o.quaternion), ("velocity", o.velocity),
                        ("angular_velocity", o.body_rates)):
        states[key] = np.full((steps + 1, values.shape[1]), np.nan)
        states[key][at[inside]] = values[inside]  # a re-sent state has its step's values again
    return states


def _recorded_start(recorded: dict, step: int, rotor_speed):
    from .sim.state import DroneState

    arrays = {k: v[step][None] for k, v in recorded.items()}
    return DroneState.from_arrays({**arrays, "rotor_speed": np.asarray(rotor_speed, dtype=np.float64)[None]})


def fit_rotor_speeds(model, engine: str, recorded: dict, commands: np.ndarray, step: int, dt: float, guess,
                     horizon: int = 3, iterations: int = 4, ctbr: bool = False) -> np.ndarray:
    """The fallback's rotor speeds at ``step`` (after commands missing from the bag) such that the
    engine, from the recorded state there under the scheduled commands, reproduces the recorded
    velocities and body rates of the next ``horizon`` steps (Gauss-Newton, numerical Jacobian).
    Where they say nothing of the rotors (a drone resting on the ground) the ``guess`` stays."""
    from .sim.command_replay import replay_flight

    end = min(step + horizon, len(commands))
    target = np.concatenate([recorded["velocity"][step + 1:end + 1], recorded["angular_velocity"][step + 1:end + 1]], 1)
    if end <= step or np.isnan(target).any():
        return np.asarray(guess, dtype=np.float64)

    def residual(w):
        out, _ = replay_flight(model, engine, _recorded_start(recorded, step, w), commands[None, step:end], dt,
                               ctbr=ctbr)
        return (np.concatenate([out["velocity"][0, 1:], out["angular_velocity"][0, 1:]], 1) - target).ravel()

    w = np.asarray(guess, dtype=np.float64)
    for _ in range(iterations):
        r = residual(w)
        h = np.where(w + 1e-6 > 1.0, -1e-6, 1e-6)  # differences inside [0, 1]: the engines refuse a speed above 1
        jacobian = np.stack([(residual(w + h_i * e) - r) / h_i for e, h_i in zip(np.eye(4), h)], 1)
        w = np.clip(w - np.linalg.lstsq(jacobian, r, rcond=None)[0], 0.0, 1.0)
    return w


def starts_from_reset(model, engine: str, robot, commands: np.ndarray, recorded: dict, at: int, dt: float,
                      rotor_speed=None, ctbr: bool = False) -> bool:
    """Whether the replay can start at step 0, where the simulator's reset put the drone (``robot``,
    its entry of the fleet file; None: unknown), instead of at the first recorded state, step ``at``:
    the engine, flown from there under ``commands`` (the ``at`` steps before, none unknown), reaches
    the recorded position at ``at`` to the bit (and the recorded ``rotor_speed``, where known).

    It matters on pybullet: a drone resting on the ground carries the contact solver's history,
    which a world started at a recorded state lacks, and flying open loop amplifies the difference
    (measured: a lockstep flight the recorder joined at step 5, replayed from its state there, was
    1.2 m off after 12 s; from the reset, 0 m)."""
    from .sim.command_replay import replay_flight
    from .sim.fleet import initial_state

    if robot is None or np.isnan(commands).any():
        return False
    if at == 0:  # the recorder caught the reset itself: start there if the recording is that state
        return bool(np.array_equal(initial_state([robot]).as_numpy()["position"][0], recorded["position"][0]))
    out, _ = replay_flight(model, engine, initial_state([robot]), commands[None], dt, ctbr=ctbr)
    return bool(np.array_equal(out["position"][0, -1], recorded["position"][at])
                and (rotor_speed is None or np.array_equal(out["rotor_speed"][0, -1], rotor_speed)))


def _from(arrays, begin: int):
    return {k: v[begin:] for k, v in arrays.items()}


def applied_plan(log: FlightLog, d: DroneLog, model, engine: str, robot, every: int | None) -> ReplayPlan:
    """The replay of the commands the simulator says it flew (motor_state), from the rotor speeds it
    says it had, at the start and at every restart: nothing reconstructed, nothing fitted. A step
    whose motor_state the recorder missed is a gap (its command is unknown): the replay starts again
    at the next step that has both its state and its motor_state. ``every``: also start again from
    the recording every that many steps (where the step has both). Unknown commands before rotors at
    rest were motors off (:func:`fill_motors_off`); the replay starts from the reset if it can
    (:func:`starts_from_reset`)."""
    from .sim.fleet import initial_state

    m = d.motor_state
    last = int(step_of_stamp(d.odometry.stamp_ns[-1], log.dt_ns))
    steps = step_of_stamp(m.stamp_ns, log.dt_ns)
    inside = steps < last  # the motor_state of the last state's step has no state after it to compare
    commands, rotors = np.full((last, 4), np.nan), np.full((last, 4), np.nan)
    commands[steps[inside]], rotors[steps[inside]] = m.command[inside], m.rotor_speed[inside]
    recorded = recorded_states(log, d, 0, last)
    startable = ~np.isnan(recorded["position"][:last, 0]) & ~np.isnan(rotors[:, 0])
    if not startable.any():
        raise FlightLogError(f"{log.path}: no step of {d.name} has both its state and its motor_state")
    first = int(np.flatnonzero(startable)[0])
    if model.motor_time_constant > 0:
        fill_motors_off(commands, rotors)
    from_reset = starts_from_reset(model, engine, robot, commands[:first], recorded, first, log.dt, rotors[first])
    begin = 0 if from_reset else first
    commands, rotors, startable, recorded = commands[begin:], rotors[begin:], startable[begin:], _from(recorded, begin)
    startable[0] = True  # from the reset, or the first recorded state
    known = ~np.isnan(commands[:, 0])

    def start(k, _carried):
        return initial_state([robot]) if from_reset and k == 0 else _recorded_start(recorded, k, rotors[k])

    return ReplayPlan("applied", begin, from_reset, commands, recorded, flown_segments(known, startable, every),
                      start, recorder_gaps(~known), None)


def fill_motors_off(commands: np.ndarray, rotors: np.ndarray) -> None:
    """Fill in, as motors off, each run of steps whose command is unknown (NaN in ``commands``) and
    after which the recorded ``rotors`` are at rest (exactly 0): with a motor lag, a rotor reaches 0
    from nothing but 0 under nothing but motors off (any other command leaves it spinning, and a
    spinning rotor decays to 0 in floating point only after about a minute), so the drone waited
    on the ground with its motors off, as before its take-off: the replay flies through such a gap
    instead of starting again on the ground (a new contact history on pybullet)."""
    unknown = np.isnan(commands[:, 0])
    for first_unknown, last_unknown in recorder_gaps(unknown):
        after = last_unknown + 1
        if after < len(rotors) and (rotors[after] == 0).all():
            commands[first_unknown:after] = -1.0


def flown_segments(known: np.ndarray, startable: np.ndarray, every: int | None) -> list[tuple[int, int]]:
    """(begin, end) of each stretch flown: from a ``startable`` step over the steps whose command is
    ``known``, up to the next unknown one; and, with ``every``, again from each startable step at a
    multiple of ``every``."""
    segments, begin = [], None
    for k in range(len(known)):
        if not known[k]:
            if begin is not None:
                segments.append((begin, k))
            begin = None
        elif startable[k] and (begin is None or (every and k % every == 0)):
            if begin is not None:
                segments.append((begin, k))
            begin = k
    if begin is not None:
        segments.append((begin, len(known)))
    return segments


def reconstructed_plan(log: FlightLog, d: DroneLog, model, engine: str, robot, every: int | None,
                       command_delay: int | None, ctbr: bool = False) -> ReplayPlan:
    """The fallback, for a bag without motor_state: the commands as :func:`recorded_schedule` works
    them out (``command_delay``: default :func:`inferred_command_delay`), motors off before the first
    recorded command (:func:`starts_from_reset` checks it), the rotor speeds at the first state from
    :func:`rotors_at_first_state` and, after each run of states the recorder missed (it missed their
    commands too: it drops messages when it falls more than its queue behind), fitted to the
    recording (:func:`fit_rotor_speeds`). ``every``: start again from the recording every that many
    steps, the rotors carried over.

    ``ctbr``: the drone's CTBR setpoints, flown through the firmware's rate loop (whose PID state
    starts at zero at each start, as after the firmware's reinitialisation); the rotor speeds at a
    recorded start are always fitted (from the hover speed), since the setpoints do not say them."""
    from .sim.fleet import initial_state

    delay = inferred_command_delay(d) if command_delay is None else int(command_delay)
    begin, schedule = recorded_schedule(log, d, delay, ctbr=ctbr)
    first = int(step_of_stamp(d.odometry.stamp_ns[0], log.dt_ns))
    last = int(step_of_stamp(d.odometry.stamp_ns[-1], log.dt_ns))
    commands = np.concatenate([np.full((begin, 4), -1.0), schedule.commands])  # steps 0..last-1
    recorded = recorded_states(log, d, 0, last)
    from_reset = starts_from_reset(model, engine, robot, commands[:first], recorded, first, log.dt, ctbr=ctbr)
    start_step = 0 if from_reset else first
    commands, recorded = commands[start_step:], _from(recorded, start_step)
    missing = np.isnan(recorded["position"][:, 0])
    missing[:first - start_step] = False  # before the first state: flown from the reset, checked
    gaps = recorder_gaps(missing)
    refits = {last_missed + 1 for _, last_missed in gaps} | ({0} if (begin > 0 or ctbr) and not from_reset else set())
    restarts = [] if every is None else [k for k in range(first - start_step, len(commands))
                                         if k % every == 0 and not missing[k]]
    bounds = sorted({0, len(commands), *(k for k in (*restarts, *refits) if 0 < k < len(commands))})
    initial_rotors = np.full(4, model.hover_rotor_speed) if ctbr else \
        rotors_at_first_state(model, schedule, first - begin, begin == 0, log.dt)

    def start(k, carried):
        if from_reset and k == 0:
            return initial_state([robot])
        rotors = initial_rotors if carried is None else carried
        if k in refits:
            rotors = fit_rotor_speeds(model, engine, recorded, commands, k, log.dt, rotors, ctbr=ctbr)
        return _recorded_start(recorded, k, rotors)

    return ReplayPlan("ctbr" if ctbr else "reconstructed", start_step, from_reset, commands, recorded,
                      list(zip(bounds[:-1], bounds[1:])), start, gaps, delay, ctbr)


def replay_recorded(model, engine: str, plan: ReplayPlan, dt: float) -> tuple[dict, dict | None]:
    """Fly each segment of ``plan`` from the state its ``start`` gives (the rotor speeds the replay
    had there passed on when the previous segment ended there). Returns the replayed trajectory
    (T + 1, ...; NaN at steps no segment flew) and the first crash {"step", "reason"} or None."""
    from .sim.command_replay import replay_flight

    steps = len(plan.commands)
    trajectory = {k: np.full((steps + 1, 4 if k in ("quaternion", "rotor_speed") else 3), np.nan)
                  for k in ("position", "quaternion", "velocity", "angular_velocity", "rotor_speed")}
    first_crash, carried = None, None
    for begin, end in plan.segments:
        rotors = carried[1] if carried is not None and carried[0] == begin else None
        out, crashes = replay_flight(model, engine, plan.start(begin, rotors), plan.commands[None, begin:end], dt,
                                     ctbr=plan.ctbr)
        for k in trajectory:
            trajectory[k][begin:end + 1] = out[k][0]
        if crashes[0] is not None and first_crash is None:
            first_crash = {**crashes[0], "step": begin + crashes[0]["step"]}
        carried = (end, out["rotor_speed"][0, -1])
    return trajectory, first_crash


def recorder_gaps(missing: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) steps of each run of steps the recorder ``missing``."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], missing.astype(int), [0]])))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


def replay_comparison(bag: str | Path, name: str, engine: str = "pybullet", out: str | Path | None = None,
                      drone_model: str | None = None, command_delay: int | None = None,
                      horizon: float | None = None) -> dict:
    """Replay drone ``name``'s recorded flight on ``engine`` and compare with the recording; writes
    replay_<name>_<engine>.png and .json into ``out`` (default BAG_report). The commands are the
    ones the simulator says it flew (motor_state: :func:`applied_plan`), or for a bag without it
    worked out from the recorded ones (:func:`reconstructed_plan`; ``command_delay``, default
    :func:`inferred_command_delay`, is used only there); the result's "commands" says which. The
    replay starts where the simulator's reset put the drone when the engine reaches the first
    recorded state from there (:func:`starts_from_reset`: the package's fleet file gives the pose),
    else at the first recorded state. ``drone_model``: default the fleet file's all.drone (what
    sim_bridge flies); ``horizon`` [s]: start again from the recorded state that often (default:
    never, the whole flight open loop, except after a gap in the recording).
    """
    from .sim.drone import load_drone
    from .sim.fleet import load_fleet

    started = time.perf_counter()
    log = read_flight_log(bag)
    d = log.drone(name)
    fleet = load_fleet()
    model = load_drone(drone_model or fleet.all.drone)
    if horizon is not None and horizon < log.dt:
        raise ValueError(f"horizon must be at least one control step ({log.dt} s), got {horizon}")
    every = None if horizon is None else round(horizon / log.dt)  # the engine, without the open-loop drift
    robot = fleet.robots.get(name)
    if len(d.ctbr_commands.values):  # flown by CTBR setpoints: motor_state has only their rate loop's mean
        plan = reconstructed_plan(log, d, model, engine, robot, every, command_delay, ctbr=True)
    elif len(d.motor_state.stamp_ns):
        plan = applied_plan(log, d, model, engine, robot, every)
    else:
        plan = reconstructed_plan(log, d, model, engine, robot, every, command_delay)
    replayed, crash = replay_recorded(model, engine, plan, log.dt)
    error = np.linalg.norm(replayed["position"] - plan.recorded["position"], axis=-1)
    time_s = (plan.first + np.arange(len(error))) * log.dt
    gaps = plan.gaps
    result = {
        "bag": str(log.path), "drone": name, "engine": engine, "drone_model": model.name, "dt": log.dt,
        "commands": plan.source, "command_delay": plan.command_delay, "horizon_s": horizon,
        "first_step": plan.first, "start": "reset" if plan.from_reset else "recorded state",
        "steps": len(plan.commands), "segments": len(plan.segments),
        "error": _error_stats(error), "within_1cm_s": _time_within(error, DIVERGED_M, log.dt),
        # steps (from first_step) the recorder missed; the replay starts again after each
        "recorder_gaps": gaps, "error_before_first_gap": _error_stats(error[:gaps[0][0]] if gaps else error),
        "replay_crash": None if crash is None else {"time": round(float(time_s[crash["step"] + 1]), 3),
                                                    "reason": crash["reason"]},
        "recorded_crash": d.bridge.first_crash(),
    }
    out = Path(out) if out is not None else default_out_dir(bag)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"replay_{name}_{engine}"
    _plot_replay(time_s, plan.recorded["position"], replayed["position"], error, result, stem.with_suffix(".png"))
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    result.update(png=str(stem.with_suffix(".png")), json=str(stem.with_suffix(".json")),
                  seconds=round(time.perf_counter() - started, 2))
    return result


def _error_stats(error: np.ndarray) -> dict:
    e = error[~np.isnan(error)]
    return {"mean": float(e.mean()), "max": float(e.max()), "final": float(e[-1])}


def _time_within(error: np.ndarray, bound: float, dt: float) -> float:
    """Seconds from the start until the error first exceeds ``bound`` (the whole flight if never)."""
    beyond = np.flatnonzero(np.nan_to_num(error) > bound)
    return round(float((beyond[0] if len(beyond) else len(error) - 1) * dt), 3)


def _plot_replay(time_s, recorded, replayed, error, result: dict, path: Path) -> Path:
    fig, axes = new_figure(2, 1, height=3.0)
    top, bottom = axes[:, 0]
    for k, axis in enumerate("xyz"):
        line, = top.plot(time_s, recorded[:, k], lw=1, label=f"{axis} recorded")
        top.plot(time_s, replayed[:, k], lw=1, ls="--", color=line.get_color(), label=f"{axis} replay")
    top.set(title=f"{result['drone']}: recorded flight and its commands replayed on {result['engine']}\n"
                  f"({_replay_terms(result)})", ylabel="m")
    add_legend(top, fontsize=7, ncol=3)
    top.grid(alpha=0.3)
    e = result["error"]
    bottom.plot(time_s, 100 * error, lw=1)
    bottom.set(title=f"position error: mean {100 * e['mean']:.2f} cm, max {100 * e['max']:.2f} cm, "
                     f"within 1 cm for {result['within_1cm_s']:.2f} s", xlabel="sim time [s]", ylabel="cm")
    bottom.grid(alpha=0.3)
    return save_figure(fig, path)


def _replay_terms(r: dict) -> str:
    """Which commands a replay flew, from where, how often it started again from the recording."""
    commands = "the applied commands" if r["commands"] == "applied" else \
        f"commands reconstructed with command delay {r['command_delay']}"
    restarts = "" if r["horizon_s"] is None else f", from the recording every {r['horizon_s']} s"
    return f"{commands}, from the {r['start']} at step {r['first_step']}{restarts}"


def format_replay(r: dict) -> str:
    e = r["error"]
    c = r["replay_crash"]
    crash = "" if c is None else f"; the replay crashed at {c['time']:.2f} s ({c['reason']})"
    return (f"{r['drone']} of {r['bag']} replayed on {r['engine']} ({r['steps']} steps, {_replay_terms(r)}): "
            f"position error mean {100 * e['mean']:.3f} cm, max {100 * e['max']:.3f} cm, "
            f"final {100 * e['final']:.3f} cm, "
            f"within 1 cm for {r['within_1cm_s']:.2f} s{crash} -> {r['png']}, {r['json']}")
