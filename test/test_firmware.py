"""The firmware rate-mode model (snn_controller/sim/firmware.py): hand-computed ticks of the C code,
closed-loop behaviour on both engines, and batched/pybullet agreement behind the wrapper.

The expected numbers of the single-tick cases are worked by hand from pid.c (pidUpdate),
attitude_pid_controller.c (saturateSignedInt16), controller_pid.c (pitch sign, yaw through the
attitude loop, control->yaw = -yaw) and power_distribution_quadrotor.c (legacy mix, cap), with
platform_defaults_cf2.h gains: roll/pitch rate kp 250, ki 500, kd 2.5; yaw rate kp 120, ki 16.7;
yaw attitude kp 6, ki 1, kd 0.35; dt = 1/500 = 0.002 s. All eight ticks were also checked against the
firmware's own pid.c compiled with gcc (float32): identical; test_matches_compiled_firmware_pid_c
repeats that on random ticks when CRAZYFLIE_FIRMWARE names a crazyflie-firmware clone (as test_export_c.py does).
"""

import math
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

from snn_controller.sim.drone import load_drone  # noqa: E402
from snn_controller.sim.engines import make_engine  # noqa: E402
from snn_controller.sim.firmware import (PWM_MAX, RateControlledEngine, RateController, hover_thrust,  # noqa: E402
                                         pwm_to_action, yaw_deg)
from snn_controller.sim.state import DroneState  # noqa: E402

F64 = torch.float64
LEVEL = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=F64)


def _tick(ctrl, thrust_pwm, rates_deg, measured_deg=(0.0, 0.0, 0.0), quaternion=LEVEL):
    sp = torch.tensor([[thrust_pwm, *map(math.radians, rates_deg)]], dtype=F64)
    meas = torch.tensor([list(map(math.radians, measured_deg))], dtype=F64)
    return ctrl.pwm(sp, meas, quaternion)[0].tolist()


# --- (a) the C arithmetic, by hand ---------------------------------------------------------------
def test_roll_rate_step_first_tick():
    """Roll 100.3 deg/s wanted, at rest, T = 30000 (fresh: integ 0, prevMeasured 0):
    e = 100.3; P = 250 * 100.3 = 25075; D = 2.5 * -(0 - 0) / 0.002 = 0; integ = 100.3 * 0.002 = 0.2006,
    I = 500 * 0.2006 = 100.3; out = 25175.3 -> int16 25175; r = (int16)(25175 / 2) = 12587.
    m1 = m2 = 30000 - 12587 = 17413, m3 = m4 = 30000 + 12587 = 42587 (M3, M4 on the left, +y)."""
    ctrl = RateController(1, thrust="pwm")
    assert _tick(ctrl, 30000, (100.3, 0, 0)) == [17413, 17413, 42587, 42587]


def test_d_term_on_measurement_and_integral_over_two_ticks():
    """Wanted 0, measured roll rate 10 deg/s. Tick 1 (prevMeasured 0): e = -10, P = -2500,
    D = 2.5 * -(10 - 0) / 0.002 = -12500, integ = -0.02, I = -10: out = -15010, r = -7505;
    m = 30000 -/+ r: (37505, 37505, 22495, 22495).
    Tick 2 (prevMeasured 10): D = 0, integ = -0.04, I = -20: out = -2520, r = -1260: (31260, 31260, 28740, 28740)."""
    ctrl = RateController(1, thrust="pwm")
    assert _tick(ctrl, 30000, (0, 0, 0), (10, 0, 0)) == [37505, 37505, 22495, 22495]
    assert _tick(ctrl, 30000, (0, 0, 0), (10, 0, 0)) == [31260, 31260, 28740, 28740]


def test_pitch_sign_flip_and_front_motors():
    """Our q = +50.3 deg/s (about +y: nose down). controller_pid.c compares the setpoint with -gyro.y,
    so the firmware's pitch-rate setpoint is -50.3: e = -50.3, P = -12575, I = 500 * -0.1006 = -50.3,
    out = -12625.3 -> -12625, p = (int16)(-6312.5) = -6312; m1 = m4 = 30000 + p = 23688 (front, +x),
    m2 = m3 = 30000 - p = 36312 (back): less thrust in front pitches the nose down, as asked."""
    ctrl = RateController(1, thrust="pwm")
    assert _tick(ctrl, 30000, (0, 50.3, 0)) == [23688, 36312, 36312, 23688]


