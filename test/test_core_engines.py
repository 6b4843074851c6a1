"""Physics engines: hand-derived checks of the equations of motion and batched/pybullet agreement.

Equations (docs/task.md section 1): T_i = c0 + c1 w + c2 w^2 along body +z, yaw torque d_i k T_i,
motor lag dw/dt = (w_cmd - w) / tau, w_cmd = (a + 1) / 2.
"""

import math

import pytest
import torch

torch.set_num_threads(1)

from snn_controller.sim.drone import load_drone  # noqa: E402
from snn_controller.sim.engines import make_engine  # noqa: E402
from snn_controller.sim.state import DroneState  # noqa: E402

F64 = torch.float64
DT = 0.01
DRONES = ("cf21", "cf2x")
YAW_PATTERN = (-1.0, 1.0, -1.0, 1.0)  # = rotor_directions of both files


def _level_state(n, model, position=(0.0, 0.0, 10.0), rotor_speed=None, velocity=(0.0, 0.0, 0.0)):
    pos = torch.tensor(position, dtype=F64).expand(n, 3).clone()
    pos[:, 0] += 5.0 * torch.arange(n, dtype=F64)
    quat = torch.zeros(n, 4, dtype=F64)
    quat[:, 0] = 1.0
    w = model.hover_rotor_speed if rotor_speed is None else rotor_speed
    return DroneState(pos, quat, torch.tensor(velocity, dtype=F64).expand(n, 3).clone(),
                      torch.zeros(n, 3, dtype=F64), torch.full((n, 4), float(w), dtype=F64))


def _rotation_angle_deg(qa, qb):
    """Angle of R_a^T R_b from two unit quaternions (independent of the code under test)."""
    dot = (qa * qb).sum(-1).abs().clamp(max=1.0)
    return torch.rad2deg(2 * torch.acos(dot))


def _tilt_deg(q):
    qx, qy = q[:, 1], q[:, 2]
    return torch.rad2deg(torch.acos((1 - 2 * (qx * qx + qy * qy)).clamp(-1, 1)))


# --- hand-derived single-engine checks ---------------------------------------------------
@pytest.mark.parametrize("drone", DRONES)
def test_batched_hover_holds(drone):
    model = load_drone(drone)
    eng = make_engine("batched", model, 3, dtype=F64)
    start = _level_state(3, model)
    eng.reset(start)
    a = torch.full((3, 4), model.hover_action, dtype=F64)
    for _ in range(100):
        s = eng.step(a)
    assert (s.position - start.position).abs().max() < 1e-4
    assert s.velocity.abs().max() < 1e-4
    assert eng.time == pytest.approx(1.0)


@pytest.mark.parametrize("drone", DRONES)
def test_pybullet_hover_holds(drone):
    model = load_drone(drone)
    eng = make_engine("pybullet", model, 2, ground=False)
    try:
        start = _level_state(2, model)
        eng.reset(start)
        a = torch.full((2, 4), model.hover_action, dtype=F64)
        for _ in range(100):
            s = eng.step(a)
        assert (s.position - start.position).abs().max() < 1e-4
    finally:
        eng.close()


@pytest.mark.parametrize("kind", ["batched", "pybullet"])
def test_vertical_acceleration_at_constant_rotor_speed(kind):
    """Lag off, level, at rest: a_z = 4 T(w) / m - g with T(w) = 0.0213 - 0.0112 w + 0.1201 w^2."""
    model = load_drone("cf21").with_options(motor_time_constant=0.0)
    w = 0.8
    a_z = 4 * (0.0213 - 0.0112 * w + 0.1201 * w * w) / 0.027 - 9.81
    opts = {"dtype": F64} if kind == "batched" else {"ground": False}
    eng = make_engine(kind, model, 2, **opts)
    try:
        start = _level_state(2, model, rotor_speed=w)
        eng.reset(start)
        action = torch.full((2, 4), 2 * w - 1, dtype=F64)
        s = eng.step(action)
        assert s.velocity[:, 2] == pytest.approx([a_z * DT] * 2, rel=1e-6)
        assert (s.velocity[:, :2].abs() < 1e-12).all()
        for _ in range(99):
            s = eng.step(action)
        # constant acceleration over 1 s: v = a t exactly; z = z0 + a t^2 / 2 (RK4 exact, pybullet's
        # semi-implicit Euler at dt/10 is off by a h t / 2 = 1.7 mm)
        assert s.velocity[:, 2] == pytest.approx([a_z] * 2, rel=1e-6)
        ztol = 1e-9 if kind == "batched" else 3e-3
        assert (s.position[:, 2] - (start.position[:, 2] + a_z / 2)).abs().max() < ztol
        assert (s.rotor_speed - w).abs().max() < 1e-12
    finally:
        eng.close()


