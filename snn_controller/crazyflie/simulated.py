"""Simulated Crazyflies: the firmware's behaviour behind CRTP, on top of the project's simulation.

:class:`SimulatedCrazyflies` holds N drones: one :class:`Firmware` each (what a Crazyflie does with
the packets it receives: commander, high-level commander, supervisor, params, log, localization,
battery) and one batched physics engine for all of them. It is transport-free: ``handle(i, packet)``
returns the reply packets, ``step()`` advances everything by one 10 ms stabilizer tick, and
``log_packets(i)`` gives the log data due. :mod:`.server` puts it on cflib's ``udp://`` link.

Firmware: bitcraze/crazyflie-firmware at commit 2a18fc29. What follows which file:

- Stabilizer loop (``stabilizer.c``), every 10 ms here (the firmware runs 1 kHz with the controller
  at 500 Hz): supervisor update (every 40 ms, ``RATE_SUPERVISOR`` 25 Hz; the firmware updates it
  just after the high-level setpoint) -> high-level setpoint if the supervisor lets it fly -> the
  commander's setpoint in force -> supervisor override -> controller -> motors only in the states
  that allow them (``supervisorAreMotorsAllowedToRun``), armed ones idling at 7000 PWM when arming
  is required (``power_distribution_quadrotor.c``, ``CONFIG_MOTORS_DEFAULT_IDLE_THRUST``).
- Commander (``commander.c``): priorities disable 0 < high level 1 < CRTP 2; a CRTP setpoint stops
  the planner; ``notify_setpoint_stop`` relaxes the priority to 1 and tells the planner the state.
- Legacy RPYT (``crtp_commander_rpyt.c``): the ``flightmode.stabModeRoll/Pitch/Yaw`` params (0 rate,
  1 angle; defaults angle, angle, rate), thrust lock until a thrust-0 packet, thrust 0 below 1000,
  capped at 60000, ``attitudeRate.yaw = -yaw`` (the legacy yaw input is inverted).
- Generic setpoints (``crtp_commander_generic.c``): stop, velocity world, hover, position, and their
  legacy yaw-rate variants.
- Controller: the rate PIDs and power distribution of ``sim/firmware.py`` at 500 Hz (exact to
  ``controller_pid.c`` / ``pid.c``, see docs/ctbr.md); angle mode adds the firmware's roll/pitch
  attitude PIDs (kp 6, ki 3, ilimit 20, ``platform_defaults_cf2.h``) evaluated every 10 ms, and the
  yaw attitude loop of ``controllerPid``. Position, velocity and hover setpoints (and the high-level
  commander's, with its acceleration as a feed-forward) are flown by the project's cascaded PID
  (``control/pid.py`` with the CTBR output) in front of that rate loop: **not** the firmware's
  ``position_controller_pid.c``.
- High-level commander (``crtp_commander_high_level.c``, ``planner.c``, ``pptraj.c``): takeoff_2,
  land_2, go_to / go_to_2 (relative, linear), stop, group masks (command and
  ``hlCommander.groupmask``), EBUSY while the supervisor does not let it fly; one 7th-order no-jerk
  polynomial per command as ``piecewise_plan_7th_order_no_jerk``; after landing the planner idles
  and asks for motors off.
- Supervisor (``supervisor.c``, ``supervisor_state_machine.c``): the state machine transcribed
  (transition tables unchanged), arming with ``CONFIG_MOTORS_REQUIRE_ARMING`` (``require_arming``) or
  auto-arming, the commander watchdog (setpoint older than 500 ms: level out keeping the thrust;
  older than 2 s: motors off and locked), emergency stop (supervisor port, the deprecated
  localization packets, ``stabilizer.stop``) and its 1 s watchdog variant: locked until
  :meth:`SimulatedCrazyflies.reset`, the firmware's reboot; tumble check on the accelerometer's z
  (below 0.5 g for 1 s, below -0.2 g for 0.1 s) -> crashed, recovery by the recover command (a
  crash by the simulation's rules leaves the drone lying on its side: ``SimulatedCrazyflies._observe``).
- Log (``log.c``) and params (``param_logic.c``): v2 TOCs with their chained CRC32, 16 blocks,
  128 ops, 26 payload bytes a block, timestamps in ms since boot (uint24).
- ``stateEstimate`` / ``stateEstimateZ`` (``stabilizer.c``; the estimate is the true state): pitch
  with the estimator's sign (``kalman_core.c``: nose up positive), ``stateEstimateZ`` int16 mm,
  mm/s, mm/s^2 (``az`` with gravity), the compressed quaternion, rates in mrad/s with
  ``ratePitch = -gyro.y``.
- Battery (``pm_stm32f4.c``): ``pm.vbat`` drains with the mean motor PWM (an assumption, see
  BATTERY_DRAIN); ``pm.state`` lowPower (3) after 5 s below ``pm.lowVoltage``; ``batteryLevel`` from
  the firmware's LiPo curve.
- External position (``crtp_localization_service.c``): ``send_extpos`` / ``send_extpose`` are
  recorded and logged as ``locSrv.*``; the estimate does not use them (it is the true state).

Sign conventions on the wire (docs/ctbr.md): our body frame is x forward, y left, z up (the
firmware's too). cflib's ``send_setpoint(roll, pitch, yawrate, thrust)`` in rate mode asks for
p = roll, q = pitch (cflib negates pitch, the firmware's pitch-rate PID negates it back),
r = -yawrate [deg/s]: a positive cflib yaw rate turns clockwise seen from above.
"""

from __future__ import annotations

import errno
import math
import struct
from dataclasses import dataclass, field, replace
from enum import IntEnum

import numpy as np
import torch

from ..control.pid import PIDController, load_pid_gains
from ..sim.batched_engine import GROUND_CLEARANCE, BatchedEngine
from ..sim.drone import load_drone
from ..sim.firmware import RateControlledEngine
from ..sim.fleet import RobotConfig, initial_state
from ..sim.rotations import quat_to_matrix
from ..sim.supervisor import CrashLimits, crash_reasons
from ..task.ctbr import CtbrScaling
from ..task.observation import OBS_DIM, Observation, assemble
from . import crtp
from .crtp import Packet, Port

MODE_DISABLE, MODE_ABS, MODE_VELOCITY = 0, 1, 2  # stabilizer_types.h stab_mode_t
PRIORITY_DISABLE, PRIORITY_HIGHLEVEL, PRIORITY_CRTP = 0, 1, 2  # commander.h
TICK_MS = 10  # one stabilizer tick here
SUPERVISOR_PERIOD_MS = 40  # RATE_SUPERVISOR 25 Hz
WDT_STABILIZE_MS, WDT_SHUTDOWN_MS = 500, 2000  # COMMANDER_WDT_TIMEOUT_STABILIZE / _SHUTDOWN
EMERGENCY_WATCHDOG_MS = 1000  # DEFAULT_EMERGENCY_STOP_WATCHDOG_TIMEOUT
IS_FLYING_HYSTERESIS_MS = 2000
PREFLIGHT_TIMEOUT_MS, LANDING_TIMEOUT_MS, SPINUP_TIMEOUT_MS = 30000, 3000, 2000
TUMBLE_TILT_ACC_Z, TUMBLE_TILT_MS = 0.5, 1000  # SUPERVISOR_TUMBLE_CHECK_ACCEPTED_TILT_*
TUMBLE_UPSIDE_DOWN_ACC_Z, TUMBLE_UPSIDE_DOWN_MS = -0.2, 100
FREE_FALL_G = 0.1
IDLE_THRUST_ARMED = 7000  # PWM, CONFIG_MOTORS_DEFAULT_IDLE_THRUST: armed motors idle here; above it a motor is flying
ATTITUDE_KP, ATTITUDE_KI, ATTITUDE_ILIMIT = 6.0, 3.0, 20.0  # PID_ROLL_* = PID_PITCH_* (kd 0)
BATTERY_FULL = 4.15  # V, a charged LiPo at rest
BATTERY_DRAIN = 0.004  # V/s at full PWM: ~1 V in 7 min of hover (PWM ratio 0.66), an assumption
LIPO_CURVE = (3.00, 3.78, 3.83, 3.87, 3.89, 3.92, 3.96, 4.00, 4.04, 4.10)  # pm_stm32f4.c, 0 .. 90 %
PM_BATTERY, PM_LOW_POWER = 0, 3  # PMStates
PM_LOW_DURATION_MS = 5000  # DEFAULT_BAT_LOW_DURATION_TO_TRIGGER_SEC


