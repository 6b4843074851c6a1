"""The cflib side of crazyflie_bridge: one real (or simulated) Crazyflie over radio://, usb:// or udp://.

What goes over the link and why:

- Telemetry, two log blocks. The state at 100 Hz in the firmware's compact ``stateEstimateZ`` group
  (stabilizer.c, 22 bytes: one packet): int16 position in mm and velocity in mm/s (world frame, as the
  estimator keeps them), the quaternion compressed to 32 bits (quatcompress.h: the index of the
  largest component, sent positive, then the other three as a sign and 9 bits each; cflib's
  ``decompress_quaternion`` is the firmware's quatdecompress) and int16 body rates in mrad/s
  with the firmware's signs (rateRoll = gyro.x, ratePitch = -gyro.y, rateYaw = gyro.z).
  :func:`decode_state` turns that into what sim_bridge publishes: position, quaternion (w, x, y, z),
  world and body velocity (m/s), body rates p, q, r (rad/s, x forward, y left, z up). A slow block at
  10 Hz: pm.vbat (V), pm.state (PMStates) and supervisor.info (the supervisor's bit field).
- Rate-mode setpoints: on connecting the link sets flightmode.stabModeRoll, stabModePitch and
  stabModeYaw to 0 (RATE) and reports the link ready only once the drone has read back all three as 0:
  a rate setpoint taken as an attitude would be degrees of tilt. Then :func:`rate_setpoint` gives
  cflib's ``commander.send_setpoint(roll, pitch, yawrate, thrust)`` from [thrust (PWM ratio), p, q, r]:
  cflib sends (roll, -pitch, yawrate) and the firmware's rpyt decoder takes rate roll = roll, rate
  pitch = -pitch (its pitch rate is nose up, -q) and yaw rate = -yawrate (crtp_commander_rpyt.c: the
  legacy yaw input is inverted), so roll = deg(p), pitch = deg(q), yawrate = -deg(r); thrust is the
  uint16 PWM value round(65535 x ratio). The firmware keeps the thrust locked until a setpoint with
  thrust 0 arrives, so the first rate setpoint after arming is preceded by one.
- Hover: ``commander.send_position_setpoint`` (m, world; yaw in degrees). The high-level commander:
  takeoff, land (to an absolute height, at the current yaw), go_to; any streamed setpoint outranks it,
  so a high-level command after streaming is preceded by ``commander.send_notify_setpoint_stop``.
  Motors stop: ``commander.send_stop_setpoint``. Arming and the emergency stop through cflib's
  supervisor (``supervisor.send_arming_request``, ``send_emergency_stop``; cflib falls back to the
  platform and localization ports, as ``platform.send_arming_request`` and ``loc.send_emergency_stop``
  do, on firmware older than CRTP protocol 12). External pose (motion capture): ``extpos.send_extpose``.
- Link health: cflib's connection_lost / connection_failed callbacks, its link quality (radio only: the
  share of acknowledged packets), and for links without it the share of the 100 Hz state log that
  arrived over the last second. A lost link is opened again every ``retry`` seconds.

cflib calls back from its own threads: ``on_state``, ``on_battery`` and ``on_link`` run there, and the
caller hands their data to its own thread. Sending is thread-safe (cflib locks its link).
"""

from __future__ import annotations

import collections
import math
import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from ..sim.rotations import quat_to_matrix
from .safety import Action, Send

STATE_VARIABLES = (  # stateEstimateZ, in this order, with the types the firmware logs them as
    ("x", "int16_t"), ("y", "int16_t"), ("z", "int16_t"), ("vx", "int16_t"), ("vy", "int16_t"), ("vz", "int16_t"),
    ("quat", "uint32_t"), ("rateRoll", "int16_t"), ("ratePitch", "int16_t"), ("rateYaw", "int16_t"))
SLOW_VARIABLES = (("pm.vbat", "float"), ("pm.state", "int8_t"), ("supervisor.info", "uint16_t"))
RATE_MODE_PARAMS = ("flightmode.stabModeRoll", "flightmode.stabModePitch", "flightmode.stabModeYaw")
PWM_MAX = 65535