def test_cf2x_free_fall_at_minus_one():
    """cf2x: T = kf rpm^2, so a = -1 (w = 0) gives no thrust and free fall at g = 9.8."""
    model = load_drone("cf2x")
    eng = make_engine("batched", model, 1, dtype=F64)
    eng.reset(_level_state(1, model))
    for _ in range(50):
        s = eng.step(-torch.ones(1, 4, dtype=F64))
    assert s.velocity[0, 2].item() == pytest.approx(-9.8 * 0.5, rel=1e-9)
    assert s.position[0, 2].item() == pytest.approx(10.0 - 9.8 * 0.5**2 / 2, rel=1e-9)


@pytest.mark.parametrize("kind", ["batched", "pybullet"])
@pytest.mark.parametrize("flip", [False, True])
def test_pure_yaw_torque_sign_follows_rotor_directions(kind, flip):
    """cf2x (no lag): a = hover + 0.1 * (-1, 1, -1, 1); w_i = w_h -/+ 0.05, T_i = c2 w_i^2,
    tau_z = k sum d_i T_i = k c2 * 0.4 w_h (for d = (-1, 1, -1, 1)); roll/pitch torques cancel."""
    model = load_drone("cf2x")
    dirs = (1.0, -1.0, 1.0, -1.0) if flip else YAW_PATTERN
    model = model.with_options(rotor_directions=dirs)
    opts = {"dtype": F64} if kind == "batched" else {"ground": False}
    eng = make_engine(kind, model, 1, **opts)
    try:
        eng.reset(_level_state(1, model))
        action = torch.tensor([[model.hover_action + 0.1 * p for p in YAW_PATTERN]], dtype=F64)
        s = eng.step(action)
        c2 = 3.16e-10 * model.max_rpm**2
        k = 7.94e-12 / 3.16e-10
        w_h = model.hover_rotor_speed
        tau_z = k * c2 * 0.4 * w_h * (-1 if flip else 1)
        expected = tau_z / 2.17e-5 * DT
        assert s.angular_velocity[0, 2].item() == pytest.approx(expected, rel=1e-6)
        assert abs(s.angular_velocity[0, 2].item()) > 0.1  # a real spin, not noise
        assert s.angular_velocity[0, :2].abs().max() < 1e-9
        # yaw angle after one step = alpha dt^2 / 2 -> q_z = sin(angle / 2); pybullet's semi-implicit
        # Euler over 10 substeps gives alpha h^2 (1 + ... + 10) = 1.1 times that
        rel = 1e-6 if kind == "batched" else 0.15
        assert s.quaternion[0, 3].item() == pytest.approx(math.sin(expected * DT / 4), rel=rel)
        assert s.quaternion[0, 1:3].abs().max() < 1e-9
    finally:
        eng.close()


def test_yaw_sign_with_lag_cf21():
    model = load_drone("cf21")
    eng = make_engine("batched", model, 1, dtype=F64)
    eng.reset(_level_state(1, model))
    action = torch.tensor([[model.hover_action + 0.2 * p for p in model.rotor_directions]], dtype=F64)
    for _ in range(10):
        s = eng.step(action)
    assert s.angular_velocity[0, 2] > 0.5
    assert s.angular_velocity[0, :2].abs().max() < 1e-9