# --- the setpoint (stabilizer_types.h setpoint_t, the parts served) -----------------------------
@dataclass(frozen=True)
class Setpoint:
    """Angles in degrees and rates in deg/s with the firmware's signs (pitch: nose up positive),
    positions [m], velocities [m/s] and accelerations [m/s^2] in the world frame (``velocity_body``:
    x, y in the body's yaw frame), thrust in PWM (0..65535)."""

    mode_x: int = MODE_DISABLE
    mode_y: int = MODE_DISABLE
    mode_z: int = MODE_DISABLE
    mode_roll: int = MODE_DISABLE
    mode_pitch: int = MODE_DISABLE
    mode_yaw: int = MODE_DISABLE
    position: tuple = (0.0, 0.0, 0.0)
    velocity: tuple = (0.0, 0.0, 0.0)
    velocity_body: bool = False
    attitude: tuple = (0.0, 0.0, 0.0)  # roll, pitch, yaw
    attitude_rate: tuple = (0.0, 0.0, 0.0)
    acceleration: tuple = (0.0, 0.0, 0.0)
    thrust: float = 0.0
    timestamp_ms: int = 0


NULL_SETPOINT = Setpoint()


# --- the planner (planner.c, pptraj.c) ----------------------------------------------------------
def _normalize_radians(a: float) -> float:
    return math.atan2(math.sin(a), math.cos(a))


def _poly7_nojerk(T, x0, dx0, ddx0, xf, dxf, ddxf) -> np.ndarray:
    """pptraj.c poly7_nojerk: the 8 coefficients (t^0 first) from position, velocity, acceleration
    at both ends and zero jerk at both ends."""
    if T <= 0:
        return np.array([xf, dxf, ddxf / 2, 0, 0, 0, 0, 0], dtype=np.float64)
    T2, T3 = T * T, T ** 3
    return np.array([
        x0, dx0, ddx0 / 2, 0.0,
        -(5 * (14 * x0 - 14 * xf + 8 * T * dx0 + 6 * T * dxf + 2 * T2 * ddx0 - T2 * ddxf)) / (2 * T2 * T2),
        (84 * x0 - 84 * xf + 45 * T * dx0 + 39 * T * dxf + 10 * T2 * ddx0 - 7 * T2 * ddxf) / (T2 * T3),
        -(140 * x0 - 140 * xf + 72 * T * dx0 + 68 * T * dxf + 15 * T2 * ddx0 - 13 * T2 * ddxf) / (2 * T3 * T3),
        (2 * (10 * x0 - 10 * xf + 5 * T * dx0 + 5 * T * dxf + T2 * ddx0 - T2 * ddxf)) / (T3 * T2 * T2),
    ])


@dataclass(frozen=True)
class TrajectoryPoint:
    position: np.ndarray  # (3,) m
    velocity: np.ndarray  # (3,) m/s
    acceleration: np.ndarray  # (3,) m/s^2
    yaw: float  # rad
    yaw_rate: float  # rad/s


class Planner:
    """One drone's planner: a single 7th-order piece per command (takeoff, land, go_to)."""

    IDLE, FLYING, LANDING, DISABLED = 0, 1, 3, 4  # planner.h trajectory_state

    def __init__(self):
        self.state = Planner.IDLE
        self.coefficients: np.ndarray | None = None  # (4, 8): x, y, z, yaw
        self.t_begin = self.duration = 0.0

    def _plan(self, duration, p0, y0, v0, dy0, a0, p1, y1, v1, dy1, a1, t) -> None:
        """piecewise_plan_7th_order_no_jerk; the yaw axis has zero acceleration at both ends."""
        self.coefficients = np.stack([_poly7_nojerk(duration, p0[k], v0[k], a0[k], p1[k], v1[k], a1[k]) for k in range(3)]
                                     + [_poly7_nojerk(duration, y0, dy0, 0.0, y1, dy1, 0.0)])
        self.duration, self.t_begin = max(duration, 0.0), t

    def is_finished(self, t: float) -> bool:
        return self.coefficients is None or t - self.t_begin > self.duration

    def evaluate(self, t: float) -> TrajectoryPoint:
        """piecewise_eval: the polynomial inside its duration, its end point at rest after it."""
        tau = min(max(t - self.t_begin, 0.0), self.duration)
        c = self.coefficients
        powers = tau ** np.arange(8)
        d1 = np.arange(1, 8) * c[:, 1:]
        d2 = np.arange(2, 8) * np.arange(1, 7) * c[:, 2:]
        pos, vel, acc = c @ powers, d1 @ powers[:7], d2 @ powers[:6]
        if t - self.t_begin > self.duration:
            vel, acc = np.zeros(4), np.zeros(4)
        return TrajectoryPoint(pos[:3], vel[:3], acc[:3], float(pos[3]), float(vel[3]))

    def current_goal(self, t: float) -> TrajectoryPoint | None:
        """plan_current_goal: a landing that finished idles; None unless flying or landing."""
        if self.state == Planner.LANDING and self.is_finished(t):
            self.state = Planner.IDLE
            return self.evaluate(t)
        if self.state in (Planner.FLYING, Planner.LANDING):
            return self.evaluate(t)
        return None

    def _takeoff_or_land(self, position, yaw, height, hover_yaw, duration, t) -> None:
        hover_yaw, yaw = _normalize_radians(hover_yaw), _normalize_radians(yaw)
        goal_yaw = yaw + _normalize_radians(hover_yaw - yaw)  # the shortest rotation
        goal = np.array([position[0], position[1], height])
        zero = np.zeros(3)
        self._plan(duration, np.asarray(position), yaw, zero, 0.0, zero, goal, goal_yaw, zero, 0.0, zero, t)

    def takeoff(self, position, yaw, height, hover_yaw, duration, t) -> int:
        if self.state != Planner.IDLE:
            return 1
        self._takeoff_or_land(position, yaw, height, hover_yaw, duration, t)
        self.state = Planner.FLYING
        return 0

    def land(self, position, yaw, height, hover_yaw, duration, t) -> int:
        if self.state == Planner.LANDING:
            return 1
        self._takeoff_or_land(position, yaw, height, hover_yaw, duration, t)
        self.state = Planner.LANDING
        return 0

    def go_to_from(self, start: TrajectoryPoint, relative, linear, goal, goal_yaw, duration, t) -> int:
        goal = np.asarray(goal, dtype=np.float64)
        if relative:
            goal, goal_yaw = goal + start.position, goal_yaw + start.yaw
        yaw = _normalize_radians(start.yaw)
        delta = _normalize_radians(_normalize_radians(goal_yaw) - yaw)
        zero = np.zeros(3)
        if linear:
            velocity = (goal - start.position) / duration
            self._plan(duration, start.position, yaw, velocity, delta / duration, zero,
                       goal, yaw + delta, velocity, delta / duration, zero, t)
        else:
            self._plan(duration, start.position, yaw, start.velocity, start.yaw_rate, start.acceleration,
                       goal, yaw + delta, zero, 0.0, zero, t)
        self.state = Planner.FLYING
        return 0


# --- the supervisor (supervisor_state_machine.c) -----------------------------------------------
class State(IntEnum):
    NOT_INITIALIZED = 0
    PRE_FLIGHT_CHECKS_NOT_PASSED = 1
    PRE_FLIGHT_CHECKS_PASSED = 2
    ARMING = 3
    READY_TO_FLY = 4
    FLYING = 5
    LANDED = 6
    RESET = 7
    WARNING_LEVEL_OUT = 8
    EXCEPT_FREE_FALL = 9
    LOCKED = 10
    CRASHED = 11


class Condition:
    """supervisorConditionBits_t"""

    NONE = 0
    ARMED, IS_FLYING, IS_TUMBLED, WDT_WARNING, WDT_TIMEOUT, EMERGENCY_STOP, CRASHED = (1 << k for k in range(7))
    PREFLIGHT_TIMEOUT, LANDING_TIMEOUT, DECK_FAULT, RPM_AT_ARMING_VALID, SPINUP_TIMEOUT, MOTORS_NOT_RESPONDING = (
        1 << k for k in range(7, 13))


