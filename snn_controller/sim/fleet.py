"""A fleet of simulated Crazyflies in one pybullet world: the core of the ``sim_bridge`` node.
(The controllers' side of the stamp protocol is :class:`~snn_controller.control.pilot.StampedPilot`.)

Time is an integer step counter; a state's stamp is ``step * dt_ns`` nanoseconds, never a sum
of float seconds, so a stamp names exactly one step. The stamp protocol: every odometry message
carries the stamp of its step; a controller answers it with a command carrying the same stamp, so
the simulator knows which state each command answers. From that it keeps, per drone:

- the command in force: a command answering a step older than the newest one received is stale
  (ignored and counted), one answering a step not simulated yet is rejected. An unstamped command
  answers the current step.
- the command age: current step - the step the applied command answers, over a rolling window
  (p50 / p99 / max in :meth:`FleetSimulator.command_age_stats`). ``command_delay`` adds latency
  on purpose: a command answering step k applies from step k + command_delay.
- the lockstep rule (:meth:`FleetSimulator.ready`): step when every flying drone has answered the
  current step.

Commands are motor commands, or CTBR setpoints ([thrust (PWM ratio), p, q, r (rad/s)], docs/ctbr.md:
``submit(..., ctbr=True)``): a drone whose command in force is a setpoint flies it through the
firmware's rate loop (:class:`~snn_controller.sim.firmware.RateController`), one tick every 2 ms of the
control step, as a real Crazyflie in rate mode; each drone's rate loop is reinitialised whenever it
starts flying setpoints (as the firmware on a setpoint-mode change).

What the engine flew: after each step :attr:`FleetSimulator.last_flown` holds, per drone, the rotor
speeds at the state the step started from and the motor commands the engine flew over it (after
every rule above, and motors off when stopped, crashed or never commanded; for a CTBR drone the
mean of its rate loop's motor commands over the step): sim_bridge publishes it as
``<name>/motor_state``, so that a recorded flight of motor commands replays without reconstructing
the rules.

Also here: command validation and counters, the command watchdog (motors stop when a drone's
last command was received more than ``command_timeout`` of simulated time ago, as the real
firmware does), emergency stops, resets, the per-drone outputs (odometry, IMU), and the crash
supervisor (:mod:`snn_controller.sim.supervisor`): a hard or tilted ground contact, or tipping over, marks a drone
crashed with its motors off until it is reset; a non-finite or runaway state is never output: the
drone is marked crashed and held at rest on the ground.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..config import ConfigError, build, load_yaml, package_root
from .drone import DroneModel
from .rotations import quat_to_matrix, yaw_of
from .supervisor import CrashLimits, crash_reasons

# The engine (pybullet) and the state (torch) are imported where the simulator needs them: the
# controller nodes import this module for the fleet file and should start without torch.

REST_HEIGHT = 0.011  # m: body centre above the ground when resting on the collision cylinder
NS_PER_S = 1_000_000_000


def step_of_stamp(stamp_ns, dt_ns: int):
    """The step a stamp [ns] names, rounded to the nearest step (ints or int arrays)."""
    return (stamp_ns + dt_ns // 2) // dt_ns


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


def controlled_drones(fleet_file: str, namespace: str) -> dict[str, str]:
    """The drones a controller node flies, name -> topic prefix: every enabled drone of
    ``fleet_file`` (absolute topics ``/<name>/odom``, ...), or without a file ('') the one drone
    of the node's namespace (relative topics)."""
    if fleet_file:
        return {name: f"/{name}/" for name in load_fleet(fleet_file).enabled_robots()}
    return {namespace.strip("/") or "/": ""}


@dataclass(frozen=True)
class FlownStep:
    """What the engine flew over one control step; rows in the order of FleetSimulator.names."""

    step: int  # the step it started from (its state is stamped step * dt_ns)
    rotor_speed: np.ndarray  # (N, 4) normalized rotor speeds at that state
    command: np.ndarray  # (N, 4) the motor commands in [-1, 1] the engine flew over the step (CTBR: their mean)
    ctbr: np.ndarray | None = None  # (N,) bool: the drone flew a CTBR setpoint through the rate loop


@dataclass
class DroneCounters:
    accepted: int = 0
    clamped: int = 0
    rejected: int = 0
    stale: int = 0  # ignored: answered an older step than a command already received
    timeouts: int = 0  # control steps flown with motors stopped because the command was stale
    crashes: int = 0


