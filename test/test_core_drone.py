"""Drone models: constants from docs/task.md, validation errors, gym-pybullet-drones URDF files.

Expected numbers are derived here by hand from docs/task.md (section 1), not copied from the code.
"""

import copy
import math

import pytest
import torch
import yaml

torch.set_num_threads(1)

from snn_controller.config import ConfigError, package_root  # noqa: E402
from snn_controller.sim.drone import load_drone, load_urdf  # noqa: E402

DRONES_DIR = package_root() / "config" / "drones"


def _yaml(name):
    with open(DRONES_DIR / f"{name}.yaml") as f:
        return yaml.safe_load(f)


def _write(tmp_path, data, name="drone.yaml"):
    path = tmp_path / name
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return path


# --- constants ---------------------------------------------------------------------------
def test_cf21_constants_from_task_md():
    m = load_drone("cf21")
    assert m.name == "cf21"
    assert m.mass == pytest.approx(0.027)
    assert m.gravity == pytest.approx(9.81)
    assert m.inertia == pytest.approx((1.029e-5, 1.105e-5, 2.005e-5))
    assert m.thrust_coefficients == pytest.approx((0.0213, -0.0112, 0.1201))
    for w in (0.0, 0.3, 0.667, 1.0):
        assert m.thrust(w) == pytest.approx(0.0213 - 0.0112 * w + 0.1201 * w * w)
    assert m.torque_to_thrust == pytest.approx(4.665e-3)
    assert m.motor_time_constant == pytest.approx(0.072)
    assert tuple(m.rotor_directions) == (-1.0, 1.0, -1.0, 1.0)
    expected_positions = [(0.028, -0.028, 0.0), (-0.028, -0.028, 0.0), (-0.028, 0.028, 0.0), (0.028, 0.028, 0.0)]
    for got, want in zip(m.rotor_positions, expected_positions):
        assert got == pytest.approx(want)
    # Hover: 4 T(w) = m g  ->  0.1201 w^2 - 0.0112 w + 0.0213 - 0.027*9.81/4 = 0 (larger root).
    c = 0.0213 - 0.027 * 9.81 / 4
    w_hover = (0.0112 + math.sqrt(0.0112**2 - 4 * 0.1201 * c)) / (2 * 0.1201)
    assert w_hover == pytest.approx(0.66, abs=0.01)  # docs/task.md: hover at w ~= 0.667
    assert m.hover_rotor_speed == pytest.approx(w_hover, rel=1e-9)
    assert m.hover_action == pytest.approx(2 * w_hover - 1, rel=1e-9)
    # Thrust-to-weight ~2: 4 T(1) / (m g)
    assert m.thrust_to_weight == pytest.approx(4 * (0.0213 - 0.0112 + 0.1201) / (0.027 * 9.81), rel=1e-9)
    assert 1.9 < m.thrust_to_weight < 2.1


def test_cf2x_constants_from_task_md():
    m = load_drone("cf2x")
    kf, km, t2w, mass, g = 3.16e-10, 7.94e-12, 2.25, 0.027, 9.8
    assert m.gravity == pytest.approx(g)
    assert m.mass == pytest.approx(mass)
    assert m.inertia == pytest.approx((1.4e-5, 1.4e-5, 2.17e-5))
    assert m.motor_time_constant == 0.0  # no lag in gym-pybullet-drones
    max_rpm = math.sqrt(t2w * mass * g / (4 * kf))
    hover_rpm = math.sqrt(mass * g / (4 * kf))
    assert max_rpm == pytest.approx(21703, abs=1.0)
    assert hover_rpm == pytest.approx(14468, abs=1.0)
    assert m.max_rpm == pytest.approx(max_rpm, rel=1e-9)
    assert m.hover_rotor_speed * m.max_rpm == pytest.approx(hover_rpm, rel=1e-9)
    # T = kf rpm^2 with rpm = w * max_rpm; yaw torque km rpm^2 = (km / kf) T
    for w in (0.0, 0.5, 1.0):
        assert m.thrust(w) == pytest.approx(kf * (w * max_rpm) ** 2, rel=1e-9, abs=1e-15)
    assert m.torque_to_thrust == pytest.approx(km / kf, rel=1e-9)
    assert m.thrust_to_weight == pytest.approx(t2w, rel=1e-9)
    assert tuple(m.rotor_directions) == (-1.0, 1.0, -1.0, 1.0)
    assert m.drag.xy == pytest.approx(9.1785e-7) and m.drag.z == pytest.approx(10.311e-7)
    assert m.ground_effect.coefficient == pytest.approx(11.36859)
    assert m.ground_effect.prop_radius == pytest.approx(0.0231348)
    assert m.ground_effect.height_clip == pytest.approx(0.0378, abs=1e-4)