ALL, ANY, ALWAYS, NEVER = "all", "any", "always", "never"
C = Condition
# state: [(new state, triggers, negated triggers, trigger combiner, blockers, negated blockers, blocker combiner)]
TRANSITIONS = {
    State.NOT_INITIALIZED: [(State.PRE_FLIGHT_CHECKS_NOT_PASSED, 0, 0, ALWAYS, 0, 0, NEVER)],
    State.PRE_FLIGHT_CHECKS_NOT_PASSED: [
        (State.EXCEPT_FREE_FALL, C.EMERGENCY_STOP, 0, ANY, 0, 0, NEVER),
        (State.PRE_FLIGHT_CHECKS_PASSED, 0, 0, ALWAYS, C.IS_TUMBLED | C.DECK_FAULT, 0, ANY)],
    State.PRE_FLIGHT_CHECKS_PASSED: [
        (State.EXCEPT_FREE_FALL, C.EMERGENCY_STOP, 0, ANY, 0, 0, NEVER),
        (State.PRE_FLIGHT_CHECKS_NOT_PASSED, C.IS_TUMBLED | C.DECK_FAULT, 0, ANY, 0, 0, NEVER),
        (State.ARMING, C.ARMED, 0, ALL, C.IS_TUMBLED, 0, ANY)],
    State.ARMING: [
        (State.EXCEPT_FREE_FALL, C.EMERGENCY_STOP, 0, ANY, 0, 0, NEVER),
        (State.PRE_FLIGHT_CHECKS_NOT_PASSED, C.IS_TUMBLED | C.SPINUP_TIMEOUT, C.ARMED, ANY, 0, 0, NEVER),
        (State.READY_TO_FLY, C.RPM_AT_ARMING_VALID, 0, ALL, 0, 0, NEVER)],
    State.READY_TO_FLY: [
        (State.EXCEPT_FREE_FALL, C.EMERGENCY_STOP | C.MOTORS_NOT_RESPONDING, 0, ANY, 0, 0, NEVER),
        (State.PRE_FLIGHT_CHECKS_NOT_PASSED, C.IS_TUMBLED | C.PREFLIGHT_TIMEOUT | C.DECK_FAULT, C.ARMED, ANY, 0, 0,
         NEVER),
        (State.FLYING, C.IS_FLYING, 0, ALL, 0, 0, NEVER)],
    State.FLYING: [
        (State.EXCEPT_FREE_FALL, C.WDT_TIMEOUT | C.EMERGENCY_STOP | C.DECK_FAULT | C.MOTORS_NOT_RESPONDING, 0, ANY, 0,
         0, NEVER),
        (State.CRASHED, C.IS_TUMBLED, 0, ANY, 0, 0, NEVER),
        (State.RESET, 0, C.ARMED, ALL, 0, 0, NEVER),
        (State.WARNING_LEVEL_OUT, C.WDT_WARNING, 0, ALL, 0, 0, NEVER),
        (State.LANDED, 0, C.IS_FLYING, ALL, 0, 0, NEVER)],
    State.LANDED: [
        (State.RESET, C.LANDING_TIMEOUT, C.ARMED, ANY, 0, 0, NEVER),
        (State.EXCEPT_FREE_FALL, C.MOTORS_NOT_RESPONDING, 0, ALL, 0, 0, NEVER),
        (State.FLYING, C.IS_FLYING, 0, ALL, 0, 0, NEVER)],
    State.RESET: [(State.PRE_FLIGHT_CHECKS_NOT_PASSED, 0, 0, ALWAYS, 0, 0, NEVER)],
    State.WARNING_LEVEL_OUT: [
        (State.EXCEPT_FREE_FALL, C.WDT_TIMEOUT | C.IS_TUMBLED | C.EMERGENCY_STOP | C.DECK_FAULT, 0, ANY, 0, 0, NEVER),
        (State.EXCEPT_FREE_FALL, C.MOTORS_NOT_RESPONDING, 0, ALL, 0, 0, NEVER),
        (State.FLYING, 0, C.WDT_WARNING | C.WDT_TIMEOUT, ALL, 0, 0, NEVER)],
    State.EXCEPT_FREE_FALL: [(State.LOCKED, 0, 0, ALWAYS, 0, 0, NEVER)],
    State.LOCKED: [(State.LOCKED, 0, 0, NEVER, 0, 0, ALWAYS)],
    State.CRASHED: [
        (State.PRE_FLIGHT_CHECKS_NOT_PASSED, 0, C.CRASHED | C.IS_TUMBLED, ALL, 0, 0, NEVER),
        (State.LOCKED, C.EMERGENCY_STOP, 0, ALL, 0, 0, NEVER)],
}
del C


def _conditions_met(conditions: int, required: int, negated: int, combiner: str) -> bool:
    """areConditionsMet: ALL needs every required bit and no negated one; ANY one required bit or a
    missing negated one."""
    if combiner == ALL:
        return (~conditions & required) == 0 and (conditions & negated) == 0
    if combiner == ANY:
        return (conditions & required) != 0 or (~conditions & negated) != 0
    return combiner == ALWAYS


def next_state(state: State, conditions: int) -> State:
    """supervisorStateUpdate: the first transition whose triggers match and blockers do not."""
    for new, trig, neg_trig, trig_comb, block, neg_block, block_comb in TRANSITIONS[state]:
        if _conditions_met(conditions, trig, neg_trig, trig_comb) and not _conditions_met(conditions, block, neg_block,
                                                                                         block_comb):
            return new
    return state


MOTORS_ALLOWED = (State.ARMING, State.READY_TO_FLY, State.FLYING, State.WARNING_LEVEL_OUT, State.LANDED)
CAN_FLY = (State.READY_TO_FLY, State.FLYING, State.WARNING_LEVEL_OUT, State.LANDED)


# --- params and log variables -------------------------------------------------------------------
@dataclass(frozen=True)
class ParamSpec:
    group: str
    name: str
    ctype: str
    default: float
    read_only: bool = False


PARAMS = (
    ParamSpec("flightmode", "stabModeRoll", "uint8_t", 1),  # crtp_commander_rpyt.c: 0 rate, 1 angle
    ParamSpec("flightmode", "stabModePitch", "uint8_t", 1),
    ParamSpec("flightmode", "stabModeYaw", "uint8_t", 0),
    ParamSpec("commander", "enHighLevel", "uint8_t", 0),  # read by nothing at 2a18fc29 (the HL always runs)
    ParamSpec("stabilizer", "estimator", "uint8_t", 0),  # accepted; the estimate is the true state
    ParamSpec("stabilizer", "controller", "uint8_t", 0),  # accepted; one controller is modelled
    ParamSpec("stabilizer", "stop", "uint8_t", 0),  # supervisor.c: non-zero = emergency stop
    ParamSpec("hlCommander", "groupmask", "uint8_t", 0),
    ParamSpec("pm", "lowVoltage", "float", 3.2),  # platform_defaults_cf2.h
    ParamSpec("pm", "criticalLowVoltage", "float", 3.0),
    ParamSpec("kalman", "resetEstimation", "uint8_t", 0),  # accepted (crazyswarm2 sets it); no effect
    ParamSpec("locSrv", "extPosStdDev", "float", 0.01),  # accepted; extpos does not feed the estimate
    ParamSpec("locSrv", "extQuatStdDev", "float", 4.5e-3),
)

LOG_VARIABLES = tuple((group, name, ctype) for group, names, ctype in (
    ("stateEstimate", ("x", "y", "z", "vx", "vy", "vz", "ax", "ay", "az", "roll", "pitch", "yaw",
                       "qx", "qy", "qz", "qw"), "float"),
    ("stateEstimateZ", ("x", "y", "z", "vx", "vy", "vz", "ax", "ay", "az"), "int16_t"),
    ("stateEstimateZ", ("quat",), "uint32_t"),
    ("stateEstimateZ", ("rateRoll", "ratePitch", "rateYaw"), "int16_t"),
    ("gyro", ("x", "y", "z"), "float"),
    ("acc", ("x", "y", "z"), "float"),
    ("motor", ("m1", "m2", "m3", "m4"), "uint16_t"),
    ("ctrltarget", ("x", "y", "z", "vx", "vy", "vz", "yaw"), "float"),
    ("pm", ("vbat",), "float"),
    ("pm", ("vbatMV",), "uint16_t"),
    ("pm", ("state",), "int8_t"),
    ("pm", ("batteryLevel",), "uint8_t"),
    ("supervisor", ("info",), "uint16_t"),
    ("sys", ("canfly", "isFlying", "isTumbled"), "uint8_t"),
    ("locSrv", ("x", "y", "z", "qx", "qy", "qz", "qw"), "float"),
) for name in names)

LOG_TOC = [crtp.TocEntry(g, n, crtp.LOG_TYPE[t]) for g, n, t in LOG_VARIABLES]
PARAM_TOC = [crtp.TocEntry(p.group, p.name, crtp.PARAM_TYPE[p.ctype] | (crtp.PARAM_READ_ONLY if p.read_only else 0))
             for p in PARAMS]
LOG_TOC_EXTRA = bytes((crtp.Log.MAX_BLOCKS, crtp.Log.MAX_OPS))


@dataclass
class LogBlock:
    ops: list = field(default_factory=list)  # (TOC index, type code sent as)
    period_ms: int = 0
    due_ms: int = 0
    started: bool = False

    def length(self) -> int:
        return sum(struct.calcsize(crtp.LOG_TYPES[t][0]) for _, t in self.ops)


def battery_level(volts: float) -> int:
    """pmBatteryChargeFromVoltage * 10: 0 .. 90 % in steps of 10."""
    if volts < LIPO_CURVE[0]:
        return 0
    if volts > LIPO_CURVE[-1]:
        return 90
    return 10 * next(k for k, v in enumerate(LIPO_CURVE) if volts <= v)


