"""A recorded flight (a rosbag2 bag of ``snnctl launch ... record:=true``) as per-drone arrays.

Messages are decoded with the message definitions stored in the bag itself (rosbags'
``AnyReader``), so a bag stays readable whatever this package's message set becomes. Two clocks
appear in a bag:

- sim time: the stamps the simulation writes (odometry, motor_state, the stamps commands answer,
  goals, the simulator's /diagnostics, /mission/status' ``start`` and ``time``). A state's stamp is
  ``step * dt`` in integer nanoseconds, so it names one simulation step.
- receive time: when the recorder got a message (the bag's own timestamp, the recorder's wall
  clock). snn_policy's diagnostics carry no sim stamp; they are placed at the sim time of the
  newest odometry the recorder had received by then (as ``snnctl launch --monitor`` does).

A simulation reset sends the stamps back to 0: the log keeps the flight after the last reset.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..sim.fleet import NS_PER_S
from ..sim.rotations import quat_to_matrix
from .topics import (CMD_CTBR_STAMPED, CMD_MOTORS, CMD_MOTORS_STAMPED, DIAGNOSTICS, GOAL_POSE, MISSION_STATUS,
                     MOTOR_STATE, ODOM)

UNSTAMPED = -1  # the answered stamp of an unstamped command (cmd_motors): it answers the simulator's current step


class FlightLogError(ValueError):
    """A bag that cannot be read as a flight; the message names the bag."""


@dataclass(frozen=True)
class Odometry:
    """The simulator's states of one drone, in the order received."""

    stamp_ns: np.ndarray  # (T,) int64 sim time of the state (step * dt)
    receive_ns: np.ndarray  # (T,) int64 when the recorder got it
    position: np.ndarray  # (T, 3) world [m]
    quaternion: np.ndarray  # (T, 4) body -> world, w, x, y, z
    velocity: np.ndarray  # (T, 3) world [m/s] (the message carries it in the body frame)
    body_rates: np.ndarray  # (T, 3) [rad/s]

    @property
    def time(self) -> np.ndarray:
        """Sim time [s] of each state."""
        return self.stamp_ns / NS_PER_S


@dataclass(frozen=True)
class Commands:
    """The commands sent to one drone, in the order received: motor commands, stamped
    (cmd_motors_stamped) and unstamped (cmd_motors) merged; or CTBR setpoints (cmd_ctbr_stamped)."""

    answered_ns: np.ndarray  # (C,) int64 stamp of the state each command answers; UNSTAMPED (-1) for cmd_motors
    receive_ns: np.ndarray  # (C,) int64 when the recorder got it
    values: np.ndarray  # (C, 4) motor commands m1..m4 in [-1, 1], or [thrust, p, q, r] (as sent: unchecked)


@dataclass(frozen=True)
class MotorState:
    """What the simulator flew (sim_bridge's motor_state), one row per step, in the order received;
    empty in a bag without the topic (recorded before it existed, or without it)."""

    stamp_ns: np.ndarray  # (S,) int64 the state the step started from (its odometry's stamp)
    receive_ns: np.ndarray  # (S,) int64 when the recorder got it
    rotor_speed: np.ndarray  # (S, 4) normalized rotor speeds at that state
    command: np.ndarray  # (S, 4) the motor commands in [-1, 1] the engine flew over the step


@dataclass(frozen=True)
class Goals:
    stamp_ns: np.ndarray  # (G,) int64 sim time the goal was sent at
    position: np.ndarray  # (G, 3) world [m]


@dataclass(frozen=True)
class PolicyStatus:
    """snn_policy's 1 Hz diagnostics of one drone."""

    time: np.ndarray  # (D,) sim time [s] (placed by receive time, see the module docstring)
    network_flies: np.ndarray  # (D,) bool: the network flew (else the guide)
    spikes_per_step: np.ndarray  # (D, L) mean spikes per control step per layer since the network's last reset
    faults: np.ndarray  # (D,) int: failsafe hand-overs to the guide so far