@pytest.mark.parametrize("kind", ["batched", "pybullet"])
def test_motor_lag_first_order(kind):
    model = load_drone("cf21")
    tau = 0.072
    opts = {"dtype": F64} if kind == "batched" else {"ground": False}
    eng = make_engine(kind, model, 2, **opts)
    try:
        start = _level_state(2, model)
        w0 = torch.tensor([[0.2, 0.5, 0.9, 0.66], [1.0, 0.0, 0.3, 0.7]], dtype=F64)
        start.rotor_speed = w0.clone()
        eng.reset(start)
        w_cmd = torch.tensor([[0.9, 0.1, 0.4, 0.66], [0.0, 1.0, 0.35, 0.2]], dtype=F64)
        s = eng.step(2 * w_cmd - 1)
        expected = w_cmd + (w0 - w_cmd) * math.exp(-DT / tau)
        assert (s.rotor_speed - expected).abs().max() < 1e-6
        # commands outside [-1, 1] are clipped to w in [0, 1]
        s = eng.step(torch.tensor([[3.0, -3.0, 1.0, -1.0]] * 2, dtype=F64))
        assert (s.rotor_speed >= 0).all() and (s.rotor_speed <= 1).all()
    finally:
        eng.close()


def test_ground_effect_and_drag_initial_acceleration():
    """gym-pybullet-drones' optional effects, by hand, on cf2x (no lag).
    Ground effect: T_i (1 + coeff (R / (4 h))^2); drag: F = -c_xy * sum(rad/s) * v_body."""
    model = load_drone("cf2x")
    h = 0.1
    eng = make_engine("batched", model, 1, dtype=F64, ground_effect=True)
    eng.reset(_level_state(1, model, position=(0.0, 0.0, h)))
    s = eng.step(torch.full((1, 4), model.hover_action, dtype=F64))
    a_ge = 9.8 * 11.36859 * (0.0231348 / (4 * h)) ** 2  # the extra thrust over hover, per unit mass
    assert s.velocity[0, 2].item() == pytest.approx(a_ge * DT, rel=2e-3)

    eng = make_engine("batched", model, 1, dtype=F64, drag=True)
    eng.reset(_level_state(1, model, velocity=(1.0, 0.0, 0.0)))
    s = eng.step(torch.full((1, 4), model.hover_action, dtype=F64))
    hover_rpm = math.sqrt(0.027 * 9.8 / (4 * 3.16e-10))
    a_drag = -9.1785e-7 * 4 * hover_rpm * 2 * math.pi / 60 * 1.0 / 0.027
    assert s.velocity[0, 0].item() - 1.0 == pytest.approx(a_drag * DT, rel=2e-3)
    assert abs(s.velocity[0, 2].item()) < 1e-9


# --- agreement between the engines --------------------------------------------------------
N_AGREE = 4


def _random_start(model, n, seed):
    """Far apart in x, high above the ground, random tilt <= 20 deg, velocities and body rates."""
    g = torch.Generator().manual_seed(seed)
    u = lambda *shape: 2 * torch.rand(*shape, generator=g, dtype=F64) - 1  # noqa: E731
    pos = torch.zeros(n, 3, dtype=F64)
    pos[:, 0] = 5.0 * torch.arange(n, dtype=F64)
    pos[:, 2] = 100.0
    axis = u(n, 3)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    angle = u(n, 1) * math.radians(20)
    quat = torch.cat([torch.cos(angle / 2), axis * torch.sin(angle / 2)], -1)
    return DroneState(pos, quat, u(n, 3), 0.5 * u(n, 3), torch.full((n, 4), model.hover_rotor_speed, dtype=F64))


ROLL = torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=F64)  # + on rotors at +y: +tau_x
PITCH = torch.tensor([-1.0, 1.0, 1.0, -1.0], dtype=F64)  # + on rotors at -x: +tau_y
YAW = torch.tensor(YAW_PATTERN, dtype=F64)


