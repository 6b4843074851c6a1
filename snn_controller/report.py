"""Reports of recorded flights: ``snnctl bag report`` and ``snnctl sim replay --bag``.

``write_report`` reads a bag (io/flight_log.py), scores its mission with the same
:func:`~snn_controller.task.mission.mission_metrics` as ``snnctl launch --monitor`` (the same
resampling of the odometry on the mission's clock, so the numbers agree), and writes PNG plots, a
one-page HTML summary that shows them (relative paths: the directory can be moved or served as
it is) and ``metrics.json``.

``replay_comparison`` replays one drone of a recorded flight on either engine and writes the
position error between replay and recording: the commands the simulator says it flew and its rotor
speeds (motor_state), or, for a bag without them, the commands worked out from the recorded ones
(sim/command_replay.py); from the simulator's reset when the engine reaches the first recorded
state from there, else from that state.

The plots use matplotlib's object API (``Figure``), which needs no display and no backend choice.
"""

from __future__ import annotations

import html
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .config import ConfigError
from .io.flight_log import NS_PER_S, DroneLog, FlightLog, FlightLogError, read_flight_log
from .sim.batched_engine import GROUND_CLEARANCE
from .sim.fleet import REST_HEIGHT, step_of_stamp
from .task.mission import Mission, format_metrics, load_mission, mission_metrics, observed_positions

REPORT_SUFFIX = "_report"  # BAG -> BAG_report: the bag directory stays as rosbag2 wrote it
DIVERGED_M = 0.01  # a replay has left its recording once they are this far apart [m]


def default_out_dir(bag: str | Path) -> Path:
    bag = Path(bag)
    return bag.with_name(bag.name + REPORT_SUFFIX)


# --- metrics -----------------------------------------------------------------------------------
def home_of(drone: DroneLog, mission: Mission | None, mission_start: float | None) -> np.ndarray:
    """The drone's take-off point (mission z = 0) in the world. The sequencer's goal is the
    take-off point plus the mission's goal at that time, so any recorded goal gives it back;
    without goals, the first state, if the drone rested on the ground there."""
    g = drone.goals
    if len(g.stamp_ns) and mission is not None:
        t = max(g.stamp_ns[0] / NS_PER_S - mission_start, 0.0)
        return g.position[0] - mission.goal([t])[0][0]
    return drone.odometry.position[0] - [0.0, 0.0, REST_HEIGHT - GROUND_CLEARANCE]


def mission_of(log: FlightLog, mission: str | Path | None = None) -> Mission | None:
    """The mission the bag flew: ``mission`` (a file or name) or the name in /mission/status."""
    if mission is not None:
        return load_mission(mission)
    if log.mission is None:
        return None
    try:
        return load_mission(log.mission.name)
    except ConfigError as exc:  # a mission flown from a file outside config/missions/
        raise FlightLogError(f"{log.path}: mission '{log.mission.name}' of /mission/status is not in "
                             f"config/missions/ ({exc}); give its file with --mission FILE") from exc


def flight_mission_metrics(log: FlightLog, mission: Mission) -> dict:
    """mission_metrics of the bag, computed as ``snnctl launch --monitor`` computes them: on a grid
    of the mission's clock (mission time = sim time - the start /mission/status announced), each
    drone at its first state at or after each grid time (:func:`observed_positions`); who flew from snn_policy's status and
    crash times from sim_bridge's (both 1 Hz, so known to about a second)."""
    start = log.mission.start
    names = list(log.drones)
    grid = np.arange(0.0, mission.duration, log.dt)
    positions, network = np.zeros((len(names), len(grid), 3)), np.zeros((len(names), len(grid)), dtype=bool)
    crashes, covered = [], []
    for k, name in enumerate(names):
        d = log.drones[name]
        t = d.odometry.time - start
        positions[k] = observed_positions(t, d.odometry.position, grid) - home_of(d, mission, start)
        network[k] = _latest(d.policy.time - start, d.policy.network_flies, grid, False)
        crash = d.bridge.first_crash()
        crashes.append(None if crash is None else {**crash, "time": crash["time"] - start})
        covered.append(bool(t[-1] >= mission.duration - 0.05))
    has_network = any(len(d.policy.time) for d in log.drones.values())
    goals, _ = mission.goal(grid)
    goals = np.broadcast_to(goals, positions.shape)
    report = mission_metrics(mission, grid, positions, goals, network if has_network else None, crashes)
    for k, d in enumerate(report["per_drone"]):
        # each drone's own segments too (mission_metrics of one drone): its time to reach each goal
        alone = mission_metrics(mission, grid, positions[k:k + 1], goals[k:k + 1],
                                network[k:k + 1] if has_network else None, crashes[k:k + 1])
        d.update(name=names[k], flew_whole_mission=covered[k], segments=[
            {"name": s["name"], "error_mean": s["error_mean"], "error_max": s["error_max"],
             "reach_time": s["reach_time_mean"], "network_share": s["network_share"]} for s in alone["segments"]])
    return report


