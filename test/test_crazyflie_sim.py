"""The simulated Crazyflie through the real cflib on udp://: connection, TOC cache, params, log,
rate mode, the high-level commander, setpoint priorities, arming, emergency stop, the commander
watchdog, extpos and the battery. Deadlines are in simulated time (the firmware's clock) with
generous wall-clock bounds, so a slow machine runs the same flight more slowly, never differently."""

import errno
import math
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

cflib_crtp = pytest.importorskip("cflib.crtp")
from cflib.crazyflie import Crazyflie  # noqa: E402
from cflib.crazyflie.log import LogConfig  # noqa: E402
from cflib.crazyflie.syncCrazyflie import SyncCrazyflie  # noqa: E402

from snn_controller.crazyflie import crtp  # noqa: E402
from snn_controller.crazyflie.server import CrazyflieServer  # noqa: E402
from snn_controller.crazyflie.simulated import (IDLE_THRUST_ARMED, Firmware, Planner,  # noqa: E402
                                                SimulatedCrazyflies, TrajectoryPoint, log_values)

WALL_LIMIT = 60.0  # s: no single wait in these tests may take longer, however slow the machine

cflib_crtp.init_drivers()


@pytest.fixture
def server():
    with CrazyflieServer(drones=1, base_port=0, initial_positions=[(0.2, -0.1, 0.0)]) as srv:
        yield srv


def truth(srv):
    return srv.states()["cf1"]


def sim_time(srv):
    return truth(srv)["time"]


def wait_until(srv, predicate, sim_seconds, what, send=lambda: None):
    """Wait until ``predicate()`` holds, at most ``sim_seconds`` of simulated time, calling ``send()``
    every 10 ms of wall time meanwhile."""
    end, wall_end = sim_time(srv) + sim_seconds, time.monotonic() + WALL_LIMIT
    while not predicate():
        if sim_time(srv) > end or time.monotonic() > wall_end:
            raise AssertionError(f"not within {sim_seconds} s: {what}; drone: {truth(srv)}")
        send()
        time.sleep(0.01)


def stream(srv, send, sim_seconds):
    """Call ``send()`` every 10 ms of wall time for ``sim_seconds`` of simulated time."""
    end, wall_end = sim_time(srv) + sim_seconds, time.monotonic() + WALL_LIMIT
    while sim_time(srv) < end and time.monotonic() < wall_end:
        send()
        time.sleep(0.01)


def sleep_sim(srv, sim_seconds):
    stream(srv, lambda: None, sim_seconds)


def connect(srv, **cf_options):
    return SyncCrazyflie(srv.uris[0], cf=Crazyflie(**cf_options))


def arm(srv, cf):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cf.platform.send_arming_request(True)  # deprecated: cflib sends it on the supervisor port (protocol >= 12)
    wait_until(srv, lambda: truth(srv)["supervisor"] == "READY_TO_FLY", 1.0, "armed")


class Recorder:
    """A started log block that keeps every entry (timestamp, values)."""

    def __init__(self, cf, names, period_ms=10):
        self.entries, self._lock = [], threading.Lock()
        self.config = LogConfig("test", period_ms)
        for name in names:
            self.config.add_variable(name)
        cf.log.add_config(self.config)
        self.config.data_received_cb.add_callback(self._received)
        self.config.start()

    def _received(self, timestamp, data, config):
        with self._lock:
            self.entries.append((timestamp, dict(data)))

    def last(self):
        with self._lock:
            return self.entries[-1] if self.entries else (None, {})

    def since(self, count):
        with self._lock:
            return self.entries[count:]


