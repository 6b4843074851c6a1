"""crazyflie/safety.py: every transition of the bridge's state machine, on a fake clock; the config
file's validation."""

import math

import numpy as np
import pytest

from snn_controller.config import ConfigError
from snn_controller.crazyflie.safety import (PM_LOW_POWER, Action, DroneSafety, Mode, Send, load_safety_config,
                                             safety_config)

CONFIG = safety_config({
    "command": {"timeout": 0.1},
    "hover": {"timeout": 2.0, "resume": True},
    "geofence": {"min": [-1.0, -1.0, -0.2], "max": [1.0, 1.0, 1.5], "hard_margin": 0.3},
    "battery": {"low_voltage": 3.2, "low_duration": 1.0},
    "link": {"timeout": 0.3},  # (the default is 0.5 s)
    "manoeuvres": {"takeoff_height": 0.5, "takeoff_duration": 2.0, "land_duration": 3.0, "landed_height": 0.05,
                   "land_grace": 2.0, "go_to_speed": 0.5},
})
HOVER_THRUST = (0.66, 0.0, 0.0, 0.0)


class Drone:
    """A machine with a fake clock and a drone that reports its state every 10 ms."""

    def __init__(self, config=CONFIG, position=(0.0, 0.0, 0.0)):
        self.t = 0.0
        self.safety = DroneSafety("cf1", config)
        self.position = np.array(position, dtype=float)
        self.sent: list[Action] = []
        self.safety.link_status(self.t, True)
        self.report()
        self.safety.battery(self.t, 4.0, 0)

    def report(self):
        self.safety.state(self.t, self.position, 0.0)

    def run(self, seconds, command=None, link=True, dt=0.01):
        """Advance the clock, the drone reporting (unless the link is down) and the controller answering."""
        for _ in range(round(seconds / dt)):
            self.t += dt
            if link:
                self.report()
            if command is not None:
                self.sent += self.safety.command(self.t, command)
            self.sent += self.safety.tick(self.t)

    def kinds(self):
        return [e.kind for e in self.safety.events]

    def sends(self):
        return [a.send for a in self.sent]

    def armed_and_flying(self, height=1.0):
        assert self.safety.arm(self.t, True).ok
        self.run(0.05, command=HOVER_THRUST)
        assert self.safety.mode == Mode.FLYING
        self.position[2] = height
        self.run(0.05, command=HOVER_THRUST)
        self.sent.clear()
        self.safety.events.clear()


def test_connecting_needs_the_link_and_a_state_and_nothing_spins_until_arm():
    s = DroneSafety("cf1", CONFIG)
    s.link_status(0.0, True)
    assert s.mode == Mode.DISCONNECTED  # no state yet
    s.state(0.01, [0, 0, 0], 0.0)
    assert s.mode == Mode.DISARMED
    d = Drone()
    d.run(1.0, command=HOVER_THRUST)
    assert d.sent == [] and d.safety.mode == Mode.DISARMED
    assert d.safety.counters["ignored"] == 100 and d.safety.counters["accepted"] == 0


def test_arm_then_the_first_command_with_thrust_flies():
    d = Drone()
    reply = d.safety.arm(d.t, True)
    assert reply.ok and reply.actions == (Action(Send.ARM),) and d.safety.mode == Mode.ARMED
    d.run(0.5, command=(0.0, 0.0, 0.0, 0.0))  # the controller idles on the ground: still nothing sent
    assert d.sent == [] and d.safety.mode == Mode.ARMED
    d.run(0.02, command=HOVER_THRUST)
    assert d.safety.mode == Mode.FLYING and d.sent == [Action(Send.RATE, HOVER_THRUST)] * 2
    assert "flying" in d.kinds()


@pytest.mark.parametrize("problem, expected", [
    ("no_battery", "no battery reading"), ("low_battery", "battery low"), ("outside", "outside the geofence"),
    ("no_state", "no fresh state"), ("emergency", "emergency stop is latched")])