def test_yaw_rate_through_the_yaw_attitude_loop():
    """Yaw rate 90 deg/s wanted, level, yaw 0. Yaw setpoint = 0 + 90 * 0.002 = 0.18 deg;
    attitude PID: e = 0.18, P = 1.08, D = 0.35 * -(0 - 0) / 0.002 = 0, integ = 0.00036, I = 0.00036:
    rate wanted 1.08036 deg/s; yaw-rate PID: P = 129.6432, integ = 0.00216072, I = 16.7 * 0.00216072 =
    0.0360840, out = 129.679 -> 129; control->yaw = -129; m1 = m3 = 30000 - 129, m2 = m4 = 30000 + 129."""
    ctrl = RateController(1, thrust="pwm")
    assert _tick(ctrl, 30000, (0, 0, 90)) == [29871, 30129, 29871, 30129]
    # Tick 2: setpoint 0.36, still yaw 0: e = 0.36, P = 2.16, integ = 0.00108, D = 0: 2.16108 deg/s;
    # rate PID: P = 259.3296, integ = 0.00216072 + 0.00432216 = 0.00648288, I = 0.108264: 259.437 -> 259.
    assert _tick(ctrl, 30000, (0, 0, 90)) == [29741, 30259, 29741, 30259]


def test_saturation_cap_and_commander_thrust_limits():
    """Roll 1000 deg/s wanted: P = 250000 -> saturateSignedInt16 32767, r = (int16)16383.5 = 16383.
    Thrust 65000 is capped by the commander to 60000: m1 = m2 = 43617, m3 = m4 = 76383 > 65535, so
    powerDistributionCap takes 10848 off all four: (32769, 32769, 65535, 65535)."""
    ctrl = RateController(1, thrust="pwm")
    assert _tick(ctrl, 65000, (1000, 0, 0)) == [32769, 32769, 65535, 65535]
    # The negative side: roll -1000 at thrust 10000: m1 = m2 = 26383, m3 = m4 = 10000 - 16383 < 0 -> 0.
    ctrl = RateController(1, thrust="pwm")
    assert _tick(ctrl, 10000, (-1000, 0, 0)) == [26383, 26383, 0, 0]
    # Below MIN_THRUST = 1000 the commander sends 0: motors off whatever the rates.
    assert _tick(ctrl, 999, (-1000, 0, 0)) == [0, 0, 0, 0]


def test_thrust_zero_reinitialises_and_normalised_units():
    ctrl = RateController(1, thrust="pwm")
    _tick(ctrl, 30000, (0, 0, 0), (10, 0, 0))
    _tick(ctrl, 0, (0, 0, 0), (10, 0, 0))  # thrust 0: PIDs reset (integ 0, prevMeasured 0)
    # so the next tick is tick 1 of test_d_term_on_measurement_and_integral_over_two_ticks again
    assert _tick(ctrl, 30000, (0, 0, 0), (10, 0, 0)) == [37505, 37505, 22495, 22495]
    # normalised thrust: 0.5 * 65535 = 32767.5 -> uint16 32767; a = 2 * 32767 / 65535 - 1
    ctrl = RateController(1)
    a = ctrl.motor_commands(torch.tensor([[0.5, 0, 0, 0]], dtype=F64), torch.zeros(1, 3, dtype=F64), LEVEL)
    assert torch.allclose(a, torch.full((1, 4), 2 * 32767 / PWM_MAX - 1, dtype=F64))
    assert pwm_to_action(torch.tensor([0.0, PWM_MAX])).tolist() == [-1.0, 1.0]


def test_reset_mask_only_touches_those_drones():
    ctrl = RateController(2, thrust="pwm")
    sp = torch.tensor([[30000, 0.0, 0, 0]] * 2, dtype=F64)
    meas = torch.tensor([[math.radians(10), 0, 0]] * 2, dtype=F64)
    quat = LEVEL.expand(2, 4)
    ctrl.pwm(sp, meas, quat)
    ctrl.reset(torch.tensor([False, True]))
    out = ctrl.pwm(sp, meas, quat).tolist()
    assert out == [[31260, 31260, 28740, 28740], [37505, 37505, 22495, 22495]]


