"""crazyflie_bridge through the real cflib against simulated Crazyflies on udp:// (crazyflie/server.py):
a flight (nothing spins before arm, the controller's take-off and goals, the high-level takeoff, go_to
and land), every safety case, and real_flight.launch.yaml flying a mission.

The controller is pid_controller with action:=ctbr (control/pid.py's PID with the CTBR output, the
firmware's rate mode setpoints). Assertions are on behaviour: the server's ground truth
(positions, motor PWM, the supervisor's state) and the bridge's /diagnostics; deadlines are generous
(CI may be several times slower), never a measure of speed."""

import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("cflib")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseStamped  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402

from conftest import spin_until  # noqa: E402
from snn_controller.crazyflie.server import CrazyflieServer  # noqa: E402
from snn_controller.crazyflie.simulated import IDLE_THRUST_ARMED  # noqa: E402
from snn_controller.io.flight_log import read_flight_log  # noqa: E402
from snn_controller.ros import qos  # noqa: E402
from snn_controller.ros.conversions import ctbr_command_msg  # noqa: E402

BRIDGE = "snn_controller.ros.crazyflie_bridge"
CONTROLLER = "snn_controller.ros.pid_controller"
WAIT = 90.0  # s of wall time any one wait may take, however slow the machine
HOMES = {"cf1": (0.0, 0.0, 0.0), "cf2": (0.0, 1.0, 0.0)}


def write_fleet(path, server, names=("cf1", "cf2")):
    path.write_text(yaml.safe_dump({"all": {"drone": "cf21"}, "robots": {
        name: {"uri": uri, "initial_position": list(HOMES[name])} for name, uri in zip(server.names, server.uris)
        if name in names}}))
    return path


def write_config(path, **sections):
    path.write_text(yaml.safe_dump(sections))
    return path


@pytest.fixture
def server():
    with CrazyflieServer(drones=2, base_port=0, names=list(HOMES), initial_positions=list(HOMES.values())) as srv:
        yield srv


class Probe:
    """The test's node: the bridge's diagnostics per drone, goals, services, commands of its own."""

    def __init__(self, context, server):
        self.server = server
        self.node = rclpy.create_node("probe", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.status, self.events, self.odom = {}, {"cf1": [], "cf2": []}, {}
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, qos.STATE)
        self.goal_pubs = {n: self.node.create_publisher(PoseStamped, f"/{n}/goal_pose", qos.LATCHED) for n in HOMES}
        self.cmd_pubs = {}
        self.command = {}  # name -> the setpoint this probe answers each odometry with
        for name in HOMES:
            self.node.create_subscription(Odometry, f"/{name}/odom", lambda m, n=name: self._on_odom(n, m), qos.STATE)

    def _on_diag(self, msg):
        for s in msg.status:
            if s.name.startswith("crazyflie_bridge: "):
                values = {kv.key: kv.value for kv in s.values}
                self.status[s.hardware_id] = values
                for event in values["events"].split(" | "):
                    if event and event not in self.events[s.hardware_id]:
                        self.events[s.hardware_id].append(event)

    def _on_odom(self, name, msg):
        self.odom[name] = msg
        if name in self.command:
            self.cmd_pubs[name].publish(ctbr_command_msg(msg.header.stamp, self.command[name]))

    def answer(self, name, setpoint):
        """Answer each odometry of ``name`` with ``setpoint`` (a controller of the test's own)."""
        if name not in self.cmd_pubs:
            self.cmd_pubs[name] = self.node.create_publisher(JointState, f"/{name}/cmd_ctbr_stamped", qos.COMMAND)
        self.command[name] = setpoint

    def truth(self, name):
        return self.server.states()[name]

    def mode(self, name):
        return self.status.get(name, {}).get("mode")

    def wait(self, predicate, what, timeout=WAIT):
        assert spin_until(self.executor, predicate, timeout), \
            f"not within {timeout} s: {what}\nstatus {self.status}\ntruth {self.server.states()}"

    def spin(self, seconds):
        spin_until(self.executor, lambda: False, seconds)

    def call(self, service, request=None):
        kind = SetBool if request is not None else Trigger
        client = self.node.create_client(kind, service)
        assert client.wait_for_service(timeout_sec=WAIT), f"service {service} not available"
        future = client.call_async(request if request is not None else Trigger.Request())
        assert spin_until(self.executor, future.done, WAIT), f"service {service} did not answer"
        return future.result()

    def arm(self, name, on=True):
        return self.call(f"/{name}/arm", SetBool.Request(data=on))

    def goal(self, name, xyz):
        msg = PoseStamped()
        msg.header.frame_id = "world"
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in xyz)
        msg.pose.orientation.w = 1.0
        self.goal_pubs[name].publish(msg)

    def near(self, name, xyz, tolerance):
        return np.linalg.norm(self.truth(name)["position"] - np.asarray(xyz)) < tolerance

    def motors_off(self, name):
        return not self.truth(name)["motor_pwm"].any()

    def idle(self, name):
        """The motors at most at the idle thrust of an armed Crazyflie (CONFIG_MOTORS_DEFAULT_IDLE_THRUST)."""
        return self.truth(name)["motor_pwm"].max() <= IDLE_THRUST_ARMED

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()


