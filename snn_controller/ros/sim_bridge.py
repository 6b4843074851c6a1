"""sim_bridge: simulated Crazyflies (pybullet) on ROS 2 topics.

Per drone <name> (from crazyflies.yaml): publishes <name>/odom (nav_msgs/Odometry), <name>/pose
(PoseStamped), <name>/imu (sensor_msgs/Imu) every control step, all stamped with the step's
time (step * dt in integer nanoseconds); subscribes <name>/cmd_motors_stamped
(sensor_msgs/JointState, what our controllers send: header.stamp = the odometry stamp the
command answers, effort = 4 values in [-1, 1], motor order m1..m4) and <name>/cmd_motors
(std_msgs/Float32MultiArray, 4 values, unstamped: for your own controllers, taken as answering
the newest state) and <name>/cmd_ctbr_stamped (JointState, stamped the same way: a CTBR setpoint,
thrust and body rates in position, flown through the firmware's rate loop as on a Crazyflie in rate
mode: docs/ctbr.md, conversions.ctbr_command_msg); services <name>/reset and <name>/emergency (std_srvs/Trigger). Also /clock
(sim time), ~/reset for the whole fleet (time goes back to 0), and /diagnostics (1 Hz, per drone:
accepted, clamped, rejected and stale commands, watchdog timeouts, command age p50/p99/max in
steps, crashed and the crash count).

What it flew: <name>/motor_state (sensor_msgs/JointState) once per simulated step, stamped with
the state the step started from (that state's odometry stamp): name m1..m4, velocity = the rotor
speeds at that state (normalized, the engines' rotor_speed), effort = the motor commands the engine
flew over the step (a CTBR drone: the mean of its rate loop's over the step), after the bridge's rules (clipping, stale commands, command_delay, the watchdog,
motors off when stopped, crashed or not commanded yet). A step's motor_state is known once the step
is taken, so it goes out right after the next state's odometry, pose and imu (the controllers wait
for those, the recorder does not); a reset or a lockstep re-send publishes none. A bag with it
of motor commands replays exactly (``snnctl sim replay --bag``) without reconstructing these rules.

Command age: control steps between the state a command answers and the step it is applied to
(0 when every answer arrives before the next step). A warning (rate-limited) says when its p99
exceeds ``command_age_warn``. ``command_delay`` adds that many steps of latency on purpose.

Modes: realtime (paced by the wall clock), lockstep (a step when every flying drone has answered
the current state: deterministic sim-in-the-loop; the state is sent again, same stamp, to drones
whose answer is missing after ``lockstep_resend``, and the step is taken without them after
``lockstep_timeout``), fast (as fast as the machine steps).

Crashes (the firmware supervisor's rules, in the core): a hard landing, a ground contact while
tilted, or tipping over stops the drone's motors until it is reset; a non-finite or runaway state
is never published (the drone is held at rest on the ground, crashed). Each crash is logged once.

Topic names: topics.py. The fleet (names, initial poses, the drone model ``all.drone``) is the
crazyflies file; parameter ``drone`` ('' by default) overrides its drone model.

CRTP (``crtp:=true``, docs/crtp_sim.md): the drones are simulated Crazyflies served on cflib's
udp:// link by :class:`~snn_controller.crazyflie.server.CrazyflieServer` instead: drone i on
udp://127.0.0.1:``crtp_base_port`` + i, or with ``crtp_base_port`` 0 (default) on the port of its
``udp://127.0.0.1:PORT`` uri in the fleet file (default: config/crazyflies_udp.yaml). Commands come over CRTP
(cflib, crazyflie_bridge), not over these topics; the node publishes each drone's ground truth as
/sim/<name>/odom and /sim/<name>/pose (so that a bridge can publish /<name>/odom from the drone's
own estimate without a clash) and /clock, at ``rate``, stamped with the drones' simulated time.
Only ``crazyflies``, ``drone``, ``rate`` and ``frame_id`` apply then; the mode is realtime.

Parameters (declared at the top of SimBridge, with their defaults and units): crazyflies, drone,
mode, rate, command_timeout, command_delay, command_age_warn, lockstep_resend, lockstep_timeout,
real_time_factor (lockstep at most this fast against the wall clock; 0: no cap), crash_landing_speed, crash_contact_tilt_deg, crash_tilt_deg, runaway_distance, runaway_speed,
substeps, gui, ground_effect, drag, frame_id, crtp, crtp_base_port.
"""

