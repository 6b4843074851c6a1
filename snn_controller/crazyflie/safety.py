"""The crazyflie_bridge's decisions for one real drone: a small explicit state machine, ROS-free and
cflib-free, fed with time and what the drone and the controller said, returning what to send.

Why a machine of its own: every rule that keeps a real drone from falling or flying away sits here, in
one place, testable with a fake clock (test/test_crazyflie_safety.py walks every transition). The node
(ros/crazyflie_bridge.py) feeds it and executes its actions through the link (crazyflie/link.py).

Inputs (``now`` is any monotonic clock in seconds; the node gives time.monotonic()):

- :meth:`DroneSafety.link_status`: whether the link is up and ready for rate setpoints (connected,
  rate mode confirmed); :meth:`state`: each state estimate (position m, world; yaw rad), which also
  proves the link alive; :meth:`battery`: pm.vbat (V) and pm.state (the firmware's PMStates);
  :meth:`supervisor`: supervisor.info, the firmware supervisor's bit field.
- :meth:`command`: each controller command [thrust as PWM ratio 0..1, p, q, r rad/s] on its arrival.
- requests: :meth:`arm`, :meth:`takeoff`, :meth:`land`, :meth:`go_to`, :meth:`emergency`.
- :meth:`tick`: once per control period; the time-driven rules.

Outputs: lists of :class:`Action` (nothing / rate setpoint / hover setpoint / high-level takeoff, go_to,
land / motors stop / arm, disarm / emergency stop), and :class:`Event` records of what happened and why
(``events``, drained by the node into its log and /diagnostics), plus counters.

Modes and the rules between them (each limit is a key of config/crazyflie_bridge.yaml):

- ``disconnected``: no link yet, or never a state. ``disarmed``: connected, nothing is sent, so nothing
  spins. Only :meth:`arm` leaves it, and only with a fresh state inside the geofence, the battery good
  and no emergency stop latched.
- ``armed``: on the ground, armed, still nothing sent (a firmware that requires arming idles its motors
  now). A controller command with thrust > 0 starts
  ``flying`` (the controller flies from the ground, e.g. a mission's take-off); :meth:`takeoff` starts
  ``high_level``.
- ``flying``: each valid command is forwarded as a rate setpoint the moment it arrives. No valid
  command for ``command.timeout`` (stale, or rejected ones: a rejected command counts as missing, and a
  killed controller sends none) -> ``hover``; on the ground the motors stop instead (disarmed).
- ``hover``: a position setpoint at the position where the commands stopped, every tick;
  ``hover.resume``: a valid command flies again; after ``hover.timeout`` -> ``landing``.
- ``high_level``: the firmware's high-level commander flies a take-off or go_to and then holds; the
  controller's commands are not forwarded (counted ``overridden``) until the drone has landed.
- ``landing``: a high-level land to the ground (the height at arming) over ``manoeuvres.land_duration``;
  landed (below ``manoeuvres.landed_height`` once the duration has passed, or ``land_grace`` after it
  in any case) -> motors stop, disarm, ``disarmed``.
- ``emergency``: motors stopped at once (sent every tick while the link is up); latched: the firmware
  locks after an emergency stop until the drone is restarted, so does this machine until the bridge is.
  The drone's supervisor reporting itself locked (its watchdog stopped the motors) or crashed (tumbled)
  enters it too: that drone flies no more until restarted.
- The firmware disarms by itself (its preflight timeout: 30 s armed without flying; its landing timeout):
  an armed machine whose drone said armed and then not follows it to ``disarmed``. A take-off waits for
  the supervisor to let the drone fly (its "can fly" bit: the firmware's planner refuses one before).
- A drone that is flying when the link comes up (the bridge restarted while the high-level commander
  held it in the air) is landed: the first supervisor.info after connecting says so.

Whatever the mode, airborne (flying, hover, high_level, landing):
- outside the geofence box -> ``landing``; outside it by more than ``geofence.hard_margin`` ->
  ``emergency`` (a drone that far out is not under control).
- battery low (pm.state lowPower, or pm.vbat below ``battery.low_voltage`` for ``battery.low_duration``)
  -> ``landing`` (on the ground, an armed drone is disarmed).
- link lost (no state for ``link.timeout``, or the link down): reported; nothing can be sent. The
  firmware's supervisor then levels the drone after 500 ms without setpoints and stops the motors after
  2 s (supervisor.c, COMMANDER_WDT_TIMEOUT_STABILIZE / _SHUTDOWN) when it was flying on streamed
  setpoints; a high-level manoeuvre goes on on board. When the link returns, a drone in the air lands
  (one armed on the ground stays armed: nothing was sent, nothing moved).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..config import ConfigError, build, load_yaml, package_root

PM_LOW_POWER = 3  # the firmware's PMStates: battery, charging, charged, lowPower, shutDown (pm.h)
# supervisor.info bits (supervisor.c updateLogData; cflib's Supervisor decodes the same)
INFO_ARMED, INFO_CAN_FLY, INFO_FLYING, INFO_LOCKED, INFO_CRASHED = 1 << 1, 1 << 3, 1 << 4, 1 << 6, 1 << 7


# --- configuration: config/crazyflie_bridge.yaml ---------------------------------------------------
@dataclass(frozen=True)
class CommandLimits:
    timeout: float = 0.1  # s since the last valid command's arrival: stale -> hover
    max_thrust: float = 1.0  # PWM ratio: a command above is rejected (thrust below 0 always is)
    max_rate_xy: float = 20.0  # rad/s: |p| or |q| above is rejected
    max_rate_z: float = 10.0  # rad/s: |r| above is rejected

    def __post_init__(self):
        if self.timeout <= 0:
            raise ConfigError(f"command.timeout must be > 0 s, got {self.timeout}")
        if not 0 < self.max_thrust <= 1:
            raise ConfigError(f"command.max_thrust is a PWM ratio in (0, 1], got {self.max_thrust}")
        if self.max_rate_xy <= 0 or self.max_rate_z <= 0:
            raise ConfigError(f"command.max_rate_xy and max_rate_z must be > 0 rad/s, got {self.max_rate_xy}, "
                              f"{self.max_rate_z}")


@dataclass(frozen=True)
class HoverConfig:
    timeout: float = 2.0  # s of hover after the commands stopped, then land
    resume: bool = True  # a valid command during the hover hands the drone back to the controller

    def __post_init__(self):
        if self.timeout < 0:
            raise ConfigError(f"hover.timeout must be >= 0 s, got {self.timeout}")


@dataclass(frozen=True)
class Geofence:
    min: tuple[float, float, float] = (-2.0, -2.0, -0.3)  # m, world frame: the box's lower corner
    max: tuple[float, float, float] = (2.0, 2.0, 2.0)  # m, its upper corner
    hard_margin: float = 0.5  # m beyond the box: emergency stop instead of landing

    def __post_init__(self):
        if not all(lo < hi for lo, hi in zip(self.min, self.max)):
            raise ConfigError(f"geofence.min must be below geofence.max on every axis, got {self.min}, {self.max}")
        if self.hard_margin <= 0:
            raise ConfigError(f"geofence.hard_margin must be > 0 m, got {self.hard_margin}")

    def outside_by(self, position) -> float:
        """How far [m] ``position`` is outside the box along its worst axis (<= 0 inside)."""
        p = np.asarray(position, dtype=float)
        return float(np.max(np.maximum(np.asarray(self.min) - p, p - np.asarray(self.max))))


@dataclass(frozen=True)
class BatteryLimits:
    low_voltage: float = 3.2  # V: the firmware's DEFAULT_BAT_LOW_VOLTAGE for the Crazyflie 2.x
    low_duration: float = 1.0  # s below it before landing: the voltage sags for moments under load

    def __post_init__(self):
        if self.low_voltage <= 0 or self.low_duration < 0:
            raise ConfigError(f"battery.low_voltage must be > 0 V and low_duration >= 0 s, got "
                              f"{self.low_voltage}, {self.low_duration}")


@dataclass(frozen=True)
class LinkLimits:
    timeout: float = 0.5  # s without a state estimate (the 100 Hz log): the link is lost (the firmware levels then)

    def __post_init__(self):
        if self.timeout <= 0:
            raise ConfigError(f"link.timeout must be > 0 s, got {self.timeout}")


@dataclass(frozen=True)
class Manoeuvres:
    takeoff_height: float = 0.5  # m above the ground (the height at arming)
    takeoff_duration: float = 2.5  # s
    go_to_speed: float = 0.5  # m/s: a go_to's duration is its distance over this (at least 1 s)
    land_duration: float = 3.0  # s of the high-level land
    landed_height: float = 0.05  # m above the ground: landed
    land_grace: float = 2.0  # s after land_duration: the motors stop even if not that low (e.g. on a box)

    def __post_init__(self):
        if min(self.takeoff_height, self.takeoff_duration, self.go_to_speed, self.land_duration,
               self.landed_height) <= 0 or self.land_grace < 0:
            raise ConfigError("manoeuvres: heights, durations and speeds must be > 0 (land_grace >= 0)")


@dataclass(frozen=True)
class SafetyConfig:
    """config/crazyflie_bridge.yaml: the limits of every safety rule (module docstring)."""

    command: CommandLimits = field(default_factory=CommandLimits)
    hover: HoverConfig = field(default_factory=HoverConfig)
    geofence: Geofence = field(default_factory=Geofence)
    battery: BatteryLimits = field(default_factory=BatteryLimits)
    link: LinkLimits = field(default_factory=LinkLimits)
    manoeuvres: Manoeuvres = field(default_factory=Manoeuvres)


def safety_config(data: dict, source: str = "<config>") -> SafetyConfig:
    """A SafetyConfig from plain data (a loaded YAML mapping); errors name ``source`` and the key."""
    return build(SafetyConfig, data, source)


def load_safety_config(path: str | None = None) -> SafetyConfig:
    """Load and validate a crazyflie_bridge.yaml; default: the package's config/crazyflie_bridge.yaml."""
    path = path or str(package_root() / "config" / "crazyflie_bridge.yaml")
    return safety_config(load_yaml(path), path)