@pytest.fixture
def probe(ros_context, server):
    p = Probe(ros_context, server)
    yield p
    p.close()


def start_bridge(processes, fleet, config, *extra):
    return processes.start(BRIDGE, "-p", f"crazyflies:={fleet}", "-p", f"config:={config}",
                           "-p", f"toc_cache:={fleet.parent / 'toc'}", *extra)


def start_controller(processes, fleet):
    """The CTBR PID for the drones of ``fleet``, holding each on the ground until its goal_pose."""
    return processes.start(CONTROLLER, "-p", f"crazyflies:={fleet}", "-p", "action:=ctbr", "-p", "takeoff_height:=0.0")


def connected(probe, names=HOMES):
    """Connected, with a state and a battery reading (arming needs both)."""
    probe.wait(lambda: all(probe.mode(n) == "disarmed" and probe.status[n]["vbat"] != "none" for n in names),
               "the bridge connected to the drones")


# --- a flight --------------------------------------------------------------------------------------
def test_nothing_spins_before_arm_then_the_controller_and_the_high_level_commander_fly_and_land(
        server, probe, processes, tmp_path):
    """cf1: the controller wants to fly (its goal is in the air) but nothing spins before arm; armed, it
    takes off and flies two goals; the land service lands it and the motors stop. cf2: no controller; the
    high-level takeoff, go_to (to its goal_pose) and land services fly it."""
    fleet = write_fleet(tmp_path / "fleet.yaml", server)
    start_bridge(processes, fleet, write_config(tmp_path / "bridge.yaml"))
    start_controller(processes, write_fleet(tmp_path / "cf1.yaml", server, ["cf1"]))
    connected(probe)
    probe.goal("cf1", (0.0, 0.0, 0.6))
    probe.wait(lambda: int(probe.status["cf1"]["ignored"]) > 50, "the controller's commands reach the bridge")
    probe.spin(1.0)
    assert probe.motors_off("cf1") and probe.motors_off("cf2") and probe.mode("cf1") == "disarmed"
    assert probe.truth("cf1")["position"][2] < 0.02

    assert probe.arm("cf1").success and probe.arm("cf2").success
    probe.wait(lambda: probe.near("cf1", (0.0, 0.0, 0.6), 0.05), "cf1 at its first goal")
    probe.wait(lambda: probe.mode("cf1") == "flying", "the controller flies cf1")  # (diagnostics at 1 Hz)
    probe.goal("cf1", (0.3, -0.2, 0.8))
    probe.wait(lambda: probe.near("cf1", (0.3, -0.2, 0.8), 0.05), "cf1 at its second goal")

    probe.wait(lambda: probe.call("/cf2/takeoff").success, "cf2's take-off accepted (once its supervisor lets it fly)")
    probe.wait(lambda: probe.near("cf2", (0.0, 1.0, 0.5), 0.05), "cf2 took off to 0.5 m")
    probe.goal("cf2", (0.4, 1.2, 0.7))
    probe.wait(lambda: probe.call("/cf2/go_to").success, "cf2's go_to accepted once the take-off is done")
    probe.wait(lambda: probe.near("cf2", (0.4, 1.2, 0.7), 0.05), "cf2 at its goal_pose")
    probe.wait(lambda: probe.mode("cf2") == "high_level", "the high-level commander flies cf2")

    assert probe.call("/crazyflie_bridge/land").success
    for name in HOMES:
        probe.wait(lambda n=name: probe.mode(n) == "disarmed" and probe.motors_off(n), f"{name} landed, motors off")
        assert probe.truth(name)["position"][2] < 0.05 and not probe.truth(name)["locked"]
    assert any("landed" in e for e in probe.events["cf1"]) and any("landed" in e for e in probe.events["cf2"])


