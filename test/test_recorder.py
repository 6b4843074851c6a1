"""flight_recorder and the bag writer: what is recorded, split bags, and a complete bag after
SIGTERM under load, read back by an independent reader (mcap + mcap_ros2's decoder)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from snn_controller.io.bag import BagWriter
from snn_controller.ros.flight_recorder import FLEET_TOPICS, recorded_topics
from snn_controller.io.topics import DRONE_TOPICS

HERE = Path(__file__).resolve().parent


def odometry_cdr(i: int, pad: int = 0) -> bytes:
    from nav_msgs.msg import Odometry
    from rclpy.serialization import serialize_message

    msg = Odometry()
    msg.header.frame_id, msg.child_frame_id = "world", "x" * pad
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(i * 10_000_000, 10**9)
    return serialize_message(msg)


def stamp_ns(msg) -> int | None:
    header = getattr(msg, "header", None)
    return None if header is None else header.stamp.sec * 10**9 + header.stamp.nanosec


def read_independently(path: Path) -> list[tuple[str, int, int, bytes]]:
    """Every message of the bag as (topic, log time, header stamp ns, bytes), file after file in
    metadata.yaml's order, read with mcap's reader and decoded with mcap_ros2's decoder (neither
    the writer's code nor rclpy). Each file must be complete: its footer and summary present, and
    its statistics what metadata.yaml says."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    meta = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["relative_file_paths"] == [f["path"] for f in meta["files"]]
    assert sorted(p.name for p in path.glob("*.mcap")) == sorted(meta["relative_file_paths"])
    out = []
    for entry in meta["files"]:
        with open(path / entry["path"], "rb") as f:
            reader = make_reader(f, decoder_factories=[DecoderFactory()])
            summary = reader.get_summary()
            assert summary is not None and summary.statistics is not None, f"{entry['path']} has no summary"
            assert summary.statistics.message_count == entry["message_count"], entry
            messages = [(channel.topic, message.log_time, stamp_ns(ros), bytes(message.data))
                        for _, channel, message, ros in reader.iter_decoded_messages(log_time_order=False)]
        assert len(messages) == entry["message_count"], entry
        if messages:
            assert min(m[1] for m in messages) == entry["starting_time"]["nanoseconds_since_epoch"]
            assert max(m[1] for m in messages) - min(m[1] for m in messages) == entry["duration"]["nanoseconds"]
        out += messages
    per_topic = {t["topic_metadata"]["name"]: t["message_count"] for t in meta["topics_with_message_count"]}
    assert meta["message_count"] == len(out) == sum(per_topic.values())
    for topic, count in per_topic.items():
        assert count == sum(1 for m in out if m[0] == topic), topic
    return out


# --- the writer: split bags, metadata versions -------------------------------------------------
@pytest.mark.parametrize("split", [{"max_bag_size": 40_000}, {"max_bag_duration": 0.5}], ids=["size", "duration"])
def test_a_split_bag_reads_back_as_one_sequence(tmp_path, split):
    """Several MCAP files in one bag directory, listed in metadata.yaml as rosbag2 does; read back
    by two independent readers, the files in order are the written sequence: nothing missing,
    nothing repeated. A topic declared after the first split is in the later files too."""
    from rosbags.rosbag2 import Reader

    path = tmp_path / "split"
    writer = BagWriter(path, **split)
    writer.add_topic("/a/odom", "nav_msgs/msg/Odometry")
    written = []
    for i in range(1500):  # 3 s at 500 Hz over two topics, the second from t = 1 s on
        t = 1_000_000_000 + i * 2_000_000
        if i == 500:
            writer.add_topic("/b/odom", "nav_msgs/msg/Odometry")
        topic = "/b/odom" if i >= 500 and i % 2 else "/a/odom"
        data = odometry_cdr(i, pad=i % 50)
        writer.write(topic, t, data)
        written.append((topic, t, i * 10_000_000, data))
    writer.close()
    assert len(writer.files) > 2 and writer.files == [f"split_{k}.mcap" for k in range(len(writer.files))]
    assert read_independently(path) == written
    with Reader(path) as reader:  # rosbags: the whole bag as one sequence
        assert [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()] == [(w[0], w[1], w[3]) for w in written]
    meta = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 9 and meta["storage_identifier"] == "mcap"
    for entry in meta["files"][:-1]:  # each full file holds what its limit allows, one message more at most
        if "max_bag_duration" in split:
            assert entry["duration"]["nanoseconds"] <= split["max_bag_duration"] * 1e9
        else:
            size = (path / entry["path"]).stat().st_size
            assert split["max_bag_size"] <= size < split["max_bag_size"] + 20_000, (entry, size)


