"""The CRTP protocol (Crazy RealTime Protocol) as plain Python: packets, ports, and the payload
formats the simulated Crazyflie (:mod:`.simulated`) serves, as the firmware and cflib 0.1.34 use them.

A packet is one header byte ``port << 4 | link bits | channel`` and up to 30 payload bytes
(``CRTP_MAX_DATA_SIZE``); on cflib's ``udp://`` link one UDP datagram carries exactly one packet
(``cflib/crtp/udpdriver.py``). All multi-byte fields are little-endian (the STM32's order).

Firmware: bitcraze/crazyflie-firmware at commit 2a18fc29 (CRTP_PROTOCOL_VERSION 12); the source of
each format is named where it is defined. Units are the firmware's: degrees and deg/s for attitude
and rates, metres and m/s for positions and velocities, uint16 PWM for the legacy thrust.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

MAX_DATA_SIZE = 30  # CRTP_MAX_DATA_SIZE
PROTOCOL_VERSION = 12  # crtp.h CRTP_PROTOCOL_VERSION: supervisor port, v2 TOCs, go_to_2 ...
NULL_HEADER = 0xFF  # the null packet (port 15, channel 3): cflib's udp scan probe


class Port:
    """CRTP ports (crtp.h ``CRTPPort``)."""

    CONSOLE = 0
    PARAM = 2
    COMMANDER = 3  # legacy roll/pitch/yaw-rate/thrust setpoint
    MEM = 4
    LOG = 5
    LOCALIZATION = 6
    GENERIC_COMMANDER = 7
    HIGH_LEVEL = 8  # CRTP_PORT_SETPOINT_HL
    SUPERVISOR = 9
    PLATFORM = 13
    LINK = 15


@dataclass(frozen=True)
class Packet:
    port: int
    channel: int
    data: bytes = b""

    def __post_init__(self):
        if len(self.data) > MAX_DATA_SIZE:
            raise ValueError(f"CRTP payload of {len(self.data)} bytes on port {self.port}: at most {MAX_DATA_SIZE}")

    @property
    def header(self) -> int:
        # bits 2-3 are the link bits; cflib sets both (bootloader compatibility), so does this side
        return (self.port & 0x0F) << 4 | 0x0C | (self.channel & 0x03)

    def encode(self) -> bytes:
        return bytes((self.header,)) + self.data

    @property
    def is_null(self) -> bool:
        return self.header == NULL_HEADER and not self.data


def decode(datagram: bytes) -> Packet:
    """One UDP datagram -> its packet; raises ValueError for an empty or oversized datagram."""
    if not datagram or len(datagram) > 1 + MAX_DATA_SIZE:
        raise ValueError(f"a CRTP datagram has 1 to {1 + MAX_DATA_SIZE} bytes, got {len(datagram)}")
    header = datagram[0]
    return Packet((header >> 4) & 0x0F, header & 0x03, bytes(datagram[1:]))


# --- link (crtpservice.c) and platform (platformservice.c) -------------------------------------
class Link:
    ECHO, SOURCE, SINK = 0, 1, 2
    SOURCE_TEXT = b"Bitcraze Crazyflie"  # what linkSource answers, zero-padded to 30 bytes


class Platform:
    COMMAND_CHANNEL, VERSION_CHANNEL, APP_CHANNEL = 0, 1, 2
    SET_CONTINUOUS_WAVE, ARM_SYSTEM, RECOVER_SYSTEM, USER_NOTIFICATION = 0, 1, 2, 3  # arm/recover: deprecated
    GET_PROTOCOL_VERSION, GET_FIRMWARE_VERSION, GET_DEVICE_TYPE_NAME = 0, 1, 2


def protocol_version_reply() -> Packet:
    """versionCommandProcess: ``*(int*)&data[1] = CRTP_PROTOCOL_VERSION``, 5 bytes."""
    return Packet(Port.PLATFORM, Platform.VERSION_CHANNEL, struct.pack("<Bi", Platform.GET_PROTOCOL_VERSION,
                                                                         PROTOCOL_VERSION))


def link_source_reply() -> Packet:
    return Packet(Port.LINK, Link.SOURCE, Link.SOURCE_TEXT.ljust(MAX_DATA_SIZE, b"\0"))


# --- supervisor (crtp_supervisor.h) -------------------------------------------------------------
class Supervisor:
    INFO_CHANNEL, COMMAND_CHANNEL = 0, 1
    ARM_SYSTEM, RECOVER_SYSTEM, EMERGENCY_STOP, EMERGENCY_STOP_WATCHDOG = 1, 2, 3, 4
    GET_STATE_BITFIELD = 0x0C  # info commands 1..11 ask for one bit, 12 for the whole uint16
    RESPONSE = 0x80  # a reply's command byte is RESPONSE | command


def supervisor_reply(channel: int, command: int, payload: bytes) -> Packet:
    return Packet(Port.SUPERVISOR, channel, bytes((Supervisor.RESPONSE | command,)) + payload)


# --- memory (crtp_mem.c): this drone has no memories -------------------------------------------
class Mem:
    INFO_CHANNEL = 0
    INFO_NUMBER = 1  # CMD_INFO_NBR: reply [1, number of memories]


# --- TOCs: log (log.c) and param (param_logic.c), protocol v2 -----------------------------------
class Toc:
    CHANNEL = 0
    GET_ITEM_V2, GET_INFO_V2 = 2, 3


# log variable types (log.h LOG_UINT8 ...): code -> (struct format, C name)
LOG_TYPES = {1: ("B", "uint8_t"), 2: ("H", "uint16_t"), 3: ("I", "uint32_t"), 4: ("b", "int8_t"),
             5: ("h", "int16_t"), 6: ("i", "int32_t"), 7: ("f", "float"), 8: ("e", "FP16")}
LOG_TYPE = {c_name: code for code, (_, c_name) in LOG_TYPES.items()}
GROUP_START = 0x81  # LOG_GROUP | LOG_START = PARAM_GROUP | PARAM_START: a group's entry in the TOC CRC

# param types (param.h: bytes | float << 2 | unsigned << 3): code -> (struct format, C name)
PARAM_TYPES = {0x08: ("B", "uint8_t"), 0x09: ("H", "uint16_t"), 0x0A: ("I", "uint32_t"), 0x00: ("b", "int8_t"),
               0x01: ("h", "int16_t"), 0x02: ("i", "int32_t"), 0x06: ("f", "float")}
PARAM_TYPE = {c_name: code for code, (_, c_name) in PARAM_TYPES.items()}
PARAM_READ_ONLY = 0x40  # PARAM_RONLY


@dataclass(frozen=True)
class TocEntry:
    group: str
    name: str
    type_code: int  # LOG_TYPES or PARAM_TYPES key, with PARAM_READ_ONLY for a read-only param

    def __post_init__(self):
        if len(self.group) + len(self.name) + 2 > 26:  # log.c / param_logic.c: "'%s.%s' too long"
            raise ValueError(f"TOC name '{self.group}.{self.name}' too long for a CRTP packet")

    @property
    def full_name(self) -> str:
        return f"{self.group}.{self.name}"


def toc_crc(entries: list[TocEntry]) -> int:
    """The TOC hash as log.c / param_logic.c chain it: for every entry in order (a group start entry
    before each new group), crc = crc32(crc as 4 bytes LE + type byte + name). cflib keys its TOC
    cache on it; it differs from a real drone's (a different TOC), which only means another cache file."""
    crc, group = 0, None
    for e in entries:
        if e.group != group:
            group = e.group
            crc = zlib.crc32(struct.pack("<IB", crc, GROUP_START) + group.encode())
        crc = zlib.crc32(struct.pack("<IB", crc, e.type_code) + e.name.encode())
    return crc


