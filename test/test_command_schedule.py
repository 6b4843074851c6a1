"""What FleetSimulator flew, on a stream of on-time, late, stale, repeated, unstamped, future, NaN
and out-of-range commands with a silent gap for the watchdog: its own account
(FleetSimulator.last_flown, which sim_bridge publishes as motor_state) against what went into the
engine, and bridge_schedule (the replay's reconstruction for bags without motor_state) against
it; and arrival_steps' rules."""

import numpy as np
import pytest

from snn_controller.sim.command_replay import arrival_steps, bridge_schedule
from snn_controller.sim.drone import load_drone
from snn_controller.sim.fleet import FleetSimulator, RobotConfig

STEPS = 220
SILENT = range(120, 185)  # no command for 65 steps: longer than the 0.5 s (50 step) watchdog


def command_stream(seed: int):
    """Per step: the commands (answered step or None, values) that reach the simulator then."""
    rng = np.random.default_rng(seed)
    stream = []
    for s in range(STEPS):
        sent = []
        for _ in range(0 if s in SILENT else rng.integers(0, 4)):
            kind = rng.choice(["now", "late", "older", "unstamped", "future", "nan"], p=[.45, .2, .1, .1, .1, .05])
            answered = {"now": s, "late": s - 1, "older": s - 3, "unstamped": None, "future": s + 1, "nan": s}[kind]
            # below lift-off (the drone stays on the ground, nothing crashes), some out of range: clipped
            values = rng.uniform(-1.2, -0.6, 4)
            if kind == "nan":
                values[1] = np.nan
            if answered is None or answered >= 0:
                sent.append((answered, values))
        stream.append(sent)
    return stream


def fly_stream(sim, stream, stop_at=None):
    """Feed ``stream`` to drone cf1 of ``sim`` step by step (an emergency stop at step ``stop_at``);
    per step, what the engine got: (rotor speeds it started from, the commands it flew), and
    sim.last_flown after the step."""
    engine_step, engine_got, reported = sim.engine.step, [], []

    def recording_step(action):
        engine_got.append((sim.engine.state.as_numpy()["rotor_speed"].copy(), np.array(action, dtype=np.float64)))
        return engine_step(action)

    sim.engine.step = recording_step
    for s, sent in enumerate(stream):
        for answered, values in sent:
            sim.submit("cf1", values, stamp=answered)
        if s == stop_at:
            sim.emergency_stop("cf1")
        sim.step()
        reported.append(sim.last_flown)
    return engine_got, reported


@pytest.mark.parametrize("command_delay, seed", [(0, 0), (2, 1)])
def test_the_simulator_reports_the_rotor_speeds_and_the_commands_its_engine_flew(command_delay, seed):
    stream = command_stream(seed)
    sim = FleetSimulator(load_drone("cf21"), {"cf1": RobotConfig(), "cf2": RobotConfig((1.0, 0.0, 0.0))},
                         command_delay=command_delay)
    try:
        assert sim.last_flown is None, "no step flown yet"
        engine_got, reported = fly_stream(sim, stream, stop_at=STEPS - 10)
        sim.reset()
        assert sim.last_flown is None, "a fleet reset starts again"
    finally:
        sim.close()
    assert [r.step for r in reported] == list(range(STEPS))
    for s, ((rotor_speed, flown), r) in enumerate(zip(engine_got, reported)):
        assert (r.rotor_speed == rotor_speed).all() and (r.command == flown).all(), s
    cf1 = np.array([r.command[0] for r in reported])
    assert (cf1[:, 0] > -1).sum() > 100 and (np.abs(cf1) <= 1).all(), "commands flew, clipped to [-1, 1]"
    assert (cf1[SILENT.start + 51:SILENT.stop] == -1).all(), "the watchdog stopped the motors after 0.5 s"
    assert (cf1[STEPS - 10:] == -1).all(), "an emergency stop stops them"
    assert (np.array([r.command[1] for r in reported]) == -1).all(), "a drone never commanded: motors off"
    rotors = np.array([r.rotor_speed[0] for r in reported])
    assert rotors.max() > 0 and rotors[0].max() == 0, "the rotors spin up from rest"


@pytest.mark.parametrize("command_delay, seed", [(0, 0), (2, 1)])
def test_schedule_applies_the_commands_fleet_simulator_applies(command_delay, seed):
    stream = command_stream(seed)
    sim = FleetSimulator(load_drone("cf21"), {"cf1": RobotConfig()}, command_delay=command_delay)
    applied, flown, reported = [], [], []
    try:
        for s, sent in enumerate(stream):
            for answered, values in sent:
                sim.submit("cf1", values, stamp=answered)
            ages_before = len(sim.ages[0])
            sim.step()
            assert not sim.crashed[0], sim.crash_reason
            flown.append(len(sim.ages[0]) > ages_before)  # an age sample: a command was in force
            applied.append((sim.commands[0].copy(), int(sim.applied_step[0])))
            reported.append(sim.last_flown.command[0])
    finally:
        sim.close()
    rows = [(s, a if a is not None else -1, v) for s, sent in enumerate(stream) for a, v in sent]
    arrival, answered, values = (np.array([r[i] for r in rows]) for i in range(3))
    schedule = bridge_schedule(answered, arrival, values, STEPS, command_delay=command_delay, timeout_steps=50)
    assert (~schedule.off).tolist() == flown
    assert schedule.off[SILENT.start + 51:SILENT.stop].all(), "the watchdog stops the motors after 0.5 s"
    for s in np.flatnonzero(~schedule.off):
        command, answered_step = applied[s]
        assert schedule.answered[s] == answered_step, s
        assert schedule.commands[s] == pytest.approx(command), s
    assert (schedule.commands[schedule.off] == -1).all()
    assert schedule.commands == pytest.approx(np.array(reported)), "what the simulator says it flew"
    assert schedule.age.tolist() == list(sim.ages[0])
    assert schedule.age.min() >= command_delay


def test_arrival_is_the_answered_step_for_stamped_and_the_receipt_for_unstamped_commands():
    step_receive = np.array([0, 100, 200, 300, 400])  # ns at which the recorder first got each step's state
    answered = np.array([0, 1, 1, -1, -1, 3])
    receive = np.array([50, 190, 250, 210, 420, 330])  # the third answer to step 1 came in after step 2's state
    assert arrival_steps(answered, receive, step_receive).tolist() == [0, 1, 1, 2, 4, 3]