def _actions(model, n, kind, steps=100):
    out = []
    for k in range(steps):
        a = torch.full((n, 4), model.hover_action, dtype=F64)
        if kind == "aggressive":
            t = k * DT
            for i in range(n):  # cosine torques: bounded attitudes, rates of several rad/s
                a[i] += (0.2 * math.cos(2 * math.pi * (3 + i) * t) * ROLL
                         + 0.2 * math.cos(2 * math.pi * (4 + i) * t) * PITCH
                         + 0.1 * math.cos(2 * math.pi * 2 * t) * YAW)
        out.append(a)
    return out


def _run(engine, start, actions):
    engine.reset(start)
    max_rate = max_tilt = 0.0
    for a in actions:
        s = engine.step(a)
        max_rate = max(max_rate, s.angular_velocity.abs().max().item())
        max_tilt = max(max_tilt, _tilt_deg(s.quaternion.double()).max().item())
    return s, max_rate, max_tilt


@pytest.mark.parametrize("drone", DRONES)
@pytest.mark.parametrize("sequence", ["hover", "aggressive"])
def test_batched_and_pybullet_agree(drone, sequence):
    model = load_drone(drone)
    start = _random_start(model, N_AGREE, seed=7)
    actions = _actions(model, N_AGREE, sequence)
    sb, max_rate, max_tilt = _run(make_engine("batched", model, N_AGREE, dtype=F64), start, actions)
    pb = make_engine("pybullet", model, N_AGREE, ground=False)
    try:
        sp, _, _ = _run(pb, start, actions)
    finally:
        pb.close()
    if sequence == "aggressive":  # the premise of the test: a violent manoeuvre
        assert max_rate > 4.0 and max_tilt > 30.0, (max_rate, max_tilt)
    pos_err = (sb.position - sp.position).norm(dim=-1)
    ang_err = _rotation_angle_deg(sb.quaternion, sp.quaternion)
    assert (pos_err < 0.01).all(), f"position differs by {pos_err.tolist()} m"
    assert (ang_err < 1.0).all(), f"attitude differs by {ang_err.tolist()} deg"
    assert (sb.velocity - sp.velocity).norm(dim=-1).max() < 0.05
    assert (sb.angular_velocity - sp.angular_velocity).norm(dim=-1).max() < 0.1
    assert (sb.rotor_speed - sp.rotor_speed).abs().max() < 1e-5  # RK4 vs exact lag
    # both engines keep unit quaternions
    assert ((sb.quaternion.norm(dim=-1) - 1).abs() < 1e-9).all()
    assert ((sp.quaternion.norm(dim=-1) - 1).abs() < 1e-9).all()
    # the drones really moved apart from their starts (not a trivially passing comparison)
    assert (sb.position - start.position).norm(dim=-1).min() > 0.1


def test_engine_difference_shrinks_with_pybullet_substeps():
    """The batched/pybullet gap is pybullet's first-order integration error, not a model mismatch:
    five times finer pybullet substeps bring it down several times."""
    model = load_drone("cf21")
    start = _random_start(model, N_AGREE, seed=7)
    actions = _actions(model, N_AGREE, "aggressive")
    sb, _, _ = _run(make_engine("batched", model, N_AGREE, dtype=F64), start, actions)
    errors = []
    for substeps in (10, 50):
        pb = make_engine("pybullet", model, N_AGREE, ground=False, substeps=substeps)
        try:
            sp, _, _ = _run(pb, start, actions)
        finally:
            pb.close()
        errors.append((sb.position - sp.position).norm(dim=-1).max().item())
    assert errors[1] < errors[0] / 3, errors


