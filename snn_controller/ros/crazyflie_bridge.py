"""crazyflie_bridge: real Crazyflies (cflib: radio://, usb://, udp://) on the topics sim_bridge uses.

For the controllers it is sim_bridge: per enabled drone <name> of the fleet file (``robots.<name>.uri``)
it publishes /<name>/odom (nav_msgs/Odometry: pose in ``frame_id``, twist in the body frame), pose
(PoseStamped) and imu (sensor_msgs/Imu: orientation and body rates; the compact state log carries no
acceleration, so linear_acceleration_covariance[0] is -1, "not measured") at the drone's 100 Hz state
log. Stamps are on the bridge's clock, as sim_bridge's are on sim time: nanoseconds since the bridge
started, each state stamped with its own log timestamp (the drone's clock) on the 10 ms grid of the log
period (crazyflie/link.py LogClock), so that a stamp names one step and the flight log, its report and
its replay read a real flight as a simulated one. /clock carries that clock every control period from
the first successful arm on: a mission's time starts when the operator arms, not when the bridge starts
(rviz and other nodes that compare stamps with the clock need use_sim_time, as with sim_bridge). So
snn_policy, pid_controller, mission_sequencer and the recorder run unchanged. It takes
/<name>/cmd_ctbr_stamped (sensor_msgs/JointState, conversions.ctbr_setpoint: [thrust as PWM ratio, p, q,
r rad/s], header.stamp = the odometry answered) and sends each valid one to the drone as a rate-mode
setpoint the moment it arrives.

Also per drone: /<name>/battery (sensor_msgs/BatteryState: pm.vbat, pm.state, 10 Hz), /<name>/link_quality
(std_msgs/Float32, percent, 1 Hz), and /<name>/mocap_pose (PoseStamped, world) subscribed and forwarded
to the drone's estimator as an external pose. /diagnostics at 1 Hz, one status per drone
("crazyflie_bridge: <name>"): the safety machine's mode and why, link, battery, command age (since the
last valid command) and latency (its stamp to its arrival, last and worst in the period), counters,
the last rejected command and why, the last 10 events (mode changes and their reasons), and whether a
controller publishes motor commands (cmd_motors_stamped), which a real drone cannot fly (warned).

Services per drone, and for the whole fleet under ~/ (e.g. /crazyflie_bridge/arm): <name>/arm
(std_srvs/SetBool: nothing spins before it), <name>/takeoff, <name>/land, <name>/go_to (std_srvs/Trigger;
go_to flies to the latest /<name>/goal_pose through the high-level commander), <name>/emergency_stop
(Trigger: motors off at once).

Every decision (arming, geofence, stale commands -> hover -> land, lost link, low battery, rejected
commands, emergency) is crazyflie/safety.py's; the cflib side is crazyflie/link.py. Stopping the node
(SIGINT, SIGTERM) lands the drones in the air and waits for them before closing the links.

Parameters (declared at the top of CrazyflieBridge): crazyflies, config (the safety limits:
config/crazyflie_bridge.yaml), rate, command_timeout and geofence (override the config file's
command.timeout and geofence.min/max; '' = the file's), frame_id, retry, toc_cache (cflib's cache of the
drones' log and param tables: a connection over the radio takes seconds without it).
"""

from __future__ import annotations

import collections
import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import BatteryState, Imu, JointState
from std_msgs.msg import Float32
from std_srvs.srv import SetBool, Trigger

from ..config import ConfigError
from ..crazyflie.link import CrazyflieLink, LogClock, StateSample
from ..crazyflie.safety import AIRBORNE, DroneSafety, Mode, Reply, load_safety_config, with_overrides
from ..io import topics
from ..sim.fleet import NS_PER_S, load_fleet
from ..sim.rotations import yaw_of
from . import qos
from .conversions import ctbr_setpoint, imu_msg, odometry_msg, pose_msg, pose_target, stamp_ns, time_from_ns
from .node_main import run

# pm.state (the firmware's PMStates: battery, charging, charged, lowPower, shutDown) as BatteryState says it
POWER_SUPPLY_STATUS = {0: BatteryState.POWER_SUPPLY_STATUS_DISCHARGING, 1: BatteryState.POWER_SUPPLY_STATUS_CHARGING,
                       2: BatteryState.POWER_SUPPLY_STATUS_FULL, 3: BatteryState.POWER_SUPPLY_STATUS_DISCHARGING,
                       4: BatteryState.POWER_SUPPLY_STATUS_NOT_CHARGING}
SAFETY_EVENTS = ("stale", "geofence", "emergency", "locked", "battery", "link_lost", "refused", "land")
ANY_TYPE = ParameterDescriptor(dynamic_typing=True)  # '' (the config file's) or a value