def test_metadata_version_8_on_request(tmp_path):
    from rosbags.rosbag2 import Reader

    path = tmp_path / "v8"
    with BagWriter(path, version=8) as writer:
        forever = {"sec": 9223372036, "nsec": 854775807}
        qos = [{"history": "keep_last", "depth": 1, "reliability": "reliable", "durability": "transient_local",
                "deadline": forever, "lifespan": forever, "liveliness": "automatic",
                "liveliness_lease_duration": forever, "avoid_ros_namespace_conventions": False}]
        writer.add_topic("/cf1/goal_pose", "geometry_msgs/msg/PoseStamped", qos)
    meta = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 8
    topic = meta["topics_with_message_count"][0]["topic_metadata"]
    assert isinstance(topic["offered_qos_profiles"], str) and "transient_local" in topic["offered_qos_profiles"]
    assert topic["type_description_hash"].startswith("RIHS01_")
    with Reader(path) as reader:
        assert reader.message_count == 0 and list(reader.topics) == ["/cf1/goal_pose"]
    with pytest.raises(ValueError, match="choose 9 .Jazzy. or 8"):
        BagWriter(tmp_path / "v5", version=5)


# --- what the recorder records -----------------------------------------------------------------
def test_by_default_the_recorder_records_the_fleet(ros_context, tmp_path):
    """No parameters: every per-drone topic of every enabled drone of the package's fleet file, the
    diagnostics, the mission's status and the clock."""
    from rclpy.parameter import Parameter

    from snn_controller.ros.flight_recorder import FlightRecorder

    recorder = FlightRecorder(context=ros_context, parameter_overrides=[Parameter("output", value=str(tmp_path / "b"))])
    try:
        assert recorder.wanted == [*(f"/{n}/{t}" for n in ("cf1", "cf2") for t in DRONE_TOPICS), *FLEET_TOPICS]
    finally:
        recorder.destroy_node()
    assert {"odom", "pose", "imu", "motor_state", "cmd_motors_stamped", "cmd_motors", "cmd_ctbr_stamped",
            "goal_pose"} == set(DRONE_TOPICS)
    assert FLEET_TOPICS == ("/diagnostics", "/mission/status", "/clock")
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("robots:\n  a: {}\n  b: {enabled: false}\n")
    assert recorded_topics(["/extra", "/a/odom"], str(fleet), ["odom"], ["/clock"]) == ["/a/odom", "/clock", "/extra"]
    assert recorded_topics(["/x"], str(fleet), fleet=False) == ["/x"]