def test_arming_is_refused_when_the_drone_may_not_fly(problem, expected):
    d = Drone()
    if problem == "no_battery":
        d.safety = DroneSafety("cf1", CONFIG)
        d.safety.link_status(d.t, True)
        d.report()
    elif problem == "low_battery":
        d.safety.battery(d.t, 3.0, PM_LOW_POWER)
    elif problem == "outside":
        d.position[0] = 1.2
        d.report()
    elif problem == "no_state":
        d.run(0.5, link=False)
    else:
        d.safety.emergency(d.t)
    reply = d.safety.arm(d.t, True)
    assert not reply.ok and expected in reply.message and reply.actions == ()
    assert d.safety.mode in (Mode.DISARMED, Mode.EMERGENCY)


def test_disarm_on_the_ground_is_allowed_in_the_air_refused():
    d = Drone()
    d.safety.arm(d.t, True)
    assert d.safety.arm(d.t, False).actions == (Action(Send.STOP), Action(Send.DISARM))
    assert d.safety.mode == Mode.DISARMED
    d.armed_and_flying()
    reply = d.safety.arm(d.t, False)
    assert not reply.ok and "land first" in reply.message and d.safety.mode == Mode.FLYING


@pytest.mark.parametrize("command, why", [
    ((math.nan, 0, 0, 0), "not finite"), ((0.5, math.inf, 0, 0), "not finite"), ((1.2, 0, 0, 0), "thrust"),
    ((-0.1, 0, 0, 0), "thrust"), ((0.5, 25.0, 0, 0), "roll/pitch rate"), ((0.5, 0, 0, -11.0), "yaw rate"),
    ((0.5, 0, 0), "3 values")])
def test_invalid_commands_are_rejected_counted_reported_and_count_as_missing(command, why):
    d = Drone()
    d.armed_and_flying()
    d.run(0.05, command=command)
    assert Send.RATE not in d.sends(), "a rejected command must never be sent"
    assert d.safety.counters["rejected"] == 5
    assert all(why in e.message for e in d.safety.events if e.kind == "rejected")
    d.run(0.1, command=command)  # only rejected commands for longer than the timeout: stale -> hover
    assert d.safety.mode == Mode.HOVER and "stale" in d.kinds()


def test_stale_commands_hover_at_the_current_position_then_land_then_stop():
    d = Drone()
    d.armed_and_flying(height=1.0)
    d.position[:2] = (0.2, -0.1)
    d.run(0.05)  # within the timeout: nothing new to send (the firmware holds the last setpoint)
    assert d.sent == [] and d.safety.mode == Mode.FLYING
    d.run(0.1)
    assert d.safety.mode == Mode.HOVER
    assert d.sent[-1] == Action(Send.HOVER, (0.2, -0.1, 1.0, 0.0)), "hover where the commands stopped"
    d.sent.clear()
    d.run(1.9)
    assert d.safety.mode == Mode.HOVER and set(d.sends()) == {Send.HOVER}
    d.run(0.2)
    assert d.safety.mode == Mode.LANDING and d.sent[-1] == Action(Send.LAND, (0.0, 3.0))
    d.position[2] = 0.02
    d.sent.clear()
    d.run(3.1)
    assert d.sends() == [Send.STOP, Send.DISARM] and d.safety.mode == Mode.DISARMED
    assert "landed" in d.kinds()


def test_commands_during_the_hover_resume_unless_configured_not_to():
    d = Drone()
    d.armed_and_flying()
    d.run(0.2)
    assert d.safety.mode == Mode.HOVER
    d.run(0.02, command=HOVER_THRUST)
    assert d.safety.mode == Mode.FLYING and "resume" in d.kinds() and d.sent[-1].send == Send.RATE
    no_resume = safety_config({"hover": {"timeout": 2.0, "resume": False}})
    d = Drone(no_resume)
    d.armed_and_flying()
    d.run(0.2)
    d.sent.clear()
    d.run(0.5, command=HOVER_THRUST)
    assert d.safety.mode == Mode.HOVER and Send.RATE not in d.sends()


