"""flight_recorder: record topics to a rosbag2 (MCAP) bag, as ``ros2 bag record -s mcap`` would.

What it records (parameters declared at the top of FlightRecorder, with their defaults):

- the fleet's topics, by default (``fleet``: true): for every enabled drone <name> of the fleet
  file ``crazyflies`` ('' = the package's config/crazyflies.yaml), /<name>/<t> for each t of
  ``drone_topics`` (default topics.DRONE_TOPICS: odom, pose, imu, motor_state, cmd_motors_stamped,
  cmd_motors, goal_pose), and ``fleet_topics`` (default: /diagnostics, where the policy and the bridge report
  spike rates, who flies and command ages; /mission/status; /clock);
- ``topics``: these topics, as given (a relative name resolves in the node's namespace);
- ``regex``: every topic of the graph whose whole name matches this regular expression.

``fleet:=false topics:=[...]`` records a given list only, ``fleet:=false regex:=...`` a pattern only.
The graph is searched every ``discovery_period`` s: a topic is subscribed (raw: its CDR bytes go
to the bag unchanged) once it has a publisher, with the type the graph gives and a QoS that
matches every publisher (reliable unless one offers best effort, transient local if all of them
offer it, so a latched goal published before the recorder came up is recorded too). Messages are
stamped with the time they were received.

The bag (``output``, replaced if ``overwrite``) is split into several MCAP files by
``max_bag_size`` (bytes) or ``max_bag_duration`` (s), 0 = one file, and written with rosbag2
metadata version ``metadata_version`` (9, Jazzy's; or 8): io/bag.py.

Callbacks run on rclpy's EventsExecutor (``executor``: events), which takes about half the CPU
time per message of the SingleThreadedExecutor (``executor:=single``): docs/benchmarks.md.

Stopping: SIGINT and SIGTERM end the spin between two callbacks, never inside a write; the bag is
then closed (each file's summary and footer, metadata.yaml) and one line
``flight_recorder: closed {json}`` says what was received and written per topic (message count,
receive time of the last one), which wanted topics never appeared, and the seconds of wall time
and of CPU time the recorder spent since it started.
"""

from __future__ import annotations

import importlib
import json
import re
import signal
import sys
import time

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterException, ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from ..io.bag import TYPESTORE, BagWriter
from ..sim.fleet import load_fleet
from ..io.topics import DIAGNOSTICS, DRONE_TOPICS, MISSION_STATUS, drone_topic

EXECUTORS = ("events", "single")
ANY_NUMBER = ParameterDescriptor(dynamic_typing=True)  # seconds given as 60 or 60.0
# The fleet's shared topics: both controllers' and the bridge's diagnostics, the mission, sim time.
FLEET_TOPICS = (DIAGNOSTICS, MISSION_STATUS, "/clock")


def message_class(msgtype: str):
    """'nav_msgs/msg/Odometry' -> the Python message class."""
    package, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)


def recorded_topics(topics=(), fleet_file: str | None = "", drone_topics=DRONE_TOPICS,
                    fleet_topics=FLEET_TOPICS, fleet: bool = True) -> list[str]:
    """The topics to record, in order, without repeats: with ``fleet``, /<name>/<t> for every
    enabled drone of ``fleet_file`` ('' or None = the package's) and t in ``drone_topics``, then
    ``fleet_topics``; then ``topics``."""
    wanted = []
    if fleet:
        names = load_fleet(fleet_file or None).enabled_robots()
        wanted += [drone_topic(name, t) for name in names for t in drone_topics]
        wanted += list(fleet_topics)
    wanted += list(topics)
    return list(dict.fromkeys(t for t in wanted if t))