def toc_info_reply(port: int, entries: list[TocEntry], extra: bytes = b"") -> Packet:
    """CMD_GET_INFO_V2: [3, count (uint16), crc (uint32)] + for the log port max blocks, max ops."""
    return Packet(port, Toc.CHANNEL, struct.pack("<BHI", Toc.GET_INFO_V2, len(entries), toc_crc(entries)) + extra)


def toc_item_reply(port: int, entries: list[TocEntry], index: int) -> Packet:
    """CMD_GET_ITEM_V2: [2, index (uint16), type, group\\0, name\\0]; out of range: [2] alone."""
    if not 0 <= index < len(entries):
        return Packet(port, Toc.CHANNEL, bytes((Toc.GET_ITEM_V2,)))
    e = entries[index]
    return Packet(port, Toc.CHANNEL, struct.pack("<BHB", Toc.GET_ITEM_V2, index, e.type_code)
                  + e.group.encode() + b"\0" + e.name.encode() + b"\0")


# --- log control (log.c logControlProcess) ------------------------------------------------------
class Log:
    TOC_CHANNEL, CONTROL_CHANNEL, DATA_CHANNEL = 0, 1, 2
    CREATE_BLOCK, APPEND_BLOCK, DELETE_BLOCK, START_BLOCK, STOP_BLOCK, RESET = 0, 1, 2, 3, 4, 5
    CREATE_BLOCK_V2, APPEND_BLOCK_V2, START_BLOCK_V2 = 6, 7, 8
    MAX_LEN = 26  # LOG_MAX_LEN: payload bytes of one block (4 of 30 are id and timestamp)
    MAX_BLOCKS, MAX_OPS = 16, 128
    MEMORY_VARIABLE = 0xFFFF  # an op with this id logs raw memory (not served)


