"""flight_recorder: record topics to a rosbag2 (MCAP) bag, as ``ros2 bag record -s mcap`` would.

Subscribes raw (serialized) to each topic it records once it appears in the graph (its type
taken from the graph), and writes the bytes with the receive time. The bag is closed cleanly on
shutdown. Topics are resolved relative to the node's namespace like any other name.

Parameters: ``topics`` (recorded as given), ``crazyflies`` (a fleet file; '' = none: with one,
also /<name>/<t> for every enabled drone <name> and every ``drone_topics`` entry t),
``drone_topics`` (default topics.FLIGHT_TOPICS: odom, the commands and the goal; pose and imu
repeat odom, add them for a full record: topics.DRONE_TOPICS), ``output`` (bag directory),
``overwrite``.
"""

from __future__ import annotations

import importlib

from rclpy.node import Node

from ..io.bag import BagWriter
from ..sim.fleet import load_fleet
from . import qos
from .node_main import run
from .topics import FLIGHT_TOPICS, drone_topic


def message_class(msgtype: str):
    """'nav_msgs/msg/Odometry' -> the Python message class."""
    package, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)


def recorded_topics(topics, fleet_file: str, drone_topics=FLIGHT_TOPICS) -> list[str]:
    """``topics``, plus /<name>/<t> for every enabled drone of ``fleet_file`` ('' = none) and t in ``drone_topics``."""
    if not fleet_file:
        return list(topics)
    return [*topics, *(drone_topic(name, t) for name in load_fleet(fleet_file).enabled_robots() for t in drone_topics)]


class FlightRecorder(Node):
    def __init__(self, **kwargs):
        super().__init__("flight_recorder", **kwargs)
        self.declare_parameter("output", "flight_bag")  # bag directory to create
        self.declare_parameter("topics", ["/clock"])  # topics to record
        self.declare_parameter("crazyflies", "")  # fleet file: also record drone_topics of each drone
        self.declare_parameter("drone_topics", list(FLIGHT_TOPICS))  # per-drone topics, under /<name>/
        self.declare_parameter("overwrite", False)  # replace an existing bag directory
        output, topics, fleet_file, drone_topics, overwrite = (self.get_parameter(n).value for n in (
            "output", "topics", "crazyflies", "drone_topics", "overwrite"))
        self.wanted = [self.resolve_topic_name(t) for t in recorded_topics(topics, fleet_file, drone_topics)]
        self.bag = BagWriter(output, overwrite=overwrite)
        self.subscribed = set()
        self.create_timer(0.5, self.discover)
        self.discover()
        self.get_logger().info(f"recording {self.wanted} to {output}")

    def discover(self) -> None:
        for name, types in self.get_topic_names_and_types():
            if name in self.wanted and name not in self.subscribed:
                msgtype = types[0]
                self.bag.add_topic(name, msgtype)
                self.create_subscription(message_class(msgtype), name,
                                         lambda data, t=name: self.on_message(t, data), qos.STATE, raw=True)
                self.subscribed.add(name)

    def on_message(self, topic: str, data: bytes) -> None:
        self.bag.write(topic, self.get_clock().now().nanoseconds, data)

    def destroy_node(self):
        self.bag.close()
        # print, not the logger: at shutdown the context that publishes /rosout is already gone
        print(f"flight_recorder: wrote {sum(self.bag.counts.values())} messages to {self.bag.path}: {self.bag.counts}",
              flush=True)
        super().destroy_node()


def main(args=None):
    raise SystemExit(run(FlightRecorder, args))


if __name__ == "__main__":
    main()