def _latest(times: np.ndarray, values: np.ndarray, at: np.ndarray, before):
    """The last of ``values`` reported at or before each time of ``at`` (``before`` until the first)."""
    i = np.searchsorted(times, at, side="right") - 1
    if not len(values):
        return np.full(len(at), before)
    return np.where(i >= 0, values[np.clip(i, 0, None)], before)


def drone_summary(d: DroneLog) -> dict:
    """What the simulator and the policy said of one drone over the flight."""
    age = d.bridge.command_age
    reported = ~np.isnan(age[:, 1]) if len(age) else np.zeros(0, dtype=bool)
    last = age[reported][-1] if reported.any() else [math.nan] * 3

    def steps(v):
        return None if math.isnan(v) else int(v)

    flies = d.policy.network_flies
    return {
        "states": len(d.odometry.stamp_ns), "commands": len(d.commands.values),
        "sim_time": [round(float(d.odometry.time[0]), 3), round(float(d.odometry.time[-1]), 3)],
        # the simulator's own command age (its rolling window: the last 1000 steps), as it last
        # reported it, and the worst p99 / max it reported during the flight
        "command_age": {"p50": steps(last[0]), "p99": steps(last[1]), "max": steps(last[2]),
                        "p99_worst": steps(np.nanmax(age[:, 1])) if reported.any() else None,
                        "max_worst": steps(np.nanmax(age[:, 2])) if reported.any() else None},
        "stale_commands": int(d.bridge.stale[-1]) if len(d.bridge.stale) else None,
        "watchdog_steps": int(d.bridge.timeouts[-1]) if len(d.bridge.timeouts) else None,
        "crash": d.bridge.first_crash(),
        "network_reports": float(flies.mean()) if len(flies) else None,  # share of snn_policy's reports
        "spikes_per_step": _flight_spikes(d.policy.spikes_per_step),
        "failsafe_faults": int(d.policy.faults[-1]) if len(flies) else None,
    }


def _flight_spikes(reports: np.ndarray) -> list | None:
    """Spikes per step per layer over the flight: snn_policy reports the mean since the network's
    last reset, and the network is reset after landing, so the last report with spikes in it."""
    if not len(reports):
        return None
    spiking = np.flatnonzero(np.nansum(reports, axis=1) > 0)
    row = reports[spiking[-1]] if len(spiking) else reports[-1]
    return [round(float(x), 2) for x in row]


def flight_metrics(log: FlightLog, mission: Mission | None) -> dict:
    return {
        "bag": str(log.path), "dt": log.dt, "drones": list(log.drones),
        "mission_start": None if log.mission is None else log.mission.start,
        "mission": None if mission is None or log.mission is None else flight_mission_metrics(log, mission),
        "per_drone": {name: drone_summary(d) for name, d in log.drones.items()},
    }


# --- plots -------------------------------------------------------------------------------------
def _figure(rows: int = 1, cols: int = 1, height: float = 3.2, sharex: bool = True):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, sharex=sharex, squeeze=False)
    return fig, axes


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=90)
    return path