def decode_state(data: dict) -> dict[str, np.ndarray]:
    """A stateEstimateZ sample (``{'stateEstimateZ.x': ..}`` as cflib gives it) -> position (m, world),
    quaternion (w, x, y, z, body -> world), velocity_world and velocity_body (m/s), angular_velocity_body
    (p, q, r in rad/s about x forward, y left, z up): the keys conversions.odometry_msg reads."""
    from cflib.utils.encoding import decompress_quaternion  # quatcompress.h's quatdecompress, in x, y, z, w

    v = {name: data[f"stateEstimateZ.{name}"] for name, _ in STATE_VARIABLES}
    qx, qy, qz, qw = decompress_quaternion(int(v["quat"]))
    quaternion = np.array([qw, qx, qy, qz])
    velocity_world = np.array([v["vx"], v["vy"], v["vz"]], dtype=float) / 1000.0
    return {
        "position": np.array([v["x"], v["y"], v["z"]], dtype=float) / 1000.0,
        "quaternion": quaternion,
        "velocity_world": velocity_world,
        "velocity_body": quat_to_matrix(quaternion).T @ velocity_world,
        # stabilizer.c logs (gyro.x, -gyro.y, gyro.z): the pitch rate comes nose-up positive
        "angular_velocity_body": np.array([v["rateRoll"], -v["ratePitch"], v["rateYaw"]], dtype=float) / 1000.0,
    }


def rate_setpoint(thrust: float, p: float, q: float, r: float) -> tuple[float, float, float, int]:
    """[thrust (PWM ratio 0..1), p, q, r (rad/s)] -> cflib's send_setpoint(roll, pitch, yawrate, thrust)
    arguments in rate mode: deg/s with cflib's and the firmware's signs, and the uint16 thrust."""
    pwm = int(min(max(round(thrust * PWM_MAX), 0), PWM_MAX))
    return math.degrees(p), math.degrees(q), -math.degrees(r), pwm


_drivers = threading.Lock()


def _init_drivers() -> None:
    """cflib's driver table, once per process (each init_drivers call appends the drivers again)."""
    import cflib.crtp

    with _drivers:
        if not cflib.crtp.CLASSES:
            cflib.crtp.init_drivers()


@dataclass(frozen=True)
class StateSample:
    time: float  # s, the link's clock at arrival
    drone_ms: int  # the drone's log timestamp (ms since its boot)
    arrays: dict  # decode_state's


class LogClock:
    """Odometry stamps on the drone's own clock, aligned to a grid of the log period.

    A state's stamp is its log timestamp (the firmware's ms since boot, a multiple of the period) plus
    one offset to the caller's clock (crazyflie_bridge's), the offset a whole number of periods: so the
    stamps of every drone fall on one grid of ``period_ms`` as sim_bridge's steps do (the flight log and
    its replay read them as steps), each says when the drone measured the state (radio jitter does not
    move it), and two states never share one. A state cannot arrive before it was measured, so the
    offset is the arrival - log time rounded down, and over the first ``settle`` states (and again after
    the drone's clock went back: a reboot, the 24-bit wrap) the smallest seen: a late first state does
    not leave the stamps ahead of the clock. After that the stamps only move forward, by a new offset
    when the arrivals lag them by more than ``resync_ms`` (the clocks drift apart): a stamp going back
    would reset the controllers."""

    def __init__(self, period_ms: int, settle: int = 100, resync_ms: float = 200.0):
        self.period_ns, self.settle, self.resync_ns = int(period_ms) * 1_000_000, settle, resync_ms * 1e6
        self.offset_ns = self.last_ns = None
        self.settling = 0  # states left in which the offset may still go down

    def stamp_ns(self, drone_ms: int, arrival_ns: int) -> int:
        drone_ns = int(drone_ms) * 1_000_000
        offset = (arrival_ns - drone_ns) // self.period_ns * self.period_ns  # never after the arrival
        if self.offset_ns is None or self.offset_ns + drone_ns <= self.last_ns:  # the first state, a reboot
            self.offset_ns, self.settling = offset, self.settle
        elif (self.settling and offset < self.offset_ns) or \
                arrival_ns - (self.offset_ns + drone_ns) > self.resync_ns:
            self.offset_ns = offset
        self.settling = max(self.settling - 1, 0)
        self.last_ns = self.offset_ns + drone_ns
        return self.last_ns


