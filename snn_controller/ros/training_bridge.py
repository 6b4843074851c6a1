"""training_bridge: the physics of sim-in-the-loop training, in a process of its own.

Serves up to ``drones`` drones of the engine the trainer configures (sim/engine_server.py), on
``~/sil/request`` and ``~/sil/reply`` (wire format: ros/sil.py), and announces its capacity on
``~/sil/info``. Start as many as the machines have cores, each with its own node name, in one ROS
domain: the trainer (``collector: ros``) flies its drones on every bridge alive at the start of
an iteration. A bridge serves one trainer at a time (a second would take over its engine).
"""

from __future__ import annotations

import json
import time
import uuid

from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from ..sim.engine_server import EngineServer
from . import qos
from .node_main import run
from .sil import INFO, REPLY, REQUEST, doubles


class TrainingBridge(Node):
    def __init__(self):
        super().__init__("training_bridge")
        self.declare_parameter("drones", 16)  # how many drones this bridge serves at most
        self.server = EngineServer(self.get_parameter("drones").value)
        self.reply_pub = self.create_publisher(JointState, f"~/{REPLY}", qos.COMMAND)
        self.create_subscription(JointState, f"~/{REQUEST}", self.on_request, qos.COMMAND)
        self.info_pub = self.create_publisher(String, f"~/{INFO}", qos.LATCHED)
        self.info_pub.publish(String(data=json.dumps({"drones": self.server.capacity, "session": uuid.uuid4().hex})))
        self.get_logger().info(f"serving up to {self.server.capacity} drones to a trainer")

    def on_request(self, msg: JointState) -> None:
        kind = msg.header.frame_id.partition(":")[0]
        payload = (msg.name[0] if kind == "configure" and msg.name else
                   (msg.velocity, msg.position) if kind in ("reset", "scale") else msg.position)
        reply = JointState()
        reply.header = msg.header
        start = time.perf_counter()
        try:
            reply.position = doubles(self.server.handle(kind, msg.header.frame_id, payload))
            reply.velocity = [time.perf_counter() - start]  # the physics' share of the round trip [s]
        except (ValueError, RuntimeError, KeyError) as exc:  # a bad request: say why, keep serving
            reply.header.frame_id = "error:" + msg.header.frame_id
            reply.name = [str(exc)]
            self.get_logger().error(f"refused {msg.header.frame_id}: {exc}")
        self.reply_pub.publish(reply)

    def destroy_node(self):
        self.server.close()
        super().destroy_node()


def main(args=None):
    raise SystemExit(run(TrainingBridge, args))


if __name__ == "__main__":
    main()