def _legend(ax, **options) -> None:
    """A legend of what was drawn, or a note that the bag had nothing to draw (a PID flight has no
    spikes, a bag without diagnostics no command ages)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**options)
    else:
        ax.text(0.5, 0.5, "nothing of this in the bag", transform=ax.transAxes, ha="center", color="grey")


def _mark_segments(ax, mission: Mission | None, start: float | None, labels: bool = True) -> None:
    """Dotted lines at the mission's segment starts (sim time), with the segments' names."""
    if mission is None or start is None:
        return
    for t, name in zip(mission.starts()[:-1], mission.segment_names()):
        ax.axvline(start + t, color="grey", lw=0.6, ls=":")
        if labels:
            ax.text(start + t, 1.0, f" {name}", transform=ax.get_xaxis_transform(), fontsize=7, va="top", color="grey")


def plot_trajectory(log: FlightLog, mission, path: Path) -> Path:
    """Top (x-y) and side (x-z) views, each drone's path and its goals."""
    fig, axes = _figure(1, 2, height=4.5, sharex=False)
    for name, d in log.drones.items():
        p, g = d.odometry.position, d.goals.position
        for ax, (i, j) in zip(axes[0], ((0, 1), (0, 2))):
            line, = ax.plot(p[:, i], p[:, j], lw=1, label=name)
            if len(g):
                ax.plot(g[:, i], g[:, j], ls="--", lw=0.8, color=line.get_color(), alpha=0.7)
                ax.scatter(g[:, i], g[:, j], s=4, color=line.get_color(), alpha=0.5)
    for ax, (title, ylabel) in zip(axes[0], (("top view (dashed: goals)", "y [m]"), ("side view", "z [m]"))):
        ax.set(title=title, xlabel="x [m]", ylabel=ylabel, aspect="equal")
        ax.grid(alpha=0.3)
    _legend(axes[0, 0], fontsize=8)
    return _save(fig, path)


def position_error(d: DroneLog) -> np.ndarray:
    """(T,) distance [m] of each state to the goal in force at its stamp (NaN before the first goal)."""
    i = np.searchsorted(d.goals.stamp_ns, d.odometry.stamp_ns, side="right") - 1
    if not len(d.goals.stamp_ns):
        return np.full(len(i), np.nan)
    error = np.linalg.norm(d.odometry.position - d.goals.position[np.clip(i, 0, None)], axis=-1)
    return np.where(i >= 0, error, np.nan)


def plot_position_error(log: FlightLog, mission, path: Path) -> Path:
    fig, axes = _figure()
    ax = axes[0, 0]
    for name, d in log.drones.items():
        ax.plot(d.odometry.time, 100 * position_error(d), lw=0.8, label=name)
    _mark_segments(ax, mission, log.mission and log.mission.start)
    ax.set(title="distance to the goal", xlabel="sim time [s]", ylabel="cm")
    ax.grid(alpha=0.3)
    _legend(ax, fontsize=8)
    return _save(fig, path)


def plot_motor_commands(log: FlightLog, mission, path: Path) -> Path:
    fig, axes = _figure(len(log.drones), 1, height=2.6)
    for ax, (name, d) in zip(axes[:, 0], log.drones.items()):
        c = d.commands
        t = np.where(c.answered_ns >= 0, c.answered_ns, 0) / NS_PER_S  # at the state each answers
        for m in range(4):
            ax.plot(t, c.values[:, m], lw=0.6, label=f"m{m + 1}")
        ax.set(title=f"{name}: motor commands (at the stamp of the state each answers)", ylabel="[-1, 1]")
        ax.grid(alpha=0.3)
        _legend(ax, fontsize=7, ncol=4, loc="lower right")
    axes[-1, 0].set_xlabel("sim time [s]")
    return _save(fig, path)


def plot_spikes(log: FlightLog, mission, path: Path) -> Path:
    fig, axes = _figure()
    ax = axes[0, 0]
    for name, d in log.drones.items():
        s = d.policy.spikes_per_step
        for layer in range(s.shape[1]):
            ax.step(d.policy.time, s[:, layer], where="post", lw=1, label=f"{name} layer {layer + 1}")
    ax.set(title="spikes per step per layer (snn_policy's mean since the network's last reset)",
           xlabel="sim time [s]", ylabel="spikes / step")
    ax.grid(alpha=0.3)
    _legend(ax, fontsize=7)
    return _save(fig, path)