@pytest.mark.parametrize("options", [{"ground_effect": True}, {"drag": True}, {"ground_effect": True, "drag": True}])
def test_engines_agree_on_ground_effect_and_drag(options):
    """The optional effects are the same in both engines (pybullet without its ground plane, drones
    0.06 .. 0.4 m up so the ground effect matters, moving so the drag matters)."""
    model = load_drone("cf2x")
    start = _random_start(model, N_AGREE, seed=5)
    start.position[:, 2] = torch.tensor([0.06, 0.1, 0.2, 0.4], dtype=F64)
    start.velocity[:, 2] = 0.0
    actions = [torch.full((N_AGREE, 4), model.hover_action - 0.05, dtype=F64)] * 30
    sb, _, _ = _run(make_engine("batched", model, N_AGREE, dtype=F64, **options), start, actions)
    plain, _, _ = _run(make_engine("batched", model, N_AGREE, dtype=F64), start, actions)
    pb = make_engine("pybullet", model, N_AGREE, ground=False, **options)
    try:
        sp, _, _ = _run(pb, start, actions)
    finally:
        pb.close()
    gap = (sb.position - sp.position).norm(dim=-1).max().item()
    effect = (sb.position - plain.position).norm(dim=-1).max().item()
    assert gap < 1e-3
    assert effect > 4e-3 and effect > 10 * gap  # the effect is on and both engines model it alike


@pytest.mark.parametrize("drone", DRONES)
def test_float32_matches_float64(drone):
    model = load_drone(drone)
    start = _random_start(model, N_AGREE, seed=3)
    actions = _actions(model, N_AGREE, "aggressive")
    s64, _, _ = _run(make_engine("batched", model, N_AGREE, dtype=F64), start, actions)
    e32 = make_engine("batched", model, N_AGREE, dtype=torch.float32)
    s32, _, _ = _run(e32, start, [a.float() for a in actions])
    assert s32.position.dtype == torch.float32
    assert (s32.position.double() - s64.position).norm(dim=-1).max() < 1e-3
    assert _rotation_angle_deg(s32.quaternion.double(), s64.quaternion).max() < 0.05
    assert ((s32.quaternion.double().norm(dim=-1) - 1).abs() < 1e-5).all()


# --- interface ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["batched", "pybullet"])
@pytest.mark.parametrize("index_kind", ["mask", "indices"])
def test_reset_with_index_changes_only_those_drones(kind, index_kind):
    model = load_drone("cf21")
    opts = {"dtype": F64} if kind == "batched" else {"ground": False}
    eng = make_engine(kind, model, 3, **opts)
    try:
        start = _random_start(model, 3, seed=1)
        eng.reset(start)
        for _ in range(3):
            eng.step(torch.full((3, 4), model.hover_action, dtype=F64))
        before = eng.state.clone()
        new = _random_start(model, 3, seed=2).select(torch.tensor([1]))
        new.position[:] = torch.tensor([2.0, 3.0, 4.0], dtype=F64)
        new.rotor_speed[:] = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
        index = torch.tensor([False, True, False]) if index_kind == "mask" else torch.tensor([1])
        eng.reset(new, index)
        after = eng.state
        for key in ("position", "quaternion", "velocity", "angular_velocity", "rotor_speed"):
            a, b, want = getattr(after, key), getattr(before, key), getattr(new, key)
            assert torch.equal(a[[0, 2]], b[[0, 2]]), key
            assert torch.allclose(a[1], want[0].to(a.dtype), atol=1e-9), key
    finally:
        eng.close()


@pytest.mark.parametrize("kind", ["batched", "pybullet"])
def test_wrong_action_shape_raises(kind):
    model = load_drone("cf21")
    opts = {} if kind == "batched" else {"ground": False}
    eng = make_engine(kind, model, 2, **opts)
    try:
        for shape in [(2, 3), (3, 4), (4,), (2, 4, 1)]:
            with pytest.raises(ValueError):
                eng.step(torch.zeros(shape, dtype=F64))
    finally:
        eng.close()


def test_reset_with_wrong_drone_count_and_unknown_engine():
    model = load_drone("cf21")
    eng = make_engine("batched", model, 2)
    with pytest.raises(ValueError):
        eng.reset(DroneState.hover(3, model))
    with pytest.raises(ValueError):
        make_engine("mujoco", model, 2)
    with pytest.raises(ValueError):
        make_engine("batched", model, 2, integrator="leapfrog")
