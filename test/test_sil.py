"""Sim-in-the-loop training: the rollouts' physics on training_bridge processes over ROS 2."""

import os
import signal
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")

from snn_controller.task import spec as T  # noqa: E402
from snn_controller.train.config import quick_config  # noqa: E402
from snn_controller.train.run import Trainer  # noqa: E402

BRIDGE = "snn_controller.ros.training_bridge"
TINY = dict(iterations=4, updates_per_iteration=3, batch_size=4, eval_every=2, eval_episodes=4, checkpoint_every=1,
            buffer_steps=20_000, actor_hidden=(32, 16), critic_hidden=(32, 32), bc_target="guide")
# the method's conditions, and physics randomisation: every request kind crosses the wire
TASK = T.TaskConfig(latency=T.Latency(action_delay=(0, 2), jitter=0.1),
                    randomization=T.Randomization(mass=(0.9, 1.1), thrust=(0.95, 1.05)))


@pytest.fixture
def pool(ros_env):
    from snn_controller.ros.sil import BridgePool

    context = rclpy.Context()
    rclpy.init(context=context)
    pool = BridgePool(context=context, resend=0.5, timeout=3.0, wait=60.0, settle=1.0)
    pool.messages = []
    pool.log = pool.messages.append  # what the pool tells the user
    yield pool
    pool.close()
    rclpy.shutdown(context=context)


def bridge(processes, name: str, drones: int):
    return processes.start(BRIDGE, "-r", f"__node:={name}", "-p", f"drones:={drones}", name=name)


def test_a_rollout_over_ros_is_the_rollout_in_process(processes, pool, tmp_path):
    """Same config and seed, one bridge: the buffer holds the same numbers, and so do the first
    iterations' losses and evaluations."""
    bridge(processes, "bridge0", 8)
    config = quick_config(**TINY, num_drones=8, task=TASK)
    local = Trainer(config, tmp_path / "local")
    remote = Trainer(quick_config(**TINY, num_drones=8, task=TASK, collector="ros"), tmp_path / "ros",
                     engine_factory=pool)
    assert remote.env.n == 8, processes.logs()
    for trainer in (local, remote):
        trainer.collect(guide_steps_now=60, stage=2, seed=5)
    for key, values in local.buffer.data.items():
        np.testing.assert_array_equal(values, remote.buffer.data[key], err_msg=key)
    rows = [[t.run_iteration() for _ in range(2)] for t in (local, remote)]
    for a, b in zip(*rows):
        a.pop("seconds"), b.pop("seconds")
        assert a == pytest.approx(b, nan_ok=True)
    assert "eval_return" in rows[0][-1]


def test_training_drops_a_bridge_that_dies_and_uses_one_that_joins(processes, pool, tmp_path):
    """Two bridges of 4 drones; one is killed in the middle of a rollout: the run goes on with the
    other's drones and discards the dead one's unfinished episodes; a bridge that joins flies from
    the next iteration."""
    import threading

    bridge(processes, "bridge_a", 4)
    killed = bridge(processes, "bridge_b", 4)
    trainer = Trainer(quick_config(**TINY, num_drones=8, collector="ros"), tmp_path, engine_factory=pool)
    start = time.monotonic()
    assert trainer.collect(guide_steps_now=100, stage=0, seed=0)["drones"] == 8, processes.logs()
    rollout_seconds = time.monotonic() - start
    threading.Timer(rollout_seconds / 3, lambda: os.killpg(killed.pid, signal.SIGKILL)).start()
    assert trainer.collect(guide_steps_now=100, stage=0, seed=1)["drones"] == 4, "the dead bridge's drones are out"
    assert any("bridge_b dropped" in m for m in pool.messages), pool.messages
    assert trainer.buffer.filled == 12
    assert trainer.run_iteration()["drones"] == 4, "the dropped process is not asked again"
    bridge(processes, "bridge_c", 4)
    deadline = time.monotonic() + 30
    while "/bridge_c" not in pool.bridges() and time.monotonic() < deadline:
        time.sleep(0.2)
    row = trainer.run_iteration()
    assert row["drones"] == 8 and trainer.buffer.filled == 24, processes.logs()
    assert trainer.buffer.num_windows > 0 and np.isfinite(trainer.buffer.data["obs"][:24]).all()


def test_the_launch_file_trains_over_ros_end_to_end(ros_env, tmp_path):
    """sil_train.launch.yaml: two bridges and the trainer node; the run writes its files, and every
    iteration flew the drones of both bridges."""
    import csv
    import subprocess
    import sys

    import yaml

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"name": "tiny", "collector": "ros", "num_drones": 8, "iterations": 2,
                                      "updates_per_iteration": 2, "batch_size": 4, "eval_every": 1,
                                      "eval_episodes": 4, "checkpoint_every": 1, "buffer_steps": 10000,
                                      "actor_hidden": [16, 8], "critic_hidden": [16, 16]}))
    out, log = tmp_path / "run", open(tmp_path / "launch.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "snn_controller.cli", "launch", "sil_train.launch.yaml",
                             f"config:={config}", f"out:={out}", "bridge_drones:=4"],
                            env=ros_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "final.safetensors").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)
        log.close()
    text = (tmp_path / "launch.log").read_text()
    assert (out / "final.safetensors").is_file(), text[-3000:]
    rows = list(csv.DictReader(open(out / "progress.csv")))
    assert [int(r["drones"]) for r in rows] == [8, 8], text[-3000:]
