"""A fleet of simulated Crazyflies in one pybullet world: the core of the ``sim_bridge`` node.

Owns everything the node must not: command validation and counters, the command watchdog
(motors stop when a drone's command is older than ``command_timeout`` of simulated time, as the
real firmware does), emergency stops, resets, the lockstep rule (step when every flying
drone's command for this step has arrived) and the per-drone outputs (odometry, IMU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .config import ConfigError, build, load_yaml, package_root
from .drone import DroneModel
from .engines.pybullet_engine import PybulletEngine
from .geometry import quat_to_matrix
from .state import DroneState

REST_HEIGHT = 0.011  # m: body centre above the ground when resting on the collision cylinder


@dataclass(frozen=True)
class RobotConfig:
    """One drone of crazyflies.yaml (crazyswarm2 names)."""

    uri: str = ""  # cflib link of the real drone (radio://, usb://, udp://); unused in simulation
    initial_position: tuple[float, float, float] = (0.0, 0.0, 0.0)  # m, world; z = 0 rests on the ground
    initial_yaw: float = 0.0  # rad
    enabled: bool = True


@dataclass(frozen=True)
class FleetDefaults:
    drone: str = "cf21"  # drone model name or path, shared by the fleet


@dataclass(frozen=True)
class FleetConfig:
    """crazyflies.yaml: ``all`` holds defaults, ``robots`` one entry per drone (name = namespace)."""

    robots: dict = field(default_factory=dict)
    all: FleetDefaults = field(default_factory=FleetDefaults)

    def enabled_robots(self) -> dict[str, RobotConfig]:
        return {name: r for name, r in self.robots.items() if r.enabled}


def load_fleet(path: str | None = None) -> FleetConfig:
    """Load and validate a crazyflies.yaml; default: the package's config/crazyflies.yaml."""
    path = path or str(package_root() / "config" / "crazyflies.yaml")
    data = load_yaml(path)
    robots_raw = data.get("robots")
    if not isinstance(robots_raw, dict) or not robots_raw:
        raise ConfigError(f"{path}: 'robots' must map at least one drone name to its settings")
    robots = {}
    for name, entry in robots_raw.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"{path}: robot name {name!r} is not a valid ROS name")
        robots[name] = build(RobotConfig, entry or {}, f"{path}: robots.{name}")
    config = build(FleetConfig, {**data, "robots": {}}, path)
    config = FleetConfig(robots=robots, all=config.all)
    if not config.enabled_robots():
        raise ConfigError(f"{path}: no robot is enabled")
    return config


@dataclass
class CommandCounters:
    accepted: int = 0
    clamped: int = 0
    rejected: int = 0
    timeouts: int = 0  # control steps flown with motors stopped because the command was stale