@dataclass(frozen=True)
class BridgeStatus:
    """sim_bridge's 1 Hz diagnostics of one drone."""

    time: np.ndarray  # (D,) sim time [s]
    command_age: np.ndarray  # (D, 3) p50, p99, max [steps] over the bridge's rolling window; NaN: none yet
    crashed: np.ndarray  # (D,) bool
    message: list  # (D,) the status message ("commands", or "crashed: <reason>")
    stale: np.ndarray  # (D,) int: commands ignored as older than one already received
    timeouts: np.ndarray  # (D,) int: steps flown with the motors stopped by the watchdog

    def first_crash(self) -> dict | None:
        """{"time": sim s, "reason"} of the first report of a crash, or None."""
        hits = np.flatnonzero(self.crashed)
        if not len(hits):
            return None
        i = hits[0]
        return {"time": float(self.time[i]), "reason": self.message[i].removeprefix("crashed: ")}


@dataclass(frozen=True)
class DroneLog:
    name: str
    odometry: Odometry
    commands: Commands  # motor commands
    ctbr_commands: Commands  # CTBR setpoints (a drone flown by a CTBR controller)
    motor_state: MotorState
    goals: Goals
    policy: PolicyStatus
    bridge: BridgeStatus


@dataclass(frozen=True)
class MissionStatus:
    """mission_sequencer's /mission/status: the mission's name and its start on the sim clock."""

    name: str
    start: float  # sim time [s] of mission t = 0
    time: np.ndarray  # (M,) mission time [s] of each status
    segment: list  # (M,) segment name or None (before the take-off)
    done: np.ndarray  # (M,) bool


@dataclass(frozen=True)
class FlightLog:
    path: Path
    dt: float  # control period [s] (from the odometry stamps)
    drones: dict  # name -> DroneLog, in the order of the bag's topics
    mission: MissionStatus | None  # None: no /mission/status in the bag

    def drone(self, name: str) -> DroneLog:
        if name not in self.drones:
            raise FlightLogError(f"{self.path}: no drone '{name}' in the bag; it has {list(self.drones)}")
        return self.drones[name]

    @property
    def dt_ns(self) -> int:
        return round(self.dt * NS_PER_S)


# --- reading -----------------------------------------------------------------------------------
def read_flight_log(path: str | Path) -> FlightLog:
    """Read a recorded flight; FlightLogError (naming ``path``) for a missing, corrupt or empty bag."""
    path = Path(path)
    messages = _decoded_messages(path)
    names = [m.group(1) for topic in messages if (m := re.fullmatch(rf"/([^/]+)/{ODOM}", topic))]
    if not names:
        raise FlightLogError(f"{path}: no drone odometry (/<name>/{ODOM}) in the bag; topics: {sorted(messages)}")
    odometry = {name: _odometry(messages[f"/{name}/{ODOM}"]) for name in names}
    since = _last_reset(odometry)
    messages = {topic: [(t, m) for t, m in rows if t >= since] for topic, rows in messages.items()}
    odometry = {name: _odometry(messages[f"/{name}/{ODOM}"]) for name in names}
    if any(len(o.stamp_ns) < 2 for o in odometry.values()):
        raise FlightLogError(f"{path}: a drone has fewer than 2 odometry messages: not a flight")
    sim_clock = _sim_clock(odometry)
    diagnostics = messages.get(DIAGNOSTICS, [])
    drones = {name: DroneLog(
        name, odometry[name], _commands(messages, name), _ctbr_commands(messages, name), _motor_state(messages.get(f"/{name}/{MOTOR_STATE}", [])),
        _goals(messages.get(f"/{name}/{GOAL_POSE}", [])),
        _policy_status(diagnostics, name, sim_clock), _bridge_status(diagnostics, name)) for name in names}
    return FlightLog(path, _control_period(odometry), drones, _mission_status(messages.get(MISSION_STATUS, [])))


def _decoded_messages(path: Path) -> dict[str, list]:
    """topic -> [(receive ns, message)], decoded with the bag's own message definitions."""
    from rosbags.highlevel import AnyReader

    if not path.exists():
        raise FlightLogError(f"{path}: no such bag")
    if not (path / "metadata.yaml").is_file():
        raise FlightLogError(f"{path}: not a rosbag2 directory (no metadata.yaml)")
    try:
        with AnyReader([path]) as reader:
            out = {c.topic: [] for c in reader.connections}
            for connection, timestamp, raw in reader.messages():
                out[connection.topic].append((timestamp, reader.deserialize(raw, connection.msgtype)))
    except Exception as exc:  # rosbags' reader, MCAP and CDR errors of a damaged or truncated bag
        raise FlightLogError(f"{path}: cannot read the bag ({type(exc).__name__}: {exc})") from exc
    return out


