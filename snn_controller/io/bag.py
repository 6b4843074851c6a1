"""rosbag2 bags (MCAP storage) from serialized CDR messages, as ``ros2 bag record -s mcap`` writes them.

A bag is a directory: ``metadata.yaml`` (rosbag2 metadata, version 9 as Jazzy writes it, or 8,
the layout before it, on request) and one or more MCAP files ``<name>_0.mcap``, ``<name>_1.mcap``,
... listed in it in order. ``max_bag_size`` (bytes) and ``max_bag_duration`` (seconds) split the
bag into several files as ``ros2 bag record --max-bag-size / --max-bag-duration`` do: the check
runs before each message, and the message that crosses a limit opens the next file. Every file
holds the schemas and channels of every topic declared so far, its own summary and footer, and
the ``rosbag2`` metadata record Jazzy writes; ``metadata.yaml`` is rewritten (to a temporary
name, then renamed) at every split and at ``close()``.

Messages are stored exactly as they travelled (the recorder hands over the raw bytes of its
subscriptions). Schemas and type hashes (RIHS01) come from the rosbags Jazzy type store. Writing
uses the ``mcap`` library; ``bag_info`` and ``read_messages`` read back with rosbags, an
independent implementation, and ``ros2 bag info/play`` and MCAP tools read the result too.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from mcap.writer import CompressionType, Writer
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
METADATA_VERSIONS = (8, 9)  # 9: Jazzy; 8: before it (offered QoS as one YAML string)
CHUNK_SIZE = 768 * 1024  # bytes of messages per MCAP chunk, rosbag2's default
MESSAGE_OVERHEAD = 31 + 16  # bytes a message adds besides its data: the record and its index entry


@dataclass
class _Topic:
    name: str
    msgtype: str
    msgdef: str
    type_hash: str
    qos: list = field(default_factory=list)  # offered QoS profiles, v9 dicts
    count: int = 0


@dataclass
class _File:
    path: str  # relative to the bag directory
    start_ns: int | None = None
    end_ns: int = 0
    count: int = 0
    size: int = 0  # bytes of messages written (the check for max_bag_size)
    counts: dict = field(default_factory=dict)  # topic -> messages in this file


class BagWriter:
    """Write messages of known ROS 2 types to a new bag directory ``path``.

    ``overwrite``: replace an existing bag at ``path`` (else an existing path is an error, so a
    recording is never lost). ``version``: rosbag2 metadata version, 9 (Jazzy) or 8.
    ``max_bag_size`` (bytes of messages per file) and ``max_bag_duration`` (seconds of message
    time per file): split into several files; 0 = no limit.
    """

    def __init__(self, path: str | Path, overwrite: bool = False, *, version: int = 9,
                 max_bag_size: int = 0, max_bag_duration: float = 0.0):
        if version not in METADATA_VERSIONS:
            raise ValueError(f"rosbag2 metadata version {version} is not written here; choose 9 (Jazzy) or 8")
        if max_bag_size < 0 or max_bag_duration < 0:
            raise ValueError("max_bag_size and max_bag_duration must be >= 0 (0: one file)")
        self.path = Path(path)
        if self.path.exists():
            if not overwrite:
                raise FileExistsError(f"{self.path} exists; choose another bag path or allow overwriting")
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        self.version = version
        self.max_bag_size = int(max_bag_size)
        self.max_bag_duration_ns = int(max_bag_duration * 1e9)
        self._topics: dict[str, _Topic] = {}
        self._files: list[_File] = []
        self._writer: Writer | None = None
        self._stream = None
        self._channels: dict[str, int] = {}  # topic -> channel id in the open file
        self._schemas: dict[str, int] = {}  # msgtype -> schema id in the open file
        self.closed = False
        self._open_file()

    # --- topics and messages -------------------------------------------------------------
    @property
    def counts(self) -> dict[str, int]:
        """Messages written per topic."""
        return {name: t.count for name, t in self._topics.items()}

    @property
    def files(self) -> list[str]:
        """The bag's MCAP files, relative to its directory, in order."""
        return [f.path for f in self._files]

    def add_topic(self, topic: str, msgtype: str, qos: list[dict] | None = None) -> None:
        """Declare a topic; ``msgtype`` like ``nav_msgs/msg/Odometry``; ``qos``: the publishers'
        offered QoS profiles (dicts of metadata version 9's layout), for ``ros2 bag play``."""
        if topic in self._topics:
            return
        if msgtype not in TYPESTORE.types:
            raise ValueError(f"unknown message type {msgtype!r} for topic {topic}: the bag writer knows the "
                             "ROS 2 Jazzy standard types only")
        msgdef, _ = TYPESTORE.generate_msgdef(msgtype, ros_version=2)
        self._topics[topic] = _Topic(topic, msgtype, msgdef, TYPESTORE.hash_rihs01(msgtype), list(qos or []))
        self._register(self._topics[topic])

    def write(self, topic: str, timestamp_ns: int, cdr: bytes) -> None:
        """Write one message (its CDR bytes) of a declared topic, stamped ``timestamp_ns``."""
        timestamp_ns = int(timestamp_ns)
        current = self._files[-1]
        if current.count and self._should_split(current, timestamp_ns):
            self._split()
            current = self._files[-1]
        data = bytes(cdr)
        self._writer.add_message(self._channels[topic], timestamp_ns, data, timestamp_ns)
        if current.start_ns is None:
            current.start_ns = timestamp_ns
        current.start_ns = min(current.start_ns, timestamp_ns)
        current.end_ns = max(current.end_ns, timestamp_ns)
        current.count += 1
        current.size += len(data) + MESSAGE_OVERHEAD
        current.counts[topic] = current.counts.get(topic, 0) + 1
        self._topics[topic].count += 1

    def close(self) -> None:
        """Finish the open file (summary, footer) and write the complete metadata.yaml."""
        if self.closed:
            return
        self.closed = True
        self._close_file()
        self._write_metadata()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- files ---------------------------------------------------------------------------
    def _should_split(self, current: _File, timestamp_ns: int) -> bool:
        if self.max_bag_size and current.size >= self.max_bag_size:
            return True
        return bool(self.max_bag_duration_ns and timestamp_ns - current.start_ns > self.max_bag_duration_ns)

    def _split(self) -> None:
        self._close_file()
        self._write_metadata()  # what is complete so far survives a crash of the recorder
        self._open_file()

    def _open_file(self) -> None:
        name = f"{self.path.name}_{len(self._files)}.mcap"
        self._files.append(_File(name))
        self._stream = open(self.path / name, "wb")
        self._writer = Writer(self._stream, chunk_size=CHUNK_SIZE, compression=CompressionType.NONE)
        self._writer.start(profile="ros2", library="snn_controller rosbag2 writer (mcap-python)")
        self._channels, self._schemas = {}, {}
        for t in self._topics.values():
            self._register(t)

    def _register(self, t: _Topic) -> None:
        if t.msgtype not in self._schemas:
            self._schemas[t.msgtype] = self._writer.register_schema(t.msgtype, "ros2msg", t.msgdef.encode())
        # the channel metadata rosbag2 (Jazzy) writes: the offered QoS profiles and the type hash
        self._channels[t.name] = self._writer.register_channel(
            t.name, "cdr", self._schemas[t.msgtype],
            {"offered_qos_profiles": _qos_text(t.qos), "topic_type_hash": t.type_hash})

    def _close_file(self) -> None:
        current = self._files[-1]
        info = self._metadata([current])
        self._writer.add_metadata("rosbag2", {"serialized_metadata": yaml.safe_dump(info, sort_keys=False)})
        self._writer.finish()
        self._stream.close()
        self._writer = self._stream = None

    # --- metadata.yaml -------------------------------------------------------------------
    def _metadata(self, files: list[_File]) -> dict:
        """rosbag2 metadata of ``files`` (all of the bag's, or one for its MCAP metadata record)."""
        used = [f for f in files if f.count]
        start = min((f.start_ns for f in used), default=0)
        end = max((f.end_ns for f in used), default=0)
        return {
            "version": self.version,
            "storage_identifier": "mcap",
            "duration": {"nanoseconds": end - start},
            "starting_time": {"nanoseconds_since_epoch": start},
            "message_count": sum(f.count for f in files),
            "topics_with_message_count": [
                {"topic_metadata": {"name": t.name, "type": t.msgtype, "serialization_format": "cdr",
                                    "offered_qos_profiles": t.qos if self.version >= 9 else _qos_text(t.qos),
                                    "type_description_hash": t.type_hash},
                 "message_count": sum(f.counts.get(t.name, 0) for f in files)}
                for t in self._topics.values()],
            "compression_format": "",
            "compression_mode": "",
            "relative_file_paths": [f.path for f in files],
            "files": [{"path": f.path,
                       "starting_time": {"nanoseconds_since_epoch": f.start_ns if f.count else 0},
                       "duration": {"nanoseconds": f.end_ns - f.start_ns if f.count else 0},
                       "message_count": f.count} for f in files],
            "custom_data": {},
            "ros_distro": "jazzy",
        }

    def _write_metadata(self) -> None:
        """metadata.yaml of the finished files (all of them once closed)."""
        finished = self._files if self._writer is None else self._files[:-1]
        tmp = self.path / "metadata.yaml.tmp"
        tmp.write_text(yaml.safe_dump({"rosbag2_bagfile_information": self._metadata(finished)}, sort_keys=False))
        tmp.replace(self.path / "metadata.yaml")


def _qos_text(qos: list[dict]) -> str:
    """Offered QoS profiles as the one YAML string of metadata version 8 and MCAP channels."""
    return yaml.safe_dump(qos, sort_keys=False).strip() if qos else ""


def bag_info(path: str | Path) -> dict:
    """Topics, types, message counts and duration of a bag (read back with rosbags)."""
    path = Path(path)
    if not (path / "metadata.yaml").is_file():
        raise ValueError(f"{path}: not a rosbag2 directory (no metadata.yaml)")
    with Reader(path) as reader:
        topics = {name: {"type": t.msgtype, "messages": t.msgcount} for name, t in reader.topics.items()}
        return {"path": str(path),
                "messages": reader.message_count, "duration_s": reader.duration / 1e9, "topics": topics}


def read_messages(path: str | Path, topic: str):
    """Deserialized messages of one topic: (timestamp ns, message)."""
    with Reader(Path(path)) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        for connection, timestamp, raw in reader.messages(connections=connections):
            yield timestamp, TYPESTORE.deserialize_cdr(raw, connection.msgtype)