def test_load_by_yaml_path_equals_load_by_name():
    assert load_drone(DRONES_DIR / "cf21.yaml").thrust_coefficients == load_drone("cf21").thrust_coefficients


def test_with_options_disables_motor_lag_only():
    m = load_drone("cf21")
    m0 = m.with_options(motor_time_constant=0.0)
    assert m0.motor_time_constant == 0.0 and m.motor_time_constant == pytest.approx(0.072)
    assert m0.thrust_coefficients == m.thrust_coefficients


# --- validation -------------------------------------------------------------------------
def _expect_error(path, *fragments):
    with pytest.raises(ConfigError) as info:
        load_drone(path)
    msg = str(info.value)
    assert str(path) in msg, f"error does not name the file: {msg}"
    for fragment in fragments:
        assert fragment in msg, f"error does not mention {fragment!r}: {msg}"
    return msg


def test_unknown_key_is_rejected_with_file_and_key(tmp_path):
    data = _yaml("cf21")
    data["masss"] = 0.027
    _expect_error(_write(tmp_path, data), "masss")


def test_unknown_nested_key_is_rejected(tmp_path):
    data = _yaml("cf21")
    data["ground_effect"]["coeff"] = 1.0
    _expect_error(_write(tmp_path, data), "coeff", "ground_effect")


def test_missing_key_is_reported(tmp_path):
    data = _yaml("cf21")
    del data["inertia"]
    _expect_error(_write(tmp_path, data), "inertia")


def test_wrong_type_is_reported(tmp_path):
    data = _yaml("cf21")
    data["mass"] = "heavy"
    _expect_error(_write(tmp_path, data), "mass")


def test_negative_mass_polynomial_model(tmp_path):
    data = _yaml("cf21")
    data["mass"] = -0.027
    _expect_error(_write(tmp_path, data), "mass")


def test_negative_mass_rpm_squared_model(tmp_path):
    data = _yaml("cf2x")
    data["mass"] = -0.027
    _expect_error(_write(tmp_path, data), "mass")


def test_thrust_too_weak_polynomial(tmp_path):
    data = _yaml("cf21")
    # halved: 4 T(1) = 4 * (0.0213 - 0.0112 + 0.1201) / 2 = 0.2604 N < m g = 0.2649 N
    data["thrust"]["coefficients"] = [c / 2 for c in data["thrust"]["coefficients"]]
    _expect_error(_write(tmp_path, data), "thrust")


def test_thrust_too_weak_rpm_squared(tmp_path):
    data = _yaml("cf2x")
    data["thrust"]["thrust2weight"] = 0.9
    _expect_error(_write(tmp_path, data), "thrust")


def test_negative_thrust_polynomial(tmp_path):
    data = _yaml("cf21")
    data["thrust"]["coefficients"] = [-0.01, 0.0, 0.2]  # T(0) < 0
    _expect_error(_write(tmp_path, data), "thrust")


def test_non_physical_inertia_and_directions(tmp_path):
    data = _yaml("cf21")
    data["inertia"] = [1e-5, -1e-5, 2e-5]
    _expect_error(_write(tmp_path, data, "a.yaml"), "inertia")
    data = _yaml("cf21")
    data["rotor_directions"] = [1, 1, -1, 1]  # does not cancel
    _expect_error(_write(tmp_path, data, "b.yaml"), "rotor_directions")