def plot_who_flies(log: FlightLog, mission, path: Path) -> Path:
    fig, axes = _figure(height=0.7 + 0.5 * len(log.drones))
    ax = axes[0, 0]
    for row, (name, d) in enumerate(log.drones.items()):
        t, net = d.policy.time, d.policy.network_flies
        ends = np.append(t[1:], t[-1] + 1.0) if len(t) else t  # each report holds until the next
        for a, b, flies in zip(t, ends, net):
            ax.barh(row, b - a, left=a, color="tab:green" if flies else "tab:orange", height=0.6)
    ax.set_yticks(range(len(log.drones)), list(log.drones))
    _mark_segments(ax, mission, log.mission and log.mission.start, labels=False)
    ax.set(title="who flies (green: the network, orange: the PID guide; from snn_policy's 1 Hz status)",
           xlabel="sim time [s]")
    return _save(fig, path)


def plot_command_age(log: FlightLog, mission, path: Path) -> Path:
    fig, axes = _figure()
    ax = axes[0, 0]
    for name, d in log.drones.items():
        b = d.bridge
        for k, (label, style) in enumerate((("p50", "-"), ("p99", "--"), ("max", ":"))):
            ax.step(b.time, b.command_age[:, k], where="post", ls=style, lw=1, label=f"{name} {label}")
    ax.set(title="command age (sim_bridge: steps from the state answered to the step applied, last 1000 steps)",
           xlabel="sim time [s]", ylabel="steps")
    ax.grid(alpha=0.3)
    _legend(ax, fontsize=7, ncol=2)
    return _save(fig, path)


# --- the report --------------------------------------------------------------------------------
PLOTS = (  # file, title, what draws it: each takes (log, mission or None, path)
    ("trajectory.png", "Trajectory", plot_trajectory),
    ("position_error.png", "Position error", plot_position_error),
    ("motor_commands.png", "Motor commands", plot_motor_commands),
    ("spikes.png", "Spikes per layer", plot_spikes),
    ("who_flies.png", "Who flies", plot_who_flies),
    ("command_age.png", "Command age", plot_command_age),
)


def write_report(bag: str | Path, out: str | Path | None = None, mission: str | Path | None = None) -> dict:
    """Write the report of ``bag`` into ``out`` (default BAG_report): the PNGs, index.html and
    metrics.json. Returns {"out", "html", "metrics_file", "files", "seconds", "metrics"}."""
    started = time.perf_counter()
    log = read_flight_log(bag)
    flown = mission_of(log, mission)
    out = Path(out) if out is not None else default_out_dir(bag)
    out.mkdir(parents=True, exist_ok=True)
    metrics = flight_metrics(log, flown)
    files = [draw(log, flown, out / name).name for name, _, draw in PLOTS]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "index.html").write_text(summary_html(metrics, [(f, t) for (f, t, _) in PLOTS]))
    return {"out": str(out), "html": str(out / "index.html"), "metrics_file": str(out / "metrics.json"),
            "files": [*files, "index.html", "metrics.json"], "seconds": round(time.perf_counter() - started, 2),
            "metrics": metrics}


def summary_html(metrics: dict, plots: list[tuple[str, str]]) -> str:
    """One page: the mission table, the per-drone table and the plots (relative image paths)."""
    m = metrics["mission"]
    mission_text = format_metrics(m) if m else "no mission in the bag (/mission/status)"
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{s['states']}</td><td>{s['commands']}</td>"
        f"<td>{_age_text(s['command_age'])}</td><td>{s['stale_commands']}</td>"
        f"<td>{html.escape(_crash_text(s['crash']))}</td><td>{_share_text(s['network_reports'])}</td>"
        f"<td>{s['spikes_per_step']}</td></tr>" for name, s in metrics["per_drone"].items())
    figures = "".join(f'<h2>{html.escape(title)}</h2><img src="{file}" alt="{html.escape(title)}">'
                      for file, title in plots)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Flight report: {html.escape(metrics['bag'])}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:1em auto}} img{{max-width:100%}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:2px 6px}}