@dataclass
class Drone:
    """One drone's machine, link and publishers, and what cflib's threads handed over."""

    name: str
    safety: DroneSafety
    clock: LogClock
    link: CrazyflieLink | None = None
    pubs: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    states: collections.deque = field(default_factory=lambda: collections.deque(maxlen=20))
    battery: tuple | None = None  # (vbat, pm_state, supervisor info)
    link_up: bool | None = None
    goal: tuple | None = None  # (position, yaw) of the latest goal_pose
    latency_ms: list = field(default_factory=list)  # stamp -> arrival of the commands of this period
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=10))  # event messages
    last_rejected: str = "none"  # the last rejected command, why


class CrazyflieBridge(Node):
    def __init__(self, link_factory=CrazyflieLink, **node_options):
        super().__init__("crazyflie_bridge", **node_options)
        self.declare_parameter("crazyflies", "")  # fleet file (robots.<name>.uri); '' = the package's
        self.declare_parameter("config", "")  # safety limits; '' = config/crazyflie_bridge.yaml
        self.declare_parameter("rate", 100.0)  # Hz: state log, safety rules, hover setpoints
        self.declare_parameter("command_timeout", "", ANY_TYPE)  # s; '' = the config file's command.timeout
        self.declare_parameter("geofence", "", ANY_TYPE)  # [xmin, ymin, zmin, xmax, ymax, zmax] m; '' = the file's
        self.declare_parameter("frame_id", "world")
        self.declare_parameter("retry", 1.0)  # s between attempts to open a lost link
        self.declare_parameter("toc_cache", "~/.cache/snn_controller/cflib")  # cflib's TOC cache; '' = none
        fleet_file, config_file, rate, timeout, fence, self.frame_id, retry, toc_cache = (
            self.get_parameter(n).value for n in ("crazyflies", "config", "rate", "command_timeout", "geofence",
                                                  "frame_id", "retry", "toc_cache"))
        period_ms = round(1000.0 / rate) if rate > 0 else 0
        if not 10 <= period_ms <= 1000 or period_ms % 10 or abs(1000.0 / rate - period_ms) > 1e-6:
            raise ValueError(f"parameter rate must make a period of whole 10 ms, the log's resolution (100, 50, 25, "
                             f"20, 10 Hz, ...), got {rate} Hz")
        self.config = with_overrides(load_safety_config(config_file or None), timeout, fence)
        robots = load_fleet(fleet_file or None).enabled_robots()
        missing = [name for name, robot in robots.items() if not robot.uri]
        if missing:
            raise ConfigError(f"{fleet_file or 'config/crazyflies.yaml'}: robots {missing} have no uri "
                              "(radio://0/80/2M/E7E7E7E701, usb://0 or udp://127.0.0.1:19850)")
        self.drones = {name: Drone(name, DroneSafety(name, self.config), LogClock(period_ms)) for name in robots}
        self.wake = self.create_guard_condition(self.on_telemetry)
        for name, drone in self.drones.items():
            drone.pubs = {
                "odom": self.create_publisher(Odometry, topics.drone_topic(name, topics.ODOM), qos.STATE),
                "pose": self.create_publisher(PoseStamped, topics.drone_topic(name, topics.POSE), qos.STATE),
                "imu": self.create_publisher(Imu, topics.drone_topic(name, topics.IMU), qos.STATE),
                "battery": self.create_publisher(BatteryState, topics.drone_topic(name, topics.BATTERY), qos.STATE),
                "quality": self.create_publisher(Float32, topics.drone_topic(name, topics.LINK_QUALITY), qos.STATE)}
            self.create_subscription(JointState, topics.drone_topic(name, topics.CMD_CTBR_STAMPED),
                                     lambda m, d=drone: self.on_command(d, m), qos.COMMAND)
            self.create_subscription(PoseStamped, topics.drone_topic(name, topics.MOCAP_POSE),
                                     lambda m, d=drone: self.on_mocap(d, m), qos.MOCAP)
            self.create_subscription(PoseStamped, topics.drone_topic(name, topics.GOAL_POSE),
                                     lambda m, d=drone: self.on_goal(d, m), qos.LATCHED)
            self.create_service(SetBool, f"/{name}/arm", lambda req, res, d=[drone]: self.on_arm(d, req, res))
            for service in ("takeoff", "land", "go_to", "emergency_stop"):
                self.create_service(Trigger, f"/{name}/{service}",
                                    lambda req, res, d=[drone], s=service: self.on_request(d, s, res))
        everyone = list(self.drones.values())
        self.create_service(SetBool, "~/arm", lambda req, res: self.on_arm(everyone, req, res))
        for service in ("takeoff", "land", "go_to", "emergency_stop"):
            self.create_service(Trigger, f"~/{service}", lambda req, res, s=service: self.on_request(everyone, s, res))
        self.clock_pub = self.create_publisher(Clock, "/clock", qos.CLOCK)
        self.clock_running = False  # /clock from the first arm on: a mission's time starts there
        self.start = time.monotonic()  # the bridge's clock: 0 here, as sim_bridge's sim time
        self.diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, qos.STATE)
        for name, drone in self.drones.items():  # last: its callbacks use all of the above
            drone.link = link_factory(robots[name].uri, on_state=lambda s, d=drone: self.take_state(d, s),
                                      on_battery=lambda *b, d=drone: self.take_battery(d, b),
                                      on_link=lambda up, why, d=drone: self.take_link(d, up, why),
                                      state_period_ms=period_ms, retry=retry, toc_cache=toc_cache)
            drone.link.open()
        self.create_timer(1.0 / rate, self.on_tick)
        self.create_timer(1.0, self.on_diagnostics)
        self.get_logger().info(f"connecting to {', '.join(f'{n} ({robots[n].uri})' for n in robots)}; "
                               f"command timeout {self.config.command.timeout} s, geofence {self.config.geofence.min} "
                               f"to {self.config.geofence.max} m; nothing spins before arm")

    # --- from cflib's threads: hand over, wake the executor ---------------------------------------
    def take_state(self, drone: Drone, sample: StateSample) -> None:
        with drone.lock:
            drone.states.append(sample)
        self.wake_executor()

    def take_battery(self, drone: Drone, battery: tuple) -> None:  # (pm.vbat, pm.state, supervisor.info or None)
        with drone.lock:
            drone.battery = battery
        self.wake_executor()

    def take_link(self, drone: Drone, up: bool, why: str) -> None:
        with drone.lock:
            drone.link_up = up
        self.get_logger().info(f"{drone.name}: link {'ready' if up else 'not ready'}: {why}")
        self.wake_executor()

    def wake_executor(self) -> None:
        if self.context.ok():  # stopping (destroy_node lands the drones): it reads the hand-over itself
            self.wake.trigger()

    # --- in the executor ---------------------------------------------------------------------------
    def on_telemetry(self) -> None:
        now = time.monotonic()
        clock_ns = self.clock_ns(now)
        for drone in self.drones.values():
            states, battery, link_up = self.handed_over(drone)
            if link_up is not None:
                drone.safety.link_status(now, link_up)
            for sample in states:
                out = sample.arrays
                drone.safety.state(sample.time, out["position"], float(yaw_of(out["quaternion"])))
                stamp = time_from_ns(drone.clock.stamp_ns(sample.drone_ms, self.clock_ns(sample.time)))
                drone.pubs["odom"].publish(odometry_msg(out, stamp, self.frame_id, drone.name))
                drone.pubs["pose"].publish(pose_msg(out, stamp, self.frame_id))
                imu = imu_msg({**out, "specific_force_body": np.zeros(3)}, stamp, drone.name)
                imu.linear_acceleration_covariance[0] = -1.0  # not in the compact state log
                drone.pubs["imu"].publish(imu)
            if battery is not None:
                drone.safety.battery(now, battery[0], battery[1])
                if battery[2] is not None:
                    drone.safety.supervisor(now, battery[2])
                msg = BatteryState(voltage=battery[0], percentage=math.nan, present=True,
                                   power_supply_status=POWER_SUPPLY_STATUS.get(battery[1], 0))
                msg.header.stamp = time_from_ns(clock_ns)
                drone.pubs["battery"].publish(msg)

    def clock_ns(self, monotonic_s: float) -> int:
        """The bridge's clock [ns] at a time.monotonic() time: the time since the bridge started."""
        return round((monotonic_s - self.start) * NS_PER_S)

    @staticmethod
    def handed_over(drone: Drone):
        with drone.lock:
            states, battery, link_up = list(drone.states), drone.battery, drone.link_up
            drone.states.clear()
            drone.battery = drone.link_up = None
        return states, battery, link_up

    def on_tick(self) -> None:
        now = time.monotonic()
        if self.clock_running:
            self.clock_pub.publish(Clock(clock=time_from_ns(self.clock_ns(now))))
        for drone in self.drones.values():
            drone.link.poll(now)
            self.execute(drone, drone.safety.tick(now))

    def on_command(self, drone: Drone, msg: JointState) -> None:
        now = time.monotonic()
        try:
            setpoint = ctbr_setpoint(msg)
        except ValueError as exc:
            self.execute(drone, drone.safety.reject(now, str(exc)))
            return
        drone.latency_ms.append((self.clock_ns(now) - stamp_ns(msg.header.stamp)) / 1e6)
        self.execute(drone, drone.safety.command(now, setpoint))

    def on_mocap(self, drone: Drone, msg: PoseStamped) -> None:
        p, q = msg.pose.position, msg.pose.orientation
        drone.link.send_extpose((p.x, p.y, p.z), (q.w, q.x, q.y, q.z))

    def on_goal(self, drone: Drone, msg: PoseStamped) -> None:
        drone.goal = pose_target(msg)

    def on_arm(self, drones: list[Drone], request, response):
        now = time.monotonic()
        replies = [(d, d.safety.arm(now, request.data)) for d in drones]
        self.clock_running = self.clock_running or (request.data and any(reply.ok for _, reply in replies))
        return self.answer(response, replies)

    def on_request(self, drones: list[Drone], service: str, response):
        now = time.monotonic()
        replies = []
        for d in drones:
            if service == "go_to":
                reply = d.safety.go_to(now, *d.goal) if d.goal is not None else \
                    Reply(False, f"no {topics.drone_topic(d.name, topics.GOAL_POSE)} received yet")
            else:
                reply = {"takeoff": d.safety.takeoff, "land": d.safety.land,
                         "emergency_stop": d.safety.emergency}[service](now)
            replies.append((d, reply))
        return self.answer(response, replies)

    def answer(self, response, replies: list[tuple[Drone, Reply]]):
        for drone, reply in replies:
            self.execute(drone, list(reply.actions))
        response.success = all(reply.ok for _, reply in replies)
        response.message = "; ".join(f"{d.name}: {reply.message}" for d, reply in replies)
        return response

    def execute(self, drone: Drone, actions) -> None:
        for action in actions:
            drone.link.send(action)
        for event in drone.safety.events:  # (rclpy wants one severity and throttle per call site)
            if event.kind == "rejected":  # up to one per command: counted, the last one kept
                self.get_logger().warn(event.message, throttle_duration_sec=1.0)
                drone.last_rejected = event.message
                continue
            if event.kind in SAFETY_EVENTS:
                self.get_logger().warn(event.message)
            else:
                self.get_logger().info(event.message)
            if event.kind != "refused":  # a refused request is answered (and logged), not a change of the drone's
                drone.recent.append(event.message)
        drone.safety.events.clear()

    def on_diagnostics(self) -> None:
        now = time.monotonic()
        msg = DiagnosticArray()
        msg.header.stamp = time_from_ns(self.clock_ns(now))
        for drone in self.drones.values():
            status = drone.safety.status(now)
            latency = drone.latency_ms
            values = {**status, "link_quality": round(drone.link.quality(now), 1),
                      "command_latency_ms": round(latency[-1], 1) if latency else "none",
                      "command_latency_max_ms": round(max(latency), 1) if latency else "none",
                      "last_rejected": drone.last_rejected, "events": " | ".join(drone.recent)}
            drone.latency_ms = []
            motor_topic = topics.drone_topic(drone.name, topics.CMD_MOTORS_STAMPED)
            values["motor_command_publishers"] = self.count_publishers(motor_topic)
            if values["motor_command_publishers"]:
                self.get_logger().warn(f"{drone.name}: a controller publishes {motor_topic}: motor commands are not "
                                       f"flown on a real drone, only {topics.CMD_CTBR_STAMPED}",
                                       throttle_duration_sec=10.0)
            drone.pubs["quality"].publish(Float32(data=float(values["link_quality"])))
            mode = drone.safety.mode
            level = DiagnosticStatus.ERROR if mode == Mode.EMERGENCY else DiagnosticStatus.WARN if (
                status["link"] != "up" or mode in (Mode.HOVER, Mode.LANDING) or status["battery_low"]) \
                else DiagnosticStatus.OK
            msg.status.append(DiagnosticStatus(level=level, name=f"crazyflie_bridge: {drone.name}",
                                               hardware_id=drone.name, message=f"{mode.value}: {status['reason']}",
                                               values=[KeyValue(key=k, value=str(v)) for k, v in values.items()]))
        self.diag_pub.publish(msg)

    def destroy_node(self):
        """Land what flies (the high-level commander lands on board), wait for it, then close the links."""
        now = time.monotonic()
        flying = [d for d in self.drones.values() if d.safety.mode in AIRBORNE and d.link is not None]
        for drone in flying:
            self.execute(drone, list(drone.safety.land(now).actions))
        m = self.config.manoeuvres
        deadline = now + m.land_duration + m.land_grace + 1.0
        while any(d.safety.mode in AIRBORNE for d in flying) and time.monotonic() < deadline:
            time.sleep(0.02)
            now = time.monotonic()
            for drone in flying:
                states, _, link_up = self.handed_over(drone)
                if link_up is not None:
                    drone.safety.link_status(now, link_up)
                for sample in states:
                    drone.safety.state(sample.time, sample.arrays["position"],
                                       float(yaw_of(sample.arrays["quaternion"])))
                self.execute(drone, drone.safety.tick(now))
        for drone in self.drones.values():
            if drone.link is not None:
                drone.link.close()
        super().destroy_node()


def main(args=None):
    raise SystemExit(run(CrazyflieBridge, args))


if __name__ == "__main__":
    main()