def test_unknown_thrust_model(tmp_path):
    data = _yaml("cf21")
    data["thrust"]["model"] = "cubic"
    _expect_error(_write(tmp_path, data), "model", "cubic")


def test_thrust_key_of_the_other_model_names_file(tmp_path):
    data = _yaml("cf21")
    data["thrust"]["kf"] = 3.16e-10  # an rpm_squared key in a polynomial file
    _expect_error(_write(tmp_path, data), "kf")


def test_thrust_key_missing_for_model_names_file(tmp_path):
    data = _yaml("cf2x")
    del data["thrust"]["km"]
    _expect_error(_write(tmp_path, data), "km")


def test_thrust_model_keys_are_rejected(tmp_path):
    """The part that works today: wrong thrust keys are a ConfigError that names the key."""
    data = _yaml("cf21")
    data["thrust"]["kf"] = 3.16e-10
    with pytest.raises(ConfigError, match="kf"):
        load_drone(_write(tmp_path, data, "a.yaml"))
    data = _yaml("cf2x")
    del data["thrust"]["km"]
    with pytest.raises(ConfigError, match="km"):
        load_drone(_write(tmp_path, data, "b.yaml"))
    data = _yaml("cf2x")
    data["thrust"]["coefficients"] = [0.0, 0.0, 0.1]
    with pytest.raises(ConfigError, match="coefficients"):
        load_drone(_write(tmp_path, data, "c.yaml"))


def test_unknown_drone_name():
    with pytest.raises(ConfigError) as info:
        load_drone("cf99")
    msg = str(info.value)
    assert "cf99" in msg and "cf21" in msg and "cf2x" in msg


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_drone(tmp_path / "nope.yaml")


def test_loaded_copy_of_cf21_is_accepted(tmp_path):
    """The validation is not over-eager: an unmodified copy loads and matches the original."""
    m = load_drone(_write(tmp_path, copy.deepcopy(_yaml("cf21"))))
    assert m.thrust_coefficients == load_drone("cf21").thrust_coefficients


# --- gym-pybullet-drones URDF -------------------------------------------------------------
CF2X_URDF = """<?xml version="1.0" ?>
<robot name="cf2">
  <properties arm="0.0397" kf="3.16e-10" km="7.94e-12" thrust2weight="2.25" max_speed_kmh="30"
              gnd_eff_coeff="11.36859" prop_radius="2.31348e-2" drag_coeff_xy="9.1785e-7"
              drag_coeff_z="10.311e-7" dw_coeff_1="2267.18" dw_coeff_2=".16" dw_coeff_3="-.11"/>
  <link name="base_link">
    <inertial>
      <origin rpy="0 0 0" xyz="0 0 0"/>
      <mass value="0.027"/>
      <inertia ixx="1.4e-5" ixy="0.0" ixz="0.0" iyy="1.4e-5" iyz="0.0" izz="2.17e-5"/>
    </inertial>
    <visual><origin rpy="0 0 0" xyz="0 0 0"/><geometry><mesh filename="./cf2.dae" scale=" 1 1 1"/></geometry></visual>
    <collision><origin rpy="0 0 0" xyz="0 0 0"/><geometry><cylinder radius=".06" length=".025"/></geometry></collision>
  </link>
{props}
  <link name="center_of_mass_link">
    <inertial><origin rpy="0 0 0" xyz="0 0 0"/><mass value="0"/><inertia ixx="0" ixy="0" ixz="0" iyy="0" iyz="0" izz="0"/></inertial>
  </link>
  <joint name="center_of_mass_joint" type="fixed"><parent link="base_link"/><child link="center_of_mass_link"/></joint>
</robot>
"""