# --- connection, TOCs, params --------------------------------------------------------------------
def test_connect_reconnect_from_the_toc_cache_and_read_write_params(server, tmp_path):
    item_requests = []
    handle = server.sim.handle

    def counting(i, packet):
        if packet.port in (crtp.Port.LOG, crtp.Port.PARAM) and packet.channel == 0 and packet.data[:1] == b"\x02":
            item_requests.append(packet.port)
        return handle(i, packet)

    server.sim.handle = counting
    with connect(server, rw_cache=str(tmp_path)) as scf:
        cf = scf.cf
        assert cf.platform.get_protocol_version() == crtp.PROTOCOL_VERSION
        for name in ("stateEstimate.qw", "stateEstimateZ.quat", "stateEstimateZ.ratePitch", "gyro.z", "pm.vbat",
                     "pm.state", "pm.batteryLevel", "supervisor.info", "locSrv.x"):
            assert cf.log.toc.get_element_by_complete_name(name) is not None, name
        assert cf.param.get_value("flightmode.stabModeRoll") == "1"  # the firmware's default: angle
        assert cf.param.get_value("pm.lowVoltage") == str(np.float32(3.2).item())
        first = len(item_requests)
        assert first == sum(len(group) for toc in (cf.log.toc, cf.param.toc) for group in toc.toc.values())

        confirmed = threading.Event()
        cf.param.add_update_callback(group="flightmode", name="stabModeRoll",
                                     cb=lambda name, value: value == "0" and confirmed.set())
        cf.param.set_value("flightmode.stabModeRoll", 0)
        assert confirmed.wait(10), "set_value got no confirmation"
        assert server.sim.firmwares[0].params["flightmode.stabModeRoll"] == 0
        cf.param.set_value("hlCommander.groupmask", 5)
        cf.param.request_param_update("hlCommander.groupmask")
        wait_until(server, lambda: cf.param.values["hlCommander"]["groupmask"] == "5", 2.0, "param read back")
        with pytest.raises(KeyError):
            cf.param.set_value("flightmode.noSuchParam", 1)
    assert len(list(tmp_path.glob("*.json"))) == 2  # the log and the param TOC, by CRC

    with connect(server, rw_cache=str(tmp_path)) as scf:
        assert len(item_requests) == first, "the second connection fetched TOC items instead of using the cache"
        assert scf.cf.log.toc.get_element_by_complete_name("stateEstimate.x") is not None
        assert scf.cf.param.get_value("flightmode.stabModeRoll") == "0"  # the drone kept it


