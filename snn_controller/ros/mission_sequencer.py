"""mission_sequencer: sends a mission's goals to every drone of the fleet.

Publishes <name>/goal_pose (geometry_msgs/PoseStamped, world frame, transient local) for every
enabled drone of ``crazyflies`` at ``rate`` Hz: the mission's goal at mission time t = sim time -
``start_time`` (the goal stays at the take-off point before), relative to the drone's
initial_position. Runs on sim time (/clock), so the goals follow the simulation in realtime and in
lockstep alike, and a simulation reset (time back to 0) restarts the mission. Also publishes
/mission/status (std_msgs/String, JSON: mission, time, segment) with every goal update.
"""

from __future__ import annotations

import json

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import String

from ..engines.batched import GROUND_CLEARANCE
from ..fleet import load_fleet
from ..mission import load_mission
from . import qos
from .node_main import run


class MissionSequencer(Node):
    def __init__(self):
        super().__init__("mission_sequencer", parameter_overrides=[Parameter("use_sim_time", value=True)])
        self.declare_parameter("mission", "hop")  # mission file, or a name in config/missions/
        self.declare_parameter("crazyflies", "")  # fleet file; '' = the package's config/crazyflies.yaml
        self.declare_parameter("start_time", 2.0)  # s of sim time before the take-off starts
        self.declare_parameter("rate", 20.0)  # Hz, goal updates
        self.declare_parameter("frame_id", "world")
        mission, fleet, self.start_time, rate, self.frame_id = (self.get_parameter(n).value for n in (
            "mission", "crazyflies", "start_time", "rate", "frame_id"))
        if rate <= 0:
            raise ValueError(f"parameter rate must be > 0, got {rate}")
        self.mission = load_mission(mission)
        robots = load_fleet(fleet or None).enabled_robots()
        # mission z = 0: the body resting on the ground at the drone's initial position
        self.homes = {name: np.array(r.initial_position) + [0.0, 0.0, GROUND_CLEARANCE] for name, r in robots.items()}
        self.pubs = {name: self.create_publisher(PoseStamped, f"/{name}/goal_pose", qos.LATCHED) for name in robots}
        self.status_pub = self.create_publisher(String, "/mission/status", qos.LATCHED)
        self.create_timer(1.0 / rate, self.on_timer)
        self.get_logger().info(f"mission {self.mission.name} ({self.mission.duration:.1f} s) for {list(robots)}, "
                               f"starting at sim time {self.start_time} s")

    def on_timer(self) -> None:
        now = self.get_clock().now()
        t = now.nanoseconds * 1e-9 - self.start_time
        goal, segment = self.mission.goal([max(t, 0.0)])
        stamp = now.to_msg()
        for name, pub in self.pubs.items():
            msg = PoseStamped()
            msg.header.stamp, msg.header.frame_id = stamp, self.frame_id
            p = msg.pose.position
            p.x, p.y, p.z = (float(v) for v in self.homes[name] + goal[0])
            msg.pose.orientation.w = 1.0  # yaw 0: the network was trained to hold it
            pub.publish(msg)
        names = self.mission.segment_names()
        self.status_pub.publish(String(data=json.dumps({
            "mission": self.mission.name, "time": round(t, 3),
            "segment": None if t < 0 else names[int(segment[0])], "done": t >= self.mission.duration})))


def main(args=None):
    raise SystemExit(run(MissionSequencer, args))


if __name__ == "__main__":
    main()