# --- the safety cases ------------------------------------------------------------------------------
def test_geofence_lands_its_hard_margin_stops_the_motors_and_bad_commands_are_rejected(
        server, probe, processes, tmp_path):
    """cf1 (the controller) flies to a goal past the fence: it lands where it crossed (no arming outside
    the fence: test_crazyflie_safety.py). cf2 (this test's commands): non-finite commands are rejected and nothing spins; full thrust
    shoots it through the fence's top and past the hard margin: emergency stop, up there."""
    fleet = write_fleet(tmp_path / "fleet.yaml", server)
    config = write_config(tmp_path / "bridge.yaml",
                          geofence={"min": [-1.5, -1.5, -0.3], "max": [0.6, 2.5, 1.0], "hard_margin": 0.4})
    start_bridge(processes, fleet, config)
    start_controller(processes, write_fleet(tmp_path / "cf1.yaml", server, ["cf1"]))
    connected(probe)
    assert probe.arm("cf1").success and probe.arm("cf2").success

    probe.goal("cf1", (0.9, 0.0, 0.5))
    probe.wait(lambda: probe.mode("cf1") == "landing", "cf1 crossed x = 0.6 and lands")
    assert any("outside the geofence" in e for e in probe.events["cf1"])
    probe.wait(lambda: probe.mode("cf1") == "disarmed" and probe.motors_off("cf1"), "cf1 landed")
    x, _, z = probe.truth("cf1")["position"]
    # landed where it crossed x = 0.6, short of its goal at 0.9, and not stopped (the hard margin is 0.4 m)
    assert 0.5 < x < 0.85 and z < 0.05 and not probe.truth("cf1")["locked"], (x, z)

    probe.answer("cf2", [math.nan, 0.0, 0.0, 0.0])
    probe.wait(lambda: int(probe.status["cf2"]["rejected"]) >= 20, "non-finite commands rejected and counted")
    assert probe.idle("cf2") and probe.truth("cf2")["position"][2] < 0.02, "armed: idling, not flying"
    assert "not finite" in probe.status["cf2"]["last_rejected"]
    probe.answer("cf2", [0.9, 0.0, 0.0, 0.0])
    probe.wait(lambda: probe.motors_off("cf2") and probe.truth("cf2")["locked"], "cf2's motors stopped")
    assert probe.truth("cf2")["position"][2] > 1.0, "stopped up there, not after a landing"
    probe.wait(lambda: probe.mode("cf2") == "emergency", "cf2 went past the hard margin: emergency")
    assert any("hard margin" in e for e in probe.events["cf2"])


