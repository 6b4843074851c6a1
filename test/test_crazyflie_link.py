"""crazyflie/link.py's conversions, checked against the firmware's definitions worked by hand: the
compact state log (stabilizer.c, quatcompress.h) and the rate setpoint through cflib's own Commander
and the firmware's rpyt decoder (crtp_commander_rpyt.c) into controller_pid.c's rate convention."""

import math
import struct

import numpy as np
import pytest

pytest.importorskip("cflib")

from cflib.crazyflie.commander import Commander  # noqa: E402

from snn_controller.crazyflie.link import decode_state, rate_setpoint  # noqa: E402


def logged(x=0, y=0, z=0, vx=0, vy=0, vz=0, quat=3 << 30, rate_roll=0, rate_pitch=0, rate_yaw=0):
    """A stateEstimateZ sample as cflib hands it over (the firmware's integers)."""
    values = dict(x=x, y=y, z=z, vx=vx, vy=vy, vz=vz, quat=quat, rateRoll=rate_roll, ratePitch=rate_pitch,
                  rateYaw=rate_yaw)
    return {f"stateEstimateZ.{k}": v for k, v in values.items()}


def test_the_identity_and_a_quarter_turn_of_yaw_decompress_as_quatcompress_h_defines():
    # index 3 (w) largest, the others 0: the identity
    assert decode_state(logged())["quaternion"] == pytest.approx([1, 0, 0, 0])
    # yaw 90 deg: q = (w, z) = (0.7071, 0.7071); z (index 2) is the first largest, w is sent as 511 (= 1/sqrt 2)
    out = decode_state(logged(quat=(2 << 30) | 511, vx=1000))
    assert out["quaternion"] == pytest.approx([math.sqrt(0.5), 0, 0, math.sqrt(0.5)], abs=1e-6)
    # world +x is the body's -y once the body has turned 90 deg left
    assert out["velocity_world"] == pytest.approx([1, 0, 0]) and out["velocity_body"] == pytest.approx([0, -1, 0])
    # a negative component: the sign bit (bit 9 of its 10)
    q = decode_state(logged(quat=(3 << 30) | (((1 << 9) | 256) << 20)))["quaternion"]
    assert q[1] == pytest.approx(-math.sqrt(0.5) * 256 / 511) and q[0] > 0 and np.linalg.norm(q) == pytest.approx(1)


def test_millimetres_and_milliradians_with_the_firmware_signs():
    out = decode_state(logged(x=1234, y=-500, z=32767, vx=10, vy=-20, vz=300, rate_roll=100, rate_pitch=200,
                              rate_yaw=-300))
    assert out["position"] == pytest.approx([1.234, -0.5, 32.767])
    assert out["velocity_world"] == pytest.approx([0.01, -0.02, 0.3]) == out["velocity_body"]  # level: same
    # stabilizer.c: ratePitch = -gyro.y (nose up positive); ours is q about y left: q = -ratePitch
    assert out["angular_velocity_body"] == pytest.approx([0.1, -0.2, -0.3])


def test_rate_setpoint_through_cflib_and_the_firmware_decoder_gives_our_rates():
    """[thrust, p, q, r] -> cflib's packet -> what crtp_commander_rpyt.c makes of it in rate mode ->
    controller_pid.c's rates, which are (gyro.x, -gyro.y, gyro.z) in deg/s: so (deg p, -deg q, deg r)."""
    sent = []

    class Wire:
        def send_packet(self, pk):
            sent.append(bytes(pk.data))

    thrust, p, q, r = 0.5, 1.0, -0.5, 0.2
    Commander(Wire()).send_setpoint(*rate_setpoint(thrust, p, q, r))
    roll, pitch, yaw, raw_thrust = struct.unpack("<fffH", sent[0])
    rate_roll, rate_pitch, rate_yaw = roll, pitch, -yaw  # rpyt: RATE mode; "legacy rate input is inverted"
    assert (rate_roll, rate_pitch, rate_yaw) == pytest.approx(
        (math.degrees(p), -math.degrees(q), math.degrees(r)), rel=1e-6)
    assert raw_thrust == 32768
    assert rate_setpoint(1.2, 0, 0, 0)[3] == 65535 and rate_setpoint(-0.1, 0, 0, 0)[3] == 0


def test_log_clock_stamps_on_the_drone_s_clock_on_one_grid_and_resyncs():
    from snn_controller.crazyflie.link import LogClock

    ms = 1_000_000
    arrival0 = 1_700_000_000_123_456_789
    clock = LogClock(10)
    jitter = [3, 0, 7, 1, 4]
    arrivals = [arrival0 + (10 * k + j) * ms for k, j in enumerate(jitter)]
    stamps = [clock.stamp_ns(1000 + 10 * k, a) for k, a in enumerate(arrivals)]
    assert np.diff(stamps).tolist() == [10 * ms] * 4, "radio jitter does not move the stamps"
    assert all(s % (10 * ms) == 0 and 0 <= a - s < 20 * ms for s, a in zip(stamps, arrivals))
    rebooted = clock.stamp_ns(20, arrivals[-1] + 100 * ms)  # the drone's clock went back: a new offset
    assert rebooted > stamps[-1] and 0 <= arrivals[-1] + 100 * ms - rebooted < 10 * ms

    late = LogClock(10, settle=5)
    first = late.stamp_ns(1000, arrival0 + 100 * ms)  # the first state arrived 100 ms late
    fresh = late.stamp_ns(1010, arrival0 + 10 * ms)  # the next one at once: the stamps follow it
    assert first >= arrival0 + 90 * ms and 0 <= arrival0 + 10 * ms - fresh < 10 * ms
    for k in range(2, 10):  # settled: a fresher arrival no longer moves them back
        late.stamp_ns(1000 + 10 * k, arrival0 + (10 * k + 5) * ms)
    assert late.stamp_ns(1100, arrival0 + 80 * ms) == fresh + 90 * ms
    drifted = late.stamp_ns(1110, arrival0 + 1000 * ms)  # 0.9 s later than the drone's clock says: forward
    assert 0 <= arrival0 + 1000 * ms - drifted < 10 * ms