def test_stale_commands_on_the_ground_stop_the_motors():
    d = Drone()
    d.safety.arm(d.t, True)
    d.run(0.05, command=HOVER_THRUST)
    d.run(0.2)  # the controller stopped before the drone left the ground
    assert d.sends()[-2:] == [Send.STOP, Send.DISARM] and d.safety.mode == Mode.DISARMED


def test_a_killed_controller_lands_the_drone():
    """The controller answers, then never again: hover, land, motors stop; never a stop while high."""
    d = Drone()
    d.armed_and_flying(height=1.2)
    d.run(3.0)
    assert d.safety.mode == Mode.LANDING
    d.run(5.0)  # never got low (say, over a table): the grace time stops it anyway
    assert d.safety.mode == Mode.DISARMED and "still 1.20 m up" in d.safety.reason
    stops = [i for i, a in enumerate(d.sent) if a.send == Send.STOP]
    lands = [i for i, a in enumerate(d.sent) if a.send == Send.LAND]
    assert lands and stops and lands[0] < stops[0]


def test_geofence_lands_and_the_hard_margin_stops_the_motors():
    d = Drone()
    d.armed_and_flying()
    d.position[0] = 1.1
    d.run(0.01, command=HOVER_THRUST)
    assert d.safety.mode == Mode.LANDING and d.sent[-1].send == Send.LAND and "geofence" in d.kinds()
    d.sent.clear()
    d.run(0.1, command=HOVER_THRUST)
    assert Send.RATE not in d.sends(), "the controller does not fly a landing drone"
    d.position[0] = 1.35
    d.run(0.01)
    assert d.safety.mode == Mode.EMERGENCY and d.sent[-1].send == Send.EMERGENCY_STOP
    assert "hard margin" in d.safety.reason


def test_a_breach_beyond_the_hard_margin_is_an_emergency_at_once():
    d = Drone()
    d.armed_and_flying()
    d.position[2] = 1.9
    d.run(0.01, command=HOVER_THRUST)
    assert d.safety.mode == Mode.EMERGENCY and d.sent[-1] == Action(Send.EMERGENCY_STOP)


def test_low_battery_lands_by_voltage_after_its_duration_or_by_pm_state_at_once():
    d = Drone()
    d.armed_and_flying()
    d.safety.battery(d.t, 3.1, 0)
    d.run(0.9, command=HOVER_THRUST)
    assert d.safety.mode == Mode.FLYING, "a short sag under load must not land"
    d.run(0.2, command=HOVER_THRUST)
    assert d.safety.mode == Mode.LANDING and "battery" in d.kinds()
    d = Drone()
    d.armed_and_flying()
    d.safety.battery(d.t, 3.5, PM_LOW_POWER)
    d.run(0.01, command=HOVER_THRUST)
    assert d.safety.mode == Mode.LANDING
    d = Drone()  # armed on the ground: disarmed
    d.safety.arm(d.t, True)
    d.safety.battery(d.t, 3.5, PM_LOW_POWER)
    d.run(0.01)
    assert d.safety.mode == Mode.DISARMED and d.sends() == [Send.DISARM]


def test_a_sag_that_recovers_resets_the_low_battery_timer():
    d = Drone()
    d.armed_and_flying()
    for _ in range(3):
        d.safety.battery(d.t, 3.1, 0)
        d.run(0.8, command=HOVER_THRUST)
        d.safety.battery(d.t, 3.7, 0)
        d.run(0.1, command=HOVER_THRUST)
    assert d.safety.mode == Mode.FLYING