def test_low_battery_emergency_lost_link_and_a_killed_controller(server, probe, processes, tmp_path):
    """Both drones fly with the controller. cf2's battery drops below 3.2 V: it lands and may not arm;
    charged again, it flies and the emergency service stops its motors at once, in the air. cf1's link
    drops for 1 s: reported lost, and when it returns cf1 lands. cf1, armed again, loses its controller
    (SIGKILL): the bridge hovers it where the commands stopped, then lands it; it never falls."""
    fleet = write_fleet(tmp_path / "fleet.yaml", server)
    start_bridge(processes, fleet, write_config(tmp_path / "bridge.yaml", hover={"timeout": 1.5}))
    controller = start_controller(processes, fleet)
    connected(probe)
    probe.goal("cf1", (0.0, 0.0, 0.7))
    probe.goal("cf2", (0.0, 1.0, 0.7))
    assert probe.call("/crazyflie_bridge/arm", SetBool.Request(data=True)).success
    probe.wait(lambda: probe.near("cf1", (0.0, 0.0, 0.7), 0.05) and probe.near("cf2", (0.0, 1.0, 0.7), 0.05),
               "both at their goals")

    server.set_battery(1, 3.0)
    probe.wait(lambda: probe.mode("cf2") == "landing", "cf2 lands on low battery")
    assert any("battery low" in e for e in probe.events["cf2"])
    probe.wait(lambda: probe.mode("cf2") == "disarmed" and probe.motors_off("cf2"), "cf2 landed")
    assert probe.truth("cf2")["position"][2] < 0.05 and not probe.arm("cf2").success, "no arming on low battery"
    server.set_battery(1, 4.1)
    probe.goal("cf2", (0.0, 1.0, 1.2))  # high: the test sees it stop before it falls far
    probe.wait(lambda: probe.arm("cf2").success, "cf2 armed with a charged battery")
    probe.wait(lambda: probe.near("cf2", (0.0, 1.0, 1.2), 0.1), "cf2 at its new goal")
    reply = probe.call("/cf2/emergency_stop")
    assert reply.success, reply.message
    stopped_at = probe.truth("cf2")["time"]
    probe.wait(lambda: probe.motors_off("cf2"), "cf2's motors stopped")
    assert probe.truth("cf2")["time"] - stopped_at < 1.0, "at once, not a landing (3 s)"
    assert probe.truth("cf2")["position"][2] > 0.5, "stopped in the air"
    probe.wait(lambda: probe.mode("cf2") == "emergency", "the emergency reported")

    server.drop_link(0, 1.0)
    probe.wait(lambda: probe.status["cf1"]["link"] == "lost" or probe.status["cf1"]["link_lost"] == "1",
               "cf1's lost link reported")
    probe.wait(lambda: probe.mode("cf1") in ("landing", "disarmed"), "cf1 lands when its link is back")
    assert any("link lost" in e for e in probe.events["cf1"]) and any("link back" in e for e in probe.events["cf1"])
    probe.wait(lambda: probe.mode("cf1") == "disarmed" and probe.motors_off("cf1"), "cf1 landed")
    assert probe.truth("cf1")["position"][2] < 0.05

    probe.wait(lambda: probe.arm("cf1").success, "cf1 armed again")
    probe.wait(lambda: probe.near("cf1", (0.0, 0.0, 0.7), 0.05), "cf1 back at its goal")
    os.killpg(controller.pid, signal.SIGKILL)
    probe.wait(lambda: probe.mode("cf1") == "hover", "the bridge holds cf1 where the commands stopped")
    assert probe.truth("cf1")["position"][2] > 0.55
    fastest = []  # the fastest descent so far [m/s]

    def landed():
        fastest.append(max(fastest[-1:] + [-probe.truth("cf1")["velocity"][2]]))
        return probe.mode("cf1") == "disarmed" and probe.motors_off("cf1")

    probe.wait(landed, "cf1 landed")
    fastest = fastest[-1]
    assert probe.truth("cf1")["position"][2] < 0.05 and fastest < 1.0, f"landed, not fell (down at {fastest} m/s)"
    assert [k for k in ("no valid command", "hover", "landed") if not any(k in e for e in probe.events["cf1"])] == []


