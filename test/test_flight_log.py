"""The bag reader (io/flight_log.py) on a bag written here with BagWriter: what each topic becomes,
a simulation reset, the two clocks, and the errors for missing, corrupt and foreign bags."""

import json
import math

import numpy as np
import pytest

from snn_controller.io.bag import TYPESTORE, BagWriter
from snn_controller.io.flight_log import UNSTAMPED, FlightLogError, read_flight_log

DT_NS = 10_000_000
WALL = 1_700_000_000_000_000_000  # the recorder's clock: wall time, far from sim time


def serialize_message(msg) -> bytes:
    """CDR of an rclpy message, through rosbags' serializer: rclpy's serialize_message appends
    stray bytes to some messages (a JointState with 4 efforts), which rosbags then refuses."""
    return TYPESTORE.serialize_cdr(as_rosbags(msg), type(msg).__module__.rsplit(".", 1)[0].replace(".", "/") + "/"
                                   + type(msg).__name__)


NUMPY_TYPES = {"double": np.float64, "float": np.float32}


def as_rosbags(value, field_type: str = ""):
    """An rclpy message as the rosbags message of the same type, field by field (numeric
    sequences as numpy arrays, as rosbags keeps them)."""
    if hasattr(value, "get_fields_and_field_types"):
        msgtype = type(value).__module__.split(".")[0] + "/msg/" + type(value).__name__
        return TYPESTORE.types[msgtype](**{name: as_rosbags(getattr(value, name), kind) for name, kind
                                           in value.get_fields_and_field_types().items()})
    element = field_type.removeprefix("sequence<").split(">")[0].split("[")[0]
    if element in NUMPY_TYPES and field_type != element:
        return np.asarray(value, dtype=NUMPY_TYPES[element])
    if field_type.startswith("sequence<"):
        return [as_rosbags(v, element) for v in value]
    if field_type == "octet":  # rclpy: bytes of one; rosbags: an int
        return value[0]
    return value


def stamp(msg, ns):
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(ns), 1_000_000_000)
    return msg


def odometry(step, yaw=math.pi / 2):
    from nav_msgs.msg import Odometry

    msg = stamp(Odometry(), step * DT_NS)
    msg.pose.pose.position.x, msg.pose.pose.position.z = 0.1 * step, 1.0
    q = msg.pose.pose.orientation
    q.w, q.z = math.cos(yaw / 2), math.sin(yaw / 2)
    msg.twist.twist.linear.x = 1.0  # body frame: forward, which is world +y at yaw 90 deg
    msg.twist.twist.angular.z = 0.5
    return msg


def command(step, value):
    from sensor_msgs.msg import JointState

    return stamp(JointState(name=["m1", "m2", "m3", "m4"], effort=[value] * 4), step * DT_NS)


def motor_state(step, rotor_speed, value):
    from snn_controller.ros.conversions import motor_state_msg, time_from_ns

    return motor_state_msg(time_from_ns(step * DT_NS), [rotor_speed] * 4, [value] * 4)


def diagnostics(sim_step, crashed=False, flying="network"):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    def kv(d):
        return [KeyValue(key=k, value=str(v)) for k, v in d.items()]

    msg = stamp(DiagnosticArray(), sim_step * DT_NS)
    msg.status.append(DiagnosticStatus(name="sim_bridge: cf1", hardware_id="cf1",
                                       message="crashed: tipped over (95 deg tilt)" if crashed else "commands",
                                       values=kv({"stale": 2, "timeouts": 0, "crashed": crashed, "command_age_p50": 0,
                                                  "command_age_p99": 1, "command_age_max": 3})))
    msg.status.append(DiagnosticStatus(name="snn_policy: cf1", hardware_id="cf1", message=f"{flying} flying",
                                       values=kv({"flying": flying, "faults": 1, "spikes_per_step": "[12.5, 7.25]"})))
    return msg


def write_flight(path, reset=True, motor_state_topic=True):
    """cf1 flies steps 0..9, the simulation is reset (if ``reset``), then steps 0..5; the recorder
    gets each state 2 ms after its step, each answer 5 ms after and, with ``motor_state_topic``,
    what the step flew 8 ms after (the recorder missed step 3's)."""
    from geometry_msgs.msg import PoseStamped
    from std_msgs.msg import Float32MultiArray, String

    bag = BagWriter(path)
    for topic, kind in (("/cf1/odom", "nav_msgs/msg/Odometry"),
                        ("/cf1/cmd_motors_stamped", "sensor_msgs/msg/JointState"),
                        ("/cf1/cmd_motors", "std_msgs/msg/Float32MultiArray"),
                        ("/cf1/goal_pose", "geometry_msgs/msg/PoseStamped"),
                        ("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray"),
                        ("/mission/status", "std_msgs/msg/String")) + \
            ((("/cf1/motor_state", "sensor_msgs/msg/JointState"),) if motor_state_topic else ()):
        bag.add_topic(topic, kind)
    flights = [range(10), range(6)] if reset else [range(6)]
    wall = WALL
    for flight, steps in enumerate(flights):
        for step in steps:
            wall += DT_NS
            bag.write("/cf1/odom", wall + 2_000_000, serialize_message(odometry(step)))
            answer = command(step, 0.1 * flight + 0.01 * step)
            bag.write("/cf1/cmd_motors_stamped", wall + 5_000_000, serialize_message(answer))
            if motor_state_topic and step != 3:
                flew = motor_state(step, 0.02 * step, 0.1 * flight + 0.01 * step)
                bag.write("/cf1/motor_state", wall + 8_000_000, serialize_message(flew))
            if step == 2:
                goal = stamp(PoseStamped(), step * DT_NS)
                goal.pose.position.z = 1.0 + flight
                bag.write("/cf1/goal_pose", wall + 3_000_000, serialize_message(goal))
                status = {"mission": "hop", "start": 0.5 + flight, "time": -0.48, "segment": None, "done": False}
                bag.write("/mission/status", wall + 3_000_000, serialize_message(String(data=json.dumps(status))))
            if step == 4:
                bag.write("/cf1/cmd_motors", wall + 6_000_000, serialize_message(Float32MultiArray(data=[-1.0] * 4)))
                bag.write("/diagnostics", wall + 7_000_000, serialize_message(diagnostics(step, crashed=flight == 1)))
    bag.close()
    return path


