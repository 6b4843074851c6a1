"""Architecture and set-up facts that CI would otherwise only find on a clean machine."""

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROS_PACKAGES = ("rclpy", "std_msgs", "nav_msgs", "geometry_msgs", "sensor_msgs", "rosgraph_msgs", "std_srvs",
                "diagnostic_msgs", "builtin_interfaces")


def test_core_imports_without_ros():
    """The core (every module of the package outside ros/) must not import rclpy or message packages:
    nodes are the only ROS code. The modules are found by walking the package, not listed by hand."""
    code = f"""
import importlib, pkgutil, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {ROS_PACKAGES!r}:
            raise ImportError('core imported ROS: ' + name)
sys.meta_path.insert(0, Block())
import snn_controller
names = [m.name for m in pkgutil.walk_packages(snn_controller.__path__, 'snn_controller.')
         if not m.name.startswith('snn_controller.ros')]
for name in names:
    importlib.import_module(name)
print(len(names))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    imported = int(out.stdout.strip())
    assert imported >= 30, f"only {imported} core modules found"  # train.td3, networks.spiking, task.mission, ...


# The architecture in one line: each layer imports only from the layers before it.
LAYERS = (("config",), ("sim",), ("task",), ("io",), ("networks",), ("export",), ("control",), ("crazyflie",),
          ("train",), ("cli", "bench", "report", "replay", "ros"))


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    for rank, names in enumerate(LAYERS):
        if part in names:
            return rank
    return 0  # the package root (__version__)


def test_layers_import_only_downwards():
    """config -> sim -> task -> io -> networks -> export -> control -> crazyflie -> train -> cli, bench, ros:
    a module imports nothing from a later layer (or from a later layer's package by a relative import)."""
    import ast

    package = ROOT / "snn_controller"
    offences = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        module = ".".join(parts)
        here = parts if rel.name == "__init__" else parts[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = here[:len(here) - node.level + 1]
                targets = [".".join(base + ([node.module] if node.module else []))]
                if not node.module:  # from . import spec
                    targets = [f"{targets[0]}.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("snn_controller"):
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("snn_controller")]
            else:
                continue
            offences += [f"{module} imports {t}" for t in targets if _layer(t) > _layer(module)]
    assert not offences, offences


def test_requirements_pin_torch_and_avoid_the_wrong_launch():
    files = {name: [ln.split("#")[0].strip() for ln in (ROOT / name).read_text().splitlines()]
             for name in ("requirements.txt", "requirements-core.txt")}
    files = {name: [ln for ln in lines if ln] for name, lines in files.items()}
    for name, lines in files.items():
        assert lines[0] == "torch==2.13.0", f"{name}: torch must come first, pinned"
    core = (ROOT / "requirements-core.txt").read_text()
    assert "ros-" not in core, "the core requirements must not pull ROS wheels over an apt install"
    lines = [ln for lines in files.values() for ln in lines if not ln.startswith("-r")]
    assert not any(ln.split("=")[0].split("<")[0].split(">")[0].strip().lower() == "launch" for ln in lines)
    ros = [ln for ln in lines if ln.startswith("ros-")]
    assert ros and all(ln.startswith("ros-jazzy-") and "==" in ln for ln in ros), "pinned jazzy wheels only"


def test_package_xml_and_ament_layout():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.attrib["format"] == "3" and root.findtext("name") == "snn_controller"
    assert root.find("export/build_type").text == "ament_python"
    deps = {e.text for e in root.iter("exec_depend")}
    assert {"rclpy", "nav_msgs", "std_msgs", "geometry_msgs", "sensor_msgs", "std_srvs"} <= deps
    assert (ROOT / "resource" / "snn_controller").is_file()
    setup = (ROOT / "setup.py").read_text()
    for folder in ("launch", "config", "models"):
        assert f'tree("{folder}")' in setup


def test_every_ros_entry_point_keeps_discovery_local():
    for path in [ROOT / ".ci" / "run", ROOT / "Makefile", ROOT / "snn_controller" / "ros" / "__init__.py",
                 ROOT / "snn_controller" / "cli.py"]:
        assert "ROS_AUTOMATIC_DISCOVERY_RANGE" in path.read_text(), path
