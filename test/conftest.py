"""Shared fixtures. Every ROS test runs in its own ROS_DOMAIN_ID with localhost-only discovery
and stops every process it started."""

import itertools
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snn_controller.ros.launch import die_with_parent

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # mandatory here
ROOT = Path(__file__).resolve().parents[1]
# Domains: a random base per test session, one domain per test (1..101 are valid for Fast DDS).
_domains = itertools.cycle(range(1, 102))
for _ in range(random.Random(os.getpid()).randrange(101)):
    next(_domains)


@pytest.fixture
def ros_env(tmp_path, monkeypatch):
    """Environment for a test that talks ROS: own domain, localhost discovery, temp log dir."""
    env = {
        "ROS_DOMAIN_ID": str(next(_domains)),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_LOG_DIR": str(tmp_path / "ros_log"),
        "FASTDDS_DEFAULT_PROFILES_FILE": str(ROOT / "config" / "fastdds_fast_discovery.xml"),
        "PYTHONUNBUFFERED": "1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return {**os.environ, **env}


class Processes:
    """Starts node processes (own process group each) and always stops them."""

    def __init__(self, env, log_dir: Path):
        self.env, self.log_dir, self.procs = env, log_dir, []

    def start(self, module: str, *ros_args: str, name: str | None = None):
        name = name or module.rsplit(".", 1)[-1]
        log = open(self.log_dir / f"{name}-{len(self.procs)}.log", "w")
        cmd = [sys.executable, "-m", module, "--ros-args", *ros_args]
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent)
        self.procs.append((name, proc, log))
        return proc

    def logs(self) -> str:
        out = []
        for name, _, log in self.procs:
            log.flush()
            out.append(f"--- {name} ---\n" + Path(log.name).read_text()[-3000:])
        return "\n".join(out)

    def stop(self):
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
        deadline = time.monotonic() + 5
        for _, proc, log in self.procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()


@pytest.fixture
def processes(ros_env, tmp_path):
    p = Processes(ros_env, tmp_path)
    yield p
    p.stop()


@pytest.fixture
def ros_context(ros_env):
    """An rclpy context in the test's domain, shut down afterwards."""
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(ros_env["ROS_DOMAIN_ID"]))
    yield context
    rclpy.shutdown(context=context)


def spin_until(executor, predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.02)
        if predicate():
            return True
    return predicate()


@pytest.fixture
def one_drone_fleet(tmp_path):
    path = tmp_path / "crazyflies.yaml"
    path.write_text("all: {drone: cf21}\nrobots:\n  cf1: {initial_position: [0.0, 0.0, 0.0]}\n")
    return path
