"""An in-process observer of a fleet, used by ``snnctl launch --monitor`` and tests.

Subscribes /<name>/odom of every drone (position history) and /diagnostics (sim_bridge's status
per drone: command age p50/p99/max in steps, stale commands, crashes).
"""

from __future__ import annotations

import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import Odometry
from rclpy.node import Node

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
        for name in names:
            self.create_subscription(Odometry, f"/{name}/odom", lambda m, n=name: self._on_odom(n, m), qos.STATE)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, qos.STATE)

    def _on_odom(self, name, msg):
        s = odometry_arrays(msg)
        t = stamp_ns(msg.header.stamp) / NS_PER_S
        with self.lock:
            self.history[name].append((t, *s["position"], *s["velocity_world"]))

    def _on_diagnostics(self, msg):
        for status in msg.status:
            if status.name.startswith("sim_bridge") and status.hardware_id in self.sim_status:
                with self.lock:
                    self.sim_status[status.hardware_id] = {kv.key: kv.value for kv in status.values}

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


def _int_or_none(text):
    return int(text) if text is not None and text.lstrip("-").isdigit() else None


def wait_until(predicate, timeout: float, period: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(period)
    return predicate()