def test_motor_order_matches_the_drone_model():
    """The firmware's m1..m4 are our rotors 0..3: a positive roll / pitch / yaw output of the mix
    gives a positive roll torque, a nose-up (negative about +y) pitch torque and a positive yaw
    torque through cf21's rotor positions and directions (tau = sum r_i x (0, 0, T_i) + d_i k T_i)."""
    model = load_drone("cf21")
    r = torch.tensor(model.rotor_positions, dtype=F64)
    d = torch.tensor(model.rotor_directions, dtype=F64)
    torque_map = torch.stack([r[:, 1], -r[:, 0], d * model.torque_to_thrust], -1)  # (4, 3)
    mix = {  # powerDistributionLegacy's coefficients of r, p and control->yaw (= -yawOutput)
        "roll": torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=F64),
        "pitch": torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=F64),
        "yaw": -torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=F64),  # positive yawOutput
    }
    roll, pitch, yaw = (mix[k] @ torque_map for k in ("roll", "pitch", "yaw"))
    assert roll[0] > 0 and abs(roll[1]) < 1e-12 and abs(roll[2]) < 1e-12
    assert pitch[1] < 0 and abs(pitch[0]) < 1e-12 and abs(pitch[2]) < 1e-12
    assert yaw[2] > 0 and abs(yaw[0]) < 1e-12 and abs(yaw[1]) < 1e-12


def test_yaw_deg():
    half = math.radians(30) / 2
    q = torch.tensor([[math.cos(half), 0, 0, math.sin(half)]], dtype=F64)
    assert yaw_deg(q).item() == pytest.approx(30.0)


# --- (b) closed loop on either engine -----------------------------------------------------------
def _engine(kind, model, n, dt=0.01):
    opts = {"dtype": F64} if kind == "batched" else {"ground": False, "substeps": 2}  # pybullet at 1 ms
    return RateControlledEngine(lambda inner_dt: make_engine(kind, model, n, dt=inner_dt, **opts), dt=dt)


def _start(model, n):
    s = DroneState.hover(n, model, position=(0.0, 0.0, 10.0))
    s.position[:, 0] = 5.0 * torch.arange(n, dtype=F64)
    return s


@pytest.mark.parametrize("kind", ["batched", "pybullet"])
def test_rate_steps_converge_hover_holds_yaw_sign(kind):
    """Drone 0 hovers (hover thrust, zero rates), drone 1 gets a 1 rad/s roll-rate step, drone 2 a
    1 rad/s yaw-rate step, for 1 s at 100 Hz (5 rate-loop ticks each).
    Measured (cf21, both engines, 2 ms resolution): roll rate 10 % at 10 ms, 90 % at 38 ms (rise 28 ms),
    peak 1.34 rad/s at ~20 ms, 1.004 at 1 s. Yaw (through the yaw attitude loop): 10 % at 90 ms, 90 % at
    300 ms, peak 1.033, 1.022 at 1 s. Hover: -0.06 mm in 1 s (the uint16 truncation of 43250.4)."""
    model = load_drone("cf21")
    eng = _engine(kind, model, 3)
    try:
        start = _start(model, 3)
        eng.reset(start)
        h = hover_thrust(model)
        sp = torch.tensor([[h, 0, 0, 0], [h, 1.0, 0, 0], [h, 0, 0, 1.0]], dtype=F64)
        for _ in range(100):
            s = eng.step(sp)
        assert eng.time == pytest.approx(1.0)
        assert (s.position[0] - start.position[0]).norm() < 1e-3
        assert s.angular_velocity[0].abs().max() < 1e-6
        assert s.angular_velocity[1, 0].item() == pytest.approx(1.0, abs=0.02)
        assert s.angular_velocity[1, 1:].abs().max() < 1e-6
        assert s.angular_velocity[2, 2].item() == pytest.approx(1.0, abs=0.05)
        assert yaw_deg(s.quaternion)[2].item() > 30.0  # yawed counter-clockwise (46 deg after 1 s)
    finally:
        eng.close()