def test_the_reader_gives_each_drone_its_states_commands_goals_and_diagnostics_after_the_last_reset(tmp_path):
    log = read_flight_log(write_flight(tmp_path / "bag"))
    assert log.dt == pytest.approx(0.01) and list(log.drones) == ["cf1"]
    d = log.drone("cf1")
    o = d.odometry
    assert o.stamp_ns.tolist() == [s * DT_NS for s in range(6)], "the flight before the reset is dropped"
    assert o.time[-1] == pytest.approx(0.05)
    assert o.position[3] == pytest.approx([0.3, 0.0, 1.0])
    assert o.quaternion[0] == pytest.approx([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)])
    assert o.velocity[0] == pytest.approx([0.0, 1.0, 0.0], abs=1e-12), "odometry's body twist, in the world frame"
    assert o.body_rates[0] == pytest.approx([0.0, 0.0, 0.5])
    c = d.commands
    assert c.answered_ns.tolist() == [s * DT_NS for s in range(5)] + [UNSTAMPED, 5 * DT_NS], "in the order received"
    assert c.values[3] == pytest.approx([0.13] * 4) and c.values[5] == pytest.approx([-1.0] * 4)
    assert (np.diff(c.receive_ns) > 0).all() and c.receive_ns[0] > WALL
    m = d.motor_state
    assert m.stamp_ns.tolist() == [s * DT_NS for s in (0, 1, 2, 4, 5)], "after the reset, as received"
    assert m.rotor_speed[3] == pytest.approx([0.08] * 4) and m.command[3] == pytest.approx([0.14] * 4)
    assert (m.receive_ns - o.receive_ns[[0, 1, 2, 4, 5]] == 6_000_000).all()
    assert d.goals.stamp_ns.tolist() == [2 * DT_NS] and d.goals.position[0] == pytest.approx([0, 0, 2.0])
    b = d.bridge
    assert b.time.tolist() == [0.04] and b.command_age.tolist() == [[0, 1, 3]] and b.stale.tolist() == [2]
    assert b.first_crash() == {"time": 0.04, "reason": "tipped over (95 deg tilt)"}
    p = d.policy
    assert p.network_flies.tolist() == [True] and p.spikes_per_step.tolist() == [[12.5, 7.25]]
    assert p.time.tolist() == [0.04], "placed at the sim time of the newest state received before it"
    assert log.mission.name == "hop" and log.mission.start == 1.5 and log.mission.segment == [None]


def test_a_bag_without_reset_keeps_every_state_and_needs_no_diagnostics(tmp_path):
    log = read_flight_log(write_flight(tmp_path / "bag", reset=False))
    assert len(log.drone("cf1").odometry.stamp_ns) == 6 and log.drone("cf1").bridge.first_crash() is None


def test_a_bag_recorded_before_motor_state_existed_reads_with_an_empty_one(tmp_path):
    d = read_flight_log(write_flight(tmp_path / "bag", motor_state_topic=False)).drone("cf1")
    m = d.motor_state
    assert len(d.odometry.stamp_ns) == 6 and len(d.commands.values) == 7
    assert m.stamp_ns.shape == m.receive_ns.shape == (0,) and m.rotor_speed.shape == m.command.shape == (0, 4)


def test_missing_corrupt_and_foreign_bags_are_errors_that_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FlightLogError, match=f"{missing}: no such bag"):
        read_flight_log(missing)
    (tmp_path / "plain").mkdir()
    with pytest.raises(FlightLogError, match="plain: not a rosbag2 directory"):
        read_flight_log(tmp_path / "plain")
    corrupt = write_flight(tmp_path / "corrupt")
    mcap = next(corrupt.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[:len(mcap.read_bytes()) // 2])  # a recording cut off half-way
    with pytest.raises(FlightLogError, match="corrupt: cannot read the bag"):
        read_flight_log(corrupt)
    foreign = BagWriter(tmp_path / "foreign")
    foreign.add_topic("/chatter", "std_msgs/msg/String")
    foreign.close()
    with pytest.raises(FlightLogError, match=r"foreign: no drone odometry .*'/chatter'"):
        read_flight_log(tmp_path / "foreign")


def test_an_unknown_drone_name_is_an_error_that_lists_the_bags_drones(tmp_path):
    log = read_flight_log(write_flight(tmp_path / "bag"))
    with pytest.raises(FlightLogError, match=r"no drone 'cf9' in the bag; it has \['cf1'\]"):
        log.drone("cf9")


