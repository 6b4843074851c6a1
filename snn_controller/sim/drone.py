"""Drone models: one typed description of a quadrotor, read by name, path or URDF.

Both engines, the task and the PID controller consume :class:`DroneModel`, so the
airframe constants live in exactly one place (config/drones/<name>.yaml).

Conventions (docs/task.md, gym-pybullet-drones CF2X, Crazyflie M1..M4):
world frame z-up; body frame x forward, z along the thrust; rotor ``i`` at
``rotor_positions[i]`` in the body frame; normalised rotor speed ``w`` in [0, 1];
rotor thrust ``T_i = c0 + c1 w + c2 w^2`` [N] along body +z; yaw reaction torque
``rotor_directions[i] * torque_to_thrust * T_i`` [N m] about body z.
"""

from __future__ import annotations

import dataclasses
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from ..config import ConfigError, build, load_yaml, package_root


@dataclass(frozen=True)
class GroundEffect:
    """gym-pybullet-drones ground effect: extra rotor thrust T_i * coefficient * (prop_radius / (4 h_i))^2."""

    coefficient: float
    prop_radius: float  # m
    height_clip: float  # m; rotor heights below this are clipped (the model diverges at h -> 0)


@dataclass(frozen=True)
class Drag:
    """gym-pybullet-drones rotor drag: F_body = -diag(xy, xy, z) * sum(rotor speed rad/s) * v_body."""

    xy: float  # N s / (m rad)
    z: float