def offered_qos(infos) -> list[dict]:
    """The publishers' QoS profiles in rosbag2's metadata layout (version 9)."""
    def duration(d):
        ns = d.nanoseconds
        return {"sec": ns // 10**9, "nsec": ns % 10**9}

    return [{"history": q.history.name.lower(), "depth": q.depth, "reliability": q.reliability.name.lower(),
             "durability": q.durability.name.lower(), "deadline": duration(q.deadline),
             "lifespan": duration(q.lifespan), "liveliness": q.liveliness.name.lower(),
             "liveliness_lease_duration": duration(q.liveliness_lease_duration),
             "avoid_ros_namespace_conventions": q.avoid_ros_namespace_conventions}
            for q in (info.qos_profile for info in infos)]


def matching_qos(infos, depth: int) -> QoSProfile:
    """A subscription QoS every publisher in ``infos`` matches (rosbag2's adaptive choice)."""
    reliable = all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)
    latched = all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos)
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


def check_parameters(p: dict, wanted: list[str]):
    """Refuse parameters that cannot record, naming the remedy; the compiled ``regex`` or None."""
    try:
        pattern = re.compile(p["regex"]) if p["regex"] else None
    except re.error as exc:
        raise ValueError(f"parameter regex {p['regex']!r} is not a regular expression ({exc}); "
                         "write e.g. regex:='/cf[0-9]+/odom'") from None
    if not wanted and pattern is None:
        raise ValueError("nothing to record: fleet is false and neither topics nor regex is given; "
                         "set fleet:=true, topics:=[/a, /b] or regex:=PATTERN")
    for name, unit in (("max_bag_size", "bytes"), ("max_bag_duration", "s"), ("discovery_period", "s")):
        if not isinstance(p[name], (int, float)) or isinstance(p[name], bool) or p[name] < 0:
            raise ValueError(f"parameter {name} must be a number >= 0 ({unit}), got {p[name]!r}")
    if p["discovery_period"] == 0:
        raise ValueError("parameter discovery_period must be > 0 s")
    if p["executor"] not in EXECUTORS:
        raise ValueError(f"parameter executor must be one of {EXECUTORS}, got {p['executor']!r}")
    return pattern


