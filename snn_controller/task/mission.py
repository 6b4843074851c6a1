"""Missions: take off from the ground, fly waypoints or a circle / figure eight, hold, land.

A mission (config/missions/*.yaml) is a list of segments flown one after the other, each for a
fixed time. Positions are relative to the drone's take-off point (z = 0: resting on the ground).
The goal moves at a bounded ``speed`` between waypoints (a ramp, not a step), so that the position
error stays inside the envelope the network was trained in (+-0.6 m): the network, not only its
guide, flies the transfers. The same mission runs in process (:func:`fly_mission`, either engine,
with latency and randomisation) and through ROS (the ``mission`` goal sequencer node and
``snnctl launch ... --monitor``), and both report :func:`mission_metrics`.

Metrics per segment and drone: mean and max distance to the goal, time to reach the segment's
final goal (within ``reach_radius``), share of steps the network flew; per drone: crash (time and
reason), landed at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..config import ConfigError, build, load_yaml, package_root
from ..sim.batched_engine import GROUND_CLEARANCE
from ..sim.supervisor import CrashLimits, crash_reasons, idles_on_ground
from . import spec as T


@dataclass(frozen=True)
class Segment:
    """One part of a mission, flown for ``duration`` seconds."""

    kind: Literal["takeoff", "goto", "hold", "circle", "figure8", "land"]
    duration: float  # s
    position: tuple[float, float, float] = (0.0, 0.0, 1.0)  # m; goto: the waypoint; circle / figure8: centre
    height: float = 1.0  # m above the take-off point (takeoff)
    speed: float = 0.5  # m/s the goal moves at (takeoff, goto, land)
    radius: float = 0.3  # m (circle, figure8)
    period: float = 8.0  # s per lap (circle, figure8)
    name: str = ""  # shown in reports; default "<index>:<kind>"

    def __post_init__(self):
        if self.duration <= 0 or self.speed <= 0 or self.period <= 0 or self.radius < 0:
            raise ConfigError(f"segment {self.kind}: duration, speed and period must be > 0 and radius >= 0")


@dataclass(frozen=True)
class Mission:
    """A flight plan: segments in order (config/missions/<name>.yaml)."""

    segments: tuple[Segment, ...]
    name: str = "mission"
    reach_radius: float = 0.1  # m: a goal counts as reached within this distance
    landed_height: float = 0.05  # m: ending this close to the take-off height counts as landed

    def __post_init__(self):
        if not self.segments:
            raise ConfigError("a mission needs at least one segment")

    @property
    def duration(self) -> float:
        return sum(s.duration for s in self.segments)

    def segment_names(self) -> list[str]:
        return [s.name or f"{i}:{s.kind}" for i, s in enumerate(self.segments)]

    def starts(self) -> np.ndarray:
        """Segment start times [s], (S + 1,) with the mission's end last."""
        return np.concatenate([[0.0], np.cumsum([s.duration for s in self.segments])])

    def goal(self, t) -> tuple[np.ndarray, np.ndarray]:
        """Goal positions (len(t), 3) relative to the take-off point, and segment indices, at times ``t`` [s]."""
        t = np.atleast_1d(np.asarray(t, dtype=np.float64))
        starts = self.starts()
        index = np.clip(np.searchsorted(starts, t, side="right") - 1, 0, len(self.segments) - 1)
        goal = np.zeros((len(t), 3))
        begin = np.zeros(3)  # where each segment's goal starts: where the previous one ended
        for i, seg in enumerate(self.segments):
            rows = index == i
            goal[rows] = _segment_goal(seg, begin, t[rows] - starts[i])
            begin = _segment_goal(seg, begin, np.array([seg.duration]))[0]
        return goal, index


def _ramp(begin: np.ndarray, end: np.ndarray, speed: float, tau: np.ndarray) -> np.ndarray:
    distance = np.linalg.norm(end - begin)
    share = np.clip(tau * speed / distance, 0.0, 1.0) if distance > 0 else np.ones_like(tau)
    return begin + share[:, None] * (end - begin)


