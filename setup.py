"""ament_python package: builds with colcon on a full ROS 2 install and pip-installs elsewhere."""

import ast
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "snn_controller"


def node_table() -> dict:
    """The NODES table of snn_controller/ros/__init__.py, read without importing the package."""
    tree = ast.parse(Path(PACKAGE, "ros", "__init__.py").read_text())
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and getattr(stmt.targets[0], "id", None) == "NODES":
            return ast.literal_eval(stmt.value)
    raise RuntimeError("NODES table not found")


def tree(folder: str):
    """data_files entries that install folder/ (recursively) to share/<package>/folder/."""
    out = {}
    for path in glob(f"{folder}/**/*", recursive=True):
        if Path(path).is_file():
            out.setdefault(str(Path("share", PACKAGE, Path(path).parent)), []).append(path)
    return sorted(out.items())


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *tree("launch"),
        *tree("config"),
        *tree("models"),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="snn_controller maintainers",
    maintainer_email="maintainers@snn-controller.invalid",
    description="Spiking neural network flight control for Crazyflie quadrotors (ROS 2).",
    license="MIT",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [f"{name} = {module}:main" for name, module in node_table().items()]
        + ["snnctl = snn_controller.cli:main"],
    },
)