def test_wrapper_interface():
    model = load_drone("cf21")
    inner = make_engine("batched", model, 2, dt=0.002, dtype=F64)
    eng = RateControlledEngine(inner, dt=0.01)
    assert eng.inner_steps == 5 and eng.dt == 0.01 and eng.n == 2
    with pytest.raises(ValueError):
        eng.step(torch.zeros(2, 3, dtype=F64))
    with pytest.raises(ValueError):
        RateControlledEngine(make_engine("batched", model, 2, dt=0.01))  # not the 500 Hz loop
    with pytest.raises(ValueError):
        RateControlledEngine(inner, dt=0.011)
    eng.scale_dynamics(torch.ones(2), torch.ones(2), torch.ones(2), torch.ones(2))
    eng.reset(_start(model, 2))
    eng.step(torch.zeros(2, 4, dtype=F64))
    eng.reset(_start(model, 2).select(torch.tensor([1])), torch.tensor([1]))
    assert eng.controller.fresh.tolist() == [False, True]
    eng.close()


# --- (c) batched and pybullet agree behind the wrapper -------------------------------------------
def test_engines_agree_under_ctbr_commands():
    """Three drones, 1 s of changing CTBR commands (thrust 0.6..0.75, rates up to 3 rad/s).
    Measured (batched float64 RK4 vs pybullet at 1 ms substeps, drones moved 0.8 .. 1.2 m, rates up to
    4.9 rad/s): position gap 1.6 mm, velocity 2.2 mm/s, body rate 0.0067 rad/s; the last ticks' PWM differ
    by up to 93 (the D gain 2.5 / 0.002 = 1250 PWM per deg/s amplifies the engines' tiny rate gap).
    Tolerances are ~3x those; the motor-command agreement test (test_core_engines.py) allows 1 cm."""
    model = load_drone("cf21")
    n = 3
    gen = torch.Generator().manual_seed(11)
    start = _start(model, n)
    engines = [_engine(kind, model, n) for kind in ("batched", "pybullet")]
    try:
        for e in engines:
            e.reset(start)
        states = [None, None]
        max_rate = 0.0
        for k in range(100):
            if k % 10 == 0:
                sp = torch.cat([0.6 + 0.15 * torch.rand(n, 1, generator=gen, dtype=F64),
                                3.0 * (2 * torch.rand(n, 3, generator=gen, dtype=F64) - 1)], -1)
            states = [e.step(sp) for e in engines]
            max_rate = max(max_rate, states[0].angular_velocity.abs().max().item())
        sb, sp_ = states
        assert max_rate > 2.0  # the commands really turned the drones
        pos_err = (sb.position - sp_.position).norm(dim=-1).max().item()
        rate_err = (sb.angular_velocity - sp_.angular_velocity).norm(dim=-1).max().item()
        vel_err = (sb.velocity - sp_.velocity).norm(dim=-1).max().item()
        assert pos_err < 5e-3, pos_err
        assert vel_err < 7e-3, vel_err
        assert rate_err < 0.02, rate_err
    finally:
        for e in engines:
            e.close()


def test_float32_batched_matches_float64_behind_the_wrapper():
    """The training engine's dtype: the same 1 s of CTBR commands in float32 and float64.
    Measured: 1.1e-5 m and 1.0e-5 rad/s apart (the int16/uint16 truncations did not diverge)."""
    model = load_drone("cf21")
    n = 3
    gen = torch.Generator().manual_seed(11)
    start = _start(model, n)
    e64 = _engine("batched", model, n)
    e32 = RateControlledEngine(lambda d: make_engine("batched", model, n, dt=d, dtype=torch.float32), dt=0.01)
    for e in (e64, e32):
        e.reset(start)
    for k in range(100):
        if k % 10 == 0:
            sp = torch.cat([0.6 + 0.15 * torch.rand(n, 1, generator=gen, dtype=F64),
                            3.0 * (2 * torch.rand(n, 3, generator=gen, dtype=F64) - 1)], -1)
        a, b = e64.step(sp), e32.step(sp.float())
    assert b.position.dtype == torch.float32
    assert (a.position - b.position.double()).norm(dim=-1).max() < 1e-3
    assert (a.angular_velocity - b.angular_velocity.double()).norm(dim=-1).max() < 1e-3


