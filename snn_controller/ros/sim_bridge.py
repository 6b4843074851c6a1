"""sim_bridge: simulated Crazyflies (pybullet) on ROS 2 topics.

Per drone <name> (from crazyflies.yaml): publishes <name>/odom (nav_msgs/Odometry), <name>/pose
(PoseStamped), <name>/imu (sensor_msgs/Imu) every control step; subscribes <name>/cmd_motors
(std_msgs/Float32MultiArray, 4 values in [-1, 1]); services <name>/reset and <name>/emergency
(std_srvs/Trigger). Also /clock (sim time), ~/reset for the whole fleet, and /diagnostics
(1 Hz: per drone the accepted, clamped and rejected commands and watchdog timeouts).

Modes: realtime (paced by the wall clock), lockstep (a step when every drone's command has
arrived: deterministic sim-in-the-loop), fast (as fast as the machine steps).
"""

from __future__ import annotations

import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Imu
from std_msgs.msg import Float32MultiArray
from std_srvs.srv import Trigger

from ..drone import load_drone
from ..fleet import FleetSimulator, load_fleet
from . import qos
from .conversions import imu_msg, odometry_msg, pose_msg, time_msg
from .node_main import run

MODES = ("realtime", "lockstep", "fast")


class SimBridge(Node):
    def __init__(self):
        super().__init__("sim_bridge")
        self.declare_parameter("crazyflies", "")  # path to crazyflies.yaml; '' = the package's
        self.declare_parameter("drone", "")  # drone model; '' = crazyflies.yaml's all.drone
        self.declare_parameter("mode", "realtime")  # realtime | lockstep | fast
        self.declare_parameter("rate", 100.0)  # Hz, control rate
        self.declare_parameter("command_timeout", 0.5)  # s of sim time without commands -> motors stop
        self.declare_parameter("lockstep_timeout", 1.0)  # s of wall time a lockstep waits for commands
        self.declare_parameter("substeps", 10)  # physics steps per control step
        self.declare_parameter("gui", False)
        self.declare_parameter("ground_effect", False)
        self.declare_parameter("drag", False)
        self.declare_parameter("frame_id", "world")
        p = {name: self.get_parameter(name).value for name in (
            "crazyflies", "drone", "mode", "rate", "command_timeout", "lockstep_timeout", "substeps", "gui",
            "ground_effect", "drag", "frame_id")}
        if p["mode"] not in MODES:
            raise ValueError(f"parameter mode must be one of {MODES}, got {p['mode']!r}")
        if p["rate"] <= 0:
            raise ValueError(f"parameter rate must be > 0, got {p['rate']}")
        fleet = load_fleet(p["crazyflies"] or None)
        model = load_drone(p["drone"] or fleet.all.drone)
        self.sim = FleetSimulator(model, fleet.enabled_robots(), dt=1.0 / p["rate"],
                                  command_timeout=p["command_timeout"], substeps=p["substeps"], gui=p["gui"],
                                  ground_effect=p["ground_effect"], drag=p["drag"])
        self.mode, self.frame_id, self.lockstep_timeout = p["mode"], p["frame_id"], p["lockstep_timeout"]
        self.clock_pub = self.create_publisher(Clock, "/clock", qos.CLOCK)
        self.pubs = {}
        for name in self.sim.names:
            self.pubs[name] = (self.create_publisher(Odometry, f"{name}/odom", qos.STATE),
                               self.create_publisher(PoseStamped, f"{name}/pose", qos.STATE),
                               self.create_publisher(Imu, f"{name}/imu", qos.STATE))
            self.create_subscription(Float32MultiArray, f"{name}/cmd_motors",
                                     lambda msg, n=name: self.on_command(n, msg), qos.COMMAND)
            self.create_service(Trigger, f"{name}/reset", lambda req, res, n=name: self.on_reset(res, n))
            self.create_service(Trigger, f"{name}/emergency", lambda req, res, n=name: self.on_emergency(res, n))
        self.create_service(Trigger, "~/reset", lambda req, res: self.on_reset(res, None))
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", qos.STATE)
        self.create_timer(1.0, self.on_diagnostics)
        self.last_step_wall = time.monotonic()
        self.wall_start, self.sim_start = time.monotonic(), self.sim.time
        period = {"realtime": 1.0 / p["rate"], "lockstep": 0.1, "fast": 0.0}[self.mode]
        self.create_timer(period, self.on_timer)
        self.get_logger().info(f"simulating {self.sim.names} ({model.name}) in {self.mode} mode at {p['rate']} Hz")
        self.publish()

    # --- callbacks ---------------------------------------------------------------------
    def on_command(self, name: str, msg: Float32MultiArray) -> None:
        status = self.sim.submit(name, msg.data)
        if status != "ok":
            c = self.sim.counters[name]
            self.get_logger().warn(f"{name}/cmd_motors {status} (rejected {c.rejected}, clamped {c.clamped})",
                                   throttle_duration_sec=2.0)
        if self.mode == "lockstep" and self.sim.ready():
            self.advance()

    def on_timer(self) -> None:
        if self.mode != "lockstep":
            self.advance()
            if self.mode == "realtime":
                self.check_pace()
        elif time.monotonic() - self.last_step_wall > self.lockstep_timeout:
            missing = [n for n, f in zip(self.sim.names, self.sim.fresh | self.sim.stopped) if not f]
            self.get_logger().warn(f"lockstep: no command from {missing} for {self.lockstep_timeout} s; "
                                   "stepping without them", throttle_duration_sec=5.0)
            self.advance()
        else:
            self.publish()  # the state again (same stamp), in case a controller missed it

    def on_diagnostics(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = time_msg(self.sim.time)
        for name, c in self.sim.counters.items():
            level = DiagnosticStatus.WARN if (c.rejected or c.timeouts) else DiagnosticStatus.OK
            values = [KeyValue(key=k, value=str(v)) for k, v in vars(c).items()]
            values.append(KeyValue(key="emergency_stopped", value=str(bool(self.sim.stopped[self.sim.index[name]]))))
            msg.status.append(DiagnosticStatus(level=level, name=f"sim_bridge: {name}", hardware_id=name,
                                               message="commands", values=values))
        self.diag_pub.publish(msg)

    def on_reset(self, response, name):
        self.sim.reset(name)
        self.publish()
        response.success, response.message = True, f"reset {name or 'all drones'}"
        return response

    def on_emergency(self, response, name):
        self.sim.emergency_stop(name)
        response.success, response.message = True, f"{name}: motors stopped until reset"
        return response

    # --- stepping ------------------------------------------------------------------------
    def advance(self) -> None:
        self.sim.step()
        self.last_step_wall = time.monotonic()
        self.publish()

    def check_pace(self) -> None:
        lag = (time.monotonic() - self.wall_start) - (self.sim.time - self.sim_start)
        if lag > 0.1:
            rate = (self.sim.time - self.sim_start) / max(time.monotonic() - self.wall_start, 1e-9)
            self.get_logger().warn(f"cannot keep real time: {100 * rate:.0f} % of real-time speed",
                                   throttle_duration_sec=5.0)

    def publish(self) -> None:
        stamp = time_msg(self.sim.time)
        self.clock_pub.publish(Clock(clock=stamp))
        for name, out in self.sim.outputs().items():
            odom, pose, imu = self.pubs[name]
            odom.publish(odometry_msg(out, stamp, self.frame_id, name))
            pose.publish(pose_msg(out, stamp, self.frame_id))
            imu.publish(imu_msg(out, stamp, name))

    def destroy_node(self):
        self.sim.close()
        super().destroy_node()


def main(args=None):
    raise SystemExit(run(SimBridge, args))


if __name__ == "__main__":
    main()