from __future__ import annotations

import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Imu, JointState
from std_msgs.msg import Float32MultiArray
from std_srvs.srv import Trigger

from ..config import package_root
from ..sim.drone import load_drone
from ..sim.fleet import CrashLimits, FleetSimulator, load_fleet
from ..sim.pybullet_engine import SUBSTEPS
from ..sim.rotations import quat_to_matrix
from ..io import topics
from . import qos
from .conversions import imu_msg, motor_state_msg, odometry_msg, pose_msg, stamp_ns, time_from_ns
from .node_main import run

MODES = ("realtime", "lockstep", "fast")
TRUTH_PREFIX = "/sim"  # crtp:=true: the ground truth of drone <name> on /sim/<name>/odom and /sim/<name>/pose


class SimBridge(Node):
    sim: FleetSimulator | None = None
    server = None  # crtp:=true: the CrazyflieServer

    def __init__(self):
        super().__init__("sim_bridge")
        self.declare_parameter("crazyflies", "")  # path to crazyflies.yaml; '' = the package's
        self.declare_parameter("drone", "")  # drone model; '' = the fleet file's all.drone
        self.declare_parameter("mode", "realtime")  # realtime | lockstep | fast
        self.declare_parameter("rate", 100.0)  # Hz, control rate
        self.declare_parameter("command_timeout", 0.5)  # s of sim time without commands -> motors stop
        self.declare_parameter("command_delay", 0)  # steps: a command applies this long after its state, at the earliest
        self.declare_parameter("command_age_warn", 2)  # steps: warn when the command age p99 is larger
        self.declare_parameter("lockstep_resend", 0.1)  # s of wall time before the state is sent again
        self.declare_parameter("lockstep_timeout", 1.0)  # s of wall time a lockstep waits for commands
        self.declare_parameter("real_time_factor", 0.0)  # lockstep: at most this fast vs the wall clock (0: no cap)
        self.declare_parameter("crash_landing_speed", 1.5)  # m/s: a harder ground contact is a crash
        self.declare_parameter("crash_contact_tilt_deg", 60.0)  # ground contact tilted more: a crash
        self.declare_parameter("crash_tilt_deg", 90.0)  # tilted more anywhere (upside down): a crash
        self.declare_parameter("runaway_distance", 100.0)  # m from the origin: a runaway state
        self.declare_parameter("runaway_speed", 50.0)  # m/s: a runaway state
        self.declare_parameter("substeps", SUBSTEPS)  # physics steps per control step
        self.declare_parameter("gui", False)
        self.declare_parameter("ground_effect", False)
        self.declare_parameter("drag", False)
        self.declare_parameter("frame_id", "world")
        self.declare_parameter("crtp", False)  # simulated Crazyflies on udp:// instead (module docstring)
        self.declare_parameter("crtp_base_port", 0)  # crtp: drone i on this port + i; 0: the fleet file's udp:// uris
        p = {name: self.get_parameter(name).value for name in (
            "crazyflies", "drone", "mode", "rate", "command_timeout", "command_delay", "command_age_warn",
            "lockstep_resend", "lockstep_timeout", "real_time_factor", "crash_landing_speed", "crash_contact_tilt_deg",
            "crash_tilt_deg", "runaway_distance", "runaway_speed", "substeps", "gui", "ground_effect", "drag",
            "frame_id", "crtp", "crtp_base_port")}
        if p["crtp"]:
            self.serve_crtp(p)
            return
        if p["mode"] not in MODES:
            raise ValueError(f"parameter mode must be one of {MODES}, got {p['mode']!r}")
        if p["rate"] <= 0:
            raise ValueError(f"parameter rate must be > 0, got {p['rate']}")
        if p["lockstep_resend"] <= 0:
            raise ValueError(f"parameter lockstep_resend must be > 0, got {p['lockstep_resend']}")
        crash = CrashLimits(landing_speed=p["crash_landing_speed"], contact_tilt_deg=p["crash_contact_tilt_deg"],
                            tilt_deg=p["crash_tilt_deg"], max_distance=p["runaway_distance"],
                            max_speed=p["runaway_speed"])
        fleet = load_fleet(p["crazyflies"] or None)
        model = load_drone(p["drone"] or fleet.all.drone)
        self.sim = FleetSimulator(model, fleet.enabled_robots(), dt=1.0 / p["rate"],
                                  command_timeout=p["command_timeout"], command_delay=p["command_delay"],
                                  crash=crash, substeps=p["substeps"], gui=p["gui"],
                                  ground_effect=p["ground_effect"], drag=p["drag"])
        self.mode, self.frame_id = p["mode"], p["frame_id"]
        self.command_age_warn = p["command_age_warn"]
        self.lockstep_resend, self.lockstep_timeout = p["lockstep_resend"], p["lockstep_timeout"]
        # Capped lockstep: the simulation still waits for every command, but never runs ahead of the
        # wall clock, so that what follows sim time in other processes (goals, people) keeps up.
        self.real_time_factor = p["real_time_factor"]
        if self.real_time_factor < 0:
            raise ValueError(f"parameter real_time_factor must be >= 0, got {self.real_time_factor}")
        self.clock_pub = self.create_publisher(Clock, "/clock", qos.CLOCK)
        self.pubs, self.motor_state_pubs = {}, {}
        for name in self.sim.names:
            self.pubs[name] = (self.create_publisher(Odometry, f"{name}/{topics.ODOM}", qos.STATE),
                               self.create_publisher(PoseStamped, f"{name}/{topics.POSE}", qos.STATE),
                               self.create_publisher(Imu, f"{name}/{topics.IMU}", qos.STATE))
            self.motor_state_pubs[name] = self.create_publisher(JointState, f"{name}/{topics.MOTOR_STATE}", qos.STATE)
            self.create_subscription(JointState, f"{name}/{topics.CMD_MOTORS_STAMPED}",
                                     lambda msg, n=name: self.on_stamped_command(n, msg), qos.COMMAND)
            self.create_subscription(Float32MultiArray, f"{name}/{topics.CMD_MOTORS}",
                                     lambda msg, n=name: self.on_command(n, msg), qos.COMMAND)
            self.create_subscription(JointState, f"{name}/{topics.CMD_CTBR_STAMPED}",
                                     lambda msg, n=name: self.on_ctbr_command(n, msg), qos.COMMAND)
            self.create_service(Trigger, f"{name}/reset", lambda req, res, n=name: self.on_reset(res, n))
            self.create_service(Trigger, f"{name}/emergency", lambda req, res, n=name: self.on_emergency(res, n))
        self.create_service(Trigger, "~/reset", lambda req, res: self.on_reset(res, None))
        self.diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, qos.STATE)
        self.create_timer(1.0, self.on_diagnostics)
        self.last_step_wall = self.last_send_wall = time.monotonic()
        self.wall_start, self.sim_start = time.monotonic(), self.sim.time
        lockstep_period = min(self.lockstep_resend / 2, 1.0 / p["rate"]) if self.real_time_factor else \
            self.lockstep_resend / 2
        period = {"realtime": 1.0 / p["rate"], "lockstep": lockstep_period, "fast": 0.0}[self.mode]
        self.create_timer(period, self.on_timer)
        self.get_logger().info(f"simulating {self.sim.names} ({model.name}) in {self.mode} mode at {p['rate']} Hz"
                               + (f", commands delayed {p['command_delay']} steps" if p["command_delay"] else ""))
        self.publish()

    # --- callbacks ---------------------------------------------------------------------
    def on_stamped_command(self, name: str, msg: JointState) -> None:
        self.take_command(name, msg.effort, self.sim.step_of_stamp(stamp_ns(msg.header.stamp)),
                          topics.CMD_MOTORS_STAMPED)

    def on_command(self, name: str, msg: Float32MultiArray) -> None:
        self.take_command(name, msg.data, None, topics.CMD_MOTORS)

    def on_ctbr_command(self, name: str, msg: JointState) -> None:
        self.take_command(name, msg.position, self.sim.step_of_stamp(stamp_ns(msg.header.stamp)),
                          topics.CMD_CTBR_STAMPED, ctbr=True)

    def take_command(self, name: str, values, step, topic: str, ctbr: bool = False) -> None:
        status = self.sim.submit(name, values, stamp=step, ctbr=ctbr)
        if status != "ok":
            c = self.sim.counters[name]
            self.get_logger().warn(f"{name}/{topic} {status} (rejected {c.rejected}, clamped {c.clamped}, "
                                   f"stale {c.stale})", throttle_duration_sec=2.0)
        if self.mode == "lockstep" and self.sim.ready() and self.due():
            self.advance()

    def due(self) -> bool:
        """Lockstep may step now: no cap, or the simulation is not ahead of the wall clock."""
        return not self.real_time_factor or \
            self.sim.time - self.sim_start <= (time.monotonic() - self.wall_start) * self.real_time_factor

    def on_timer(self) -> None:
        if self.mode != "lockstep":
            self.advance()
            if self.mode == "realtime":
                self.check_pace()
            return
        now = time.monotonic()
        if self.sim.ready():  # every answer is in (or nobody flies): step when due
            if self.due():
                self.advance()
        elif now - self.last_step_wall > self.lockstep_timeout:
            self.get_logger().warn(f"lockstep: no command from {self.sim.waiting_for()} for "
                                   f"{self.lockstep_timeout} s; stepping without them", throttle_duration_sec=5.0)
            self.advance()
        elif now - self.last_send_wall >= self.lockstep_resend:
            self.publish(odometry_only_to=self.sim.waiting_for())  # in case a controller missed it

    def on_diagnostics(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = time_from_ns(self.sim.stamp_ns())
        ages = self.sim.command_age_stats()
        for name, c in self.sim.counters.items():
            i = self.sim.index[name]
            age = ages[name]
            late = age["p99"] is not None and age["p99"] > self.command_age_warn
            if late:
                self.get_logger().warn(f"{name}: command age p99 {age['p99']} steps > command_age_warn "
                                       f"{self.command_age_warn}: its commands answer old states",
                                       throttle_duration_sec=10.0)
            crashed = bool(self.sim.crashed[i])
            level = DiagnosticStatus.WARN if (c.rejected or c.timeouts or crashed or late) else DiagnosticStatus.OK
            values = {**vars(c), "emergency_stopped": bool(self.sim.stopped[i]), "crashed": crashed,
                      **{f"command_age_{k}": "none" if v is None else v for k, v in age.items()}}
            msg.status.append(DiagnosticStatus(
                level=level, name=f"sim_bridge: {name}", hardware_id=name,
                message=f"crashed: {self.sim.crash_reason[name]}" if crashed else "commands",
                values=[KeyValue(key=k, value=str(v)) for k, v in values.items()]))
        self.diag_pub.publish(msg)

    def on_reset(self, response, name):
        self.sim.reset(name)
        if name is None:  # the fleet's time starts again: so does the pace
            self.wall_start, self.sim_start = time.monotonic(), self.sim.time
        self.publish()
        response.success, response.message = True, f"reset {name or 'all drones'}"
        return response

    def on_emergency(self, response, name):
        self.sim.emergency_stop(name)
        response.success, response.message = True, f"{name}: motors stopped until reset"
        return response

    # --- stepping ------------------------------------------------------------------------
    def advance(self) -> None:
        for name, reason in self.sim.step().items():
            self.get_logger().error(f"{name} crashed: {reason}; motors off until {name}/reset or ~/reset")
        self.last_step_wall = time.monotonic()
        self.publish()
        self.publish_motor_states()

    def check_pace(self) -> None:
        lag = (time.monotonic() - self.wall_start) - (self.sim.time - self.sim_start)
        if lag > 0.1:
            rate = (self.sim.time - self.sim_start) / max(time.monotonic() - self.wall_start, 1e-9)
            self.get_logger().warn(f"cannot keep real time: {100 * rate:.0f} % of real-time speed",
                                   throttle_duration_sec=5.0)

    def publish(self, odometry_only_to: list[str] | None = None) -> None:
        """The current state of every drone; or only the odometry of some (a lockstep re-send)."""
        stamp = time_from_ns(self.sim.stamp_ns())
        self.last_send_wall = time.monotonic()
        if odometry_only_to is None:
            self.clock_pub.publish(Clock(clock=stamp))
        for name, out in self.sim.outputs().items():
            odom, pose, imu = self.pubs[name]
            if odometry_only_to is None or name in odometry_only_to:
                odom.publish(odometry_msg(out, stamp, self.frame_id, name))
            if odometry_only_to is None:
                pose.publish(pose_msg(out, stamp, self.frame_id))
                imu.publish(imu_msg(out, stamp, name))

    def publish_motor_states(self) -> None:
        """What the engine flew over the step just taken (see the module docstring)."""
        flown = self.sim.last_flown
        stamp = time_from_ns(self.sim.stamp_ns(flown.step))
        for name, i in self.sim.index.items():
            self.motor_state_pubs[name].publish(motor_state_msg(stamp, flown.rotor_speed[i], flown.command[i]))

    # --- crtp:=true --------------------------------------------------------------------------
    def serve_crtp(self, p: dict) -> None:
        """Serve the fleet as simulated Crazyflies on udp:// and publish their ground truth."""
        from ..crazyflie.server import CrazyflieServer

        if p["mode"] != "realtime":
            raise ValueError(f"crtp:=true runs in real time (the drones keep their own clock), got mode {p['mode']!r}")
        if p["rate"] <= 0:
            raise ValueError(f"parameter rate must be > 0, got {p['rate']}")
        path = p["crazyflies"] or str(package_root() / "config" / "crazyflies_udp.yaml")
        self.server = CrazyflieServer.from_fleet(path, base_port=p["crtp_base_port"] or None,
                                                 drone=p["drone"] or None).start()
        self.frame_id = p["frame_id"]
        self.clock_pub = self.create_publisher(Clock, "/clock", qos.CLOCK)
        self.truth_pubs = {name: (self.create_publisher(Odometry, f"{TRUTH_PREFIX}/{name}/{topics.ODOM}", qos.STATE),
                                  self.create_publisher(PoseStamped, f"{TRUTH_PREFIX}/{name}/{topics.POSE}", qos.STATE))
                           for name in self.server.names}
        self.create_timer(1.0 / p["rate"], self.publish_truth)
        self.get_logger().info("serving simulated Crazyflies on CRTP: " + ", ".join(
            f"{name} {uri}" for name, uri in zip(self.server.names, self.server.uris))
            + f"; ground truth on {TRUTH_PREFIX}/<name>/{topics.ODOM}")

    def publish_truth(self) -> None:
        states = self.server.states()
        stamp = time_from_ns(round(next(iter(states.values()))["time"] * 1e9))
        self.clock_pub.publish(Clock(clock=stamp))
        for name, s in states.items():
            rot = quat_to_matrix(s["quaternion"])
            out = {"position": s["position"], "quaternion": s["quaternion"], "velocity_body": rot.T @ s["velocity"],
                   "angular_velocity_body": s["angular_velocity"]}
            odom, pose = self.truth_pubs[name]
            odom.publish(odometry_msg(out, stamp, self.frame_id, name))
            pose.publish(pose_msg(out, stamp, self.frame_id))

    def destroy_node(self):
        if self.server is not None:
            self.server.stop()
        if self.sim is not None:
            self.sim.close()
        super().destroy_node()


def main(args=None):
    raise SystemExit(run(SimBridge, args))


if __name__ == "__main__":
    main()