PROP_LINK = """  <link name="prop{i}_link">
    <inertial><origin rpy="0 0 0" xyz="{x} {y} 0"/><mass value="0"/><inertia ixx="0" ixy="0" ixz="0" iyy="0" iyz="0" izz="0"/></inertial>
  </link>
  <joint name="prop{i}_joint" type="fixed"><parent link="base_link"/><child link="prop{i}_link"/></joint>"""

PROP_XY = [(0.028, -0.028), (-0.028, -0.028), (-0.028, 0.028), (0.028, 0.028)]


def _urdf_text():
    props = "\n".join(PROP_LINK.format(i=i, x=x, y=y) for i, (x, y) in enumerate(PROP_XY))
    return CF2X_URDF.replace("{props}", props)


def test_urdf_resolves_to_cf2x(tmp_path):
    path = tmp_path / "cf2x.urdf"
    path.write_text(_urdf_text())
    u = load_drone(path)
    ref = load_drone("cf2x")
    assert u.mass == pytest.approx(ref.mass)
    assert u.gravity == pytest.approx(ref.gravity)
    assert u.inertia == pytest.approx(ref.inertia)
    assert u.thrust_coefficients == pytest.approx(ref.thrust_coefficients, rel=1e-12)
    assert u.torque_to_thrust == pytest.approx(ref.torque_to_thrust, rel=1e-12)
    assert u.max_rpm == pytest.approx(ref.max_rpm, rel=1e-12)
    assert u.hover_rotor_speed == pytest.approx(ref.hover_rotor_speed, rel=1e-12)
    assert u.motor_time_constant == 0.0
    assert tuple(u.rotor_directions) == tuple(ref.rotor_directions)
    for got, want in zip(u.rotor_positions, ref.rotor_positions):
        assert got == pytest.approx(want)
    assert u.arm_length == pytest.approx(0.0397)
    assert u.drag.xy == pytest.approx(9.1785e-7) and u.drag.z == pytest.approx(10.311e-7)
    assert u.ground_effect.coefficient == pytest.approx(11.36859)
    assert u.ground_effect.prop_radius == pytest.approx(0.0231348)
    # gym-pybullet-drones: H_CLIP = 0.25 R sqrt(15 MAX_RPM^2 kf coeff / MAX_THRUST), MAX_THRUST = 4 kf MAX_RPM^2
    clip = 0.25 * 0.0231348 * math.sqrt(15 * 11.36859 / 4)
    assert u.ground_effect.height_clip == pytest.approx(clip, rel=1e-9)
    assert u.ground_effect.height_clip == pytest.approx(0.0378, abs=1e-4)
    assert load_urdf(path).max_rpm == u.max_rpm


def test_urdf_without_prop_links_uses_x_layout(tmp_path):
    path = tmp_path / "noprops.urdf"
    path.write_text(CF2X_URDF.replace("{props}", ""))
    u = load_drone(path)
    d = 0.0397 / math.sqrt(2)
    signs = [(1, -1), (-1, -1), (-1, 1), (1, 1)]  # motor order as CF2X
    for got, (sx, sy) in zip(u.rotor_positions, signs):
        assert got == pytest.approx((sx * d, sy * d, 0.0))


def test_urdf_without_properties_is_a_clear_error(tmp_path):
    text = _urdf_text()
    start = text.index("<properties")
    end = text.index("/>", start) + 2
    path = tmp_path / "plain.urdf"
    path.write_text(text[:start] + text[end:])
    with pytest.raises(ConfigError) as info:
        load_drone(path)
    assert "properties" in str(info.value) and str(path) in str(info.value)


def test_urdf_missing_property_and_bad_xml(tmp_path):
    path = tmp_path / "nokf.urdf"
    path.write_text(_urdf_text().replace('kf="3.16e-10" ', ""))
    with pytest.raises(ConfigError, match="kf"):
        load_drone(path)
    bad = tmp_path / "bad.urdf"
    bad.write_text("<robot><properties")
    with pytest.raises(ConfigError, match="XML"):
        load_drone(bad)