# --- one drone's firmware -----------------------------------------------------------------------
class Firmware:
    """The CRTP services, commander, planner and supervisor of one Crazyflie (see the module doc).

    ``estimate``: the state the firmware sees (the true one), set by :class:`SimulatedCrazyflies`
    every tick: position, velocity, quaternion (w, x, y, z), body rates [rad/s], world acceleration
    [m/s^2] and body specific force [g]; ``motor_pwm`` the last PWM of the four motors."""

    def __init__(self, require_arming: bool = True, device_name: str = "CF21"):
        self.require_arming, self.device_name = require_arming, device_name
        self.params = {f"{p.group}.{p.name}": p.default for p in PARAMS}
        # commander
        self.setpoint, self.priority, self.thrust_locked = NULL_SETPOINT, PRIORITY_DISABLE, True
        # high-level commander: the last known setpoint (pos, vel, yaw) plans start from
        self.planner = Planner()
        self.hl_position, self.hl_velocity, self.hl_yaw = np.zeros(3), np.zeros(3), 0.0
        # supervisor
        self.state = State.NOT_INITIALIZED
        self.armed = self.crashed = self.tumbled = False
        self.emergency_stop = False
        self.emergency_watchdog_ms: int | None = None  # last notification of the watchdog variant
        self.tumble_start_ms: int | None = None
        self.latest_thrust_ms: int | None = None
        self.armed_ms = self.landed_ms = self.arming_start_ms = 0
        self.landed_once = False
        self.info_bitfield = 0
        # peripherals
        self.vbat, self.pm_state, self.battery_low_since_ms = BATTERY_FULL, PM_BATTERY, None
        self.extpos = np.zeros(3)
        self.extquat = np.array([0.0, 0.0, 0.0, 1.0])  # x, y, z, w
        self.extpos_count = 0
        self.log_blocks: dict[int, LogBlock] = {}
        self.estimate = {"position": np.zeros(3), "velocity": np.zeros(3), "quaternion": np.array([1.0, 0, 0, 0]),
                         "angular_velocity": np.zeros(3), "acceleration": np.zeros(3),
                         "specific_force": np.array([0.0, 0.0, 1.0])}
        self.motor_pwm = np.zeros(4)
        for _ in range(2):  # booted: NotInitialized -> PreFlChecksNotPassed -> PreFlChecksPassed (at rest, level)
            self._supervisor_update(0)

    # --- packets ------------------------------------------------------------------------------
    def handle(self, packet: Packet, now_ms: int) -> list[Packet]:
        """What the firmware does with one packet: the reply packets (often none)."""
        handler = {Port.LINK: self._link, Port.PLATFORM: self._platform, Port.SUPERVISOR: self._supervisor_port,
                   Port.MEM: self._mem, Port.LOG: self._log, Port.PARAM: self._param,
                   Port.COMMANDER: self._legacy_setpoint, Port.GENERIC_COMMANDER: self._generic_setpoint,
                   Port.HIGH_LEVEL: self._high_level, Port.LOCALIZATION: self._localization}.get(packet.port)
        return handler(packet, now_ms) if handler else []

    def _link(self, p: Packet, now_ms: int) -> list[Packet]:
        if p.channel == crtp.Link.ECHO:
            return [p]
        if p.channel == crtp.Link.SOURCE:
            return [crtp.link_source_reply()]
        if p.channel == 3:  # the null packet: answered, as the radio's empty ack (cflib's udp scan)
            return [Packet(Port.LINK, 3)]
        return []

    def _platform(self, p: Packet, now_ms: int) -> list[Packet]:
        if p.channel == crtp.Platform.VERSION_CHANNEL and p.data:
            if p.data[0] == crtp.Platform.GET_PROTOCOL_VERSION:
                return [crtp.protocol_version_reply()]
            text = {crtp.Platform.GET_FIRMWARE_VERSION: b"snn_controller-sim",
                    crtp.Platform.GET_DEVICE_TYPE_NAME: self.device_name.encode()}.get(p.data[0])
            return [Packet(p.port, p.channel, bytes(p.data[:1]) + text)] if text else []
        if p.channel == crtp.Platform.COMMAND_CHANNEL and p.data:
            command = p.data[0]
            if command == crtp.Platform.ARM_SYSTEM:  # deprecated, still served (platformservice.c)
                success = self.request_arming(bool(p.data[1])) if len(p.data) >= 2 else False
                return [Packet(p.port, p.channel, bytes((command, success, self.armed)))]
            if command == crtp.Platform.RECOVER_SYSTEM:
                success = self.request_crash_recovery()
                return [Packet(p.port, p.channel, bytes((command, success, not self.crashed)))]
            if command == crtp.Platform.USER_NOTIFICATION:
                return [Packet(p.port, p.channel)]
            return [p]
        return []

    def _supervisor_port(self, p: Packet, now_ms: int) -> list[Packet]:
        if not p.data:
            return []
        command, S = p.data[0], crtp.Supervisor
        if p.channel == S.INFO_CHANNEL:
            if command == S.GET_STATE_BITFIELD:
                return [crtp.supervisor_reply(S.INFO_CHANNEL, command, struct.pack("<H", self.info_bitfield))]
            if 1 <= command <= 11:
                return [crtp.supervisor_reply(S.INFO_CHANNEL, command, bytes(((self.info_bitfield >> (command - 1)) & 1,)))]
            return []
        if p.channel == S.COMMAND_CHANNEL:
            if command == S.EMERGENCY_STOP:
                self.emergency_stop = True
            elif command == S.EMERGENCY_STOP_WATCHDOG:
                self.emergency_watchdog_ms = now_ms
            elif command == S.ARM_SYSTEM and len(p.data) >= 2:
                success = self.request_arming(bool(p.data[1]))
                return [crtp.supervisor_reply(S.COMMAND_CHANNEL, command, bytes((success, self.armed)))]
            elif command == S.RECOVER_SYSTEM:
                success = self.request_crash_recovery()
                return [crtp.supervisor_reply(S.COMMAND_CHANNEL, command, bytes((success, not self.crashed)))]
        return []

    def _mem(self, p: Packet, now_ms: int) -> list[Packet]:
        if p.channel == crtp.Mem.INFO_CHANNEL and p.data and p.data[0] == crtp.Mem.INFO_NUMBER:
            return [Packet(Port.MEM, crtp.Mem.INFO_CHANNEL, bytes((crtp.Mem.INFO_NUMBER, 0)))]
        return []

    def _log(self, p: Packet, now_ms: int) -> list[Packet]:
        if not p.data:
            return []
        L = crtp.Log
        if p.channel == L.TOC_CHANNEL:
            if p.data[0] == crtp.Toc.GET_INFO_V2:
                return [crtp.toc_info_reply(Port.LOG, LOG_TOC, LOG_TOC_EXTRA)]
            if p.data[0] == crtp.Toc.GET_ITEM_V2 and len(p.data) >= 3:
                return [crtp.toc_item_reply(Port.LOG, LOG_TOC, struct.unpack_from("<H", p.data, 1)[0])]
            return []
        if p.channel != L.CONTROL_CHANNEL:
            return []
        command = p.data[0]
        block_id = p.data[1] if len(p.data) > 1 else 0
        if command == L.RESET:
            self.log_blocks.clear()
            return [crtp.log_control_reply(command, block_id, 0)]
        error = {L.CREATE_BLOCK_V2: self._create_block, L.APPEND_BLOCK_V2: self._append_block,
                 L.DELETE_BLOCK: self._delete_block, L.START_BLOCK: self._start_block,
                 L.START_BLOCK_V2: self._start_block, L.STOP_BLOCK: self._stop_block}.get(command)
        code = error(command, block_id, p.data[2:], now_ms) if error else errno.ENOEXEC
        return [crtp.log_control_reply(command, block_id, code)]

    def _create_block(self, command, block_id, payload, now_ms) -> int:
        if block_id in self.log_blocks:
            return errno.EEXIST
        if len(self.log_blocks) >= crtp.Log.MAX_BLOCKS:
            return errno.ENOMEM
        self.log_blocks[block_id] = LogBlock()
        return self._append_block(command, block_id, payload, now_ms)

    def _append_block(self, command, block_id, payload, now_ms) -> int:
        block = self.log_blocks.get(block_id)
        if block is None:
            return errno.ENOENT
        for log_type, toc_id in crtp.log_block_ops_v2(payload):
            sent_as = log_type & 0x0F
            if sent_as not in crtp.LOG_TYPES or toc_id == crtp.Log.MEMORY_VARIABLE:
                return errno.ENOENT  # raw memory is not served
            if block.length() + struct.calcsize(crtp.LOG_TYPES[sent_as][0]) > crtp.Log.MAX_LEN:
                return errno.E2BIG
            if sum(len(b.ops) for b in self.log_blocks.values()) >= crtp.Log.MAX_OPS:
                return errno.ENOMEM
            if not 0 <= toc_id < len(LOG_TOC):
                return errno.ENOENT
            block.ops.append((toc_id, sent_as))
        return 0

    def _delete_block(self, command, block_id, payload, now_ms) -> int:
        return 0 if self.log_blocks.pop(block_id, None) is not None else 2

    def _start_block(self, command, block_id, payload, now_ms) -> int:
        block = self.log_blocks.get(block_id)
        if block is None:
            return errno.ENOENT
        if command == crtp.Log.START_BLOCK:  # period in 10 ms units (legacy start)
            period = payload[0] * 10 if payload else 0
        else:
            period = struct.unpack_from("<H", payload)[0] if len(payload) >= 2 else 0
        block.period_ms, block.started, block.due_ms = period, period > 0, now_ms + period
        return 0

    def _stop_block(self, command, block_id, payload, now_ms) -> int:
        block = self.log_blocks.get(block_id)
        if block is None:
            return errno.ENOENT
        block.started = False
        return 0

    def log_packets(self, now_ms: int) -> list[Packet]:
        """The data of every started block whose period has come, stamped ``now_ms``."""
        due = [(block_id, block) for block_id, block in self.log_blocks.items()
               if block.started and now_ms >= block.due_ms]
        values = log_values(self) if due else {}
        out = []
        for block_id, block in due:
            block.due_ms = max(block.due_ms + block.period_ms, now_ms + 1)  # a late tick does not burst
            payload = b"".join(crtp.pack_value(t, values[LOG_TOC[k].full_name]) for k, t in block.ops)
            out.append(crtp.log_data(block_id, now_ms, payload))
        return out

    def _param(self, p: Packet, now_ms: int) -> list[Packet]:
        P = crtp.Param
        if p.channel == P.TOC_CHANNEL and p.data:
            if p.data[0] == crtp.Toc.GET_INFO_V2:
                return [crtp.toc_info_reply(Port.PARAM, PARAM_TOC)]
            if p.data[0] == crtp.Toc.GET_ITEM_V2 and len(p.data) >= 3:
                return [crtp.toc_item_reply(Port.PARAM, PARAM_TOC, struct.unpack_from("<H", p.data, 1)[0])]
            return []
        if len(p.data) < 2:
            return []
        index = struct.unpack_from("<H", p.data)[0]
        known = index < len(PARAM_TOC)
        if p.channel == P.READ_CHANNEL:  # [id, status 0, value] or [id, ENOENT]
            if not known:
                return [Packet(Port.PARAM, P.READ_CHANNEL, bytes(p.data[:2]) + bytes((errno.ENOENT,)))]
            e = PARAM_TOC[index]
            return [Packet(Port.PARAM, P.READ_CHANNEL, bytes(p.data[:2]) + b"\0"
                           + crtp.pack_value(e.type_code, self.params[e.full_name], crtp.PARAM_TYPES))]
        if p.channel == P.WRITE_CHANNEL:  # the packet echoed as the confirmation; read-only: no answer
            if not known:
                return [Packet(Port.PARAM, P.WRITE_CHANNEL, bytes(p.data[:2]) + bytes((P.NOT_FOUND,)))]
            e = PARAM_TOC[index]
            if e.type_code & crtp.PARAM_READ_ONLY:
                return []
            self.params[e.full_name] = crtp.unpack_value(e.type_code, p.data[2:])
            return [p]
        return []

    def _legacy_setpoint(self, p: Packet, now_ms: int) -> list[Packet]:
        """crtpCommanderRpytDecodeSetpoint (the althold / poshold / posSet flight modes are not served)."""
        if p.channel != 0 or len(p.data) < 14:
            return []
        v = crtp.decode_legacy_setpoint(p.data)
        if self.priority == PRIORITY_DISABLE:
            self.thrust_locked = True
        if v.thrust == 0:
            self.thrust_locked = False
        thrust = 0.0 if self.thrust_locked or v.thrust < 1000 else float(min(v.thrust, 60000))
        rate = {name: self.params[f"flightmode.stabMode{name}"] == 0 for name in ("Roll", "Pitch", "Yaw")}
        roll_mode = MODE_VELOCITY if rate["Roll"] else MODE_ABS
        pitch_mode = MODE_VELOCITY if rate["Pitch"] else MODE_ABS
        yaw_mode = MODE_VELOCITY if rate["Yaw"] else MODE_ABS
        attitude = (0.0 if rate["Roll"] else v.roll, 0.0 if rate["Pitch"] else v.pitch, 0.0 if rate["Yaw"] else v.yaw)
        attitude_rate = (v.roll if rate["Roll"] else 0.0, v.pitch if rate["Pitch"] else 0.0,
                         -v.yaw if rate["Yaw"] else 0.0)  # legacy rate input is inverted
        self.set_setpoint(Setpoint(mode_roll=roll_mode, mode_pitch=pitch_mode, mode_yaw=yaw_mode, attitude=attitude,
                                   attitude_rate=attitude_rate, thrust=thrust), PRIORITY_CRTP, now_ms)
        return []

    def _generic_setpoint(self, p: Packet, now_ms: int) -> list[Packet]:
        if p.channel == crtp.Generic.META_CHANNEL:
            if p.data and p.data[0] == crtp.Generic.NOTIFY_SETPOINT_STOP:
                self.relax_priority()
            return []
        if p.channel != crtp.Generic.SETPOINT_CHANNEL or not p.data:
            return []
        g = crtp.decode_generic_setpoint(p.data)
        a, b, c, d = g.values if g else (0.0,) * 4
        if g is None or g.kind == "stop":  # the decoder zeroes the setpoint: motors off
            setpoint = NULL_SETPOINT
        elif g.kind == "velocity_world":
            setpoint = Setpoint(mode_x=MODE_VELOCITY, mode_y=MODE_VELOCITY, mode_z=MODE_VELOCITY, mode_yaw=MODE_VELOCITY,
                                velocity=(a, b, c), attitude_rate=(0.0, 0.0, d))
        elif g.kind == "hover":
            setpoint = Setpoint(mode_x=MODE_VELOCITY, mode_y=MODE_VELOCITY, mode_z=MODE_ABS, mode_yaw=MODE_VELOCITY,
                                position=(0.0, 0.0, d), velocity=(a, b, 0.0), velocity_body=True,
                                attitude_rate=(0.0, 0.0, c))
        else:  # position
            setpoint = Setpoint(mode_x=MODE_ABS, mode_y=MODE_ABS, mode_z=MODE_ABS, mode_yaw=MODE_ABS, position=(a, b, c),
                                attitude=(0.0, 0.0, d))
        self.set_setpoint(setpoint, PRIORITY_CRTP, now_ms)
        return []

    def _high_level(self, p: Packet, now_ms: int) -> list[Packet]:
        if not p.data:
            return []
        cmd = crtp.decode_high_level(p.data)
        error = errno.ENOEXEC if cmd is None else self._high_level_command(cmd, now_ms / 1000.0)
        return [crtp.high_level_reply(p.data, error)]

    def _in_group(self, mask: int) -> bool:
        own = int(self.params["hlCommander.groupmask"])
        return mask == crtp.HighLevel.ALL_GROUPS or (mask & own) != 0

    def _high_level_command(self, cmd: crtp.HighLevelCommand, t: float) -> int:
        H = crtp.HighLevel
        if cmd.command == H.SET_GROUP_MASK:
            self.params["hlCommander.groupmask"] = cmd.group_mask
            return 0
        if cmd.command == H.STOP:
            if self._in_group(cmd.group_mask):
                self.planner.state = Planner.IDLE
            return 0
        if self.state not in CAN_FLY:
            return errno.EBUSY  # crtpCommanderBlock while the supervisor does not let it fly
        if not self._in_group(cmd.group_mask):
            return 0
        if cmd.command in (H.TAKEOFF_2, H.LAND_2):
            hover_yaw = self.hl_yaw if cmd.use_current_yaw else cmd.yaw
            plan = self.planner.takeoff if cmd.command == H.TAKEOFF_2 else self.planner.land
            return plan(self.hl_position, self.hl_yaw, cmd.height, hover_yaw, cmd.duration, t)
        # go_to / go_to_2: from the last setpoint when idle, else from the trajectory's current goal
        if self.planner.state in (Planner.IDLE, Planner.DISABLED):
            start = TrajectoryPoint(self.hl_position, self.hl_velocity, np.zeros(3), self.hl_yaw, 0.0)
        else:
            start = self.planner.current_goal(t) or TrajectoryPoint(self.hl_position, self.hl_velocity, np.zeros(3),
                                                                    self.hl_yaw, 0.0)
        return self.planner.go_to_from(start, cmd.relative, cmd.linear, cmd.position, cmd.yaw, cmd.duration, t)

    def _localization(self, p: Packet, now_ms: int) -> list[Packet]:
        L = crtp.Localization
        if p.channel == L.POSITION_CHANNEL and len(p.data) >= 12:
            self.extpos = np.array(crtp.decode_extpos(p.data))
            self.extpos_count += 1
        elif p.channel == L.GENERIC_CHANNEL and p.data:
            if p.data[0] == L.EMERGENCY_STOP:
                self.emergency_stop = True
            elif p.data[0] == L.EMERGENCY_STOP_WATCHDOG:
                self.emergency_watchdog_ms = now_ms
            elif p.data[0] == L.EXT_POSE and len(p.data) >= 29:
                position, quat = crtp.decode_extpose(p.data)
                self.extpos, self.extquat = np.array(position), np.array(quat)
                self.extpos_count += 1
        return []

    # --- commander (commander.c) --------------------------------------------------------------
    def set_setpoint(self, setpoint: Setpoint, priority: int, now_ms: int) -> None:
        """commanderSetSetpoint: taken at an equal or higher priority; above the high level's it stops
        the planner."""
        if priority >= self.priority:
            self.setpoint, self.priority = replace(setpoint, timestamp_ms=now_ms), priority
            if priority > PRIORITY_HIGHLEVEL:
                self.planner.state = Planner.IDLE

    def relax_priority(self) -> None:
        """commanderRelaxPriority: the planner starts from the current state; any source may command."""
        self.hl_position, self.hl_velocity = self.estimate["position"].copy(), self.estimate["velocity"].copy()
        self.hl_yaw = _yaw(self.estimate["quaternion"])
        self.priority = PRIORITY_HIGHLEVEL

    def request_arming(self, arm: bool) -> bool:
        """supervisorRequestArming: arming only from PreFlChecksPassed."""
        if arm == self.armed:
            return True
        if arm and self.state != State.PRE_FLIGHT_CHECKS_PASSED:
            return False
        self.armed = arm
        return True

    def request_crash_recovery(self) -> bool:
        if not self.crashed:
            return True
        if not self.tumbled:
            self.crashed = False
            return True
        return False

    # --- one stabilizer tick ------------------------------------------------------------------
    def setpoint_for_tick(self, now_ms: int) -> Setpoint:
        """The setpoint the controller flies this tick (``stabilizerTask`` up to the controller)."""
        # The supervisor first (the firmware updates it after the high-level setpoint, 1 ms before the
        # next one): a command that arrives after its state changed sees the new state, and the
        # planner starts from the estimate of this tick.
        if now_ms % SUPERVISOR_PERIOD_MS == 0:
            self._supervisor_update(now_ms)
        can_fly = self.state in CAN_FLY
        if can_fly:
            self._high_level_tick(now_ms)
        return self._override(self.setpoint if can_fly else NULL_SETPOINT)

    def _high_level_tick(self, now_ms: int) -> None:
        """crtpCommanderHighLevelGetSetpoint at priority 1: a trajectory point, or motors off when idle."""
        goal = self.planner.current_goal(now_ms / 1000.0)
        if self.planner.state in (Planner.IDLE, Planner.DISABLED) and goal is None:
            self.hl_position, self.hl_velocity = self.estimate["position"].copy(), self.estimate["velocity"].copy()
            self.hl_yaw = _yaw(self.estimate["quaternion"])
            if self.planner.state == Planner.IDLE:
                self.set_setpoint(NULL_SETPOINT, PRIORITY_HIGHLEVEL, now_ms)
            return
        self.hl_position, self.hl_velocity, self.hl_yaw = goal.position, goal.velocity, goal.yaw
        self.set_setpoint(Setpoint(mode_x=MODE_ABS, mode_y=MODE_ABS, mode_z=MODE_ABS, mode_yaw=MODE_ABS,
                                   position=tuple(goal.position), velocity=tuple(goal.velocity),
                                   acceleration=tuple(goal.acceleration),
                                   attitude=(0.0, 0.0, math.degrees(goal.yaw)),
                                   attitude_rate=(0.0, 0.0, math.degrees(goal.yaw_rate))), PRIORITY_HIGHLEVEL, now_ms)

    def _conditions(self, now_ms: int) -> int:
        c = Condition.ARMED if self.armed else 0
        c |= Condition.RPM_AT_ARMING_VALID  # no bidirectional DSHOT
        if self.motor_pwm.max() > (IDLE_THRUST_ARMED if self.require_arming else 0):
            self.latest_thrust_ms = now_ms
        if self.latest_thrust_ms is not None and now_ms - self.latest_thrust_ms < IS_FLYING_HYSTERESIS_MS:
            c |= Condition.IS_FLYING
        if self._tumble_check(now_ms):
            c |= Condition.IS_TUMBLED
        age = now_ms - self.setpoint.timestamp_ms
        c |= (Condition.WDT_WARNING if age > WDT_STABILIZE_MS else 0) | (Condition.WDT_TIMEOUT if age > WDT_SHUTDOWN_MS else 0)
        watchdog_expired = self.emergency_watchdog_ms is not None and now_ms >= self.emergency_watchdog_ms + EMERGENCY_WATCHDOG_MS
        if self.emergency_stop or watchdog_expired or self.params["stabilizer.stop"]:
            c |= Condition.EMERGENCY_STOP
        if self.crashed:
            c |= Condition.CRASHED
        if self.state == State.READY_TO_FLY and now_ms - self.armed_ms > PREFLIGHT_TIMEOUT_MS:
            c |= Condition.PREFLIGHT_TIMEOUT
        if self.landed_once and now_ms - self.landed_ms > LANDING_TIMEOUT_MS:
            c |= Condition.LANDING_TIMEOUT
        if self.state == State.ARMING and now_ms - self.arming_start_ms > SPINUP_TIMEOUT_MS:
            c |= Condition.SPINUP_TIMEOUT
        return c

    def _tumble_check(self, now_ms: int) -> bool:
        """isTumbledCheck on the accelerometer [g] (crash detection by G is off by default)."""
        acc = self.estimate["specific_force"]
        if np.all(np.abs(acc) < FREE_FALL_G):
            self.tumble_start_ms = None  # falling is fine
        if acc[2] < TUMBLE_TILT_ACC_Z:
            if self.tumble_start_ms is None:
                self.tumble_start_ms = now_ms
            tumbling = now_ms - self.tumble_start_ms
            return (acc[2] < TUMBLE_UPSIDE_DOWN_ACC_Z and tumbling > TUMBLE_UPSIDE_DOWN_MS) or tumbling > TUMBLE_TILT_MS
        self.tumble_start_ms = None
        return False

    def _supervisor_update(self, now_ms: int) -> None:
        conditions = self._conditions(now_ms)
        new = next_state(self.state, conditions)
        if new != self.state:
            previous, self.state = self.state, new
            self._post_transition(previous, now_ms)
        self.tumbled = bool(conditions & Condition.IS_TUMBLED)
        self._update_info(now_ms)

    def _post_transition(self, previous: State, now_ms: int) -> None:
        """postTransitionActions: timestamps, crash latch, disarm outside the flying states, auto-arm."""
        new = self.state
        if new == State.ARMING:
            self.arming_start_ms = now_ms
        if new == State.READY_TO_FLY:
            self.armed_ms = now_ms
        if new == State.LANDED:
            self.landed_ms, self.landed_once = now_ms, True
        if new == State.CRASHED:
            self.crashed = True
        if new not in MOTORS_ALLOWED:
            self.armed = False
        if not self.require_arming and new == State.PRE_FLIGHT_CHECKS_PASSED:
            self.armed = True

    def _update_info(self, now_ms: int) -> None:
        """updateLogData: supervisor.info bits (as cflib's Supervisor decodes them) and sys.*."""
        bits = [self.state == State.PRE_FLIGHT_CHECKS_PASSED, self.armed, not self.require_arming,
                self.state in CAN_FLY, self.state in (State.FLYING, State.WARNING_LEVEL_OUT), self.tumbled,
                self.state == State.LOCKED, self.crashed, self.planner.state & Planner.FLYING == Planner.FLYING,
                self.planner.is_finished(now_ms / 1000.0), self.planner.state == Planner.DISABLED]
        self.info_bitfield = sum(int(b) << k for k, b in enumerate(bits))

    def _override(self, setpoint: Setpoint) -> Setpoint:
        """supervisorOverrideSetpoint: level out in WarningLevelOut (Z as it is), null outside the
        states that let the motors run."""
        if self.state == State.WARNING_LEVEL_OUT:
            return replace(setpoint, mode_x=MODE_DISABLE, mode_y=MODE_DISABLE, mode_roll=MODE_ABS, mode_pitch=MODE_ABS,
                           mode_yaw=MODE_VELOCITY, attitude=(0.0, 0.0, setpoint.attitude[2]),
                           attitude_rate=(setpoint.attitude_rate[0], setpoint.attitude_rate[1], 0.0))
        if self.state not in MOTORS_ALLOWED:
            return NULL_SETPOINT
        return setpoint

    def motors_allowed(self) -> bool:
        return self.state in MOTORS_ALLOWED

    def battery_tick(self, now_ms: int, dt: float) -> None:
        """pm: drain with the mean PWM; lowPower after PM_LOW_DURATION_MS below pm.lowVoltage."""
        self.vbat -= BATTERY_DRAIN * float(self.motor_pwm.mean()) / 65535.0 * dt
        if self.vbat > self.params["pm.lowVoltage"]:
            self.battery_low_since_ms = None
        elif self.battery_low_since_ms is None:
            self.battery_low_since_ms = now_ms
        low = self.battery_low_since_ms is not None and now_ms - self.battery_low_since_ms > PM_LOW_DURATION_MS
        self.pm_state = PM_LOW_POWER if low else PM_BATTERY