def _segment_goal(seg: Segment, begin: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """The goal (len(tau), 3) ``tau`` seconds into ``seg``, which starts at ``begin``."""
    if seg.kind == "takeoff":
        return _ramp(begin, np.array([begin[0], begin[1], seg.height]), seg.speed, tau)
    if seg.kind == "goto":
        return _ramp(begin, np.array(seg.position, dtype=np.float64), seg.speed, tau)
    if seg.kind == "land":
        return _ramp(begin, np.array([begin[0], begin[1], 0.0]), seg.speed, tau)
    if seg.kind == "hold":
        return np.repeat(begin[None], len(tau), 0)
    # circle / figure eight: the task's moving targets, starting at the centre
    target = T.TargetConfig(kind=seg.kind, position=tuple(seg.position), radius=seg.radius, period=seg.period)
    p, _ = T.target_at(target, torch.as_tensor(tau, dtype=torch.float64))
    return p.numpy()


def take_off_points(robots: dict) -> dict[str, np.ndarray]:
    """Each drone's mission origin in the world: its initial position, body resting on the ground."""
    return {name: np.array(r.initial_position, dtype=np.float64) + [0.0, 0.0, GROUND_CLEARANCE]
            for name, r in robots.items()}


def load_mission(path) -> Mission:
    """A mission file by path, or by name from config/missions/."""
    path = _mission_path(path)
    data = load_yaml(path)
    if not isinstance(data.get("segments"), list) or not data["segments"]:
        raise ConfigError(f"{path}: 'segments' must list at least one segment")
    return build(Mission, data, str(path))


def _mission_path(path):
    from pathlib import Path

    p = Path(path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return package_root() / "config" / "missions" / f"{path}.yaml"


# --- metrics ------------------------------------------------------------------------------------
OBSERVED_WITHIN = 0.05  # s: a mission time counts as observed when a state of it came at most this much later


def observed_positions(times: np.ndarray, positions: np.ndarray, grid: np.ndarray,
                       tolerance: float = OBSERVED_WITHIN) -> np.ndarray:
    """A drone's recorded ``positions`` (T, 3) at ``times`` (T,) sampled on ``grid``: the first
    state at or after each grid time, NaN where that state is more than ``tolerance`` later (an
    observer that joined late or lost messages did not see the drone then: those times are not
    scored, rather than scored with a later position)."""
    out = np.full((len(grid), 3), np.nan)
    if len(times) == 0:
        return out
    idx = np.clip(np.searchsorted(times, grid), 0, len(times) - 1)
    seen = (times[idx] >= grid) & (times[idx] - grid <= tolerance)
    out[seen] = positions[idx[seen]]
    return out


def mission_metrics(mission: Mission, times: np.ndarray, positions: np.ndarray, goals: np.ndarray,
                    network: np.ndarray | None = None, crashes: list[dict] | None = None) -> dict:
    """Metrics of drones that flew ``mission``.

    ``times`` (T,) [s] mission time of each sample; ``positions``, ``goals`` (N, T, 3) relative
    to each drone's take-off point, positions NaN where the drone was not observed (those samples
    are not scored; ``observed_share`` says how many were); ``network`` (N, T) bool: the network
    flew (None: unknown); ``crashes``: per drone None or {"time": s, "reason": str} (samples after
    a crash are ignored).
    """
    n = positions.shape[0]
    crashes = crashes or [None] * n
    starts = mission.starts()
    final_goal, _ = mission.goal([mission.duration])
    error = np.linalg.norm(positions - goals, axis=-1)  # (N, T)
    observed = ~np.isnan(error)
    alive = np.stack([times < (c["time"] if c else math.inf) for c in crashes])  # (N, T)
    scored = alive & observed
    segments = []
    for i, name in enumerate(mission.segment_names()):
        end_goal, _ = mission.goal([starts[i + 1] - 1e-9])
        rows = []
        for k in range(n):
            sel = (times >= starts[i]) & (times < starts[i + 1]) & scored[k]
            if not sel.any():
                rows.append(None)
                continue
            near = np.linalg.norm(positions[k, sel] - end_goal[0], axis=-1) < mission.reach_radius
            rows.append({
                "error_mean": float(error[k, sel].mean()), "error_max": float(error[k, sel].max()),
                "reach_time": float(times[sel][near.argmax()] - starts[i]) if near.any() else None,
                "network_share": None if network is None else float(network[k, sel].mean()),
            })
        flown = [r for r in rows if r is not None]
        reached = [r["reach_time"] for r in flown if r["reach_time"] is not None]
        shares = [r["network_share"] for r in flown if r["network_share"] is not None]
        segments.append({
            "name": name, "start": float(starts[i]), "duration": float(starts[i + 1] - starts[i]),
            "drones": len(flown),
            "error_mean": float(np.mean([r["error_mean"] for r in flown])) if flown else None,
            "error_max": float(np.max([r["error_max"] for r in flown])) if flown else None,
            "reached": len(reached),
            "reach_time_mean": float(np.mean(reached)) if reached else None,
            "reach_time_max": float(np.max(reached)) if reached else None,
            "network_share": float(np.mean(shares)) if shares else None,
        })
    drones = []
    for k in range(n):
        seen = scored[k]
        last = positions[k, seen][-1] if seen.any() else np.full(3, np.nan)
        drones.append({
            "crash": crashes[k], "error_mean": float(error[k, seen].mean()) if seen.any() else None,
            "network_share": None if network is None or not seen.any() else float(network[k, seen].mean()),
            "observed_share": float(observed[k, alive[k]].mean()) if alive[k].any() else 0.0,
            "landed": bool(crashes[k] is None and mission.segments[-1].kind == "land" and seen.any()
                           and abs(last[2] - final_goal[0, 2]) < mission.landed_height),
            "final_position": [round(float(v), 4) for v in last],
        })
    errors = [d["error_mean"] for d in drones if d["error_mean"] is not None]
    return {
        "mission": mission.name, "duration": mission.duration, "drones": n,
        "crashed": int(sum(d["crash"] is not None for d in drones)),
        "landed": int(sum(d["landed"] for d in drones)),
        "error_mean": float(np.mean(errors)) if errors else None,
        "segments": segments, "per_drone": drones,
    }


def format_metrics(m: dict) -> str:
    """The metrics as a text table."""
    lines = [f"mission {m['mission']} ({m['duration']:.1f} s), {m['drones']} drone(s): {m['crashed']} crashed, "
             f"{m['landed']} landed, mean distance to the goal {_cm(m['error_mean'])}",
             f"  {'segment':14s} {'start':>6s} {'error mean':>10s} {'max':>8s} {'reached':>8s} {'reach time':>10s}"
             f" {'network':>8s}"]
    for s in m["segments"]:
        reach = "-" if s["reach_time_mean"] is None else f"{s['reach_time_mean']:.2f} s"
        share = "-" if s["network_share"] is None else f"{100 * s['network_share']:.0f} %"
        lines.append(f"  {s['name']:14s} {s['start']:5.1f}s {_cm(s['error_mean']):>10s} {_cm(s['error_max']):>8s} "
                     f"{s['reached']:>3d}/{s['drones']:<4d} {reach:>10s} {share:>8s}")
    for k, d in enumerate(m["per_drone"]):
        if d["crash"]:
            lines.append(f"  drone {d.get('name', k)} crashed at {d['crash']['time']:.2f} s: {d['crash']['reason']}")
        if d["observed_share"] < 0.999:
            lines.append(f"  drone {d.get('name', k)}: only {100 * d['observed_share']:.0f} % of the mission was "
                         "observed (the states of the rest did not arrive); the metrics score what was")
    return "\n".join(lines)


def _cm(metres) -> str:
    return "-" if metres is None else f"{100 * metres:.1f} cm"


# --- in process ---------------------------------------------------------------------------------
def fly_mission(mission: Mission, controller, task: T.TaskConfig, drones: int = 10, engine: str = "batched",
                seed: int = 0, limits: CrashLimits | None = None) -> dict:
    """Fly ``mission`` with ``drones`` copies (each its own noise, latency and randomisation draws).

    ``controller``: a controller (control/handover.py: ``reset(mask)``, ``controller(obs) -> actions
    (N, 4)``), optionally with ``network_flew`` (N,) bool after each step (who flew). Crashed drones get their
    motors stopped, as the firmware's supervisor does.
    """
    from .envs import FlightEnv

    limits = limits or CrashLimits()
    steps = int(round(mission.duration / task.dt))
    offset = np.array([0.0, 0.0, GROUND_CLEARANCE])  # z = 0 of the mission: the body resting on the ground

    def target(t: torch.Tensor):
        goal, _ = mission.goal(t.numpy())
        return torch.as_tensor(goal + offset), torch.zeros(len(goal), 3, dtype=torch.float64)

    config = task.with_options(start="ground", episode_steps=steps + 1, termination_distance=1e6)
    options = {"ground": True}
    env = FlightEnv(config, drones, engine=engine, seed=seed, autoreset=False, dtype=torch.float64,
                    engine_options=options, target_fn=target)
    try:
        obs, _ = env.reset()
        controller.reset()
        times = np.arange(steps) * task.dt
        path, _ = mission.goal(np.arange(steps + 1) * task.dt)  # the goal at every step, once
        positions = np.zeros((drones, steps, 3))
        network = np.zeros((drones, steps), dtype=bool)
        has_network = False
        crashes = [None] * drones
        previous_velocity = env.engine.state.velocity.numpy().copy()
        idle = np.zeros(drones, dtype=bool)
        for t in range(steps):
            action = np.array(controller(obs.numpy()), dtype=np.float64)
            height = env.engine.state.position[:, 2].numpy() - offset[2]
            now_idle = idles_on_ground(path[t, 2], height)
            if (now_idle & ~idle).any():  # a fresh guide and a cold network for the next take-off
                controller.reset(now_idle & ~idle)
            idle = now_idle
            down = np.array([c is not None for c in crashes])
            action[down | idle | ~np.isfinite(action).all(-1)] = -1.0
            if getattr(controller, "network_flew", None) is not None:
                network[:, t] = controller.network_flew
                has_network = True
            obs, *_ = env.step(torch.as_tensor(action))
            s = env.engine.state.as_numpy()
            origin = env.origin.numpy()
            positions[:, t] = s["position"] - origin - offset
            on_ground = s["position"][:, 2] < GROUND_CLEARANCE + 0.005
            reasons, _ = crash_reasons(previous_velocity, s["position"] - origin, s["velocity"], s["quaternion"],
                                       on_ground, limits)
            for k, why in enumerate(reasons):
                if why and crashes[k] is None:
                    crashes[k] = {"time": float(times[t] + task.dt), "reason": why}
            previous_velocity = s["velocity"].copy()
        goals = np.broadcast_to(path[1:], positions.shape)  # after step t: the goal of t + 1
        result = mission_metrics(mission, times + task.dt, positions, goals, network if has_network else None, crashes)
        result.update(engine=engine, seed=seed)
        return result
    finally:
        env.close()