# --- the firmware's own pid.c, compiled (opt-in) -----------------------------------------------------
FIRMWARE = os.environ.get("CRAZYFLIE_FIRMWARE")  # e.g. a clone of bitcraze/crazyflie-firmware (or its .git)


@pytest.mark.skipif(not FIRMWARE or shutil.which("gcc") is None, reason="set CRAZYFLIE_FIRMWARE and have gcc")
@pytest.mark.parametrize("scale", ["mild", "saturating"])
def test_matches_compiled_firmware_pid_c(tmp_path, scale):
    """200 sequences of 20 random ticks through test/firmware_c/harness.c (the firmware's pid.c) and
    RateController. Measured: 11 (mild: rates +-20 deg/s wanted, +-3 measured) and 8 (saturating: +-400,
    +-300) of 4000 ticks differ, by at most 2 PWM units (float32 vs float64 at a truncation boundary)."""
    here = Path(__file__).parent / "firmware_c"
    for name in ("harness.c", "filter.h", "num.h"):
        shutil.copy(here / name, tmp_path / name)
    (tmp_path / "autoconf.h").write_text("")
    for src in ("src/utils/src/pid.c", "src/utils/interface/pid.h"):
        text = subprocess.run(["git", "-C", FIRMWARE, "show", f"HEAD:{src}"], check=True,
                              capture_output=True, text=True).stdout
        (tmp_path / Path(src).name).write_text(text)
    exe = tmp_path / "harness"
    subprocess.run(["gcc", "-O0", "-I", str(tmp_path), str(tmp_path / "harness.c"), str(tmp_path / "pid.c"),
                    "-lm", "-o", str(exe)], check=True)
    wide, gyro = (20.0, 3.0) if scale == "mild" else (400.0, 300.0)
    f32 = lambda x: float(torch.tensor(x, dtype=torch.float32))  # noqa: E731  both sides see the same inputs
    rng = random.Random(0)
    lines, runs = [], []
    for _ in range(200):
        yaw = f32(rng.uniform(-179, 179))
        lines.append(f"i {yaw!r}")
        seq = []
        for k in range(20):
            if k:
                yaw = f32(max(-179.0, min(179.0, yaw + rng.uniform(-2, 2))))
            thrust = float(int(rng.choice([rng.uniform(1000, 60000), 30000.0])))
            v = [thrust] + [f32(rng.uniform(-wide, wide)) for _ in range(3)] \
                + [f32(rng.uniform(-gyro, gyro)) for _ in range(3)] + [yaw]
            seq.append(v)
            # the firmware's pitch-rate setpoint is -q (our q = v[2])
            lines.append("t " + " ".join(repr(x) for x in [v[0], v[1], -v[2], *v[3:]]))
        runs.append(seq)
    out = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True, text=True, check=True)
    c_rows = [[int(x) for x in line.split(":")[1].split()] for line in out.stdout.splitlines() if line]
    py_rows = []
    for seq in runs:
        ctrl = RateController(1, thrust="pwm")
        for v in seq:
            half = math.radians(v[7]) / 2
            quat = torch.tensor([[math.cos(half), 0.0, 0.0, math.sin(half)]], dtype=F64)
            sp = torch.tensor([[v[0], *map(math.radians, v[1:4])]], dtype=F64)
            rates = torch.tensor([list(map(math.radians, v[4:7]))], dtype=F64)
            py_rows.append([int(x) for x in ctrl.pwm(sp, rates, quat)[0].tolist()])
    assert len(c_rows) == len(py_rows) == 4000
    diffs = [max(abs(a - b) for a, b in zip(c, p)) for c, p in zip(c_rows, py_rows)]
    print(f'{scale}: {sum(d > 0 for d in diffs)} of 4000 ticks differ, at most by {max(diffs)}')
    assert max(diffs) <= 3  # one unit of r, p and yaw each
    assert sum(d > 0 for d in diffs) < 40  # < 1 % of the ticks