def _stamp_ns(stamp) -> int:
    return stamp.sec * NS_PER_S + stamp.nanosec


def _odometry(rows) -> Odometry:
    stamp = np.array([_stamp_ns(m.header.stamp) for _, m in rows], dtype=np.int64)
    # lockstep sends a state again (the same stamp) to a drone whose answer is missing: one per step
    first = np.r_[True, np.diff(stamp) != 0] if len(stamp) else np.zeros(0, dtype=bool)
    rows, stamp = [r for r, keep in zip(rows, first) if keep], stamp[first]
    receive = np.array([t for t, _ in rows], dtype=np.int64)
    pose = [m.pose.pose for _, m in rows]
    twist = [m.twist.twist for _, m in rows]
    position = np.array([[p.position.x, p.position.y, p.position.z] for p in pose]).reshape(-1, 3)
    quaternion = np.array([[p.orientation.w, p.orientation.x, p.orientation.y, p.orientation.z]
                           for p in pose]).reshape(-1, 4)
    norm = np.linalg.norm(quaternion, axis=-1, keepdims=True)
    quaternion = np.where(norm > 0, quaternion / np.where(norm > 0, norm, 1.0), quaternion)
    velocity_body = np.array([[t.linear.x, t.linear.y, t.linear.z] for t in twist]).reshape(-1, 3)
    rates = np.array([[t.angular.x, t.angular.y, t.angular.z] for t in twist]).reshape(-1, 3)
    # nav_msgs/Odometry carries the twist in the body (child) frame; the log keeps world velocity
    velocity = np.einsum("tij,tj->ti", quat_to_matrix(quaternion), velocity_body)
    return Odometry(stamp, receive, position, quaternion, velocity, rates)


def _last_reset(odometry: dict[str, Odometry]) -> int:
    """The receive time of the first state after the last simulation reset (stamps going back)."""
    since = 0
    for o in odometry.values():
        back = np.flatnonzero(np.diff(o.stamp_ns) < 0)
        if len(back):
            since = max(since, int(o.receive_ns[back[-1] + 1]))
    return since


def _control_period(odometry: dict[str, Odometry]) -> float:
    """dt [s]: stamps are whole steps, so every difference between two of them is a multiple of dt."""
    steps = np.concatenate([np.diff(np.unique(o.stamp_ns)) for o in odometry.values()])
    return int(np.gcd.reduce(steps)) / NS_PER_S


def _sim_clock(odometry: dict[str, Odometry]):
    """receive ns -> sim time [s] of the newest state received by then (0 before the first)."""
    receive = np.concatenate([o.receive_ns for o in odometry.values()])
    stamp = np.concatenate([o.stamp_ns for o in odometry.values()])
    order = np.argsort(receive, kind="stable")
    receive, newest = receive[order], np.maximum.accumulate(stamp[order])

    def sim_time(receive_ns):
        i = np.searchsorted(receive, np.asarray(receive_ns), side="right") - 1
        return np.where(i >= 0, newest[np.clip(i, 0, None)], 0) / NS_PER_S

    return sim_time


def _commands(messages: dict, name: str) -> Commands:
    stamped = [(t, _stamp_ns(m.header.stamp), list(m.effort))
               for t, m in messages.get(f"/{name}/{CMD_MOTORS_STAMPED}", [])]
    unstamped = [(t, UNSTAMPED, list(m.data)) for t, m in messages.get(f"/{name}/{CMD_MOTORS}", [])]
    return _command_rows(stamped + unstamped)


def _ctbr_commands(messages: dict, name: str) -> Commands:
    return _command_rows([(t, _stamp_ns(m.header.stamp), list(m.position))
                          for t, m in messages.get(f"/{name}/{CMD_CTBR_STAMPED}", [])])


