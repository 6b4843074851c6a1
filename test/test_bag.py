"""rosbag2 (MCAP) files: written from raw CDR, readable by rosbags and independently by mcap-ros2."""

import json
import subprocess
import sys

import pytest

from snn_controller.io.bag import TYPESTORE, BagWriter, bag_info, read_messages


def odometry_cdr(z: float) -> bytes:
    from rclpy.serialization import serialize_message
    from nav_msgs.msg import Odometry

    msg = Odometry()
    msg.header.frame_id, msg.child_frame_id = "world", "cf1"
    msg.pose.pose.position.z = z
    msg.pose.pose.orientation.w = 1.0
    return serialize_message(msg)


def test_bag_round_trip_with_two_independent_readers(tmp_path):
    path = tmp_path / "bag"
    writer = BagWriter(path)
    writer.add_topic("/cf1/odom", "nav_msgs/msg/Odometry")
    for i in range(10):
        writer.write("/cf1/odom", 1_000_000_000 + i * 10_000_000, odometry_cdr(0.1 * i))
    writer.close()
    info = bag_info(path)
    assert info["topics"] == {"/cf1/odom": {"type": "nav_msgs/msg/Odometry", "messages": 10}}
    assert info["duration_s"] == pytest.approx(0.09, abs=1e-6)
    zs = [m.pose.pose.position.z for _, m in read_messages(path, "/cf1/odom")]
    assert zs == pytest.approx([0.1 * i for i in range(10)])
    # an independent reader: the mcap library with its own ROS 2 decoder
    from mcap_ros2.reader import read_ros2_messages

    mcap_file = next(path.glob("*.mcap"))
    decoded = list(read_ros2_messages(str(mcap_file)))
    assert [d.channel.topic for d in decoded] == ["/cf1/odom"] * 10
    assert decoded[3].ros_msg.pose.pose.position.z == pytest.approx(0.3)
    assert decoded[0].schema.name == "nav_msgs/msg/Odometry"
    meta = (path / "metadata.yaml").read_text()
    assert "version: 9" in meta and "storage_identifier: mcap" in meta
    assert "RIHS01_" in meta, "type hashes are recorded as Jazzy does"


def test_bag_never_overwrites_by_accident(tmp_path):
    path = tmp_path / "bag"
    BagWriter(path).close()
    with pytest.raises(FileExistsError, match="exists"):
        BagWriter(path)
    with pytest.raises(ValueError, match="unknown message type"):
        BagWriter(tmp_path / "other").add_topic("/x", "nope_msgs/msg/Nope")
    assert "nav_msgs/msg/Odometry" in TYPESTORE.types


SHORT_MISSION = """name: short_hop
segments:
  - {kind: takeoff, height: 1.0, speed: 0.5, duration: 3.5}
  - {kind: goto, position: [0.3, 0.0, 1.0], speed: 0.5, duration: 2.5}
  - {kind: land, speed: 0.5, duration: 3.0}
"""


@pytest.mark.parametrize("mode", ["realtime", "lockstep"])
def test_main_command_flies_the_mission_with_the_shipped_snn_and_records_a_bag(ros_env, tmp_path, mode):
    """The README's main command (make demo), shortened: two drones take off from the ground, the
    SNN flies a waypoint and lands them, through ROS, recorded to a bag; the launch ends by itself
    when the mission is over."""
    bag, mission = tmp_path / "flight", tmp_path / "short_hop.yaml"
    mission.write_text(SHORT_MISSION)
    out = subprocess.run(
        [sys.executable, "-m", "snn_controller.cli", "launch", "sim_snn.launch.yaml", f"mission:={mission}", "mission_start:=1.0", f"mode:={mode}", "record:=true", f"bag:={bag}",
         "--duration", "120", "--monitor", "--json"],
        env=ros_env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    report = result["mission"]
    assert report["mission"] == "short_hop" and report["drones"] == 2
    assert report["crashed"] == 0 and report["landed"] == 2, report
    for d in report["per_drone"]:
        # goals move at 0.5 m/s; position-only goals make any controller trail them by ~15 cm while they move
        assert d["flew_whole_mission"] and d["observed_share"] > 0.95 and d["error_mean"] < 0.2, d
    takeoff, goto, land = report["segments"]
    assert goto["reached"] == 2 and goto["error_mean"] < 0.15, goto
    assert goto["network_share"] > 0.8, goto  # the network, not only its guide, flew the waypoint
    for name in ("cf1", "cf2"):
        age = result["summary"][name]["command_age"]
        # the age every command had when it reached the motors: lockstep waits for it
        assert age["max"] == 0 if mode == "lockstep" else age["p50"] <= 2, (name, age)  # measured, not timed
    info = bag_info(bag)
    for topic in ("/cf1/odom", "/cf1/cmd_motors_stamped", "/cf1/goal_pose", "/cf2/odom", "/diagnostics",
                  "/mission/status"):
        assert info["topics"][topic]["messages"] > 0, (topic, info)
    statuses = [s for _, m in read_messages(bag, "/diagnostics") for s in m.status if s.name.startswith("snn_policy")]
    assert any(s.message == "network flying" for s in statuses), "the network must fly, not only the guide"

def test_the_shipped_ctbr_snn_flies_the_mission_through_the_rate_loop(ros_env, tmp_path):
    """The CTBR model (models/td3bc_jsrl_ctbr_cf21.safetensors) through the same launch file: snn_policy
    sends CTBR setpoints (its manifest says so), sim_bridge flies them through the firmware's rate
    loop; both drones take off, fly the waypoint and land, the network flying most of it."""
    bag, mission = tmp_path / "flight", tmp_path / "short_hop.yaml"
    mission.write_text(SHORT_MISSION)
    out = subprocess.run(
        [sys.executable, "-m", "snn_controller.cli", "launch", "sim_snn.launch.yaml", f"mission:={mission}",
         "mission_start:=1.0", "mode:=lockstep", "model:=models/td3bc_jsrl_ctbr_cf21.safetensors", "record:=true",
         f"bag:={bag}", "--duration", "120", "--monitor", "--json"],
        env=ros_env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])["mission"]
    assert report["crashed"] == 0 and report["landed"] == 2, report
    takeoff, goto, land = report["segments"]
    assert goto["reached"] == 2 and goto["error_mean"] < 0.15 and goto["network_share"] > 0.8, goto
    info = bag_info(bag)
    assert info["topics"]["/cf1/cmd_ctbr_stamped"]["messages"] > 500 and "/cf1/cmd_motors_stamped" not in info["topics"]
