"""mission_sequencer: sends a mission's goals to every drone of the fleet.

Subscribes /clock (sim time); publishes <name>/goal_pose (geometry_msgs/PoseStamped, world frame,
transient local) for every enabled drone of ``crazyflies``, ``rate`` times per second of sim time:
the mission's goal relative to the drone's initial_position (its take-off point). The mission
starts ``start_time`` seconds of sim time after the first clock the sequencer sees (until then the
goal is the take-off point), so it begins in full whether the simulation runs in real time or in
lockstep, however late this process starts; a simulation reset (time back) restarts it. Publishes
/mission/status (std_msgs/String, JSON, transient local: mission, start [sim s], time, segment,
done) with every goal update, so that observers (``snnctl launch --monitor``) score the same
timeline.
"""

from __future__ import annotations

import json

from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from std_msgs.msg import String

from ..sim.fleet import load_fleet
from ..task.mission import load_mission, take_off_points
from ..io import topics
from . import qos
from .conversions import NS_PER_S, stamp_ns
from .node_main import run


class MissionSequencer(Node):
    def __init__(self):
        super().__init__("mission_sequencer")
        self.declare_parameter("mission", "hover")  # mission file, or a name in config/missions/
        self.declare_parameter("crazyflies", "")  # fleet file; '' = the package's config/crazyflies.yaml
        self.declare_parameter("start_time", 2.0)  # s of sim time from the first clock to the take-off
        self.declare_parameter("rate", 20.0)  # goal updates per second of sim time
        self.declare_parameter("frame_id", "world")
        mission, fleet, self.start_time, rate, self.frame_id = (self.get_parameter(n).value for n in (
            "mission", "crazyflies", "start_time", "rate", "frame_id"))
        if rate <= 0:
            raise ValueError(f"parameter rate must be > 0, got {rate}")
        self.period_ns = round(NS_PER_S / rate)
        self.mission = load_mission(mission)
        robots = load_fleet(fleet or None).enabled_robots()
        self.homes = take_off_points(robots)
        self.pubs = {name: self.create_publisher(PoseStamped, topics.drone_topic(name, topics.GOAL_POSE),
                                                 qos.LATCHED) for name in robots}
        self.status_pub = self.create_publisher(String, topics.MISSION_STATUS, qos.LATCHED)
        self.start_ns = self.last_ns = None  # sim time of mission t = 0; of the last goal update
        self.create_subscription(Clock, "/clock", self.on_clock, qos.CLOCK)
        self.get_logger().info(f"mission {self.mission.name} ({self.mission.duration:.1f} s) for {list(robots)}, "
                               f"starting {self.start_time} s of sim time after the first clock")

    def on_clock(self, msg: Clock) -> None:
        now = stamp_ns(msg.clock)
        if self.start_ns is None or now < self.last_ns:  # the first clock, or the simulation was reset
            self.start_ns, self.last_ns = now + round(self.start_time * NS_PER_S), None
        if self.last_ns is not None and now - self.last_ns < self.period_ns:
            return
        self.last_ns = now
        t = (now - self.start_ns) / NS_PER_S
        goal, segment = self.mission.goal([max(t, 0.0)])
        for name, pub in self.pubs.items():
            pose = PoseStamped()
            pose.header.stamp, pose.header.frame_id = msg.clock, self.frame_id
            p = pose.pose.position
            p.x, p.y, p.z = (float(v) for v in self.homes[name] + goal[0])
            pose.pose.orientation.w = 1.0  # yaw 0: the network was trained to hold it
            pub.publish(pose)
        self.status_pub.publish(String(data=json.dumps({
            "mission": self.mission.name, "start": self.start_ns / NS_PER_S, "time": round(t, 3),
            "segment": None if t < 0 else self.mission.segment_names()[int(segment[0])],
            "done": t >= self.mission.duration})))


def main(args=None):
    raise SystemExit(run(MissionSequencer, args))


if __name__ == "__main__":
    main()