def test_lost_link_is_reported_nothing_is_sent_and_its_return_lands():
    d = Drone()
    d.armed_and_flying()
    d.run(0.5, command=HOVER_THRUST, link=False)
    assert d.safety.link_lost and d.safety.counters["link_lost"] == 1 and "link_lost" in d.kinds()
    assert d.sent[-1].send == Send.RATE and len(d.sent) < 35, "commands until the state is 0.3 s old, then none"
    n = len(d.sent)
    d.run(2.0, command=HOVER_THRUST, link=False)
    assert len(d.sent) == n and d.safety.status(d.t)["link"] == "lost"
    d.run(0.01, command=HOVER_THRUST)
    assert d.safety.mode == Mode.LANDING and "link_back" in d.kinds() and d.sent[-1].send == Send.LAND
    d = Drone()  # the driver says the link is down (radio: too many lost packets)
    d.armed_and_flying()
    d.safety.link_status(d.t, False)
    d.run(0.01)
    assert d.safety.link_lost and d.sent == []


def test_emergency_stops_at_once_from_any_mode_and_latches():
    d = Drone()
    d.armed_and_flying()
    reply = d.safety.emergency(d.t)
    assert reply.actions == (Action(Send.EMERGENCY_STOP),) and d.safety.mode == Mode.EMERGENCY
    d.run(0.05, command=HOVER_THRUST)
    assert set(d.sends()) == {Send.EMERGENCY_STOP}, "repeated (a lost packet must not keep it flying)"
    assert not d.safety.arm(d.t, True).ok and not d.safety.takeoff(d.t).ok
    d.sent.clear()
    d.run(0.5, link=False)
    assert d.safety.mode == Mode.EMERGENCY


def test_high_level_takeoff_go_to_and_land():
    d = Drone()
    assert not d.safety.takeoff(d.t).ok, "takeoff needs arming"
    d.safety.arm(d.t, True)
    reply = d.safety.takeoff(d.t)
    assert reply.ok and reply.actions == (Action(Send.TAKEOFF, (0.5, 2.0)),) and d.safety.mode == Mode.HIGH_LEVEL
    d.run(0.5, command=HOVER_THRUST)
    assert d.sent == [] and d.safety.counters["overridden"] == 50, "the controller does not fly high-level flight"
    busy = d.safety.go_to(d.t, [0.5, 0.0, 0.5], 0.0)
    assert not busy.ok and "previous manoeuvre" in busy.message
    d.position[2] = 0.5
    d.run(1.6)
    assert not d.safety.go_to(d.t, [1.5, 0.0, 0.5], 0.0).ok, "outside the geofence"
    assert not d.safety.go_to(d.t, [math.nan, 0.0, 0.5], 0.0).ok
    reply = d.safety.go_to(d.t, [0.5, 0.0, 0.5], 0.3)
    assert reply.ok and reply.actions[0].send == Send.GO_TO
    assert reply.actions[0].values == pytest.approx((0.5, 0.0, 0.5, 0.3, 1.0))
    reply = d.safety.land(d.t)
    assert reply.actions == (Action(Send.LAND, (0.0, 3.0)),) and d.safety.mode == Mode.LANDING
    d.position[2] = 0.0
    d.run(3.1)
    assert d.safety.mode == Mode.DISARMED and d.sends() == [Send.STOP, Send.DISARM]


def test_takeoff_and_land_refusals():
    d = Drone(safety_config({"geofence": {"min": [-1, -1, -0.2], "max": [1, 1, 0.4]}}))
    d.safety.arm(d.t, True)
    reply = d.safety.takeoff(d.t)
    assert not reply.ok and "outside the geofence" in reply.message and d.safety.mode == Mode.ARMED
    assert d.safety.land(d.t).actions == (Action(Send.STOP), Action(Send.DISARM)), "land on the ground disarms"
    assert d.safety.land(d.t).actions == () and d.safety.mode == Mode.DISARMED


def test_lost_link_while_armed_on_the_ground_stays_armed_on_its_return():
    d = Drone()
    d.safety.arm(d.t, True)
    d.run(0.6, link=False)
    assert d.safety.link_lost
    d.run(0.01)
    assert d.safety.mode == Mode.ARMED and d.sent == [] and not d.safety.link_lost


