"""Reports of recorded flights: ``snnctl bag report`` (replays: :mod:`snn_controller.replay`).

``write_report`` reads a bag (io/flight_log.py), scores its mission with the same
:func:`~snn_controller.task.mission.mission_metrics` as ``snnctl launch --monitor`` (the same
resampling of the odometry on the mission's clock, so the numbers agree), and writes PNG plots, a
one-page HTML summary that shows them (relative paths: the directory can be moved or served as
it is) and ``metrics.json``.

The plots use matplotlib's object API (``Figure``), which needs no display and no backend choice.
"""

from __future__ import annotations

import html
import json
import math
import time
from pathlib import Path

import numpy as np

from .config import ConfigError
from .io.flight_log import NS_PER_S, DroneLog, FlightLog, FlightLogError, read_flight_log
from .sim.batched_engine import GROUND_CLEARANCE
from .sim.fleet import REST_HEIGHT
from .task.mission import Mission, format_metrics, load_mission, mission_metrics, observed_positions

REPORT_SUFFIX = "_report"  # BAG -> BAG_report: the bag directory stays as rosbag2 wrote it


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
        "states": len(d.odometry.stamp_ns), "commands": len(d.commands.values) + len(d.ctbr_commands.values),
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
def new_figure(rows: int = 1, cols: int = 1, height: float = 3.2, sharex: bool = True):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, sharex=sharex, squeeze=False)
    return fig, axes


def save_figure(fig, path: Path) -> Path:
    fig.savefig(path, dpi=90)
    return path


def add_legend(ax, **options) -> None:
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
    fig, axes = new_figure(1, 2, height=4.5, sharex=False)
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
    add_legend(axes[0, 0], fontsize=8)
    return save_figure(fig, path)


def position_error(d: DroneLog) -> np.ndarray:
    """(T,) distance [m] of each state to the goal in force at its stamp (NaN before the first goal)."""
    i = np.searchsorted(d.goals.stamp_ns, d.odometry.stamp_ns, side="right") - 1
    if not len(d.goals.stamp_ns):
        return np.full(len(i), np.nan)
    error = np.linalg.norm(d.odometry.position - d.goals.position[np.clip(i, 0, None)], axis=-1)
    return np.where(i >= 0, error, np.nan)


def plot_position_error(log: FlightLog, mission, path: Path) -> Path:
    fig, axes = new_figure()
    ax = axes[0, 0]
    for name, d in log.drones.items():
        ax.plot(d.odometry.time, 100 * position_error(d), lw=0.8, label=name)
    _mark_segments(ax, mission, log.mission and log.mission.start)
    ax.set(title="distance to the goal", xlabel="sim time [s]", ylabel="cm")
    ax.grid(alpha=0.3)
    add_legend(ax, fontsize=8)
    return save_figure(fig, path)


def plot_motor_commands(log: FlightLog, mission, path: Path) -> Path:
    fig, axes = new_figure(len(log.drones), 1, height=2.6)
    for ax, (name, d) in zip(axes[:, 0], log.drones.items()):
        ctbr = len(d.ctbr_commands.values) > 0 and not len(d.commands.values)
        c = d.ctbr_commands if ctbr else d.commands
        t = np.where(c.answered_ns >= 0, c.answered_ns, 0) / NS_PER_S  # at the state each answers
        labels = ("thrust (PWM ratio)", "p [rad/s] / 10", "q [rad/s] / 10", "r [rad/s] / 10") if ctbr else \
            tuple(f"m{m + 1}" for m in range(4))
        scale = (1.0, 0.1, 0.1, 0.1) if ctbr else (1.0,) * 4  # rates on the thrust's axis
        for m in range(4):
            ax.plot(t, c.values[:, m] * scale[m], lw=0.6, label=labels[m])
        what = "CTBR setpoints" if ctbr else "motor commands"
        ax.set(title=f"{name}: {what} (at the stamp of the state each answers)", ylabel="" if ctbr else "[-1, 1]")
        ax.grid(alpha=0.3)
        add_legend(ax, fontsize=7, ncol=4, loc="lower right")
    axes[-1, 0].set_xlabel("sim time [s]")
    return save_figure(fig, path)


def plot_spikes(log: FlightLog, mission, path: Path) -> Path:
    fig, axes = new_figure()
    ax = axes[0, 0]
    for name, d in log.drones.items():
        s = d.policy.spikes_per_step
        for layer in range(s.shape[1]):
            ax.step(d.policy.time, s[:, layer], where="post", lw=1, label=f"{name} layer {layer + 1}")
    ax.set(title="spikes per step per layer (snn_policy's mean since the network's last reset)",
           xlabel="sim time [s]", ylabel="spikes / step")
    ax.grid(alpha=0.3)
    add_legend(ax, fontsize=7)
    return save_figure(fig, path)


def plot_who_flies(log: FlightLog, mission, path: Path) -> Path:
    fig, axes = new_figure(height=0.7 + 0.5 * len(log.drones))
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
    return save_figure(fig, path)


def plot_command_age(log: FlightLog, mission, path: Path) -> Path:
    fig, axes = new_figure()
    ax = axes[0, 0]
    for name, d in log.drones.items():
        b = d.bridge
        for k, (label, style) in enumerate((("p50", "-"), ("p99", "--"), ("max", ":"))):
            ax.step(b.time, b.command_age[:, k], where="post", ls=style, lw=1, label=f"{name} {label}")
    ax.set(title="command age (sim_bridge: steps from the state answered to the step applied, last 1000 steps)",
           xlabel="sim time [s]", ylabel="steps")
    ax.grid(alpha=0.3)
    add_legend(ax, fontsize=7, ncol=2)
    return save_figure(fig, path)


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