def _yaw(q) -> float:
    """ZYX yaw [rad] of (w, x, y, z)."""
    w, x, y, z = q
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def euler_deg(q) -> tuple[float, float, float]:
    """Roll, pitch, yaw [deg] as the firmware logs them: ZYX angles with the pitch negated
    (``kalman_core.c``: ``.pitch = -pitch``, nose up positive)."""
    w, x, y, z = q
    roll = math.atan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = math.asin(max(-1.0, min(1.0, 2 * (w * y - x * z))))
    return math.degrees(roll), -math.degrees(pitch), math.degrees(_yaw(q))


def log_values(fw: Firmware) -> dict[str, float]:
    """Every log variable's value from the firmware's estimate, in the firmware's units and signs."""
    e = fw.estimate
    p, v, q = e["position"], e["velocity"], e["quaternion"]
    a_g = e["acceleration"] / 9.81  # stateEstimate.a*: world acceleration in g, gravity removed
    w_deg = np.degrees(e["angular_velocity"])  # gyro.*: body rates in deg/s (the IMU's axes = body axes)
    roll, pitch, yaw = euler_deg(q)
    s = fw.setpoint
    out = {}
    for k, axis in enumerate("xyz"):
        out[f"stateEstimate.{axis}"] = p[k]
        out[f"stateEstimate.v{axis}"] = v[k]
        out[f"stateEstimate.a{axis}"] = a_g[k]
        out[f"stateEstimate.q{axis}"] = q[k + 1]
        out[f"stateEstimateZ.{axis}"] = p[k] * 1000.0
        out[f"stateEstimateZ.v{axis}"] = v[k] * 1000.0
        out[f"stateEstimateZ.a{axis}"] = (a_g[k] + (1.0 if axis == "z" else 0.0)) * 9.81 * 1000.0
        out[f"gyro.{axis}"] = w_deg[k]
        out[f"acc.{axis}"] = e["specific_force"][k]
        out[f"ctrltarget.{axis}"] = s.position[k]
        out[f"ctrltarget.v{axis}"] = s.velocity[k]
        out[f"locSrv.{axis}"] = fw.extpos[k]
        out[f"locSrv.q{axis}"] = fw.extquat[k]
    out.update({"stateEstimate.qw": q[0], "stateEstimate.roll": roll, "stateEstimate.pitch": pitch,
                "stateEstimate.yaw": yaw, "locSrv.qw": fw.extquat[3], "ctrltarget.yaw": s.attitude[2],
                "stateEstimateZ.quat": crtp.quatcompress((q[1], q[2], q[3], q[0])),
                "stateEstimateZ.rateRoll": math.radians(w_deg[0]) * 1000.0,
                "stateEstimateZ.ratePitch": -math.radians(w_deg[1]) * 1000.0,  # -gyro.y
                "stateEstimateZ.rateYaw": math.radians(w_deg[2]) * 1000.0,
                "pm.vbat": fw.vbat, "pm.vbatMV": fw.vbat * 1000.0, "pm.state": fw.pm_state,
                "pm.batteryLevel": battery_level(fw.vbat), "supervisor.info": fw.info_bitfield,
                "sys.canfly": fw.state in CAN_FLY, "sys.isFlying": fw.state in (State.FLYING, State.WARNING_LEVEL_OUT),
                "sys.isTumbled": fw.tumbled})
    for k in range(4):
        out[f"motor.m{k + 1}"] = fw.motor_pwm[k]
    return out


