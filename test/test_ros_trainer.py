"""The trainer node: the same training as snnctl train, with progress on a topic."""

import json

import pytest
import yaml

rclpy = pytest.importorskip("rclpy")

from std_msgs.msg import String  # noqa: E402

from conftest import spin_until  # noqa: E402
from snn_controller.ros import qos


def test_trainer_node_publishes_progress_and_writes_the_run(processes, ros_context, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"name": "tiny", "num_drones": 8, "iterations": 2, "updates_per_iteration": 2,
                                      "batch_size": 4, "eval_every": 1, "eval_episodes": 4, "checkpoint_every": 1,
                                      "buffer_steps": 10000, "actor_hidden": [16, 8], "critic_hidden": [16, 16]}))
    out = tmp_path / "run"
    processes.start("snn_controller.ros.trainer", "-p", f"config:={config}", "-p", f"out:={out}")
    node = rclpy.create_node("probe", context=ros_context)
    executor = rclpy.executors.SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    messages = []
    node.create_subscription(String, "/trainer/progress", lambda m: messages.append(json.loads(m.data)),
                             qos.LATCHED)
    try:
        done = spin_until(executor, lambda: any(m.get("state") == "finished" for m in messages), 180)
        assert done, f"{messages}\n" + processes.logs()
    finally:
        executor.shutdown()
        node.destroy_node()
    rows = [m for m in messages if m["state"] == "training"]
    # transient-local depth 1: a late subscriber may miss early rows, never the last one
    assert rows and rows[-1]["iteration"] == 2 and "slope" in rows[-1] and "stage" in rows[-1]
    assert "eval_return" in rows[-1]
    for name in ("checkpoint.pt", "progress.csv", "final.safetensors", "best.safetensors", "config.json"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.*")), "TensorBoard event files"