def test_stopping_the_bridge_lands_the_drone_first(server, probe, processes, tmp_path):
    """SIGINT to the bridge with cf1 in the air: it lands cf1, stops its motors, then exits cleanly."""
    bridge = start_bridge(processes, write_fleet(tmp_path / "fleet.yaml", server, ["cf1"]),
                          write_config(tmp_path / "bridge.yaml"))
    connected(probe, ["cf1"])
    assert probe.arm("cf1").success
    probe.wait(lambda: probe.call("/cf1/takeoff").success, "cf1's take-off accepted once its arming is confirmed")
    probe.wait(lambda: probe.near("cf1", (0.0, 0.0, 0.5), 0.05), "cf1 took off")
    os.killpg(bridge.pid, signal.SIGINT)
    probe.wait(lambda: bridge.poll() is not None, "the bridge exited")
    assert bridge.returncode == 0, processes.logs()
    truth = probe.truth("cf1")
    assert truth["position"][2] < 0.05 and not truth["motor_pwm"].any() and not truth["locked"], truth


def test_a_drone_that_reboots_in_flight_is_reconnected_and_left_on_the_ground(server, probe, processes, tmp_path):
    """cf1 flies; its link dies (the server stops: cflib's connection is lost) and a rebooted drone answers
    on the same port: the bridge opens the link again, and the drone it left flying is landed (here: on
    the ground already) and disarmed, not flown on."""
    start_bridge(processes, write_fleet(tmp_path / "fleet.yaml", server, ["cf1"]),
                 write_config(tmp_path / "bridge.yaml"), "-p", "retry:=0.5")
    start_controller(processes, write_fleet(tmp_path / "cf1.yaml", server, ["cf1"]))
    connected(probe, ["cf1"])
    probe.goal("cf1", (0.0, 0.0, 0.5))
    assert probe.arm("cf1").success
    probe.wait(lambda: probe.near("cf1", (0.0, 0.0, 0.5), 0.05), "cf1 flies")
    server.stop()
    probe.wait(lambda: probe.status["cf1"]["link"] != "up", "the lost link reported")
    rebooted = CrazyflieServer(ports=server.ports, names=list(HOMES), initial_positions=list(HOMES.values())).start()
    try:
        probe.server = rebooted
        probe.wait(lambda: probe.status["cf1"]["link"] == "up" and probe.mode("cf1") == "disarmed",
                   "reconnected, and disarmed after its landing")
        assert any("link back" in e for e in probe.events["cf1"]) and any("landing" in e for e in probe.events["cf1"])
        probe.spin(1.0)
        assert probe.motors_off("cf1") and probe.truth("cf1")["position"][2] < 0.02, "the controller does not fly it"
    finally:
        rebooted.stop()
        probe.server = server


