"""An in-process observer of a fleet, used by ``snnctl launch --monitor`` and tests.

Subscribes /<name>/odom of every drone (position history) and /diagnostics (sim_bridge's status
per drone: command age p50/p99/max in steps, stale commands, crashes; snn_policy's: who flies).
:meth:`FleetMonitor.mission_report` scores a mission flown through ROS with the metrics of
:func:`snn_controller.task.mission.mission_metrics`, as ``snnctl eval --mission`` does in process;
who flew and crash times come from the 1 Hz diagnostics, so they are known to about a second.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry
from rclpy.node import Node
from std_msgs.msg import String

from ..io import topics
from . import qos
from .conversions import NS_PER_S, odometry_arrays, stamp_ns

AGE_KEYS = ("p50", "p99", "max")


class FleetMonitor(Node):
    """Keeps each drone's odometry history (sim time, position, world velocity) and the simulator's
    last status of it."""

    def __init__(self, names, node_name: str = "fleet_monitor", **kwargs):
        super().__init__(node_name, **kwargs)
        self.lock = threading.Lock()
        self.history = {name: [] for name in names}
        self.sim_status = {name: {} for name in names}  # key -> value of sim_bridge's DiagnosticStatus
        self.flying = {name: [] for name in names}  # (sim time, the network flies) from snn_policy
        self.first_crash = {name: None for name in names}  # {"time": sim time, "reason"} from sim_bridge
        for name in names:
            self.create_subscription(Odometry, topics.drone_topic(name, topics.ODOM),
                                     lambda m, n=name: self._on_odom(n, m), qos.OBSERVER)
        self.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, self._on_diagnostics, qos.OBSERVER)
        self.mission_start = None  # sim time of mission t = 0, from mission_sequencer's /mission/status
        self.create_subscription(String, topics.MISSION_STATUS, self._on_mission_status, qos.LATCHED)

    def _on_mission_status(self, msg):
        self.mission_start = json.loads(msg.data)["start"]

    def _on_odom(self, name, msg):
        s = odometry_arrays(msg)
        t = stamp_ns(msg.header.stamp) / NS_PER_S
        with self.lock:
            self.history[name].append((t, *s["position"], *s["velocity_world"]))

    def _on_diagnostics(self, msg):
        t = stamp_ns(msg.header.stamp) / NS_PER_S
        for status in msg.status:
            name = status.hardware_id
            if name not in self.sim_status:
                continue
            with self.lock:
                if status.name.startswith("sim_bridge"):
                    values = {kv.key: kv.value for kv in status.values}
                    self.sim_status[name] = values
                    if values.get("crashed") == "True" and self.first_crash[name] is None:
                        self.first_crash[name] = {"time": t, "reason": status.message.removeprefix("crashed: ")}
                elif status.name.startswith("snn_policy") and self.history[name]:
                    # snn_policy's stamp is wall time: place the sample at the drone's latest sim time
                    self.flying[name].append((self.history[name][-1][0], status.message == "network flying"))

    def latest(self, name):
        with self.lock:
            return np.array(self.history[name][-1]) if self.history[name] else None

    def window(self, name, seconds: float) -> np.ndarray:
        """Rows (t, x, y, z, vx, vy, vz) of the last ``seconds`` of sim time."""
        with self.lock:
            rows = np.array(self.history[name]) if self.history[name] else np.zeros((0, 7))
        return rows[rows[:, 0] >= rows[-1, 0] - seconds] if len(rows) else rows

    def command_age(self, name) -> dict[str, int | None]:
        """The simulator's last command age p50, p99, max [steps] for the drone (None: not reported)."""
        with self.lock:
            status = self.sim_status[name]
        return {k: _int_or_none(status.get(f"command_age_{k}")) for k in AGE_KEYS}

    def status_line(self) -> str:
        """One line for the whole fleet: sim time, position and command age of each drone."""
        cells = []
        for name in self.history:
            row = self.latest(name)
            if row is None:
                cells.append(f"{name} waiting")
                continue
            age = self.command_age(name)
            age_text = "/".join("-" if v is None else str(v) for v in age.values())
            crashed = " CRASHED" if self.sim_status[name].get("crashed") == "True" else ""
            cells.append(f"{name} t={row[0]:5.1f}s pos=({row[1]:+.2f},{row[2]:+.2f},{row[3]:+.2f}) "
                         f"age p50/p99/max={age_text}{crashed}")
        return " | ".join(cells)

    def summary(self, seconds: float = 2.0) -> dict:
        """Per drone: last position, speed, the spread of position over the last ``seconds``, and
        the simulator's command age [steps], stale commands and crashes."""
        out = {}
        for name in self.history:
            w = self.window(name, seconds)
            if len(w) == 0:
                out[name] = {"messages": 0}
                continue
            pos = w[:, 1:4]
            status = self.sim_status[name]
            out[name] = {
                "messages": len(self.history[name]), "sim_time": float(w[-1, 0]),
                "position": [round(float(v), 4) for v in pos[-1]],
                "speed": round(float(np.linalg.norm(w[-1, 4:7])), 4),
                "hover_spread_m": round(float(np.linalg.norm(pos - pos.mean(0), axis=1).mean()), 4),
                "command_age": self.command_age(name),
                "stale_commands": _int_or_none(status.get("stale")),
                "crashes": _int_or_none(status.get("crashes")),
            }
        return out


    def mission_done(self, mission) -> bool:
        """Every drone's odometry is past the mission's end (half a second of sim time)."""
        if self.mission_start is None:
            return False
        return all((r := self.latest(n)) is not None and r[0] >= self.mission_start + mission.duration + 0.5
                   for n in self.history)

    def mission_report(self, mission, homes: dict) -> dict | None:
        """The mission's metrics from the recorded odometry (mission time = sim time - the start the
        sequencer announced); ``homes``: each drone's take-off point (mission z = 0). None before
        the sequencer said when the mission starts."""
        from ..task.mission import mission_metrics, observed_positions

        if self.mission_start is None:
            return None
        start_time = self.mission_start
        names = list(self.history)
        with self.lock:
            rows = {n: np.array(self.history[n]) if self.history[n] else np.zeros((0, 7)) for n in names}
            flying = {n: list(self.flying[n]) for n in names}
            crashes = [None if self.first_crash[n] is None else
                       {**self.first_crash[n], "time": self.first_crash[n]["time"] - start_time} for n in names]
        grid = np.arange(0.0, mission.duration, 0.01)  # resampled: drones' messages need not line up
        positions = np.zeros((len(names), len(grid), 3))
        network = np.zeros((len(names), len(grid)), dtype=bool)
        for k, n in enumerate(names):
            positions[k] = observed_positions(rows[n][:, 0] - start_time, rows[n][:, 1:4], grid) - homes[n]
            if flying[n]:
                ft = np.array([f[0] for f in flying[n]]) - start_time
                fi = np.searchsorted(ft, grid, side="right") - 1
                network[k] = np.where(fi >= 0, np.array([f[1] for f in flying[n]])[np.clip(fi, 0, None)], False)
        covered = np.array([len(rows[n]) and rows[n][-1, 0] - start_time >= mission.duration - 0.05 for n in names])
        goals, _ = mission.goal(grid)
        report = mission_metrics(mission, grid, positions, np.broadcast_to(goals, positions.shape), network
                                 if any(flying.values()) else None, crashes)
        for k, d in enumerate(report["per_drone"]):
            d.update(name=names[k], flew_whole_mission=bool(covered[k]))
        return report


def _int_or_none(text):
    return int(text) if text is not None and text.lstrip("-").isdigit() else None


def wait_until(predicate, timeout: float, period: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(period)
    return predicate()