pre{{background:#f6f6f6;padding:6px}}</style>
</head><body>
<h1>Flight report</h1>
<p>bag <code>{html.escape(metrics['bag'])}</code>, control period {metrics['dt'] * 1000:.0f} ms,
drones {', '.join(map(html.escape, metrics['drones']))}; metrics: <a href="metrics.json">metrics.json</a></p>
<pre>{html.escape(mission_text)}</pre>
<table><tr><th>drone</th><th>states</th><th>commands</th><th>command age p50 / p99 / max (worst p99)</th>
<th>stale</th><th>crash</th><th>network flew (reports)</th><th>spikes per step per layer</th></tr>{rows}</table>
{figures}
</body></html>
"""


def _age_text(age: dict) -> str:
    cells = ["-" if age[k] is None else str(age[k]) for k in ("p50", "p99", "max", "p99_worst")]
    return f"{' / '.join(cells[:3])} ({cells[3]})"


def _crash_text(crash) -> str:
    return "-" if crash is None else f"{crash['time']:.2f} s: {crash['reason']}"


def _share_text(share) -> str:
    return "-" if share is None else f"{100 * share:.0f} %"


def format_report(result: dict) -> str:
    """The text ``snnctl bag report`` prints."""
    m = result["metrics"]
    lines = [f"report of {m['bag']} -> {result['html']} ({len(result['files'])} files, {result['seconds']:.1f} s)"]
    if m["mission"]:
        lines.append(format_metrics(m["mission"]))
    for name, s in m["per_drone"].items():
        lines.append(f"  {name}: command age p50/p99/max {_age_text(s['command_age'])} steps, "
                     f"crash {_crash_text(s['crash'])}")
    return "\n".join(lines)


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

    source: str  # "applied" (motor_state) or "reconstructed" (the fallback)
    first: int  # the step the replay starts at
    from_reset: bool  # it starts where the simulator's reset put the drone, not at a recorded state
    commands: np.ndarray  # (T, 4) the command of each step; NaN where unknown (never flown)
    recorded: dict  # recorded_states (T + 1, k), NaN where the recorder missed the state
    segments: list  # (begin, end): flown from start(begin, ...) under commands[begin:end]
    start: Callable  # (begin, the replay's rotor speeds there or None) -> the DroneState to start at
    gaps: list  # (first, last) steps the recorder missed, after each of which the replay starts again
    command_delay: int | None  # the command_delay the reconstruction assumed; None for "applied"


def inferred_command_delay(d: DroneLog) -> int:
    """sim_bridge's command_delay (not in the bag): no command applies younger than it, and in
    lockstep every one applies at exactly that age, so the smallest command-age p50 it reported."""
    p50 = d.bridge.command_age[:, 0] if len(d.bridge.command_age) else np.zeros(0)
    p50 = p50[~np.isnan(p50)]
    return int(p50.min()) if len(p50) else 0


def recorded_schedule(log: FlightLog, d: DroneLog, command_delay: int, command_timeout: float = 0.5):
    """The fallback's commands: (first step, Schedule) of what the simulator applied to drone ``d``
    at each step, from the first recorded command or state (whichever is earlier: the recorder may
    find the command topics before the odometry) to the last recorded state, worked out from the
    commands' stamps (sim/command_replay.py)."""
    from .sim.command_replay import arrival_steps, bridge_schedule

    recorded_steps = step_of_stamp(d.odometry.stamp_ns, log.dt_ns)
    c = d.commands
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
                     horizon: int = 3, iterations: int = 4) -> np.ndarray:
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
        out, _ = replay_flight(model, engine, _recorded_start(recorded, step, w), commands[None, step:end], dt)
        return (np.concatenate([out["velocity"][0, 1:], out["angular_velocity"][0, 1:]], 1) - target).ravel()

    w = np.asarray(guess, dtype=np.float64)
    for _ in range(iterations):
        r = residual(w)
        jacobian = np.stack([(residual(w + 1e-6 * e) - r) / 1e-6 for e in np.eye(4)], 1)
        w = np.clip(w - np.linalg.lstsq(jacobian, r, rcond=None)[0], 0.0, 1.0)
    return w


def starts_from_reset(model, engine: str, robot, commands: np.ndarray, recorded: dict, at: int, dt: float,
                      rotor_speed=None) -> bool:
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

    if robot is None or at == 0 or np.isnan(commands).any():
        return False
    out, _ = replay_flight(model, engine, initial_state([robot]), commands[None], dt)
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
                       command_delay: int | None) -> ReplayPlan:
    """The fallback, for a bag without motor_state: the commands as :func:`recorded_schedule` works
    them out (``command_delay``: default :func:`inferred_command_delay`), motors off before the first
    recorded command (:func:`starts_from_reset` checks it), the rotor speeds at the first state from
    :func:`rotors_at_first_state` and, after each run of states the recorder missed (it missed their
    commands too: it drops messages when it falls more than its queue behind), fitted to the
    recording (:func:`fit_rotor_speeds`). ``every``: start again from the recording every that many
    steps, the rotors carried over."""
    from .sim.fleet import initial_state

    delay = inferred_command_delay(d) if command_delay is None else int(command_delay)
    begin, schedule = recorded_schedule(log, d, delay)
    first = int(step_of_stamp(d.odometry.stamp_ns[0], log.dt_ns))
    last = int(step_of_stamp(d.odometry.stamp_ns[-1], log.dt_ns))
    commands = np.concatenate([np.full((begin, 4), -1.0), schedule.commands])  # steps 0..last-1
    recorded = recorded_states(log, d, 0, last)
    from_reset = starts_from_reset(model, engine, robot, commands[:first], recorded, first, log.dt)
    start_step = 0 if from_reset else first
    commands, recorded = commands[start_step:], _from(recorded, start_step)
    missing = np.isnan(recorded["position"][:, 0])
    missing[:first - start_step] = False  # before the first state: flown from the reset, checked
    gaps = recorder_gaps(missing)
    refits = {last_missed + 1 for _, last_missed in gaps} | ({0} if begin > 0 and not from_reset else set())
    restarts = [] if every is None else [k for k in range(first - start_step, len(commands))
                                         if k % every == 0 and not missing[k]]
    bounds = sorted({0, len(commands), *(k for k in (*restarts, *refits) if 0 < k < len(commands))})
    initial_rotors = rotors_at_first_state(model, schedule, first - begin, begin == 0, log.dt)

    def start(k, carried):
        if from_reset and k == 0:
            return initial_state([robot])
        rotors = initial_rotors if carried is None else carried
        if k in refits:
            rotors = fit_rotor_speeds(model, engine, recorded, commands, k, log.dt, rotors)
        return _recorded_start(recorded, k, rotors)

    return ReplayPlan("reconstructed", start_step, from_reset, commands, recorded, list(zip(bounds[:-1], bounds[1:])),
                      start, gaps, delay)


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
        out, crashes = replay_flight(model, engine, plan.start(begin, rotors), plan.commands[None, begin:end], dt)
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
    plan = applied_plan(log, d, model, engine, robot, every) if len(d.motor_state.stamp_ns) else \
        reconstructed_plan(log, d, model, engine, robot, every, command_delay)
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
    fig, axes = _figure(2, 1, height=3.0)
    top, bottom = axes[:, 0]
    for k, axis in enumerate("xyz"):
        line, = top.plot(time_s, recorded[:, k], lw=1, label=f"{axis} recorded")
        top.plot(time_s, replayed[:, k], lw=1, ls="--", color=line.get_color(), label=f"{axis} replay")
    top.set(title=f"{result['drone']}: recorded flight and its commands replayed on {result['engine']}\n"
                  f"({_replay_terms(result)})", ylabel="m")
    _legend(top, fontsize=7, ncol=3)
    top.grid(alpha=0.3)
    e = result["error"]
    bottom.plot(time_s, 100 * error, lw=1)
    bottom.set(title=f"position error: mean {100 * e['mean']:.2f} cm, max {100 * e['max']:.2f} cm, "
                     f"within 1 cm for {result['within_1cm_s']:.2f} s", xlabel="sim time [s]", ylabel="cm")
    bottom.grid(alpha=0.3)
    return _save(fig, path)


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