def test_null_packet_is_answered_and_the_server_stops_cleanly():
    threads = threading.active_count()
    srv = CrazyflieServer(drones=2, base_port=0).start()
    port = srv.ports[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # cflib's udp scan probe
        probe.settimeout(5.0)
        probe.sendto(bytes((crtp.NULL_HEADER,)), ("127.0.0.1", port))
        assert probe.recv(64)[:1] == bytes((crtp.NULL_HEADER,))
        truncated = crtp.Packet(crtp.Port.PARAM, crtp.Param.WRITE_CHANNEL, b"\x00\x00")  # a write without its value
        probe.sendto(truncated.encode(), ("127.0.0.1", port))
        echo = crtp.Packet(crtp.Port.LINK, crtp.Link.ECHO, b"still here")
        probe.sendto(echo.encode(), ("127.0.0.1", port))
        assert crtp.decode(probe.recv(64)) == echo
    srv.stop()
    assert threading.active_count() == threads
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", port))  # the port was released


def test_a_fleet_file_gives_names_start_positions_and_ports():
    with pytest.raises(ValueError, match="radio://"):
        CrazyflieServer.from_fleet(Path(__file__).resolve().parents[1] / "config" / "crazyflies.yaml")
    srv = CrazyflieServer.from_fleet(Path(__file__).resolve().parents[1] / "config" / "crazyflies.yaml", base_port=0)
    assert srv.names == ["cf1", "cf2"]
    assert srv.states()["cf2"]["position"][:2] == pytest.approx([1.0, 0.0])
    udp = CrazyflieServer.from_fleet(Path(__file__).resolve().parents[1] / "config" / "crazyflies_udp.yaml")
    assert udp.ports == [19850, 19851]  # not started: 19850 is left to snnctl sim crazyflie


# --- log -----------------------------------------------------------------------------------------
def test_a_100_hz_log_block_decodes_the_true_state():
    yaw = 0.7
    with CrazyflieServer(drones=1, base_port=0, initial_positions=[(0.3, -0.2, 0.0)], initial_yaws=[yaw]) as srv:
        with connect(srv) as scf:
            rec = Recorder(scf.cf, ["stateEstimateZ.x", "stateEstimateZ.y", "stateEstimateZ.z", "stateEstimateZ.quat",
                                    "stateEstimate.yaw", "stateEstimate.x", "pm.vbat"], period_ms=10)
            wait_until(srv, lambda: len(rec.entries) >= 50, 2.0, "50 log entries")
            entries = rec.since(0)
    stamps = np.array([t for t, _ in entries])
    assert (np.diff(stamps) == 10).all(), "a 10 ms block is sent every 10 ms of the firmware's clock"
    t, v = entries[-1]
    assert v["stateEstimateZ.x"] == 300 and v["stateEstimateZ.y"] == -200 and v["stateEstimateZ.z"] == 10  # mm
    assert v["stateEstimate.x"] == pytest.approx(0.3, abs=1e-6)
    x, y, z, w = crtp.quatdecompress(v["stateEstimateZ.quat"])
    assert (w, x, y, z) == pytest.approx((math.cos(yaw / 2), 0, 0, math.sin(yaw / 2)), abs=3e-3)
    assert v["stateEstimate.yaw"] == pytest.approx(math.degrees(yaw), abs=1e-3)
    assert v["pm.vbat"] == pytest.approx(4.15, abs=1e-3)


def test_log_values_follow_the_firmwares_units_and_signs():
    fw = Firmware()
    pitch_down = 0.2  # rad about body y (left): nose down
    fw.estimate = {"position": np.array([1.0, -2.0, 0.5]), "velocity": np.array([0.1, 0.2, -0.3]),
                   "quaternion": np.array([math.cos(pitch_down / 2), 0.0, math.sin(pitch_down / 2), 0.0]),
                   "angular_velocity": np.array([0.5, 0.4, -0.3]), "acceleration": np.zeros(3),
                   "specific_force": np.array([0.0, 0.0, 1.0])}
    v = log_values(fw)
    assert v["stateEstimate.pitch"] == pytest.approx(-math.degrees(pitch_down))  # the estimator's nose-up pitch
    assert v["stateEstimateZ.rateRoll"] == pytest.approx(500.0)  # mrad/s
    assert v["stateEstimateZ.ratePitch"] == pytest.approx(-400.0)  # = -gyro.y
    assert v["stateEstimateZ.rateYaw"] == pytest.approx(-300.0)
    assert v["gyro.y"] == pytest.approx(math.degrees(0.4))
    assert v["stateEstimateZ.vz"] == pytest.approx(-300.0) and v["stateEstimateZ.az"] == pytest.approx(9810.0)
    assert crtp.pack_value(crtp.LOG_TYPE["int16_t"], 40000.7) == (32767).to_bytes(2, "little")
    assert crtp.pack_value(crtp.LOG_TYPE["int16_t"], -1.9) == (-1).to_bytes(2, "little", signed=True)


def test_quatcompress_round_trip_and_toc_formats():
    rng = np.random.default_rng(0)
    for q in rng.normal(size=(200, 4)):
        q /= np.linalg.norm(q)
        back = np.array(crtp.quatdecompress(crtp.quatcompress(q)))
        assert min(np.abs(back - q).max(), np.abs(back + q).max()) < 4e-3
    assert crtp.quatcompress((0, 0, 0, 1)) == 3 << 30  # identity: w largest, the others 0
    entries = [crtp.TocEntry("stateEstimate", "x", 7), crtp.TocEntry("stateEstimate", "y", 7)]
    item = crtp.toc_item_reply(crtp.Port.LOG, entries, 1)
    assert item.data == b"\x02\x01\x00\x07stateEstimate\x00y\x00"
    assert crtp.toc_item_reply(crtp.Port.LOG, entries, 2).data == b"\x02"
    renamed = [entries[0], crtp.TocEntry("stateEstimate", "z", 7)]
    assert crtp.toc_crc(entries) != crtp.toc_crc(renamed)
    with pytest.raises(ValueError):
        crtp.TocEntry("stateEstimateZ", "aVeryLongName", 7)


def test_the_deprecated_platform_and_localization_packets_still_work():
    """What a client for protocol < 12 sends: arming on the platform port, emergency stop on localization."""
    fw = Firmware()
    reply = fw.handle(crtp.Packet(crtp.Port.PLATFORM, crtp.Platform.COMMAND_CHANNEL, bytes((1, 1))), 0)
    assert reply[0].data == bytes((1, 1, 1)) and fw.armed  # command, success, is armed
    fw.handle(crtp.Packet(crtp.Port.LOCALIZATION, crtp.Localization.GENERIC_CHANNEL, bytes((3,))), 0)
    fw._supervisor_update(40)
    assert fw.state.name == "EXCEPT_FREE_FALL" and not fw.motors_allowed() and not fw.armed


def test_emergency_stop_takes_effect_at_the_next_supervisor_update():
    sim = SimulatedCrazyflies([(0, 0, 0)], require_arming=False)
    thrust = int(sim.model.hover_rotor_speed * 65535 * 1.1)
    setpoint = crtp.Packet(crtp.Port.COMMANDER, 0, bytes(12) + thrust.to_bytes(2, "little"))
    sim.handle(0, crtp.Packet(crtp.Port.COMMANDER, 0, bytes(14)))  # thrust 0 unlocks
    for _ in range(60):
        sim.handle(0, setpoint)
        sim.step()
    assert sim.states()[0]["supervisor"] == "FLYING" and sim.states()[0]["motor_pwm"].min() > 0
    sim.handle(0, crtp.Packet(crtp.Port.SUPERVISOR, crtp.Supervisor.COMMAND_CHANNEL,
                              bytes((crtp.Supervisor.EMERGENCY_STOP,))))
    ticks = 0
    while sim.states()[0]["motor_pwm"].max() > 0:
        sim.handle(0, setpoint)
        sim.step()
        ticks += 1
    assert ticks <= 4  # 40 ms: the supervisor runs at 25 Hz
    assert sim.states()[0]["supervisor"] in ("EXCEPT_FREE_FALL", "LOCKED")


def test_log_block_too_large_is_refused():
    fw = Firmware()
    L = crtp.Log
    floats = b"".join(bytes((7,)) + k.to_bytes(2, "little") for k in range(7))  # 7 floats = 28 bytes > 26
    reply = fw.handle(crtp.Packet(crtp.Port.LOG, L.CONTROL_CHANNEL, bytes((L.CREATE_BLOCK_V2, 3)) + floats), 0)
    assert reply[0].data == bytes((L.CREATE_BLOCK_V2, 3, errno.E2BIG))


# --- flight --------------------------------------------------------------------------------------
def test_rate_mode_hover_then_rate_steps_turn_the_right_way(server):
    hover = int(server.sim.model.hover_rotor_speed * 65535)
    with connect(server) as scf:
        cf = scf.cf
        for axis in ("Roll", "Pitch", "Yaw"):
            cf.param.set_value(f"flightmode.stabMode{axis}", 0)
        wait_until(server, lambda: server.sim.firmwares[0].params["flightmode.stabModeYaw"] == 0, 1.0, "rate mode")
        arm(server, cf)
        rec = Recorder(cf, ["stateEstimateZ.rateRoll", "stateEstimateZ.ratePitch", "stateEstimateZ.rateYaw",
                            "gyro.y", "stateEstimateZ.z"])
        stream(server, lambda: cf.commander.send_setpoint(0, 0, 0, 40000), 0.1)  # the thrust lock holds
        assert truth(server)["motor_pwm"].max() == IDLE_THRUST_ARMED  # armed: the motors idle
        cf.commander.send_setpoint(0, 0, 0, 0)  # unlock the thrust
        stream(server, lambda: cf.commander.send_setpoint(0, 0, 0, int(hover * 1.1)), 0.5)
        stream(server, lambda: cf.commander.send_setpoint(0, 0, 0, int(hover * 0.9)), 0.4)  # a hop: climb, slow down
        stream(server, lambda: cf.commander.send_setpoint(0, 0, 0, hover), 0.3)
        s = truth(server)
        assert s["supervisor"] == "FLYING" and 0.05 < s["position"][2] < 1.0 and abs(s["velocity"][2]) < 0.5
        assert np.abs(s["angular_velocity"]).max() < 0.05

        # yaw rate goes through the yaw attitude loop: slower (docs/ctbr.md)
        for roll, pitch, yawrate, axis, sign, seconds in ((30, 0, 0, 0, 1, 0.3), (0, 30, 0, 1, 1, 0.3),
                                                          (0, 0, 30, 2, -1, 0.8)):
            count = len(rec.entries)
            stream(server, lambda: cf.commander.send_setpoint(roll, pitch, yawrate, hover), seconds)
            rates = truth(server)["angular_velocity"]
            wanted = sign * math.radians(30)
            assert rates[axis] == pytest.approx(wanted, rel=0.25), (axis, rates)
            logged = rec.since(count)[-1][1]
            assert logged["stateEstimateZ.rateRoll"] == pytest.approx(1000 * rates[0], abs=60)
            assert logged["stateEstimateZ.ratePitch"] == pytest.approx(-1000 * rates[1], abs=60)  # -gyro.y
            assert logged["stateEstimateZ.rateYaw"] == pytest.approx(1000 * rates[2], abs=60)
            stream(server, lambda: cf.commander.send_setpoint(0, 0, 0, hover), 0.3)
        assert rec.last()[1]["gyro.y"] == pytest.approx(math.degrees(truth(server)["angular_velocity"][1]), abs=4)


def test_high_level_takeoff_go_to_land(server):
    with connect(server) as scf:
        cf, hl = scf.cf, scf.cf.high_level_commander
        arm(server, cf)
        hl.takeoff(0.5, 2.0)
        sleep_sim(server, 3.0)
        s = truth(server)
        assert s["position"] == pytest.approx([0.2, -0.1, 0.5], abs=0.03)
        hl.go_to(0.6, 0.3, 0.8, 0.5, 2.0)
        sleep_sim(server, 2.7)
        s = truth(server)
        assert s["position"] == pytest.approx([0.6, 0.3, 0.8], abs=0.04)
        assert math.atan2(2 * s["quaternion"][0] * s["quaternion"][3], 1 - 2 * s["quaternion"][3] ** 2) \
            == pytest.approx(0.5, abs=0.05)
        hl.land(0.0, 2.0)
        sleep_sim(server, 2.5)
        s = truth(server)
        assert s["position"][2] < 0.03 and s["position"][:2] == pytest.approx([0.6, 0.3], abs=0.04)
        assert s["motor_pwm"].max() == IDLE_THRUST_ARMED  # the planner idles: the armed motors too
        wait_until(server, lambda: truth(server)["supervisor"] == "LANDED", 2.5, "landed (2 s below idle + 1)")
        wait_until(server, lambda: not truth(server)["armed"], 3.5, "disarmed after the landing timeout")
        assert truth(server)["motor_pwm"].max() == 0


def test_streaming_setpoints_override_and_notify_stop_hands_back(server):
    with connect(server) as scf:
        cf, hl = scf.cf, scf.cf.high_level_commander
        arm(server, cf)
        hl.takeoff(0.5, 1.5)
        sleep_sim(server, 1.8)

        def hold():
            cf.commander.send_position_setpoint(0.2, -0.1, 0.9, 0.0)

        hold()
        hl.go_to(1.5, 1.5, 1.5, 0.0, 1.0)  # ignored: the streamed setpoint has the higher priority
        stream(server, hold, 2.5)
        assert truth(server)["position"] == pytest.approx([0.2, -0.1, 0.9], abs=0.05)
        assert server.sim.firmwares[0].planner.state == Planner.IDLE

        cf.commander.send_notify_setpoint_stop()
        hl.go_to(0.5, -0.1, 0.6, 0.0, 1.5)
        sleep_sim(server, 2.2)
        assert truth(server)["position"] == pytest.approx([0.5, -0.1, 0.6], abs=0.04)


def test_hover_and_velocity_setpoints(server):
    with connect(server) as scf:
        cf = scf.cf
        arm(server, cf)
        cf.high_level_commander.takeoff(0.6, 2.0)
        sleep_sim(server, 2.5)
        def mean_over(send, seconds):
            """The mean velocity, height and yaw rate over the second half of ``seconds`` of streaming."""
            stream(server, send, seconds / 2)
            samples = []
            stream(server, lambda: (send(), samples.append(truth(server))), seconds / 2)
            return (np.mean([s["velocity"] for s in samples], 0), np.mean([s["position"][2] for s in samples]),
                    np.mean([s["angular_velocity"][2] for s in samples]))

        velocity, height, _ = mean_over(lambda: cf.commander.send_hover_setpoint(0.3, 0.0, 0.0, 0.6), 2.0)
        assert velocity == pytest.approx([0.3, 0.0, 0.0], abs=0.05) and height == pytest.approx(0.6, abs=0.05)
        velocity, _, _ = mean_over(lambda: cf.commander.send_velocity_world_setpoint(0.0, -0.3, 0.2, 0.0), 2.0)
        assert velocity == pytest.approx([0.0, -0.3, 0.2], abs=0.05)
        _, _, yaw_rate = mean_over(lambda: cf.commander.send_hover_setpoint(0.0, 0.0, 45.0, 1.0), 1.0)
        assert yaw_rate == pytest.approx(math.radians(45), abs=0.1)  # the generic yaw rate: counter-clockwise


def test_nothing_spins_unarmed(server):
    with connect(server) as scf:
        cf = scf.cf
        cf.commander.send_setpoint(0, 0, 0, 0)
        stream(server, lambda: cf.commander.send_setpoint(0, 0, 0, 50000), 0.5)
        cf.high_level_commander.takeoff(1.0, 1.0)  # refused: the supervisor does not let it fly
        stream(server, lambda: None, 0.5)
        stream(server, lambda: cf.commander.send_position_setpoint(0.2, -0.1, 1.0, 0.0), 0.5)
        s = truth(server)
        assert s["supervisor"] == "PRE_FLIGHT_CHECKS_PASSED" and not s["armed"]
        assert s["motor_pwm"].max() == 0 and s["rotor_speed"].max() == 0 and s["position"][2] < 0.02


def test_emergency_stop_cuts_the_motors_at_once_and_locks(server):
    hover = int(server.sim.model.hover_rotor_speed * 65535)
    with connect(server) as scf:
        cf = scf.cf
        arm(server, cf)
        cf.commander.send_setpoint(0, 0, 0, 0)
        stream(server, lambda: cf.commander.send_setpoint(0, 0, 0, int(hover * 1.1)), 0.8)
        assert truth(server)["motor_pwm"].min() > 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            cf.loc.send_emergency_stop()  # cflib forwards it to the supervisor port (protocol >= 12)
        wait_until(server, lambda: truth(server)["motor_pwm"].max() == 0, 0.5, "motors off")
        stream(server, lambda: cf.commander.send_setpoint(0, 0, 0, int(hover * 1.1)), 0.5)
        s = truth(server)
        assert s["locked"] and s["motor_pwm"].max() == 0
        cf.supervisor.send_arming_request(True)
        sleep_sim(server, 0.2)
        assert not truth(server)["armed"]
    server.reset(0)
    assert truth(server)["supervisor"] == "PRE_FLIGHT_CHECKS_PASSED" and not truth(server)["locked"]


def test_emergency_stop_watchdog_locks_when_not_renewed(server):
    with connect(server) as scf:
        cf = scf.cf
        stream(server, cf.supervisor.send_emergency_stop_watchdog, 1.5)  # renewed: fine
        assert not truth(server)["locked"]
        sleep_sim(server, 1.3)
        assert truth(server)["locked"]


def test_the_commander_watchdog_levels_out_then_stops_the_motors(server):
    hover = int(server.sim.model.hover_rotor_speed * 65535)
    with connect(server) as scf:
        cf = scf.cf
        arm(server, cf)
        cf.commander.send_setpoint(0, 0, 0, 0)
        stream(server, lambda: cf.commander.send_setpoint(0, 0, 0, int(hover * 1.15)), 0.7)
        stream(server, lambda: cf.commander.send_setpoint(8, 0, 0, hover), 0.5)  # angle mode: 8 deg roll
        q = truth(server)["quaternion"]
        assert math.degrees(2 * math.asin(q[1])) == pytest.approx(8, abs=2)
        silent_from = sim_time(server)
        wait_until(server, lambda: truth(server)["supervisor"] == "WARNING_LEVEL_OUT", 1.0, "level out")
        assert sim_time(server) - silent_from > 0.45  # COMMANDER_WDT_TIMEOUT_STABILIZE (the last packet was a tick earlier)
        sleep_sim(server, 0.8)
        s = truth(server)
        assert s["supervisor"] == "WARNING_LEVEL_OUT" and abs(math.degrees(2 * math.asin(s["quaternion"][1]))) < 1.5
        assert s["motor_pwm"].min() > 0  # levelled, the thrust kept
        wait_until(server, lambda: truth(server)["locked"], 1.5, "locked after 2 s without setpoints")
        assert sim_time(server) - silent_from > 1.95
        sleep_sim(server, 0.05)
        assert truth(server)["motor_pwm"].max() == 0


def test_a_flip_is_a_crash_that_locks_the_motors_until_recovered(server):
    hover = int(server.sim.model.hover_rotor_speed * 65535)
    with connect(server) as scf:
        cf = scf.cf
        cf.param.set_value("flightmode.stabModeRoll", 0)
        arm(server, cf)
        cf.commander.send_setpoint(0, 0, 0, 0)
        stream(server, lambda: cf.commander.send_setpoint(0, 0, 0, int(hover * 1.2)), 0.8)
        stream(server, lambda: cf.commander.send_setpoint(400, 0, 0, hover), 0.5)  # 400 deg/s: over and on
        assert truth(server)["crash_reason"].startswith("tipped over")
        wait_until(server, lambda: truth(server)["crashed"], 1.5, "the firmware's tumble check",
                   send=lambda: cf.commander.send_setpoint(0, 0, 0, hover))  # the pilot holds the stick
        stream(server, lambda: cf.commander.send_setpoint(0, 0, 0, hover), 0.3)
        s = truth(server)
        assert s["supervisor"] == "CRASHED" and s["motor_pwm"].max() == 0
        cf.supervisor.send_crash_recovery_request()  # refused while it lies tumbled
        sleep_sim(server, 0.3)
        assert truth(server)["supervisor"] == "CRASHED"
    server.reset(0)  # picked up and power-cycled
    assert truth(server)["supervisor"] == "PRE_FLIGHT_CHECKS_PASSED" and not truth(server)["crash_reason"]


def test_extpos_is_recorded_and_logged(server):
    with connect(server) as scf:
        cf = scf.cf
        rec = Recorder(cf, ["locSrv.x", "locSrv.y", "locSrv.z", "locSrv.qw"], period_ms=20)
        cf.extpos.send_extpos(1.0, -2.0, 0.5)
        wait_until(server, lambda: rec.last()[1].get("locSrv.y") == -2.0, 1.0, "extpos in the log")
        assert truth(server)["extpos"] == pytest.approx([1.0, -2.0, 0.5])
        cf.extpos.send_extpose(0.1, 0.2, 0.3, 0.0, 0.0, 0.6, 0.8)
        wait_until(server, lambda: rec.last()[1].get("locSrv.qw") == pytest.approx(0.8), 1.0, "extpose in the log")
        assert truth(server)["extpos_count"] == 2


def test_low_battery_shows_in_pm_state(server):
    with connect(server) as scf:
        rec = Recorder(scf.cf, ["pm.vbat", "pm.state", "pm.batteryLevel"], period_ms=100)
        wait_until(server, lambda: rec.last()[1].get("pm.batteryLevel") == 90, 1.0, "a full battery")
        assert rec.last()[1]["pm.state"] == 0
        server.set_battery(0, 3.1)
        low_from = sim_time(server)
        wait_until(server, lambda: rec.last()[1].get("pm.state") == 3, 7.0, "lowPower")
        assert sim_time(server) - low_from > 5.0  # after 5 s below pm.lowVoltage
        assert rec.last()[1]["pm.vbat"] == pytest.approx(3.1, abs=1e-3) and rec.last()[1]["pm.batteryLevel"] == 10


def test_battery_drains_with_thrust():
    sim = SimulatedCrazyflies([(0, 0, 0)], require_arming=False)
    fw = sim.firmwares[0]
    fw.handle(crtp.Packet(crtp.Port.COMMANDER, 0, bytes(14)), sim.time_ms)  # thrust 0 unlocks
    thrust = int(sim.model.hover_rotor_speed * 65535)
    for _ in range(100):
        fw.handle(crtp.Packet(crtp.Port.COMMANDER, 0, bytes(12) + thrust.to_bytes(2, "little")), sim.time_ms)
        sim.step()
    assert 4.15 - fw.vbat == pytest.approx(0.004 * thrust / 65535 * 1.0, rel=0.1)  # 1 s of hover


def test_snnctl_sim_crazyflie_serves_a_fleet_file_until_ctrl_c(tmp_path):
    port = random.randint(20000, 29000)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(f"robots:\n  a:\n    uri: udp://127.0.0.1:{port}\n    initial_position: [0.5, 0.0, 0.0]\n"
                     f"  b:\n    uri: udp://127.0.0.1:{port + 7}\n")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    cli = subprocess.Popen([sys.executable, "-m", "snn_controller.cli", "sim", "crazyflie", "--crazyflies", str(fleet)],
                           stdout=subprocess.PIPE, text=True, env=env, cwd=root)
    try:
        assert cli.stdout.readline().strip() == f"a: udp://127.0.0.1:{port}"
        with SyncCrazyflie(f"udp://127.0.0.1:{port + 7}", cf=Crazyflie()) as scf:
            assert scf.cf.param.get_value("commander.enHighLevel") == "0"
    finally:
        cli.send_signal(signal.SIGINT)
        assert cli.wait(timeout=30) == 0


def test_drop_link_silences_the_drone_for_a_while(server):
    with connect(server) as scf:
        rec = Recorder(scf.cf, ["stateEstimate.z"], period_ms=10)
        wait_until(server, lambda: len(rec.entries) > 10, 1.0, "log entries")
        server.drop_link(0, 0.5)
        time.sleep(0.8)
        before = len(rec.entries)
        wait_until(server, lambda: len(rec.entries) > before + 10, 1.0, "log entries after the link is back")
    stamps = np.array([t for t, _ in rec.entries])
    assert np.diff(stamps).max() >= 40, "no gap in the log while the link was down"  # 0.5 s of wall time


def test_high_level_group_mask_and_current_yaw():
    sim = SimulatedCrazyflies([(0, 0, 0)], initial_yaws=[1.0], require_arming=False)
    fw = sim.firmwares[0]
    while fw.state.name != "READY_TO_FLY":
        sim.step()
    fw.params["hlCommander.groupmask"] = 0b10

    def takeoff(group, yaw):
        use_current = yaw is None
        data = struct.pack("<BBff?f", crtp.HighLevel.TAKEOFF_2, group, 0.5, 0.0 if use_current else yaw, use_current, 1.0)
        return sim.handle(0, crtp.Packet(crtp.Port.HIGH_LEVEL, 0, data))[0].data[3]

    assert takeoff(0b01, None) == 0 and fw.planner.state == Planner.IDLE  # another group's command
    assert takeoff(0b10, None) == 0 and fw.planner.state == Planner.FLYING
    end = fw.planner.evaluate(10.0)
    assert end.yaw == pytest.approx(1.0, abs=1e-6) and end.position[2] == pytest.approx(0.5)
    assert takeoff(0, 0.0) == 1  # plan_takeoff refuses unless idle


def test_planner_polynomial_meets_its_boundary_conditions():
    planner = Planner()
    start = (np.array([0.0, 1.0, 0.5]), np.array([0.2, -0.1, 0.0]), np.array([0.0, 0.5, 0.0]))
    planner.go_to_from(TrajectoryPoint(*start, yaw=3.0, yaw_rate=0.0), False, False, (1.0, 0.0, 1.0), -3.0, 2.0, t=5.0)
    first, last = planner.evaluate(5.0), planner.evaluate(7.0)
    assert first.position == pytest.approx(start[0]) and first.velocity == pytest.approx(start[1])
    assert first.acceleration == pytest.approx(start[2], abs=1e-9)
    assert last.position == pytest.approx([1.0, 0.0, 1.0], abs=1e-6) and last.velocity == pytest.approx(np.zeros(3), abs=1e-6)
    assert last.yaw == pytest.approx(3.0 + (2 * math.pi - 6.0), abs=1e-6)  # the short way round, through pi
    assert planner.evaluate(9.0).velocity == pytest.approx(np.zeros(3))