class FleetSimulator:
    """N named drones; commands in, states out. Time is simulated time [s]."""

    def __init__(self, model: DroneModel, robots: dict[str, RobotConfig], dt: float = 0.01,
                 command_timeout: float = 0.5, **engine_options):
        if not robots:
            raise ValueError("the fleet needs at least one robot")
        if command_timeout <= 0:
            raise ValueError(f"command_timeout must be > 0, got {command_timeout}")
        self.model, self.dt, self.command_timeout = model, dt, command_timeout
        self.names = list(robots)
        self.robots = robots
        self.index = {name: i for i, name in enumerate(self.names)}
        n = len(self.names)
        self.engine = PybulletEngine(model, n, dt=dt, ground=True, collide_drones=True, **engine_options)
        self.counters = {name: CommandCounters() for name in self.names}
        self.commands = np.full((n, 4), -1.0)
        self.command_time = np.full(n, -math.inf)
        self.fresh = np.zeros(n, dtype=bool)
        self.stopped = np.zeros(n, dtype=bool)
        self.reset()

    @property
    def time(self) -> float:
        return self.engine.time

    def _initial_state(self, names: list[str]) -> DroneState:
        k = len(names)
        pos = np.array([self.robots[nm].initial_position for nm in names], dtype=np.float64)
        pos[:, 2] += REST_HEIGHT
        yaw = np.array([self.robots[nm].initial_yaw for nm in names])
        quat = np.stack([np.cos(yaw / 2), np.zeros(k), np.zeros(k), np.sin(yaw / 2)], -1)
        zeros = np.zeros((k, 3))
        return DroneState.from_arrays({"position": pos, "quaternion": quat, "velocity": zeros,
                                       "angular_velocity": zeros, "rotor_speed": np.zeros((k, 4))})

    def reset(self, name: str | None = None) -> None:
        """Put all drones (or one) back at their initial pose, at rest, motors off; clears emergency stops."""
        names = self.names if name is None else [name]
        idx = np.array([self._idx(nm) for nm in names])
        state = self._initial_state(names)
        if name is None:
            self.engine.reset(state)
        else:
            self.engine.reset(state, idx)
        self.commands[idx] = -1.0
        self.command_time[idx] = -math.inf
        self.fresh[idx] = False
        self.stopped[idx] = False
        self._prev_velocity = self.engine.state.velocity.numpy().copy()
        self._accel = np.zeros((len(self.names), 3))

    def _idx(self, name: str) -> int:
        if name not in self.index:
            raise KeyError(f"unknown drone '{name}'; the fleet has {self.names}")
        return self.index[name]

    def submit(self, name: str, values) -> str:
        """Take a motor command (4 values in [-1, 1], motor order of task.md) for the next step.

        Returns ``"ok"``, ``"clamped"`` (out-of-range values were clipped) or ``"rejected: <why>"``;
        a rejected command leaves the previous one in force and is counted.
        """
        i, c = self._idx(name), self.counters[name]
        values = np.asarray(values, dtype=np.float64).ravel()
        if values.shape != (4,):
            c.rejected += 1
            return f"rejected: expected 4 motor commands, got {values.size}"
        if not np.isfinite(values).all():
            c.rejected += 1
            return "rejected: command contains NaN or inf"
        status = "ok"
        if (np.abs(values) > 1.0).any():
            values = np.clip(values, -1.0, 1.0)
            c.clamped += 1
            status = "clamped"
        c.accepted += 1
        self.commands[i] = values
        self.command_time[i] = self.time
        self.fresh[i] = True
        return status

    def emergency_stop(self, name: str) -> None:
        """Stop the drone's motors until it is reset."""
        self.stopped[self._idx(name)] = True

    def ready(self) -> bool:
        """Lockstep rule: every drone that is not stopped has a command for this step."""
        return bool((self.fresh | self.stopped).all())

    def step(self) -> None:
        """Advance the world by one control step with the commands in force."""
        stale = (self.time - self.command_time) > self.command_timeout + 1e-9
        # Count only drones that were commanded and went silent, not ones still waiting on the ground.
        for name in np.array(self.names)[stale & ~self.stopped & np.isfinite(self.command_time)]:
            self.counters[name].timeouts += 1
        action = np.where((stale | self.stopped)[:, None], -1.0, self.commands)
        state = self.engine.step(action)
        velocity = state.velocity.numpy()
        self._accel = (velocity - self._prev_velocity) / self.dt
        self._prev_velocity = velocity.copy()
        self.fresh[:] = False

    def outputs(self) -> dict[str, dict[str, np.ndarray]]:
        """Per drone: position, quaternion (w, x, y, z), world and body velocity, body rates,
        specific force in the body frame (what an accelerometer reads), rotor speeds."""
        s = self.engine.state.as_numpy()
        rot = quat_to_matrix(s["quaternion"])
        gravity = np.array([0.0, 0.0, self.model.gravity])
        out = {}
        for i, name in enumerate(self.names):
            out[name] = {
                "position": s["position"][i], "quaternion": s["quaternion"][i],
                "velocity_world": s["velocity"][i], "velocity_body": rot[i].T @ s["velocity"][i],
                "angular_velocity_body": s["angular_velocity"][i],
                "specific_force_body": rot[i].T @ (self._accel[i] + gravity),
                "rotor_speed": s["rotor_speed"][i], "stopped": bool(self.stopped[i]),
            }
        return out

    def close(self) -> None:
        self.engine.close()