class FlightRecorder(Node):
    def __init__(self, **kwargs):
        super().__init__("flight_recorder", **kwargs)
        self.declare_parameter("output", "flight_bag")  # bag directory to create
        self.declare_parameter("overwrite", False)  # replace an existing bag directory
        self.declare_parameter("fleet", True)  # record the fleet's topics (drone_topics of each drone, fleet_topics)
        self.declare_parameter("crazyflies", "")  # fleet file; '' = the package's config/crazyflies.yaml
        self.declare_parameter("drone_topics", list(DRONE_TOPICS))  # per-drone topics, under /<name>/
        self.declare_parameter("fleet_topics", list(FLEET_TOPICS))  # the fleet's shared topics
        self.declare_parameter("topics", Parameter.Type.STRING_ARRAY)  # more topics, as given
        self.declare_parameter("regex", "")  # also every graph topic whose whole name matches; '' = none
        self.declare_parameter("max_bag_size", 0, ANY_NUMBER)  # bytes per MCAP file (100000000 or 1e8); 0 = no split
        self.declare_parameter("max_bag_duration", 0.0, ANY_NUMBER)  # s per MCAP file; 0 = no split by duration
        self.declare_parameter("metadata_version", 9)  # rosbag2 metadata: 9 (Jazzy) or 8
        self.declare_parameter("discovery_period", 0.1, ANY_NUMBER)  # s between searches of the graph
        self.declare_parameter("queue_depth", 100)  # messages a subscription holds while the recorder is busy
        self.declare_parameter("executor", "events")  # events (rclpy's EventsExecutor: half the CPU) | single
        p = {name: self.get_parameter(name).value for name in (
            "output", "overwrite", "fleet", "crazyflies", "drone_topics", "fleet_topics", "regex",
            "max_bag_size", "max_bag_duration", "metadata_version", "discovery_period", "queue_depth", "executor")}
        try:
            topics = self.get_parameter("topics").value
        except ParameterUninitializedException:
            topics = []
        self.wanted = [self.resolve_topic_name(t) for t in recorded_topics(
            topics, p["crazyflies"], p["drone_topics"], p["fleet_topics"], p["fleet"])]
        self.pattern = check_parameters(p, self.wanted)
        self.executor_kind = p["executor"]
        self.depth = p["queue_depth"]
        self.bag = BagWriter(p["output"], overwrite=p["overwrite"], version=p["metadata_version"],
                             max_bag_size=int(p["max_bag_size"]), max_bag_duration=float(p["max_bag_duration"]))
        self.started = (time.monotonic(), time.process_time())
        self.received: dict[str, int] = {}
        self.last_ns: dict[str, int] = {}
        self.skipped: set[str] = set()
        self.create_timer(float(p["discovery_period"]), self.discover)
        self.discover()
        self.get_logger().info(f"recording {self.wanted}" + (f" and topics matching {p['regex']!r}" if self.pattern
                                                             else "") + f" to {p['output']}")

    def wants(self, name: str) -> bool:
        return name in self.wanted or (self.pattern is not None and self.pattern.fullmatch(name) is not None)

    def discover(self) -> None:
        for name, types in self.get_topic_names_and_types():
            if name in self.received or name in self.skipped or not self.wants(name):
                continue
            publishers = self.get_publishers_info_by_topic(name)
            if publishers:  # subscribe once a publisher says which QoS to match
                self.subscribe(name, types, publishers)

    def subscribe(self, name: str, types: list[str], publishers) -> None:
        msgtype = types[0]
        if len(types) > 1 or msgtype not in TYPESTORE.types:
            self.skipped.add(name)
            self.get_logger().error(f"not recording {name}: its type {types} is not one known ROS 2 Jazzy standard "
                                    "type; record it with ros2 bag record")
            return
        self.bag.add_topic(name, msgtype, offered_qos(publishers))
        self.received[name] = 0
        self.create_subscription(message_class(msgtype), name, lambda data, t=name: self.on_message(t, data),
                                 matching_qos(publishers, self.depth), raw=True)
        self.get_logger().info(f"subscribed to {name} ({msgtype})")

    def on_message(self, topic: str, data: bytes) -> None:
        now = self.get_clock().now().nanoseconds
        self.bag.write(topic, now, data)
        self.received[topic] += 1
        self.last_ns[topic] = now

    def summary(self) -> dict:
        """What was received and what the bag holds, per topic; the recorder's wall and CPU seconds."""
        return {"wall_s": round(time.monotonic() - self.started[0], 2),
                "cpu_s": round(time.process_time() - self.started[1], 2), "bag": str(self.bag.path),
                "files": self.bag.files, "received": dict(self.received),
                "written": self.bag.counts, "last_receive_ns": dict(self.last_ns),
                "never_seen": [t for t in self.wanted if t not in self.received]}

    def destroy_node(self):
        if hasattr(self, "bag"):
            self.bag.close()
            # print, not the logger: at shutdown the context that publishes /rosout is already gone
            print(f"flight_recorder: closed {json.dumps(self.summary())}", flush=True)
        super().destroy_node()


def main(args=None):
    raise SystemExit(record(args))


def record(args=None) -> int:
    """Run the recorder until SIGINT or SIGTERM, which end the spin between two callbacks (a
    signal never interrupts a write), then close the bag."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.experimental import EventsExecutor
    from rclpy.signals import SignalHandlerOptions

    from ..config import ConfigError

    stop = []
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda s, _frame: stop.append(s))
    node, code = None, 0
    try:
        node = FlightRecorder()
        executor = EventsExecutor() if node.executor_kind == "events" else SingleThreadedExecutor()
        executor.add_node(node)
        while not stop and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except ExternalShutdownException:
        pass
    except (ConfigError, ValueError, FileExistsError, ParameterException) as exc:  # bad parameters: say so, exit 2
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    main()