# --- the launch file -------------------------------------------------------------------------------
def snnctl(processes, *args):
    """``snnctl ... --json`` in the test's ROS domain: its JSON answer."""
    out = subprocess.run([sys.executable, "-m", "snn_controller.cli", *args], env=processes.env, capture_output=True,
                         text=True, timeout=WAIT)
    assert out.returncode in (0, 1), out
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_real_flight_launch_flies_a_mission_and_lands(server, probe, processes, tmp_path):
    """snnctl launch real_flight.launch.yaml against the simulated drones: the bridge, the spiking network
    (snn_policy with the CTBR model, its PID guide flying the first 50 steps), the mission and the
    recorder, all from the launch file. The mission starts when the drones are armed
    (the bridge's clock does); both fly it and land; the bag has their flight, and snnctl sim replay
    flies its CTBR setpoints again in the simulator."""
    fleet = write_fleet(tmp_path / "fleet.yaml", server)
    mission = tmp_path / "mission.yaml"
    mission.write_text(yaml.safe_dump({"name": "short", "segments": [
        {"kind": "takeoff", "height": 0.5, "speed": 0.5, "duration": 3.0},
        {"kind": "goto", "position": [0.3, 0.0, 0.5], "speed": 0.5, "duration": 2.0},
        {"kind": "land", "speed": 0.4, "duration": 3.0}]}))
    bag = tmp_path / "bag"
    launch = subprocess.Popen(
        [sys.executable, "-m", "snn_controller.cli", "launch", "real_flight.launch.yaml", f"crazyflies:={fleet}",
         "controller:=snn", "use_mission:=true", f"mission:={mission}", f"bag:={bag}"],
        env=processes.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        connected(probe)
        status = snnctl(processes, "crazyflie", "status", "--json")  # the operator's view, no ros2 CLI needed
        assert {n: status[n]["mode"] for n in HOMES} == {"cf1": "disarmed", "cf2": "disarmed"}, status
        assert snnctl(processes, "crazyflie", "arm", "--json")["success"]
        probe.wait(lambda: all(probe.truth(n)["position"][2] > 0.4 for n in HOMES), "the mission took off")
        probe.wait(lambda: all(probe.near(n, np.add(HOMES[n], (0.3, 0.0, 0.5)), 0.1) for n in HOMES),
                   "the mission's waypoint")
        status = []
        probe.node.create_subscription(String, "/mission/status", lambda m: status.append(json.loads(m.data)),
                                       qos.LATCHED)
        probe.wait(lambda: status and status[-1]["done"], "the mission done")
        assert all(probe.truth(n)["position"][2] < 0.03 and abs(probe.truth(n)["velocity"][2]) < 0.05
                   for n in HOMES), "the mission landed"
        for name in HOMES:  # the controller flew the mission to its end: the bridge did not land it (on a busy
            # machine a late command may make it hover a moment, and the next one fly on; after the touchdown
            # the firmware may disarm itself: its landing timeout)
            assert probe.mode(name) in ("flying", "disarmed"), probe.status[name]
            assert not [e for e in probe.events[name] if e.startswith(f"{name}: landing:")], probe.events[name]
        assert snnctl(processes, "crazyflie", "disarm", "--drone", "cf1", "--json")["success"]
        assert probe.call("/crazyflie_bridge/arm", SetBool.Request(data=False)).success  # (cf1: not armed any more)
        probe.wait(lambda: all(probe.motors_off(n) and probe.mode(n) == "disarmed" for n in HOMES), "disarmed")
    finally:
        os.killpg(launch.pid, signal.SIGINT)
        out, _ = launch.communicate(timeout=60)
    assert launch.returncode == 0, out
    flight = read_flight_log(bag)  # the recorder's bag: the flight as the controllers saw it
    for name in HOMES:
        z = flight.drone(name).odometry.position[:, 2]
        assert z.max() > 0.4 and z[-1] < 0.05, (name, z.max(), z[-1])
    assert flight.mission is not None and flight.mission.done.any()
    # the comparison with the simulator (docs/real_flight.md): the recorded CTBR setpoints flown again, from
    # the recorded state every second (open loop over a whole flight, any model difference accumulates)
    replay = subprocess.run([sys.executable, "-m", "snn_controller.cli", "sim", "replay", "--bag", str(bag), "--drone",
                             "cf1", "--horizon", "1", "--out", str(tmp_path / "replay"), "--json"],
                            env=processes.env, capture_output=True, text=True, timeout=300)
    assert replay.returncode == 0, replay.stderr
    result = json.loads(replay.stdout.strip().splitlines()[-1])
    assert result["commands"] == "ctbr" and result["dt"] == 0.01 and result["steps"] > 500, result
    assert result["error"]["mean"] < 0.02, result  # measured 0.16 cm: the replay follows the flight