class FleetSimulator:
    """N named drones; commands in, states out. ``steps`` counts control steps since the fleet reset."""

    def __init__(self, model: DroneModel, robots: dict[str, RobotConfig], dt: float = 0.01,
                 command_timeout: float = 0.5, command_delay: int = 0, age_window: int = 1000,
                 crash: CrashLimits | None = None, **engine_options):
        if not robots:
            raise ValueError("the fleet needs at least one robot")
        if command_timeout <= 0:
            raise ValueError(f"command_timeout must be > 0, got {command_timeout}")
        if command_delay < 0 or int(command_delay) != command_delay:
            raise ValueError(f"command_delay must be a whole number of steps >= 0, got {command_delay}")
        self.dt_ns = round(dt * NS_PER_S)
        if self.dt_ns <= 0:
            raise ValueError(f"dt must be at least 1 ns, got {dt}")
        self.model, self.dt = model, self.dt_ns / NS_PER_S
        self.timeout_ns = round(command_timeout * NS_PER_S)
        self.command_delay, self.crash_limits = int(command_delay), crash or CrashLimits()
        self.names = list(robots)
        self.robots = robots
        self.index = {name: i for i, name in enumerate(self.names)}
        n = len(self.names)
        from .pybullet_engine import PybulletEngine

        self.engine = PybulletEngine(model, n, dt=self.dt, ground=True, collide_drones=True, **engine_options)
        from .firmware import ATTITUDE_RATE, RateController

        # CTBR drones: one rate-loop tick per ticks-th of the control step (5 at 100 Hz, 2 physics steps each)
        self.ticks = max(1, round(self.dt * ATTITUDE_RATE))
        self.rate_loop = RateController(n, rate_hz=self.ticks / self.dt)
        self.ctbr_ok = self.engine.substeps % self.ticks == 0
        self.counters = {name: DroneCounters() for name in self.names}
        self.ages = [deque(maxlen=age_window) for _ in self.names]
        self.commands = np.full((n, 4), -1.0)  # the commands in force
        self.command_ctbr = np.zeros(n, dtype=bool)  # ... are CTBR setpoints
        self.applied_step = np.full(n, -1)  # the step the command in force answers; -1: none
        self.answered = np.full(n, -1)  # the newest step a received command answers
        self.received_step = np.full(n, -math.inf)  # the step the last command was received at
        self.pending = [deque() for _ in self.names]  # (answered step, values), oldest first
        self.stopped = np.zeros(n, dtype=bool)
        self.crashed = np.zeros(n, dtype=bool)
        self.crash_reason = {name: "" for name in self.names}
        self.held = {}  # index -> rest pose (position, yaw) of a runaway drone, held there until reset
        self.steps = 0
        self.last_flown: FlownStep | None = None  # the last step, None until the first after a fleet reset
        self.reset()

    @property
    def time(self) -> float:
        """Simulated time [s] (for display; stamps use :meth:`stamp_ns`)."""
        return self.stamp_ns() / NS_PER_S

    def stamp_ns(self, step: int | None = None) -> int:
        """The stamp [ns] of a step (default: the current one)."""
        return (self.steps if step is None else step) * self.dt_ns

    def step_of_stamp(self, stamp_ns: int) -> int:
        """The step a stamp names (rounded to the nearest step)."""
        return step_of_stamp(stamp_ns, self.dt_ns)

    def reset(self, name: str | None = None) -> None:
        """Put all drones (or one) back at their initial pose, at rest, motors off; clears emergency
        stops and crashes. The fleet reset also sets the step counter (and the stamps) back to 0."""
        names = self.names if name is None else [name]
        idx = np.array([self._idx(nm) for nm in names])
        state = initial_state([self.robots[nm] for nm in names])
        if name is None:
            self.engine.reset(state)
            self.steps = 0
            self.last_flown = None
        else:
            self.engine.reset(state, idx)
        self.commands[idx] = -1.0
        self.command_ctbr[idx] = False
        self.applied_step[idx] = -1
        self.answered[idx] = -1
        self.received_step[idx] = -math.inf
        for i in idx:
            self.pending[i].clear()
            self.held.pop(i, None)
            self.crash_reason[self.names[i]] = ""
        self.stopped[idx] = False
        self.crashed[idx] = False
        self._keep_engine_state(self.engine.state.as_numpy())
        self._accel = np.zeros((len(self.names), 3))

    def _keep_engine_state(self, s: dict[str, np.ndarray]) -> None:
        """Keep what the next step needs of the engine's state: the velocity (for the acceleration
        and the crash supervisor) and the rotor speeds it starts from (for :attr:`last_flown`)."""
        self._velocity, self._rotor_speed = s["velocity"], s["rotor_speed"]

    def _idx(self, name: str) -> int:
        if name not in self.index:
            raise KeyError(f"unknown drone '{name}'; the fleet has {self.names}")
        return self.index[name]

    def submit(self, name: str, values, stamp: int | None = None, ctbr: bool = False) -> str:
        """Take a motor command (4 values in [-1, 1], motor order of docs/task.md), or with ``ctbr`` a
        CTBR setpoint ([thrust in [0, 1] (PWM ratio), p, q, r in rad/s]), answering the state of step
        ``stamp`` (None: the current step).

        Returns ``"ok"``, ``"clamped"`` (out-of-range values were clipped), ``"stale: <why>"``
        (answers an older step than a command already received: ignored) or ``"rejected: <why>"``;
        a stale or rejected command leaves the previous one in force and is counted.
        """
        i, c = self._idx(name), self.counters[name]
        values = np.asarray(values, dtype=np.float64).ravel()
        if values.shape != (4,):
            c.rejected += 1
            return f"rejected: expected 4 {'CTBR values' if ctbr else 'motor commands'}, got {values.size}"
        if not np.isfinite(values).all():
            c.rejected += 1
            return "rejected: command contains NaN or inf"
        if ctbr and not self.ctbr_ok:
            c.rejected += 1
            return (f"rejected: CTBR needs the physics substeps ({self.engine.substeps}) to be a multiple of the "
                    f"rate loop's {self.ticks} ticks per step")
        step = self.steps if stamp is None else int(stamp)
        if step > self.steps:
            c.rejected += 1
            return f"rejected: answers step {step}, but the simulation is at step {self.steps}"
        if step < self.answered[i]:
            c.stale += 1
            return f"stale: answers step {step}, a command for step {self.answered[i]} was already received"
        status = "ok"
        # CTBR: only the thrust (a PWM ratio) has a range; the rate mode limits no rate (docs/ctbr.md)
        low, high = ([0.0, -np.inf, -np.inf, -np.inf], [1.0, np.inf, np.inf, np.inf]) if ctbr else (-1.0, 1.0)
        clipped = np.clip(values, low, high)
        if (clipped != values).any():
            values = clipped
            c.clamped += 1
            status = "clamped"
        c.accepted += 1
        pending = self.pending[i]
        if pending and pending[-1][0] == step:  # a second answer to the same state replaces the first
            pending.pop()
        pending.append((step, values, ctbr))
        self.answered[i] = step
        self.received_step[i] = self.steps
        return status

    def emergency_stop(self, name: str) -> None:
        """Stop the drone's motors until it is reset."""
        self.stopped[self._idx(name)] = True

    def waiting_for(self) -> list[str]:
        """Drones that fly (not stopped, not crashed) and have not answered the current step."""
        waiting = (self.answered != self.steps) & ~self.stopped & ~self.crashed
        return [name for name, w in zip(self.names, waiting) if w]

    def ready(self) -> bool:
        """Lockstep rule: every drone that flies has a command answering the current step."""
        return not self.waiting_for()

    def step(self) -> dict[str, str]:
        """Advance the world by one control step with the commands in force.

        Returns the drones that crashed in this step, with the reason."""
        for i, pending in enumerate(self.pending):
            while pending and pending[0][0] + self.command_delay <= self.steps:
                self.applied_step[i], self.commands[i], ctbr = pending.popleft()
                if ctbr and not self.command_ctbr[i]:
                    self.rate_loop.reset([i])  # the firmware reinitialises its PIDs on a mode change
                self.command_ctbr[i] = ctbr
        silent = (self.steps - self.received_step) * self.dt_ns > self.timeout_ns
        # Count only drones that were commanded and went silent, not ones still waiting on the ground.
        for name in np.array(self.names)[silent & ~self.stopped & np.isfinite(self.received_step)]:
            self.counters[name].timeouts += 1
        off = silent | self.stopped | self.crashed | (self.applied_step < 0)
        for i in np.flatnonzero(~off):
            self.ages[i].append(self.steps - self.applied_step[i])
        flown = np.where(off[:, None], -1.0, self.commands)
        ctbr = self.command_ctbr & ~off
        if ctbr.any():
            flown, state = self._fly_rate_loop(flown, ctbr)
        else:
            state = self.engine.step(flown)
        self.last_flown = FlownStep(self.steps, self._rotor_speed, flown, ctbr)
        state = state.as_numpy()
        self.steps += 1
        crashes = self._supervise(state)
        previous_velocity = self._velocity
        self._keep_engine_state(self.engine.state.as_numpy() if self.held else state)  # held: reset to rest
        self._accel = (self._velocity - previous_velocity) / self.dt
        self._accel[list(self.held)] = 0.0
        return crashes

    def _fly_rate_loop(self, flown: np.ndarray, ctbr: np.ndarray) -> np.ndarray:
        """One control step in rate-loop ticks: the CTBR drones' rows of ``flown`` are setpoints, turned into
        motor commands every tick from the state; the other rows are held. Returns the motor commands flown
        (CTBR rows: the mean over the ticks) and the engine's state after the step."""
        import torch

        from .firmware import pwm_to_action

        setpoints = torch.as_tensor(np.where(ctbr[:, None], flown, 0.0))
        substeps = self.engine.substeps // self.ticks
        total = np.zeros_like(flown)
        state = self.engine.state
        for _ in range(self.ticks):
            motors = pwm_to_action(self.rate_loop.pwm(setpoints, state.angular_velocity, state.quaternion)).numpy()
            command = np.where(ctbr[:, None], motors, flown)
            state = self.engine.step(command, substeps=substeps)
            total += command
        return total / self.ticks, state

    def _supervise(self, s: dict[str, np.ndarray]) -> dict[str, str]:
        """Mark new crashes in the state ``s`` after a step; hold runaway drones at rest on the ground."""
        on_ground = np.array([self._touches_ground(i) for i in range(len(self.names))])
        reasons, runaway = crash_reasons(self._velocity, s["position"], s["velocity"], s["quaternion"], on_ground,
                                         self.crash_limits)
        crashes = {}
        for i, (name, reason) in enumerate(zip(self.names, reasons)):
            if runaway[i]:
                reason += ": held at rest on the ground"
                self.held[i] = self._rest_pose(i, s["position"][i], s["quaternion"][i])
            if not reason or self.crashed[i]:
                continue
            self.crashed[i] = True
            self.counters[name].crashes += 1
            self.crash_reason[name] = reason
            crashes[name] = reason
        if self.held:
            idx = list(self.held)
            positions, yaws = zip(*(self.held[i] for i in idx))
            self.engine.reset(_rest_state(np.array(positions), np.array(yaws)), idx)
        return crashes

    def _rest_pose(self, i: int, position, quaternion) -> tuple[np.ndarray, float]:
        """Where a runaway drone is held: on the ground below it if its x, y are finite and in the
        box, else at its initial x, y; level, with its yaw if that is finite."""
        robot = self.robots[self.names[i]]
        xy = position[:2] if np.isfinite(position[:2]).all() and np.linalg.norm(position[:2]) \
            <= self.crash_limits.max_distance else np.array(robot.initial_position[:2])
        yaw = float(yaw_of(quaternion)) if np.isfinite(quaternion).all() else robot.initial_yaw
        return np.array([*xy, REST_HEIGHT]), yaw

    def _touches_ground(self, i: int) -> bool:
        e = self.engine
        return bool(e.client.getContactPoints(bodyA=e.bodies[i], bodyB=e.plane))

    def command_age_stats(self) -> dict[str, dict[str, int | None]]:
        """Per drone: p50, p99 and max of the command age [steps] over the last applied commands
        (a sample per step flown with a command; None before the first)."""
        out = {}
        for name, ages in zip(self.names, self.ages):
            if ages:
                a = np.array(ages)
                out[name] = {"p50": int(np.percentile(a, 50, method="higher")),
                             "p99": int(np.percentile(a, 99, method="higher")), "max": int(a.max())}
            else:
                out[name] = {"p50": None, "p99": None, "max": None}
        return out

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
                "crashed": bool(self.crashed[i]),
            }
        return out

    def close(self) -> None:
        self.engine.close()


def initial_state(robots: list[RobotConfig]):
    """Where a reset puts these drones (a DroneState): at rest on the ground below their initial
    position, with their initial yaw, rotors off."""
    position = np.array([r.initial_position for r in robots], dtype=np.float64)
    position[:, 2] += REST_HEIGHT
    return _rest_state(position, np.array([r.initial_yaw for r in robots], dtype=np.float64))


def _rest_state(position: np.ndarray, yaw: np.ndarray):
    """Drones (k,) at rest: level with ``yaw``, no motion, rotors off (a DroneState)."""
    from .state import DroneState

    k = len(position)
    quat = np.stack([np.cos(yaw / 2), np.zeros(k), np.zeros(k), np.sin(yaw / 2)], -1)
    zeros = np.zeros((k, 3))
    return DroneState.from_arrays({"position": position, "quaternion": quat, "velocity": zeros,
                                   "angular_velocity": zeros, "rotor_speed": np.zeros((k, 4))})
