"""trainer: the same training as ``snnctl train``, as a ROS 2 node that publishes its progress.

Runs TD3BC+JSRL (or a baseline, by config) in a worker thread and writes the same files
(checkpoint.pt, progress.csv, tensorboard/, best/final models). After each iteration it publishes
~/progress (std_msgs/String, one JSON object: iteration, env steps, return, survival, slope, stage,
guide steps, ...) and a status on /diagnostics. Stopping the node (Ctrl-C) ends the run after a
checkpoint; start it again with resume:=true to continue.

With ``collector: ros`` in the training config the rollouts fly on the training_bridge nodes of
the ROS domain (sim-in-the-loop, ros/sil.py): the same flight as in process, its physics spread
over the bridges' processes and machines.
"""

from __future__ import annotations

import json
import threading
from dataclasses import replace

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from std_msgs.msg import String

from ..config import package_root
from ..io import topics
from . import qos
from .node_main import run


class TrainerNode(Node):
    def __init__(self):
        super().__init__("trainer")
        self.declare_parameter("config", "")  # training YAML; '' = config/train/td3bc_jsrl.yaml
        self.declare_parameter("seed", -1)  # -1: the config's seed
        self.declare_parameter("out", "")  # run directory; '' = runs/<name>_seed<S>
        self.declare_parameter("resume", False)
        from ..train.config import load_train_config

        path, seed, out, self.resume = (self.get_parameter(n).value for n in ("config", "seed", "out", "resume"))
        self.config = load_train_config(path or package_root() / "config" / "train" / "td3bc_jsrl.yaml")
        if seed >= 0:
            self.config = replace(self.config, seed=seed)
        self.out = out or f"runs/{self.config.name}_seed{self.config.seed}"
        self.progress_pub = self.create_publisher(String, "~/progress", qos.LATCHED)
        self.diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, qos.STATE)
        self.stop = threading.Event()
        self.result = None
        self.worker = threading.Thread(target=self.train, daemon=True)
        self.worker.start()
        self.get_logger().info(f"training {self.config.name} (seed {self.config.seed}) into {self.out}")

    def train(self) -> None:
        from ..train.run import train

        pool = None
        try:
            if self.config.collector == "ros":
                from .sil import BridgePool

                pool = BridgePool(context=self.context, log=self.get_logger().warning)
            self.result = train(self.config, self.out, resume=self.resume, log=self.get_logger().info,
                                progress_bar=False, on_iteration=self.on_iteration, should_stop=self.stop.is_set,
                                engine_factory=pool)
            state = "stopped, resumable" if self.result.get("stopped") else "finished"
            self.publish({"state": state, "iterations": self.result["iterations"], **{
                f"final_{k}_return": v["return_mean"] for k, v in self.result["evaluation"].items()}})
            self.get_logger().info(f"training {state}: {self.out}")
        except Exception as exc:  # report the failure on the topic and the log; the files stay resumable
            self.publish({"state": "failed", "error": str(exc)})
            self.get_logger().error(f"training failed: {exc}")
        finally:
            if pool is not None:
                pool.close()

    def on_iteration(self, row: dict) -> None:
        self.publish({"state": "training", **row})

    def publish(self, values: dict) -> None:
        clean = {k: (None if isinstance(v, float) and v != v else v) for k, v in values.items()}
        self.progress_pub.publish(String(data=json.dumps(clean)))
        msg = DiagnosticArray()
        msg.status.append(DiagnosticStatus(
            level=DiagnosticStatus.ERROR if values.get("state") == "failed" else DiagnosticStatus.OK,
            name="trainer", hardware_id=self.out, message=str(values.get("state")),
            values=[KeyValue(key=k, value=str(v)) for k, v in clean.items()]))
        self.diag_pub.publish(msg)

    def destroy_node(self):
        self.stop.set()  # the worker checkpoints and returns after the current iteration
        self.worker.join()
        super().destroy_node()


def main(args=None):
    raise SystemExit(run(TrainerNode, args))


if __name__ == "__main__":
    main()