def with_overrides(config: SafetyConfig, command_timeout="", geofence="") -> SafetyConfig:
    """The config with crazyflie_bridge's parameters applied: command_timeout (s) and geofence
    ([xmin, ymin, zmin, xmax, ymax, zmax] m) replace command.timeout and geofence.min/max; '' keeps the file's."""
    if command_timeout != "":
        config = replace(config, command=build(CommandLimits, {**vars(config.command), "timeout": command_timeout},
                                               "parameter command_timeout"))
    if geofence != "":
        if not isinstance(geofence, (list, tuple)) or len(geofence) != 6:
            raise ConfigError(f"parameter geofence must be [xmin, ymin, zmin, xmax, ymax, zmax] in m, got {geofence!r}")
        config = replace(config, geofence=build(Geofence, {"min": list(geofence[:3]), "max": list(geofence[3:]),
                                                           "hard_margin": config.geofence.hard_margin},
                                                "parameter geofence"))
    return config


# --- what the machine says -------------------------------------------------------------------------
class Mode(str, enum.Enum):
    DISCONNECTED = "disconnected"
    DISARMED = "disarmed"
    ARMED = "armed"
    FLYING = "flying"
    HOVER = "hover"
    HIGH_LEVEL = "high_level"
    LANDING = "landing"
    EMERGENCY = "emergency"