def _command_rows(rows) -> Commands:
    # the bridge rejects a command without 4 values; so does the log (it could not be replayed)
    rows = sorted((r for r in rows if len(r[2]) == 4), key=lambda r: r[0])
    return Commands(np.array([r[1] for r in rows], dtype=np.int64), np.array([r[0] for r in rows], dtype=np.int64),
                         np.array([r[2] for r in rows], dtype=np.float64).reshape(-1, 4))


def _motor_state(rows) -> MotorState:
    rows = [(t, m) for t, m in rows if len(m.velocity) == 4 and len(m.effort) == 4]  # sim_bridge's: 4 motors
    return MotorState(np.array([_stamp_ns(m.header.stamp) for _, m in rows], dtype=np.int64),
                      np.array([t for t, _ in rows], dtype=np.int64),
                      np.array([m.velocity for _, m in rows], dtype=np.float64).reshape(-1, 4),
                      np.array([m.effort for _, m in rows], dtype=np.float64).reshape(-1, 4))


def _goals(rows) -> Goals:
    return Goals(np.array([_stamp_ns(m.header.stamp) for _, m in rows], dtype=np.int64),
                 np.array([[m.pose.position.x, m.pose.position.y, m.pose.position.z] for _, m in rows]).reshape(-1, 3))


def _statuses(diagnostics, node: str, name: str):
    """(receive ns, sim stamp ns, DiagnosticStatus) of ``node``'s status of drone ``name``."""
    return [(t, _stamp_ns(m.header.stamp), s) for t, m in diagnostics for s in m.status
            if s.hardware_id == name and s.name.startswith(f"{node}:")]


def _policy_status(diagnostics, name: str, sim_clock) -> PolicyStatus:
    rows = _statuses(diagnostics, "snn_policy", name)
    values = [{kv.key: kv.value for kv in s.values} for _, _, s in rows]
    spikes = [json.loads(v.get("spikes_per_step", "[]")) for v in values]
    layers = max((len(s) for s in spikes), default=0)
    return PolicyStatus(
        time=np.asarray(sim_clock([t for t, _, _ in rows]), dtype=np.float64).reshape(-1),
        network_flies=np.array([v.get("flying") == "network" for v in values], dtype=bool),
        spikes_per_step=np.array([s + [math.nan] * (layers - len(s)) for s in spikes],
                                 dtype=np.float64).reshape(len(spikes), layers),  # a flight with no policy: (0, 0)
        faults=np.array([_int(v.get("faults"), 0) for v in values], dtype=np.int64))


def _bridge_status(diagnostics, name: str) -> BridgeStatus:
    rows = _statuses(diagnostics, "sim_bridge", name)
    values = [{kv.key: kv.value for kv in s.values} for _, _, s in rows]
    age = [[_int(v.get(f"command_age_{k}"), math.nan) for k in ("p50", "p99", "max")] for v in values]
    return BridgeStatus(
        time=np.array([stamp for _, stamp, _ in rows], dtype=np.float64) / NS_PER_S,
        command_age=np.array(age, dtype=np.float64).reshape(-1, 3),
        crashed=np.array([v.get("crashed") == "True" for v in values], dtype=bool),
        message=[s.message for _, _, s in rows],
        stale=np.array([_int(v.get("stale"), 0) for v in values], dtype=np.int64),
        timeouts=np.array([_int(v.get("timeouts"), 0) for v in values], dtype=np.int64))


def _int(text, default):
    return int(text) if text is not None and text.lstrip("-").isdigit() else default


def _mission_status(rows) -> MissionStatus | None:
    statuses = []
    for _, m in rows:
        try:
            statuses.append(json.loads(m.data))
        except json.JSONDecodeError:
            continue  # someone else's status on the topic: not the sequencer's
    statuses = [s for s in statuses if isinstance(s, dict) and {"mission", "start", "time"} <= set(s)]
    if not statuses:
        return None
    last = statuses[-1]  # after a reset the sequencer restarts the mission: the last start counts
    flight = [s for s in statuses if s["start"] == last["start"]]
    return MissionStatus(str(last["mission"]), float(last["start"]),
                         np.array([s["time"] for s in flight], dtype=np.float64),
                         [s.get("segment") for s in flight], np.array([bool(s.get("done")) for s in flight]))