class CrazyflieLink:
    """One Crazyflie over cflib (module docstring). ``open()`` starts connecting and returns; ``ready``
    says when rate setpoints may be sent; ``send(action)`` executes a safety.Action."""

    def __init__(self, uri: str, on_state=None, on_battery=None, on_link=None, state_period_ms: int = 10,
                 slow_period_ms: int = 100, retry: float = 1.0, toc_cache: str = "", clock=time.monotonic):
        from cflib.crazyflie import Crazyflie

        _init_drivers()
        self.uri, self.clock, self.retry = uri, clock, retry
        self.state_period_ms, self.slow_period_ms = state_period_ms, slow_period_ms
        self.on_state, self.on_battery, self.on_link = on_state, on_battery, on_link
        cache = os.path.expanduser(toc_cache) if toc_cache else None
        if cache:
            try:
                os.makedirs(cache, exist_ok=True)
            except OSError:  # a read-only home: connect without the cache (slower over the radio), not fail
                cache = None
        self.cf = Crazyflie(rw_cache=cache)  # the log and param tables by CRC: reconnects take no download
        self.connected = False  # cflib's fully_connected, and not lost since
        self.connecting_since = None
        self.rate_mode = {}  # param -> read back as 0
        self.radio_quality = None  # (time, percent) from cflib's link statistics (radio only)
        self.arrivals = collections.deque()  # state arrival times over the last second
        self.streaming = False  # a streamed setpoint holds the commander: high-level needs a notify first
        self.thrust_unlocked = False
        self.last_error = ""
        self._lock = threading.Lock()
        self.cf.fully_connected.add_callback(self._on_connected)
        self.cf.connection_failed.add_callback(lambda uri, why: self._on_down(f"connection failed: {why}"))
        self.cf.connection_lost.add_callback(lambda uri, why: self._on_down(f"connection lost: {why}"))
        self.cf.disconnected.add_callback(lambda uri: self._on_down("disconnected"))
        self.cf.link_statistics.link_quality_updated.add_callback(self._on_quality)
        for name in RATE_MODE_PARAMS:
            group, _, short = name.partition(".")
            self.cf.param.add_update_callback(group=group, name=short, cb=self._on_param)

    # --- connection ------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Connected, logging, and rate mode read back from the drone."""
        return self.connected and len(self.rate_mode) == len(RATE_MODE_PARAMS) and all(self.rate_mode.values())

    def open(self) -> None:
        with self._lock:
            self.connecting_since = self.clock()
        self.cf.open_link(self.uri)

    def poll(self, now: float) -> None:
        """Open the link again when it is down and ``retry`` s have passed since the last attempt."""
        with self._lock:
            due = not self.connected and (self.connecting_since is None or now - self.connecting_since > self.retry)
            attempt = due and self.cf.link is None
        if attempt:
            self.open()

    def close(self) -> None:
        """Close the link (cflib sends a zero setpoint first: land before closing); no callbacks after."""
        self.on_state = self.on_battery = self.on_link = None
        self.cf.close_link()

    def _on_connected(self, uri) -> None:
        from cflib.crazyflie.log import LogConfig

        self.cf.log.reset()  # the blocks of a previous connection, on both sides
        state = LogConfig("snn_state", self.state_period_ms)
        for name, kind in STATE_VARIABLES:
            state.add_variable(f"stateEstimateZ.{name}", kind)
        slow = LogConfig("snn_slow", self.slow_period_ms)
        for name, kind in SLOW_VARIABLES:
            if self.cf.log.toc.get_element_by_complete_name(name) is not None:  # supervisor.info: 2023 firmware on
                slow.add_variable(name, kind)
        state.data_received_cb.add_callback(self._on_state_log)
        slow.data_received_cb.add_callback(self._on_slow_log)
        for block in (state, slow):
            self.cf.log.add_config(block)
            block.start()
        with self._lock:
            self.rate_mode = {name: False for name in RATE_MODE_PARAMS}
            self.streaming, self.thrust_unlocked = False, False
            self.connected, self.connecting_since = True, None
        for name in RATE_MODE_PARAMS:
            self.cf.param.set_value(name, 0)
        self._report(True, "connected, waiting for the rate mode to be read back")

    def _on_param(self, name: str, value: str) -> None:
        with self._lock:
            if name in self.rate_mode:
                self.rate_mode[name] = int(float(value)) == 0
        if self.ready:
            self._report(True, "rate mode confirmed")

    def _on_down(self, why: str) -> None:
        with self._lock:
            was_connected = self.connected
            self.connected = False
            self.connecting_since = self.clock()  # retry after self.retry
            self.last_error = why
        if was_connected or "failed" in why:
            self._report(False, why)

    def _report(self, up: bool, why: str) -> None:
        if self.on_link is not None:
            self.on_link(up and self.ready, why)

    # --- telemetry -------------------------------------------------------------------------------------
    def _on_state_log(self, timestamp_ms, data, block) -> None:
        now = self.clock()
        with self._lock:
            self.arrivals.append(now)
            while self.arrivals and now - self.arrivals[0] > 1.0:
                self.arrivals.popleft()
        if self.on_state is not None:
            self.on_state(StateSample(now, int(timestamp_ms), decode_state(data)))

    def _on_slow_log(self, timestamp_ms, data, block) -> None:
        if self.on_battery is not None:
            self.on_battery(float(data["pm.vbat"]), int(data["pm.state"]), data.get("supervisor.info"))

    def _on_quality(self, percent) -> None:
        with self._lock:
            self.radio_quality = (self.clock(), float(percent))

    def quality(self, now: float) -> float:
        """Link quality in percent: cflib's (radio), else the share of the state log received over 1 s."""
        with self._lock:
            if self.radio_quality is not None and now - self.radio_quality[0] < 2.0:
                return self.radio_quality[1]
            while self.arrivals and now - self.arrivals[0] > 1.0:
                self.arrivals.popleft()
            return min(100.0, 100.0 * len(self.arrivals) * self.state_period_ms / 1000.0)

    # --- sending ---------------------------------------------------------------------------------------
    def send(self, action: Action) -> None:
        """Execute one safety.Action on the drone (nothing when the link is down)."""
        if not self.connected:
            return
        commander, hl = self.cf.commander, self.cf.high_level_commander
        v = action.values
        if action.send == Send.RATE:
            if not self.thrust_unlocked:  # the rpyt commander's thrust lock opens on a thrust-0 setpoint
                commander.send_setpoint(0.0, 0.0, 0.0, 0)
                self.thrust_unlocked = True
            commander.send_setpoint(*rate_setpoint(*v))
            self.streaming = True
        elif action.send == Send.HOVER:
            commander.send_position_setpoint(v[0], v[1], v[2], math.degrees(v[3]))
            self.streaming = True
        elif action.send in (Send.TAKEOFF, Send.LAND, Send.GO_TO):
            if self.streaming:  # hand the commander back to the high-level planner
                commander.send_notify_setpoint_stop()
                self.streaming = False
            if action.send == Send.TAKEOFF:
                hl.takeoff(v[0], v[1], yaw=None)
            elif action.send == Send.LAND:
                hl.land(v[0], v[1], yaw=None)
            else:
                hl.go_to(v[0], v[1], v[2], v[3], v[4])
        elif action.send == Send.STOP:
            commander.send_stop_setpoint()
            self.streaming = True
        elif action.send == Send.ARM:
            self.cf.supervisor.send_arming_request(True)
            self.thrust_unlocked = False
        elif action.send == Send.DISARM:
            self.cf.supervisor.send_arming_request(False)
        elif action.send == Send.EMERGENCY_STOP:
            self.cf.supervisor.send_emergency_stop()
            commander.send_stop_setpoint()  # a second way to the motors, should the first packet be lost
            self.streaming = True
        else:
            raise ValueError(f"unknown action {action}")

    def send_extpose(self, position, quaternion_wxyz) -> None:
        """An external pose (m, world; unit quaternion w, x, y, z) for the drone's estimator."""
        if self.connected:
            w, x, y, z = (float(c) for c in quaternion_wxyz)
            self.cf.extpos.send_extpose(*(float(c) for c in position), x, y, z, w)