AIRBORNE = (Mode.FLYING, Mode.HOVER, Mode.HIGH_LEVEL, Mode.LANDING)


class Send(str, enum.Enum):
    RATE = "rate"  # values: thrust (PWM ratio), p, q, r (rad/s)
    HOVER = "hover"  # values: x, y, z (m, world), yaw (rad): a position setpoint
    TAKEOFF = "takeoff"  # values: height (m, absolute), duration (s)
    GO_TO = "go_to"  # values: x, y, z (m), yaw (rad), duration (s)
    LAND = "land"  # values: height (m, absolute), duration (s)
    STOP = "stop"  # motors off (a stop setpoint)
    ARM = "arm"
    DISARM = "disarm"
    EMERGENCY_STOP = "emergency_stop"


@dataclass(frozen=True)
class Action:
    send: Send
    values: tuple[float, ...] = ()


@dataclass(frozen=True)
class Event:
    time: float  # s, the machine's clock
    kind: str  # arm, disarm, flying, stale, hover, resume, takeoff, go_to, land, landed, geofence,
    # geofence_hard, battery, link_lost, link_back, rejected, emergency, refused
    message: str


@dataclass(frozen=True)
class Reply:
    """The answer to a request: accepted or not, why, and what to send."""

    ok: bool
    message: str
    actions: tuple[Action, ...] = ()