def log_block_ops_v2(payload: bytes) -> list[tuple[int, int]]:
    """The ops of CONTROL_CREATE/APPEND_BLOCK_V2 (after command and block id): (log type, TOC id)
    triples of 3 bytes (``struct ops_setting_v2``); the low nibble of the type is the type it is sent as."""
    return [struct.unpack_from("<BH", payload, k) for k in range(0, len(payload) - 2, 3)]


def log_control_reply(command: int, block_id: int, error: int) -> Packet:
    """Every control command is answered [command, block id, errno (0 = ok)]."""
    return Packet(Port.LOG, Log.CONTROL_CHANNEL, bytes((command, block_id & 0xFF, error)))


def log_data(block_id: int, timestamp_ms: int, payload: bytes) -> Packet:
    """[block id, timestamp (uint24 LE, ms since boot), the variables]."""
    return Packet(Port.LOG, Log.DATA_CHANNEL, bytes((block_id,)) + (timestamp_ms & 0xFFFFFF).to_bytes(3, "little")
                  + payload)


def pack_value(type_code: int, value, table=LOG_TYPES) -> bytes:
    """A value as its C type: integers truncated toward zero and saturated like a C cast of an
    in-range float (out-of-range casts are undefined in C; saturating is the safe reading)."""
    fmt = table[type_code & 0x0F][0]
    if fmt in "fe":
        return struct.pack("<" + fmt, float(value))
    bits = struct.calcsize(fmt) * 8
    lo, hi = (0, 2 ** bits - 1) if fmt.isupper() else (-2 ** (bits - 1), 2 ** (bits - 1) - 1)
    v = float(value)
    v = 0 if math.isnan(v) else v
    return struct.pack("<" + fmt, int(min(max(math.trunc(v) if math.isfinite(v) else v, lo), hi)))


def unpack_value(type_code: int, raw: bytes, table=PARAM_TYPES):
    fmt = "<" + table[type_code & 0x0F][0]
    return struct.unpack(fmt, raw[:struct.calcsize(fmt)])[0]