# --- the drones: firmware + physics -------------------------------------------------------------
class SimulatedCrazyflies:
    """N simulated Crazyflies of one drone model, resting on the ground at ``initial_positions``
    (N, 3) [m] (z = 0: on the ground) with ``initial_yaws`` (N,) [rad].

    ``require_arming``: the firmware built with ``CONFIG_MOTORS_REQUIRE_ARMING`` (cf21bl, bolt): the
    motors stay off until an arming request; False: auto-arming (the cf2 default).
    Physics: the batched engine (float64, ground plane) behind the firmware's 500 Hz rate loop
    (:class:`~snn_controller.sim.firmware.RateControlledEngine`), one :meth:`step` = 10 ms.
    ``integrator``: ``euler`` (default) or ``rk4`` at the 2 ms rate-loop step; RK4 costs twice the
    CPU and differs by about 1 cm after 1 s of a 1 rad/s roll with yaw (measured).
    Not thread-safe: :class:`~.server.CrazyflieServer` serialises the calls.
    """

    def __init__(self, initial_positions, initial_yaws=None, drone: str = "cf21", require_arming: bool = True,
                 integrator: str = "euler"):
        positions = np.asarray(initial_positions, dtype=np.float64).reshape(-1, 3)
        n = len(positions)
        if n < 1:
            raise ValueError("simulate at least one Crazyflie")
        yaws = np.zeros(n) if initial_yaws is None else np.asarray(initial_yaws, dtype=np.float64).reshape(n)
        self.n, self.dt, self.require_arming = n, TICK_MS / 1000.0, require_arming
        self.model = load_drone(drone)
        self.robots = [RobotConfig(initial_position=tuple(p), initial_yaw=float(y)) for p, y in zip(positions, yaws)]
        self.engine = RateControlledEngine(
            lambda dt: BatchedEngine(self.model, n, dt=dt, dtype=torch.float64, ground=True, integrator=integrator),
            dt=self.dt)
        self.scaling = CtbrScaling()
        # the estimate is the true state: the gains' observer (it filters observation noise) is bypassed
        gains = replace(load_pid_gains(), observer_position_gain=1.0, observer_velocity_gain=1.0, observer_cross_gain=0.0)
        self.position_controller = PIDController(self.model, n, dt=self.dt, gains=gains, ctbr=self.scaling)
        self.firmwares = [Firmware(require_arming, device_name=self.model.name.upper()) for _ in range(n)]
        self.time_ms = 0
        self.attitude_integral = np.zeros((n, 2))  # roll, pitch [deg s]
        self.position_active = np.zeros(n, dtype=bool)
        self.yaw_target = np.zeros(n)  # rad: the position path's heading under a yaw-rate setpoint
        self.crash_reason = [""] * n  # the sim's crash rules (sim/supervisor.py) fired: see _observe
        self.axis_mode = np.zeros((n, 3), dtype=int)  # x, y, z mode of the last tick
        self.carrot = np.zeros((n, 3))  # m: the moving target of the axes in velocity mode
        self._reset_physics(list(range(n)))

    def _reset_physics(self, index: list[int]) -> None:
        state = initial_state([self.robots[i] for i in index])
        self.engine.reset(state, None if len(index) == self.n else index)
        self.position_controller.reset(np.isin(np.arange(self.n), index))
        self.attitude_integral[index] = 0.0
        self.position_active[index] = False
        self.axis_mode[index] = MODE_DISABLE
        for i in index:
            self.crash_reason[i] = ""
        self._observe(self.engine.state.as_numpy()["velocity"])  # no acceleration across a reset

    def reset(self, i: int) -> None:
        """Power-cycle drone ``i``: a fresh firmware (disarmed, unlocked, full battery, no log
        blocks) on the ground at its initial pose."""
        self.firmwares[i] = Firmware(self.require_arming, device_name=self.model.name.upper())
        self._reset_physics([i])

    def handle(self, i: int, packet: Packet) -> list[Packet]:
        return self.firmwares[i].handle(packet, self.time_ms)

    def log_packets(self, i: int) -> list[Packet]:
        return self.firmwares[i].log_packets(self.time_ms)

    def set_battery(self, i: int, volts: float) -> None:
        """Test hook: the battery's voltage [V] now (it drains on from there)."""
        self.firmwares[i].vbat = float(volts)

    def step(self) -> None:
        """One stabilizer tick: every firmware picks its setpoint, the controllers and 5 rate-loop
        ticks of physics run, the estimates and batteries are updated; 10 ms later."""
        setpoints = [fw.setpoint_for_tick(self.time_ms) for fw in self.firmwares]
        ctbr = self._control(setpoints)
        previous_velocity = self._velocity
        self.engine.step(torch.as_tensor(ctbr))
        self.time_ms += TICK_MS
        self._observe(previous_velocity)
        for fw in self.firmwares:
            fw.battery_tick(self.time_ms, self.dt)

    def _control(self, setpoints: list[Setpoint]) -> np.ndarray:
        """The CTBR setpoint (N, 4) [thrust PWM ratio, p, q, r (rad/s)] for the rate loop."""
        s = self.engine.state.as_numpy()
        pos, vel, quat, omega = s["position"], s["velocity"], s["quaternion"], s["angular_velocity"]
        rot = quat_to_matrix(quat)
        n = self.n
        position_error, target_velocity = np.zeros((n, 3)), vel.copy()
        target_yaw = np.zeros(n)
        xy_controlled = np.array([sp.mode_x != MODE_DISABLE for sp in setpoints])
        z_controlled = np.array([sp.mode_z != MODE_DISABLE for sp in setpoints])
        for i, sp in enumerate(setpoints):
            yaw = _yaw(quat[i])
            wanted = np.array(sp.velocity, dtype=np.float64)
            if sp.velocity_body:  # hover: x, y velocity in the yaw frame
                c, si = math.cos(yaw), math.sin(yaw)
                wanted[:2] = (c * wanted[0] - si * wanted[1], si * wanted[0] + c * wanted[1])
            for k, mode in enumerate((sp.mode_x, sp.mode_y, sp.mode_z)):
                if mode == MODE_VELOCITY:  # a target moving at the wanted velocity, from where the mode began
                    previous = self.carrot[i, k] if self.axis_mode[i, k] == MODE_VELOCITY else pos[i, k]
                    self.carrot[i, k] = previous + wanted[k] * self.dt
                    position_error[i, k] = pos[i, k] - self.carrot[i, k]
                elif mode == MODE_ABS:
                    position_error[i, k] = pos[i, k] - sp.position[k]
                if mode != MODE_DISABLE:
                    target_velocity[i, k] = wanted[k]
                self.axis_mode[i, k] = mode
            if sp.mode_yaw == MODE_ABS:
                self.yaw_target[i] = math.radians(sp.attitude[2])
            elif sp.mode_yaw == MODE_VELOCITY and self.position_active[i]:
                self.yaw_target[i] += math.radians(sp.attitude_rate[2]) * self.dt
            else:
                self.yaw_target[i] = yaw
            target_yaw[i] = self.yaw_target[i]
        active = xy_controlled | z_controlled
        self.position_controller.reset(active & ~self.position_active)  # fresh integrators on entry
        self.position_active = active
        observation = Observation(actor=assemble(np.zeros((n, OBS_DIM)), position_error, rot, vel, omega),
                                  target_yaw=target_yaw)
        u = self.position_controller(observation, target_velocity=target_velocity,
                                     target_acceleration=np.array([sp.acceleration for sp in setpoints]))
        from_position = self.scaling.setpoint(u)

        ctbr = np.zeros((n, 4))
        controller = self.engine.controller
        for i, sp in enumerate(setpoints):
            thrust = from_position[i, 0] if z_controlled[i] else sp.thrust / 65535.0
            if xy_controlled[i]:
                ctbr[i] = (thrust, *from_position[i, 1:])
                continue
            roll, pitch, _ = euler_deg(quat[i])
            rates = [0.0, 0.0]  # firmware signs, deg/s
            for k, (mode, angle) in enumerate(((sp.mode_roll, roll), (sp.mode_pitch, pitch))):
                if mode == MODE_VELOCITY:
                    rates[k] = sp.attitude_rate[k]
                elif mode == MODE_ABS:  # attitude PID (pidUpdate, kd 0): rate = kp e + ki integral(e)
                    error = sp.attitude[k] - angle
                    self.attitude_integral[i, k] = np.clip(self.attitude_integral[i, k] + error * self.dt,
                                                           -ATTITUDE_ILIMIT, ATTITUDE_ILIMIT)
                    rates[k] = ATTITUDE_KP * error + ATTITUDE_KI * self.attitude_integral[i, k]
            yaw_rate = 0.0
            if sp.mode_yaw == MODE_VELOCITY:
                yaw_rate = sp.attitude_rate[2]
            elif sp.mode_yaw == MODE_ABS:  # controllerPid: attitudeDesired.yaw = setpoint yaw
                controller.yaw_setpoint[i] = ((sp.attitude[2] + 180.0) % 360.0) - 180.0
            if thrust == 0.0:  # controllerPid resets its PIDs with the thrust off
                self.attitude_integral[i] = 0.0
            # to our body rates: pitch rate = -q (controller_pid.c)
            ctbr[i] = (thrust, math.radians(rates[0]), -math.radians(rates[1]), math.radians(yaw_rate))
        allowed = np.array([fw.motors_allowed() for fw in self.firmwares])
        ctbr[~allowed, 0] = 0.0  # supervisorAreMotorsAllowedToRun, else motorsStop
        idle = IDLE_THRUST_ARMED if self.require_arming else 0.0  # powerDistributionGetIdleThrust
        controller.idle_thrust = torch.as_tensor(np.where(allowed, idle, 0.0), dtype=controller.dtype)
        return ctbr

    def _observe(self, previous_velocity: np.ndarray) -> None:
        """The estimate of every firmware from the true state; runaway drones are put down.

        The batched engine's ground levels a drone on contact, so it never lies tipped over. A drone
        that crashed by the project's crash rules (a hard or tilted ground contact, tilting past 90
        degrees: ``sim/supervisor.py``) is taken to lie on its side from then on until :meth:`reset`
        (picked up): its accelerometer reads 1 g along body x, and the firmware's tumble check finds it."""
        s = self.engine.state.as_numpy()
        on_ground = s["position"][:, 2] <= GROUND_CLEARANCE + 1e-4
        reasons, runaway = crash_reasons(previous_velocity, s["position"], s["velocity"], s["quaternion"], on_ground,
                                         CrashLimits())
        for i, reason in enumerate(reasons):
            if reason and not self.crash_reason[i]:
                self.crash_reason[i] = reason
        if runaway.any():  # never report a non-finite or runaway state: rest on the ground, crashed
            index = list(np.flatnonzero(runaway))
            self.engine.reset(initial_state([self.robots[i] for i in index]), index)
            for i in index:
                self.firmwares[i].crashed = True
            s = self.engine.state.as_numpy()
            previous_velocity = np.where(runaway[:, None], 0.0, previous_velocity)
        acceleration = (s["velocity"] - previous_velocity) / self.dt
        rot = quat_to_matrix(s["quaternion"])
        gravity = np.array([0.0, 0.0, self.model.gravity])
        specific_force = np.einsum("nji,nj->ni", rot, acceleration + gravity) / self.model.gravity
        specific_force[[bool(r) for r in self.crash_reason]] = (1.0, 0.0, 0.0)  # lying on its side
        pwm = self.engine.last_pwm.numpy()
        self._velocity = s["velocity"]
        for i, fw in enumerate(self.firmwares):
            fw.estimate = {"position": s["position"][i], "velocity": s["velocity"][i],
                           "quaternion": s["quaternion"][i], "angular_velocity": s["angular_velocity"][i],
                           "acceleration": acceleration[i], "specific_force": specific_force[i]}
            fw.motor_pwm = pwm[i] if fw.motors_allowed() else np.zeros(4)

    def states(self) -> list[dict]:
        """Ground truth per drone: position, quaternion (w, x, y, z), velocity (world), angular
        velocity (body, rad/s), rotor speeds (normalised), motor PWM, and the firmware's view:
        supervisor state name, armed, locked, crashed, battery [V], pm state, extpos (last received)."""
        s = self.engine.state.as_numpy()
        out = []
        for i, fw in enumerate(self.firmwares):
            out.append({key: s[key][i].copy() for key in ("position", "quaternion", "velocity", "angular_velocity",
                                                          "rotor_speed")}
                       | {"motor_pwm": fw.motor_pwm.copy(), "supervisor": fw.state.name, "armed": fw.armed,
                          "locked": fw.state == State.LOCKED, "crashed": fw.crashed, "vbat": fw.vbat,
                          "pm_state": fw.pm_state, "extpos": fw.extpos.copy(), "extpos_count": fw.extpos_count,
                          "crash_reason": self.crash_reason[i], "time": self.time_ms / 1000.0})
        return out