# --- the machine -----------------------------------------------------------------------------------
class DroneSafety:
    """The bridge's state machine for one drone (module docstring). Not thread-safe: feed it from one thread."""

    def __init__(self, name: str, config: SafetyConfig):
        self.name, self.config = name, config
        self.mode = Mode.DISCONNECTED
        self.events: list[Event] = []  # new events, drained by the caller
        self.counters = {"accepted": 0, "rejected": 0, "ignored": 0, "overridden": 0, "stale": 0, "link_lost": 0}
        self.link_up = False
        self.link_lost = False  # reported lost and not back yet
        self.position, self.yaw, self.state_time = None, 0.0, None
        self.vbat, self.pm_state, self.low_since = None, None, None
        self.info = None  # supervisor.info
        self.found_flying = False  # flying when the link came up: to be landed
        self.drone_armed = False  # the drone said armed since the last arm request
        self.first_info = True  # the next supervisor.info is the first since connecting
        self.command_time = None  # arrival of the last valid command
        self.ground_z = None  # the height at arming: where the drone lands
        self.since = 0.0  # when the mode was entered
        self.hover_at = None  # (x, y, z, yaw) of the hover setpoint
        self.busy_until = 0.0  # end of the high-level take-off or go_to in progress
        self.reason = ""  # why the current mode was entered

    # --- inputs ------------------------------------------------------------------------------------
    def link_status(self, now: float, up: bool) -> None:
        """The link is up and ready for rate setpoints (True), or down (False)."""
        self.link_up = bool(up)
        self._connected(now)

    def state(self, now: float, position, yaw: float) -> None:
        """A state estimate: position (m, world) and yaw (rad)."""
        position = np.asarray(position, dtype=float)
        self.position, self.yaw, self.state_time = position, float(yaw), now
        self._connected(now)

    def battery(self, now: float, vbat: float, pm_state: int) -> None:
        """pm.vbat (V) and pm.state; low from the first reading below ``battery.low_voltage``."""
        self.vbat, self.pm_state = float(vbat), int(pm_state)
        if self.vbat < self.config.battery.low_voltage:
            self.low_since = now if self.low_since is None else self.low_since
        else:
            self.low_since = None

    def supervisor(self, now: float, info: int) -> None:
        """supervisor.info: follow the firmware when it locked, crashed, or disarmed by itself."""
        self.info = int(info)
        if self.mode in (Mode.DISCONNECTED, Mode.EMERGENCY):
            return
        self.found_flying = self.first_info and self.mode == Mode.DISARMED and bool(self.info & INFO_FLYING)
        self.first_info = False
        if self.info & (INFO_LOCKED | INFO_CRASHED):
            what = "locked (its commander watchdog or an emergency stop)" if self.info & INFO_LOCKED else "crashed"
            self._enter(now, Mode.EMERGENCY, f"the drone's supervisor says {what}: restart the drone", kind="locked")
        elif self.mode == Mode.ARMED or self.mode in AIRBORNE:
            if self.info & INFO_ARMED:
                self.drone_armed = True
            elif self.drone_armed:  # its motors are off: on the ground (a landing timeout, its preflight timeout)
                self._enter(now, Mode.DISARMED, "the drone disarmed itself (the firmware's preflight or landing "
                                                "timeout)", kind="disarm")

    def battery_low(self, now: float) -> bool:
        return self.pm_state == PM_LOW_POWER or (
            self.low_since is not None and now - self.low_since >= self.config.battery.low_duration)

    def command(self, now: float, setpoint) -> list[Action]:
        """A controller command [thrust, p, q, r] arriving now: validated, then forwarded when flying."""
        problem = self.invalid(setpoint)
        if problem:
            return self.reject(now, f"command {problem}")
        setpoint = tuple(float(v) for v in setpoint)
        if self.mode in (Mode.DISCONNECTED, Mode.DISARMED, Mode.LANDING, Mode.EMERGENCY):
            self.counters["ignored"] += 1
            return []
        if self.mode == Mode.HIGH_LEVEL:
            self.counters["overridden"] += 1
            return []
        if not self._link_alive(now):  # nothing can be sent; and a return of the link lands the drone
            self.counters["ignored"] += 1
            return []
        if self.mode == Mode.ARMED:
            if setpoint[0] <= 0:  # the controller holds the motors off: stay armed on the ground
                self.counters["ignored"] += 1
                return []
            self._enter(now, Mode.FLYING, "the controller's first command with thrust")
        elif self.mode == Mode.HOVER:
            if not self.config.hover.resume:
                self.counters["ignored"] += 1
                return []
            self._enter(now, Mode.FLYING, "commands again: the controller flies", kind="resume")
        self.command_time = now
        self.counters["accepted"] += 1
        return [Action(Send.RATE, setpoint)]

    def reject(self, now: float, why: str) -> list[Action]:
        """A command refused (``why`` names the problem): counted, reported, and it counts as missing."""
        self.counters["rejected"] += 1
        self._event(now, "rejected", f"{why}: rejected ({self.counters['rejected']} so far), counted as missing")
        return []

    def invalid(self, setpoint) -> str:
        """Why a command is refused ('' if it is valid)."""
        try:
            values = np.asarray(setpoint, dtype=float)
        except (TypeError, ValueError):
            return "is not numbers"
        if values.shape != (4,):
            return f"has {values.size} values, not 4 (thrust, p, q, r)"
        if not np.isfinite(values).all():
            return f"{values.tolist()} is not finite"
        limits = self.config.command
        if not 0.0 <= values[0] <= limits.max_thrust:
            return f"thrust {values[0]:.3f} is outside [0, {limits.max_thrust}] (PWM ratio)"
        if max(abs(values[1]), abs(values[2])) > limits.max_rate_xy:
            return f"roll/pitch rate {values[1]:.2f}, {values[2]:.2f} rad/s exceeds {limits.max_rate_xy}"
        if abs(values[3]) > limits.max_rate_z:
            return f"yaw rate {values[3]:.2f} rad/s exceeds {limits.max_rate_z}"
        return ""

    # --- requests ----------------------------------------------------------------------------------
    def arm(self, now: float, on: bool) -> Reply:
        if not on:
            if self.mode == Mode.ARMED or (self.mode == Mode.FLYING and self._on_ground()):
                self._enter(now, Mode.DISARMED, "disarm requested", kind="disarm")
                return Reply(True, "disarmed", (Action(Send.STOP), Action(Send.DISARM)))
            if self.mode in AIRBORNE:
                return self._refuse(now, f"cannot disarm while {self.mode.value}: land first (or emergency_stop)")
            return Reply(True, f"not armed ({self.mode.value})")
        if self.mode == Mode.ARMED or self.mode in AIRBORNE:
            return Reply(True, f"already armed ({self.mode.value})")
        problem = self._cannot_fly(now)
        if problem:
            return self._refuse(now, f"cannot arm: {problem}")
        self.ground_z = float(self.position[2])
        self.drone_armed = False
        self._enter(now, Mode.ARMED, "arm requested", kind="arm")
        return Reply(True, "armed: the controller's commands with thrust, or takeoff, fly it", (Action(Send.ARM),))

    def takeoff(self, now: float) -> Reply:
        if self.mode != Mode.ARMED:
            return self._refuse(now, f"takeoff needs an armed drone on the ground, it is {self.mode.value}")
        if self.info is not None and not self.info & INFO_CAN_FLY:  # the planner refuses one (EBUSY) until then
            return self._refuse(now, "the drone's supervisor does not let it fly yet (supervisor.info: arming "
                                     "takes a moment): try again")
        problem = self._cannot_fly(now)
        if problem:
            return self._refuse(now, f"cannot take off: {problem}")
        m = self.config.manoeuvres
        height = self.ground_z + m.takeoff_height
        target = np.array([self.position[0], self.position[1], height])
        if self.config.geofence.outside_by(target) > 0:
            return self._refuse(now, f"the take-off height {height:.2f} m is outside the geofence")
        self.busy_until = now + m.takeoff_duration
        self._enter(now, Mode.HIGH_LEVEL, f"takeoff to {height:.2f} m", kind="takeoff")
        return Reply(True, f"taking off to {height:.2f} m in {m.takeoff_duration} s",
                     (Action(Send.TAKEOFF, (height, m.takeoff_duration)),))

    def go_to(self, now: float, goal, yaw: float) -> Reply:
        if self.mode != Mode.HIGH_LEVEL:
            return self._refuse(now, f"go_to flies after takeoff (the high-level commander), the drone is "
                                     f"{self.mode.value}")
        if now < self.busy_until:
            return self._refuse(now, f"the previous manoeuvre ends in {self.busy_until - now:.1f} s "
                                     "(overlapping go_to commands can take unexpected routes)")
        goal = np.asarray(goal, dtype=float)
        if goal.shape != (3,) or not np.isfinite(goal).all() or not math.isfinite(yaw):
            return self._refuse(now, f"go_to goal {goal.tolist()} yaw {yaw} is not 3 finite numbers and a yaw")
        if self.config.geofence.outside_by(goal) > 0:
            return self._refuse(now, f"go_to goal {np.round(goal, 3).tolist()} is outside the geofence")
        duration = max(float(np.linalg.norm(goal - self.position)) / self.config.manoeuvres.go_to_speed, 1.0)
        self.busy_until = now + duration
        self._event(now, "go_to", f"go_to {np.round(goal, 3).tolist()} in {duration:.1f} s")
        return Reply(True, f"going to {np.round(goal, 3).tolist()} in {duration:.1f} s",
                     (Action(Send.GO_TO, (*goal, float(yaw), duration)),))

    def land(self, now: float) -> Reply:
        if self.mode == Mode.LANDING:
            return Reply(True, "already landing")
        if self.mode == Mode.ARMED or (self.mode == Mode.FLYING and self._on_ground()):
            self._enter(now, Mode.DISARMED, "land requested on the ground", kind="disarm")
            return Reply(True, "on the ground: disarmed", (Action(Send.STOP), Action(Send.DISARM)))
        if self.mode not in AIRBORNE:
            return Reply(True, f"not flying ({self.mode.value})")
        actions = self._start_landing(now, "land requested")
        return Reply(True, "landing", tuple(actions))

    def emergency(self, now: float, why: str = "emergency_stop requested") -> Reply:
        self._enter(now, Mode.EMERGENCY, why, kind="emergency")
        return Reply(True, "motors stopped: restart the drone (the firmware locks) and the bridge to fly again",
                     (Action(Send.EMERGENCY_STOP),))

    # --- the time-driven rules ---------------------------------------------------------------------
    def tick(self, now: float) -> list[Action]:
        """What to send this period; evaluates link, geofence, battery, stale commands, hover and landing."""
        if self.mode == Mode.EMERGENCY:
            return [Action(Send.EMERGENCY_STOP)] if self.link_up else []
        if self.mode == Mode.DISCONNECTED:
            return []
        if not self._link_alive(now):
            if not self.link_lost:
                self.link_lost = True
                self.counters["link_lost"] += 1
                self._event(now, "link_lost", f"link lost while {self.mode.value}: nothing can be sent" + {
                    Mode.FLYING: "; the firmware levels after 0.5 s and stops the motors after 2 s without setpoints",
                    Mode.HOVER: "; the firmware levels after 0.5 s and stops the motors after 2 s without setpoints",
                    Mode.HIGH_LEVEL: "; the high-level commander flies on on board",
                    Mode.LANDING: "; the high-level commander lands on board"}.get(self.mode, ""))
            return []
        if self.link_lost:
            self.link_lost = False
            self._event(now, "link_back", "link back")
            if self.mode in AIRBORNE:  # a landing starts again: its clock ran while nothing was known
                return self._start_landing(now, "the link came back")
        if self.found_flying:
            self.found_flying = False
            return self._start_landing(now, "the drone was flying when the link came up (a bridge restarted?)")
        if self.mode in AIRBORNE:
            out = self.config.geofence.outside_by(self.position)
            if out > self.config.geofence.hard_margin:
                return list(self.emergency(now, f"{out:.2f} m outside the geofence, beyond its hard margin "
                                                f"{self.config.geofence.hard_margin} m").actions)
            if out > 0 and self.mode != Mode.LANDING:
                return self._start_landing(now, f"{out:.2f} m outside the geofence at "
                                                f"{np.round(self.position, 3).tolist()}", kind="geofence")
            if self.battery_low(now) and self.mode != Mode.LANDING:
                return self._start_landing(now, f"battery low ({self._battery_text()})", kind="battery")
        elif self.mode == Mode.ARMED and self.battery_low(now):
            self._enter(now, Mode.DISARMED, f"battery low ({self._battery_text()})", kind="battery")
            return [Action(Send.DISARM)]
        if self.mode == Mode.FLYING and now - self.command_time > self.config.command.timeout:
            self.counters["stale"] += 1
            age = now - self.command_time
            if self._on_ground():
                self._enter(now, Mode.DISARMED, f"no valid command for {age:.2f} s on the ground: motors stop",
                            kind="stale")
                return [Action(Send.STOP), Action(Send.DISARM)]
            self.hover_at = (*self.position, self.yaw)
            self._enter(now, Mode.HOVER, f"no valid command for {age:.2f} s: hover at "
                                         f"{np.round(self.position, 3).tolist()}", kind="stale")
        if self.mode == Mode.HOVER:
            if now - self.since >= self.config.hover.timeout:
                return self._start_landing(now, f"no valid command for {self.config.hover.timeout} s of hover")
            return [Action(Send.HOVER, self.hover_at)]
        if self.mode == Mode.LANDING:
            m = self.config.manoeuvres
            landed_for = now - self.since - m.land_duration
            if landed_for >= 0 and (self._on_ground() or landed_for >= m.land_grace):
                how = "landed" if self._on_ground() else f"still {self._height():.2f} m up after the landing time"
                self._enter(now, Mode.DISARMED, f"{how}: motors stop", kind="landed")
                return [Action(Send.STOP), Action(Send.DISARM)]
        return []

    # --- what the node reports ---------------------------------------------------------------------
    def status(self, now: float) -> dict:
        """For /diagnostics: mode, why, link, battery, command age, counters."""
        return {
            "mode": self.mode.value, "reason": self.reason, "link": "lost" if self.link_lost else
            ("up" if self.link_up else "down"),
            "state_age_ms": _ms(now, self.state_time), "command_age_ms": _ms(now, self.command_time),
            "vbat": "none" if self.vbat is None else f"{self.vbat:.2f}",
            "pm_state": "none" if self.pm_state is None else self.pm_state,
            "supervisor_info": "none" if self.info is None else f"0x{self.info:04x}",
            "battery_low": self.battery_low(now), **self.counters,
        }

    # --- helpers -----------------------------------------------------------------------------------
    def _enter(self, now: float, mode: Mode, reason: str, kind: str | None = None) -> None:
        self.mode, self.since, self.reason = mode, now, reason
        self._event(now, kind or mode.value, f"{mode.value}: {reason}")

    def _event(self, now: float, kind: str, message: str) -> None:
        self.events.append(Event(now, kind, f"{self.name}: {message}"))

    def _refuse(self, now: float, message: str) -> Reply:
        self._event(now, "refused", message)
        return Reply(False, message)

    def _start_landing(self, now: float, reason: str, kind: str = "land") -> list[Action]:
        ground = self.ground_z if self.ground_z is not None else 0.0
        self._enter(now, Mode.LANDING, reason, kind=kind)
        return [Action(Send.LAND, (ground, self.config.manoeuvres.land_duration))]

    def _connected(self, now: float) -> None:
        if self.mode == Mode.DISCONNECTED and self._link_alive(now):
            self._enter(now, Mode.DISARMED, "connected: nothing spins until arm")

    def _state_fresh(self, now: float) -> bool:
        return self.state_time is not None and now - self.state_time <= self.config.link.timeout

    def _link_alive(self, now: float) -> bool:
        return self.link_up and self._state_fresh(now)

    def _height(self) -> float:
        return float(self.position[2] - (self.ground_z if self.ground_z is not None else 0.0))

    def _on_ground(self) -> bool:
        return self._height() < self.config.manoeuvres.landed_height

    def _battery_text(self) -> str:
        return f"pm.vbat {self.vbat:.2f} V, pm.state {self.pm_state}" if self.vbat is not None else "no reading"

    def _cannot_fly(self, now: float) -> str:
        """Why the drone may not arm or take off now ('' if it may)."""
        if self.mode == Mode.EMERGENCY:
            return "an emergency stop is latched (restart the drone and the bridge)"
        if not self._link_alive(now):
            return "no link or no fresh state estimate"
        if self.vbat is None:
            return "no battery reading yet"
        if self.battery_low(now):
            return f"battery low ({self._battery_text()})"
        out = self.config.geofence.outside_by(self.position)
        if out > 0:
            return f"{out:.2f} m outside the geofence at {np.round(self.position, 3).tolist()}"
        return ""


def _ms(now: float, then: float | None):
    return "none" if then is None else round(1000.0 * (now - then), 1)