def test_status_reports_mode_link_battery_command_age_and_counters():
    d = Drone()
    d.armed_and_flying()
    d.safety.battery(d.t, 3.9, 0)
    d.run(0.05)
    status = d.safety.status(d.t)
    assert status["mode"] == "flying" and status["link"] == "up" and status["vbat"] == "3.90"
    assert status["command_age_ms"] == pytest.approx(50.0, abs=0.5) and status["accepted"] == 10


def test_the_packaged_config_loads_and_errors_name_the_file_and_key(tmp_path):
    config = load_safety_config()
    assert config.command.timeout == 0.1 and config.geofence.hard_margin > 0
    bad = tmp_path / "bridge.yaml"
    for text, message in [
        ("command: {timeot: 0.1}\n", r"bridge.yaml: command: unknown key\(s\) \['timeot'\]"),
        ("command: {timeout: -1}\n", r"bridge.yaml: command: command.timeout must be > 0"),
        ("geofence: {min: [0, 0, 0], max: [1, 1, 0]}\n", r"bridge.yaml: geofence: geofence.min must be below"),
        ("geofence: {min: [0, 0], max: [1, 1, 1]}\n", r"bridge.yaml: geofence: min: expected 3 values"),
        ("hover: {resume: yes please}\n", r"bridge.yaml: hover: resume: expected true or false"),
        ("battery: {low_voltage: .nan}\n", r"bridge.yaml: battery: low_voltage: expected a finite number"),
    ]:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_safety_config(str(bad))


def test_the_drone_s_supervisor_locked_or_crashed_is_an_emergency_and_its_own_disarm_is_followed():
    from snn_controller.crazyflie.safety import INFO_ARMED, INFO_CAN_FLY, INFO_CRASHED, INFO_LOCKED

    for info in (INFO_LOCKED, INFO_CRASHED):
        d = Drone()
        d.armed_and_flying()
        d.safety.supervisor(d.t, INFO_ARMED | info)
        assert d.safety.mode == Mode.EMERGENCY and "restart the drone" in d.safety.reason
        assert not d.safety.arm(d.t, True).ok
    d = Drone()
    d.safety.arm(d.t, True)
    d.safety.supervisor(d.t, 0)  # not armed yet: the request is on its way
    assert d.safety.mode == Mode.ARMED
    assert not d.safety.takeoff(d.t).ok, "the firmware refuses a take-off before it is armed"
    d.safety.supervisor(d.t, INFO_ARMED)
    d.safety.supervisor(d.t, 0)  # then the firmware's preflight timeout disarmed it
    assert d.safety.mode == Mode.DISARMED and "disarmed itself" in d.safety.reason
    assert d.safety.status(d.t)["supervisor_info"] == "0x0000"
    d = Drone()
    d.safety.arm(d.t, True)
    d.safety.supervisor(d.t, INFO_ARMED)  # the supervisor's arming state: its planner still refuses
    assert not d.safety.takeoff(d.t).ok
    d.safety.supervisor(d.t, INFO_ARMED | INFO_CAN_FLY)
    assert d.safety.takeoff(d.t).ok
    d.safety.supervisor(d.t, 0)  # the firmware stopped the motors (its landing timeout): it is on the ground
    assert d.safety.mode == Mode.DISARMED


def test_a_drone_found_flying_when_the_link_comes_up_is_landed_and_only_then():
    from snn_controller.crazyflie.safety import INFO_FLYING

    d = Drone(position=(0.0, 0.0, 0.8))  # the high-level commander holds it; the bridge (re)started
    d.safety.supervisor(d.t, INFO_FLYING)
    d.run(0.01)
    assert d.safety.mode == Mode.LANDING and d.sent == [Action(Send.LAND, (0.0, 3.0))]
    d = Drone()  # just landed: the firmware says flying for 2 s more (its hysteresis); not the first report
    d.safety.supervisor(d.t, 0)
    d.safety.supervisor(d.t, INFO_FLYING)
    d.run(0.01)
    assert d.safety.mode == Mode.DISARMED and d.sent == []