# --- param read/write (param_logic.c) -----------------------------------------------------------
class Param:
    TOC_CHANNEL, READ_CHANNEL, WRITE_CHANNEL, MISC_CHANNEL = 0, 1, 2, 3  # misc (set by name, ...): not served
    NOT_FOUND = 2  # PARAM_NOT_FOUND


# --- setpoints ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LegacySetpoint:
    """crtp_commander_rpyt.c ``CommanderCrtpLegacyValues``: roll, pitch [deg or deg/s], yaw [deg/s or
    deg], thrust (uint16 PWM). As sent: cflib's ``send_setpoint`` puts ``-pitch`` on the radio."""

    roll: float
    pitch: float
    yaw: float
    thrust: int


def decode_legacy_setpoint(data: bytes) -> LegacySetpoint:
    return LegacySetpoint(*struct.unpack_from("<fffH", data))


class Generic:
    """crtp_commander_generic.c packet types (first byte of a SET_SETPOINT_CHANNEL packet)."""

    SETPOINT_CHANNEL, META_CHANNEL = 0, 1
    STOP, LEGACY_VELOCITY_WORLD, LEGACY_HOVER, POSITION, VELOCITY_WORLD, HOVER = 0, 1, 5, 7, 8, 10
    NOTIFY_SETPOINT_STOP = 0  # meta command (crtp_commander.c)


@dataclass(frozen=True)
class GenericSetpoint:
    """A decoded generic setpoint: ``kind`` one of stop / velocity_world / hover / position, the four
    floats as the firmware reads them (yaw rates already with the legacy types' sign flip undone)."""

    kind: str
    values: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)


def decode_generic_setpoint(data: bytes) -> GenericSetpoint | None:
    """Types served: stop; velocity world (vx, vy, vz [m/s], yaw rate [deg/s]); hover (vx, vy body
    [m/s], yaw rate [deg/s], z [m]); position (x, y, z [m], yaw [deg]). None for any other type
    (the firmware then zeroes the setpoint; see simulated.py for what is done with it)."""
    kind = data[0]
    if kind == Generic.STOP:
        return GenericSetpoint("stop")
    if len(data) < 17:
        return None
    a, b, c, d = struct.unpack_from("<ffff", data, 1)
    if kind == Generic.VELOCITY_WORLD:
        return GenericSetpoint("velocity_world", (a, b, c, d))
    if kind == Generic.LEGACY_VELOCITY_WORLD:  # legacyVelocityDecoder: yawrate = -values->yawrate
        return GenericSetpoint("velocity_world", (a, b, c, -d))
    if kind == Generic.HOVER:
        return GenericSetpoint("hover", (a, b, c, d))
    if kind == Generic.LEGACY_HOVER:
        return GenericSetpoint("hover", (a, b, -c, d))
    if kind == Generic.POSITION:
        return GenericSetpoint("position", (a, b, c, d))
    return None


# --- high-level commander (crtp_commander_high_level.c) ----------------------------------------
class HighLevel:
    SET_GROUP_MASK, STOP, GO_TO, TAKEOFF_2, LAND_2, GO_TO_2 = 0, 3, 4, 7, 8, 12
    ALL_GROUPS = 0


@dataclass(frozen=True)
class HighLevelCommand:
    """One decoded command. ``yaw`` [rad]; ``use_current_yaw`` (takeoff/land) keeps the current
    heading; ``relative`` / ``linear`` as go_to. Fields a command does not have keep their defaults."""

    command: int
    group_mask: int
    height: float = 0.0  # m, takeoff / land
    position: tuple[float, float, float] = (0.0, 0.0, 0.0)  # m, go_to
    yaw: float = 0.0
    use_current_yaw: bool = False
    duration: float = 0.0  # s
    relative: bool = False
    linear: bool = False