@dataclass(frozen=True)
class ThrustSpec:
    """How rotor speed maps to thrust, as written in a drone file.

    ``polynomial``: T(w) = coefficients[0] + coefficients[1] w + coefficients[2] w^2 (L2F identification).
    ``rpm_squared``: T = kf rpm^2, yaw torque km rpm^2, max_rpm from thrust2weight (gym-pybullet-drones).
    """

    model: Literal["polynomial", "rpm_squared"]
    coefficients: Optional[tuple[float, float, float]] = None
    torque_to_thrust: Optional[float] = None
    max_rpm: Optional[float] = None  # polynomial: rpm at w = 1 (for drag and reports)
    kf: Optional[float] = None
    km: Optional[float] = None
    thrust2weight: Optional[float] = None

    def __post_init__(self):
        need = {"polynomial": ("coefficients", "torque_to_thrust", "max_rpm"),
                "rpm_squared": ("kf", "km", "thrust2weight")}[self.model]
        other = {"polynomial": ("kf", "km", "thrust2weight"),
                 "rpm_squared": ("coefficients", "torque_to_thrust", "max_rpm")}[self.model]
        for key in need:
            if getattr(self, key) is None:
                raise ConfigError(f"'{key}' is required for thrust model '{self.model}'")
        for key in other:
            if getattr(self, key) is not None:
                raise ConfigError(f"'{key}' does not apply to thrust model '{self.model}'")
        for key in ("kf", "km", "thrust2weight", "max_rpm", "torque_to_thrust"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ConfigError(f"non-physical value for '{key}': {value} (must be > 0)")


@dataclass(frozen=True)
class DroneFile:
    """The schema of config/drones/*.yaml (validated on load)."""

    name: str
    mass: float  # kg
    gravity: float  # m/s^2
    inertia: tuple[float, float, float]  # kg m^2, principal moments about body x, y, z
    arm_length: float  # m, centre to rotor (used for the collision shape)
    rotor_positions: tuple[tuple[float, float, float], ...]  # m, body frame, motor order 0..3
    rotor_directions: tuple[float, ...]  # sign of each rotor's yaw reaction torque
    motor_time_constant: float  # s, first-order lag of rotor speed; 0 = no lag
    thrust: ThrustSpec
    ground_effect: Optional[GroundEffect] = None
    drag: Optional[Drag] = None
    description: str = ""

    def __post_init__(self):
        # Checked here as well as in DroneModel: the thrust model's derived values need them first.
        for key in ("mass", "gravity"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"non-physical value for '{key}': {getattr(self, key)} (must be > 0)")


@dataclass(frozen=True)
class DroneModel:
    """Resolved physical constants used by every engine and controller."""

    name: str
    mass: float
    gravity: float
    inertia: tuple[float, float, float]
    arm_length: float
    rotor_positions: tuple[tuple[float, float, float], ...]
    rotor_directions: tuple[float, ...]
    thrust_coefficients: tuple[float, float, float]  # T(w) = c0 + c1 w + c2 w^2 [N]
    torque_to_thrust: float  # yaw torque per newton of thrust [m]
    motor_time_constant: float  # s; 0 = rotor speed follows the command instantly
    max_rpm: float
    ground_effect: Optional[GroundEffect] = None
    drag: Optional[Drag] = None
    source: str = ""

    def __post_init__(self):
        where = self.source or self.name
        checks = [
            ("mass", self.mass > 0), ("gravity", self.gravity > 0),
            ("inertia", all(i > 0 for i in self.inertia)), ("arm_length", self.arm_length > 0),
            ("motor_time_constant", self.motor_time_constant >= 0), ("max_rpm", self.max_rpm > 0),
            ("rotor_positions", len(self.rotor_positions) == 4),
            ("rotor_directions", len(self.rotor_directions) == 4
             and all(d in (-1.0, 1.0) for d in self.rotor_directions) and sum(self.rotor_directions) == 0),
            ("thrust", 4 * self.thrust(1.0) > self.mass * self.gravity),
            ("thrust", all(self.thrust(w / 100) >= 0 for w in range(101))),
        ]
        for key, ok in checks:
            if not ok:
                raise ConfigError(f"{where}: non-physical value for '{key}'"
                                  + (" (the rotors cannot lift the drone or give negative thrust)"
                                     if key == "thrust" else ""))

    # --- derived quantities -------------------------------------------------------
    def thrust(self, w: float) -> float:
        c0, c1, c2 = self.thrust_coefficients
        return c0 + c1 * w + c2 * w * w

    def rotor_speed_for_thrust(self, thrust: float) -> float:
        """Inverse of :meth:`thrust` on [0, 1] (the larger root), clipped."""
        c0, c1, c2 = self.thrust_coefficients
        if c2 == 0:
            return min(max((thrust - c0) / c1, 0.0), 1.0)
        disc = max(c1 * c1 - 4 * c2 * (c0 - thrust), 0.0)
        return min(max((-c1 + math.sqrt(disc)) / (2 * c2), 0.0), 1.0)

    @property
    def weight(self) -> float:
        return self.mass * self.gravity

    @property
    def hover_rotor_speed(self) -> float:
        return self.rotor_speed_for_thrust(self.weight / 4)

    @property
    def hover_action(self) -> float:
        """Motor command in [-1, 1] that holds a hover (a = 2 w - 1)."""
        return 2 * self.hover_rotor_speed - 1

    @property
    def thrust_to_weight(self) -> float:
        return 4 * self.thrust(1.0) / self.weight

    def with_options(self, **changes) -> "DroneModel":
        """A copy with some constants replaced (e.g. motor_time_constant=0.02, drag=None)."""
        return dataclasses.replace(self, **changes)


def _resolve(spec: DroneFile, source: str) -> DroneModel:
    t = spec.thrust
    if t.model == "polynomial":
        coefficients, torque_to_thrust, max_rpm = t.coefficients, t.torque_to_thrust, t.max_rpm
    else:
        # gym-pybullet-drones: MAX_RPM = sqrt(thrust2weight * m g / (4 kf)); w = rpm / MAX_RPM.
        max_rpm = math.sqrt(t.thrust2weight * spec.mass * spec.gravity / (4 * t.kf))
        coefficients = (0.0, 0.0, t.kf * max_rpm**2)
        torque_to_thrust = t.km / t.kf
    return DroneModel(
        name=spec.name, mass=spec.mass, gravity=spec.gravity, inertia=spec.inertia,
        arm_length=spec.arm_length, rotor_positions=spec.rotor_positions,
        rotor_directions=spec.rotor_directions, thrust_coefficients=tuple(coefficients),
        torque_to_thrust=torque_to_thrust, motor_time_constant=spec.motor_time_constant,
        max_rpm=max_rpm, ground_effect=spec.ground_effect, drag=spec.drag, source=source,
    )


def available_drones() -> list[str]:
    return sorted(p.stem for p in (package_root() / "config" / "drones").glob("*.yaml"))


def load_drone(name_or_path: str | Path) -> DroneModel:
    """Load a drone by name (``cf21``, ``cf2x``), by YAML path, or from a gym-pybullet-drones URDF."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix.lower() == ".urdf":
        return load_urdf(path)
    if path.suffix.lower() not in (".yaml", ".yml"):
        path = package_root() / "config" / "drones" / f"{text}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown drone '{text}'; known drones: {available_drones()} "
                              "(or give a path to a .yaml or .urdf file)")
    return _resolve(build(DroneFile, load_yaml(path), str(path)), str(path))


def load_urdf(path: str | Path) -> DroneModel:
    """Read a gym-pybullet-drones drone description (its <properties> element and inertial block)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ConfigError(f"{path}: not valid XML: {exc}") from exc
    props = root.find("properties")
    if props is None:
        raise ConfigError(f"{path}: no <properties> element (not a gym-pybullet-drones drone file)")

    def prop(key: str, default: float | None = None) -> float:
        if key not in props.attrib:
            if default is not None:
                return default
            raise ConfigError(f"{path}: <properties> is missing '{key}'")
        try:
            return float(props.attrib[key])
        except ValueError:
            raise ConfigError(f"{path}: <properties> {key}={props.attrib[key]!r} is not a number") from None

    base = root.find("link")
    inertial = base.find("inertial") if base is not None else None
    if inertial is None or inertial.find("mass") is None or inertial.find("inertia") is None:
        raise ConfigError(f"{path}: the first <link> has no <inertial> block with mass and inertia")
    mass = float(inertial.find("mass").attrib["value"])
    inertia_el = inertial.find("inertia").attrib
    inertia = tuple(float(inertia_el[k]) for k in ("ixx", "iyy", "izz"))
    arm = prop("arm")
    positions = []
    for i in range(4):
        link = root.find(f"link[@name='prop{i}_link']")
        origin = link.find("inertial/origin") if link is not None else None
        if origin is None:
            positions = []
            break
        positions.append(tuple(float(v) for v in origin.attrib["xyz"].split()))
    if not positions:  # X layout from the arm length, motor order as CF2X
        d = arm / math.sqrt(2)
        positions = [(d, -d, 0.0), (-d, -d, 0.0), (-d, d, 0.0), (d, d, 0.0)]
    kf, km, t2w = prop("kf"), prop("km"), prop("thrust2weight")
    gravity = 9.8  # gym-pybullet-drones' constant
    max_rpm = math.sqrt(t2w * mass * gravity / (4 * kf))
    ground_effect = drag = None
    if "gnd_eff_coeff" in props.attrib:
        coeff, radius = prop("gnd_eff_coeff"), prop("prop_radius")
        # gym-pybullet-drones: GND_EFF_H_CLIP = 0.25 R sqrt(15 MAX_RPM^2 kf coeff / MAX_THRUST)
        max_thrust = 4 * kf * max_rpm**2
        clip = 0.25 * radius * math.sqrt(15 * max_rpm**2 * kf * coeff / max_thrust)
        ground_effect = GroundEffect(coefficient=coeff, prop_radius=radius, height_clip=clip)
    if "drag_coeff_xy" in props.attrib:
        drag = Drag(xy=prop("drag_coeff_xy"), z=prop("drag_coeff_z"))
    spec = DroneFile(
        name=root.attrib.get("name", path.stem), mass=mass, gravity=gravity, inertia=inertia,
        arm_length=arm, rotor_positions=tuple(positions), rotor_directions=(-1.0, 1.0, -1.0, 1.0),
        motor_time_constant=0.0, thrust=ThrustSpec(model="rpm_squared", kf=kf, km=km, thrust2weight=t2w),
        ground_effect=ground_effect, drag=drag,
    )
    return _resolve(spec, str(path))
