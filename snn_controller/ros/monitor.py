"""An in-process observer of a fleet's odometry, used by ``snnctl launch --monitor`` and tests."""

from __future__ import annotations

import threading
import time

import numpy as np
from nav_msgs.msg import Odometry
from rclpy.node import Node

from . import qos
from .conversions import odometry_arrays


class FleetMonitor(Node):
    """Keeps each drone's odometry history (sim time, position, world velocity)."""

    def __init__(self, names, node_name: str = "fleet_monitor", **kwargs):
        super().__init__(node_name, **kwargs)
        self.lock = threading.Lock()
        self.history = {name: [] for name in names}
        for name in names:
            self.create_subscription(Odometry, f"/{name}/odom", lambda m, n=name: self._on_odom(n, m), qos.STATE)

    def _on_odom(self, name, msg):
        s = odometry_arrays(msg)
        t = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        with self.lock:
            self.history[name].append((t, *s["position"], *s["velocity_world"]))

    def latest(self, name):
        with self.lock:
            return np.array(self.history[name][-1]) if self.history[name] else None

    def window(self, name, seconds: float) -> np.ndarray:
        """Rows (t, x, y, z, vx, vy, vz) of the last ``seconds`` of sim time."""
        with self.lock:
            rows = np.array(self.history[name]) if self.history[name] else np.zeros((0, 7))
        return rows[rows[:, 0] >= rows[-1, 0] - seconds] if len(rows) else rows

    def summary(self, seconds: float = 2.0) -> dict:
        """Per drone: last position, speed, and the spread of position over the last ``seconds``."""
        out = {}
        for name in self.history:
            w = self.window(name, seconds)
            if len(w) == 0:
                out[name] = {"messages": 0}
                continue
            pos = w[:, 1:4]
            out[name] = {
                "messages": len(self.history[name]), "sim_time": float(w[-1, 0]),
                "position": [round(float(v), 4) for v in pos[-1]],
                "speed": round(float(np.linalg.norm(w[-1, 4:7])), 4),
                "hover_spread_m": round(float(np.linalg.norm(pos - pos.mean(0), axis=1).mean()), 4),
            }
        return out


def wait_until(predicate, timeout: float, period: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(period)
    return predicate()