def decode_high_level(data: bytes) -> HighLevelCommand | None:
    """The commands served (cflib 0.1.34's formats): set_group_mask ``<BB``, stop ``<BB``,
    takeoff_2 / land_2 ``<BBff?f`` (height, yaw, use current yaw, duration), go_to_2 ``<BBBBfffff``
    (relative, linear, x, y, z, yaw, duration) and the deprecated go_to ``<BBBfffff``. None otherwise."""
    command = data[0]
    try:
        if command in (HighLevel.SET_GROUP_MASK, HighLevel.STOP):
            return HighLevelCommand(command, data[1])
        if command in (HighLevel.TAKEOFF_2, HighLevel.LAND_2):
            _, mask, height, yaw, current, duration = struct.unpack_from("<BBff?f", data)
            return HighLevelCommand(command, mask, height=height, yaw=yaw, use_current_yaw=current, duration=duration)
        if command == HighLevel.GO_TO_2:
            _, mask, relative, linear, x, y, z, yaw, duration = struct.unpack_from("<BBBBfffff", data)
            return HighLevelCommand(command, mask, position=(x, y, z), yaw=yaw, duration=duration,
                                    relative=bool(relative), linear=bool(linear))
        if command == HighLevel.GO_TO:
            _, mask, relative, x, y, z, yaw, duration = struct.unpack_from("<BBBfffff", data)
            return HighLevelCommand(command, mask, position=(x, y, z), yaw=yaw, duration=duration, relative=bool(relative))
    except struct.error:
        return None
    return None


def high_level_reply(data: bytes, error: int) -> Packet:
    """crtpCommanderHighLevelTask answers every command: the first 3 bytes as received, then errno."""
    head = (bytes(data[:3]) + b"\0\0\0")[:3]
    return Packet(Port.HIGH_LEVEL, 0, head + bytes((error & 0xFF,)))


# --- localization (crtp_localization_service.c) ------------------------------------------------
class Localization:
    POSITION_CHANNEL, GENERIC_CHANNEL = 0, 1
    EMERGENCY_STOP, EMERGENCY_STOP_WATCHDOG, EXT_POSE = 3, 4, 8  # generic channel types (3, 4 deprecated)


def decode_extpos(data: bytes) -> tuple[float, float, float]:
    """Position channel: x, y, z [m] (``send_extpos``)."""
    return struct.unpack_from("<fff", data)


def decode_extpose(data: bytes) -> tuple[tuple[float, float, float], tuple[float, float, float, float]]:
    """Generic EXT_POSE: [8, x, y, z, qx, qy, qz, qw] (``send_extpose``)."""
    values = struct.unpack_from("<7f", data, 1)
    return values[:3], values[3:]


# --- quatcompress.h -----------------------------------------------------------------------------
def quatcompress(q) -> int:
    """(x, y, z, w) -> uint32: the index of the largest element, then the other three as sign bit +
    9-bit magnitude / (1/sqrt 2), the largest made positive (-q is the same rotation)."""
    q = [float(v) for v in q]
    largest = max(range(4), key=lambda i: (abs(q[i]), -i))  # the first of equal magnitudes, as the C loop
    negate = q[largest] < 0
    comp = largest
    for i in range(4):
        if i != largest:
            negbit = (q[i] < 0) ^ negate
            mag = int(((1 << 9) - 1) * (abs(q[i]) / math.sqrt(0.5)) + 0.5)
            comp = (comp << 10) | (negbit << 9) | mag
    return comp


def quatdecompress(comp: int) -> tuple[float, float, float, float]:
    """uint32 -> (x, y, z, w), as quatdecompress in quatcompress.h."""
    mask = (1 << 9) - 1
    largest = comp >> 30
    q = [0.0] * 4
    sum_squares = 0.0
    for i in (3, 2, 1, 0):
        if i != largest:
            mag, negbit = comp & mask, (comp >> 9) & 1
            comp >>= 10
            q[i] = math.sqrt(0.5) * mag / mask * (-1 if negbit else 1)
            sum_squares += q[i] * q[i]
    q[largest] = math.sqrt(max(0.0, 1.0 - sum_squares))
    return tuple(q)