def test_the_recorder_records_a_list_or_a_pattern_and_latched_goals(ros_context, tmp_path):
    """fleet:=false with a list and a regex: the topics the graph has that match, found while they
    appear; a transient-local goal published before the recorder subscribed is recorded too."""
    from geometry_msgs.msg import PoseStamped
    from nav_msgs.msg import Odometry
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    from conftest import spin_until
    from snn_controller.io.bag import bag_info
    from snn_controller.ros import qos
    from snn_controller.ros.flight_recorder import FlightRecorder

    source = Node("source", context=ros_context)
    goal = source.create_publisher(PoseStamped, "/r1/goal_pose", qos.LATCHED)
    goal.publish(PoseStamped())  # once, before the recorder exists
    pubs = {t: source.create_publisher(Odometry, t, qos.STATE) for t in ("/r1/odom", "/r22/odom", "/other/odom",
                                                                          "/r1/pose_odom")}
    recorder = FlightRecorder(context=ros_context, parameter_overrides=[
        Parameter("output", value=str(tmp_path / "bag")), Parameter("fleet", value=False),
        Parameter("topics", value=["/other/odom"]), Parameter("regex", value=r"/r[0-9]+/(odom|goal_pose)"),
        Parameter("discovery_period", value=0.1)])
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(source)
    executor.add_node(recorder)
    late = []

    def publish():
        for pub in pubs.values():
            pub.publish(Odometry())
        if not late and recorder.received.get("/r1/odom", 0) > 3:  # a topic that appears later
            late.append(source.create_publisher(Odometry, "/r3/odom", qos.STATE))
        for pub in late:
            pub.publish(Odometry())

    source.create_timer(0.02, publish)
    try:
        assert spin_until(executor, lambda: all(recorder.received.get(t, 0) >= 5 for t in (
            "/r1/odom", "/r22/odom", "/other/odom", "/r3/odom")) and recorder.received.get("/r1/goal_pose"), 20.0), \
            recorder.received
    finally:
        executor.shutdown()
        recorder.destroy_node()
        source.destroy_node()
    info = bag_info(tmp_path / "bag")
    assert set(info["topics"]) == {"/r1/odom", "/r22/odom", "/r3/odom", "/other/odom", "/r1/goal_pose"}
    assert info["topics"]["/r1/goal_pose"]["messages"] == 1
    meta = yaml.safe_load((tmp_path / "bag" / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    offered = {t["topic_metadata"]["name"]: t["topic_metadata"]["offered_qos_profiles"]
               for t in meta["topics_with_message_count"]}
    assert offered["/r1/goal_pose"][0]["durability"] == "transient_local", offered  # for ros2 bag play


def test_recorder_errors_name_the_problem_and_the_remedy(ros_context, tmp_path):
    from rclpy.parameter import Parameter

    from snn_controller.ros.flight_recorder import FlightRecorder

    def make(**params):
        FlightRecorder(context=ros_context, parameter_overrides=[
            Parameter("output", value=str(tmp_path / "bag")), *(Parameter(k, value=v) for k, v in params.items())])

    with pytest.raises(ValueError, match="nothing to record.*fleet:=true, topics:=.*regex:="):
        make(fleet=False)
    with pytest.raises(ValueError, match="regex .* is not a regular expression"):
        make(regex="(")
    (tmp_path / "bag").mkdir()
    with pytest.raises(FileExistsError, match="choose another bag path or allow overwriting"):
        make()


# --- SIGTERM under load -------------------------------------------------------------------------
def closed_summary(log: str) -> dict:
    lines = [line for line in log.splitlines() if "flight_recorder: closed {" in line]
    assert len(lines) == 1, log[-3000:]
    return json.loads(lines[0].split("closed ", 1)[1])


def wait_for(predicate, timeout: float, what: str, logs=lambda: ""):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{logs()}")


def test_sigterm_under_load_leaves_a_complete_bag_with_every_message_received(processes, tmp_path):
    """5 drones x 100 Hz odometry from another process; the recorder, the fleet's default topics,
    split by duration, is killed with SIGTERM mid-stream. The independent reader finds every file
    complete and, per topic, exactly the messages the recorder says it received, to the last one
    (count and receive time), each once and in order."""
    drones = [f"d{k}" for k in range(5)]
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("robots:\n" + "".join(f"  {d}: {{}}\n" for d in drones))
    bag = tmp_path / "bag"
    load = subprocess.Popen([sys.executable, str(HERE / "load_publisher.py"), "5", "100", "d"], env=processes.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    processes.procs.append(("load_publisher", load, open(tmp_path / "load.log", "w")))
    recorder = processes.start("snn_controller.ros.flight_recorder", "-p", f"output:={bag}",
                               "-p", f"crazyflies:={fleet}", "-p", "max_bag_duration:=1.0", name="recorder")
    # at least three full files (> 3 s of messages) before the kill, whatever the machine's speed
    wait_for(lambda: (bag / "bag_3.mcap").exists(), 90, "3 s of recording", processes.logs)
    os.kill(recorder.pid, signal.SIGTERM)
    assert recorder.wait(60) == 0, processes.logs()
    summary = closed_summary(processes.logs())
    messages = read_independently(bag)
    assert summary["files"] == [f"bag_{k}.mcap" for k in range(len(summary["files"]))] and len(summary["files"]) >= 4
    got = {f"/{d}/odom": [m for m in messages if m[0] == f"/{d}/odom"] for d in drones}
    assert set(summary["received"]) == set(got), summary
    assert {m[0] for m in messages} == set(got)
    for topic, msgs in got.items():
        assert len(msgs) == summary["received"][topic] == summary["written"][topic] > 100, (topic, summary)
        assert msgs[-1][1] == summary["last_receive_ns"][topic], topic  # to the last message received
        stamps = [m[2] for m in msgs]
        assert all(a < b for a, b in zip(stamps, stamps[1:])), f"{topic}: a message repeated or out of order"
        gaps = sum((b - a) // 10_000_000 - 1 for a, b in zip(stamps, stamps[1:]))
        print(f"{topic}: {len(msgs)} received and in the bag, {gaps} lost in transport before the recorder")
    assert summary["never_seen"] == [t for t in summary["never_seen"] if not t.endswith("/odom")]
