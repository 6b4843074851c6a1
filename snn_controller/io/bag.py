"""rosbag2 files (MCAP storage, metadata version 9 as Jazzy writes) from serialized CDR messages.

Pure Python (rosbags): the recorder node hands over the raw bytes of its subscriptions, so a
message is stored exactly as it travelled. ``ros2 bag info/play`` and MCAP tools read the result.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

TYPESTORE = get_typestore(Stores.ROS2_JAZZY)


class BagWriter:
    """Write messages of known ROS 2 types to a new bag directory ``path``.

    ``overwrite``: replace an existing bag at ``path`` (else an existing path is an error, so a
    recording is never lost).
    """

    def __init__(self, path: str | Path, overwrite: bool = False):
        self.path = Path(path)
        if self.path.exists():
            if not overwrite:
                raise FileExistsError(f"{self.path} exists; choose another bag path or allow overwriting")
            shutil.rmtree(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._connections = {}
        self.counts: dict[str, int] = {}

    def add_topic(self, topic: str, msgtype: str) -> None:
        """Declare a topic; ``msgtype`` like ``nav_msgs/msg/Odometry``."""
        if topic in self._connections:
            return
        if msgtype not in TYPESTORE.types:
            raise ValueError(f"unknown message type {msgtype!r} for topic {topic}")
        self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=TYPESTORE)
        self.counts[topic] = 0

    def write(self, topic: str, timestamp_ns: int, cdr: bytes) -> None:
        self._writer.write(self._connections[topic], int(timestamp_ns), bytes(cdr))
        self.counts[topic] += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


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
