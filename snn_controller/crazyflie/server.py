"""Simulated Crazyflies on cflib's ``udp://`` link: connect any cflib script (or cfclient) to
``udp://127.0.0.1:<port>`` as to a drone.

    server = CrazyflieServer(drones=2)           # ports 19850, 19851 (cflib's udp scan range)
    server = CrazyflieServer(drones=2, base_port=0)   # free ports chosen by the OS (tests)
    server = CrazyflieServer.from_fleet("config/crazyflies_udp.yaml")  # ports from robots.<name>.uri
    with server:                                  # start() ... stop()
        server.uris                               # ['udp://127.0.0.1:19850', ...], one per drone
        server.states()                           # ground truth, one dict per drone (SimulatedCrazyflies.states)
        server.set_battery(0, 3.1)                # drone 0's battery voltage [V] now (low-battery tests)
        server.drop_link(0, 2.0)                  # drone 0 neither receives nor sends for 2 s (lost link)
        server.reset(0)                           # power-cycle drone 0 (unlocks it), back at its start

Drone i listens on 127.0.0.1:ports[i]; one datagram is one CRTP packet (``cflib/crtp/udpdriver.py``).
Replies go to the sender; log data goes to the address of the last non-null packet (cflib's scan
probes with single null packets from other sockets, answered but not followed). Loopback only.

Threads: one I/O thread reads every socket and answers at once; one physics thread steps all drones
(:class:`~.simulated.SimulatedCrazyflies`) every 10 ms of wall time and sends the log blocks that are
due. It sets ``torch.set_num_threads(1)``, which holds for the whole process (a batch of a few
drones only loses by more threads). Simulated time is the firmware's clock (log timestamps, watchdogs,
trajectories): when the machine cannot keep up, the simulation runs slower than real time rather
than skipping physics. :meth:`stop` joins both threads and closes the sockets.
"""

from __future__ import annotations

import logging
import selectors
import socket
import struct
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import torch

from ..sim.fleet import load_fleet
from . import crtp
from .simulated import TICK_MS, SimulatedCrazyflies

log = logging.getLogger(__name__)

DEFAULT_BASE_PORT = 19850  # cflib udpdriver _BASE_PORT: its scan probes 19850..19859
HOST = "127.0.0.1"
MAX_LAG_S = 0.2  # behind the wall clock by more than this: stop catching up (run slower than real time)


class CrazyflieServer:
    """N simulated Crazyflies served on UDP ports (see the module doc).

    ``drones``: how many; ``base_port``: drone i on ``base_port + i`` (0: any free port each);
    ``ports``: explicit ports instead; ``initial_positions`` (N, 3) [m] on the ground (default: 1 m
    apart along x) and ``initial_yaws`` [rad]; ``require_arming``, ``drone``, ``integrator``: as
    :class:`~.simulated.SimulatedCrazyflies`; ``names``: for :meth:`states` (default cf1, cf2, ...).
    """

    def __init__(self, drones: int = 1, base_port: int = DEFAULT_BASE_PORT, ports: list[int] | None = None,
                 initial_positions=None, initial_yaws=None, require_arming: bool = True, drone: str = "cf21",
                 integrator: str = "euler", names: list[str] | None = None):
        if ports is None:
            ports = [0 if base_port == 0 else base_port + i for i in range(drones)]
        if initial_positions is None:
            initial_positions = [(float(i), 0.0, 0.0) for i in range(len(ports))]
        if len(initial_positions) != len(ports):
            raise ValueError(f"{len(ports)} ports but {len(initial_positions)} initial positions")
        self.names = list(names or [f"cf{i + 1}" for i in range(len(ports))])
        if len(self.names) != len(ports):
            raise ValueError(f"{len(ports)} ports but {len(self.names)} names")
        self.sim = SimulatedCrazyflies(initial_positions, initial_yaws, drone=drone, require_arming=require_arming,
                                       integrator=integrator)
        self._lock = threading.Lock()  # the simulation and the client addresses
        self._sockets: list[socket.socket] = []
        self._clients: list[tuple | None] = [None] * len(ports)
        self._silent_until = [0.0] * len(ports)  # monotonic time until which drone i's link is down
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.ports = list(ports)  # as asked (0: any free port); after start() as bound
        self.behind_s = 0.0  # how far the simulation has fallen behind the wall clock in total [s]
        self.step_cpu_s = 0.0  # CPU time of the physics thread's steps [s]

    @classmethod
    def from_fleet(cls, path: str | Path, base_port: int | None = None, drone: str | None = None,
                   **options) -> "CrazyflieServer":
        """The enabled robots of a crazyflies.yaml at their initial positions and yaws, each on the port
        of its ``udp://127.0.0.1:<port>`` uri, or with ``base_port`` robot i on ``base_port + i`` (any
        uri; 0: free ports). ``drone``: the drone model (default the file's ``all.drone``)."""
        fleet = load_fleet(str(path))
        robots = fleet.enabled_robots()
        ports = []
        for i, (name, robot) in enumerate(robots.items()):
            uri = urlparse(robot.uri)
            if base_port is not None:
                ports.append(0 if base_port == 0 else base_port + i)
            elif uri.scheme == "udp" and uri.port is not None and uri.hostname in ("127.0.0.1", "localhost"):
                ports.append(uri.port)
            else:
                raise ValueError(f"{path}: robots.{name}.uri must be udp://127.0.0.1:<port> to be simulated here "
                                 f"(or give a base port), got {robot.uri!r}")
        return cls(ports=ports, initial_positions=[r.initial_position for r in robots.values()],
                   initial_yaws=[r.initial_yaw for r in robots.values()], drone=drone or fleet.all.drone,
                   names=list(robots), **options)

    @property
    def uris(self) -> list[str]:
        return [f"udp://{HOST}:{port}" for port in self.ports]

    # --- life cycle -------------------------------------------------------------------------------
    def start(self) -> "CrazyflieServer":
        if self._threads:
            raise RuntimeError("the server is already running")
        try:
            for port in self.ports:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self._sockets.append(s)
                s.bind((HOST, port))
                s.setblocking(False)
        except OSError as e:
            self._close_sockets()
            raise OSError(f"cannot serve a Crazyflie on {HOST}:{port}: {e}") from e
        self.ports = [s.getsockname()[1] for s in self._sockets]
        self._stop.clear()
        self._threads = [threading.Thread(target=self._serve_io, name="crazyflie-sim-io", daemon=True),
                         threading.Thread(target=self._run_physics, name="crazyflie-sim-physics", daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        self._threads = []
        self._close_sockets()

    def _close_sockets(self) -> None:
        for s in self._sockets:
            s.close()
        self._sockets = []

    def __enter__(self) -> "CrazyflieServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- hooks ------------------------------------------------------------------------------------
    def states(self) -> dict[str, dict]:
        """Ground truth by name (see SimulatedCrazyflies.states)."""
        with self._lock:
            return dict(zip(self.names, self.sim.states()))

    def set_battery(self, i: int, volts: float) -> None:
        with self._lock:
            self.sim.set_battery(i, volts)

    def drop_link(self, i: int, seconds: float) -> None:
        """Drone i's radio goes quiet for ``seconds`` of wall time: packets to it are lost, it sends
        nothing (the firmware keeps running: watchdogs fire as on a real link loss)."""
        self._silent_until[i] = time.monotonic() + seconds

    def reset(self, i: int) -> None:
        with self._lock:
            self.sim.reset(i)

    def _link_up(self, i: int) -> bool:
        return time.monotonic() >= self._silent_until[i]

    # --- threads ----------------------------------------------------------------------------------
    def _serve_io(self) -> None:
        with selectors.DefaultSelector() as selector:
            for i, s in enumerate(self._sockets):
                selector.register(s, selectors.EVENT_READ, i)
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.05):
                    self._receive(key.data, key.fileobj)

    def _receive(self, i: int, s: socket.socket) -> None:
        while True:
            try:
                datagram, sender = s.recvfrom(64)
            except BlockingIOError:
                return
            except OSError as e:  # e.g. ICMP port unreachable from a client that went away
                log.debug("drone %d: receive failed: %s", i, e)
                continue
            if not self._link_up(i):
                continue
            try:
                packet = crtp.decode(datagram)
            except ValueError as e:
                log.debug("drone %d: dropped a datagram: %s", i, e)
                continue
            with self._lock:
                if not packet.is_null:
                    self._clients[i] = sender
                try:
                    replies = self.sim.handle(i, packet)
                except (struct.error, IndexError, ValueError) as e:  # truncated or malformed: dropped
                    log.warning("drone %d: dropped a packet it cannot decode, %s: %s", i, packet, e)
                    replies = []
            for reply in replies:
                self._send(s, reply, sender)

    def _send(self, s: socket.socket, packet: crtp.Packet, address) -> None:
        try:
            s.sendto(packet.encode(), address)
        except OSError as e:  # the client closed its socket: nothing to deliver to
            log.debug("send to %s failed: %s", address, e)

    def _run_physics(self) -> None:
        try:
            self._physics_loop()
        except Exception:  # a dead simulation must not keep answering as if it flew
            log.exception("the simulation failed; the server stops serving")
            self._stop.set()
            raise

    def _physics_loop(self) -> None:
        torch.set_num_threads(1)
        period = TICK_MS / 1000.0
        next_tick = time.monotonic()
        while not self._stop.is_set():
            cpu = time.thread_time()
            with self._lock:
                self.sim.step()
                due = [(i, self.sim.log_packets(i), self._clients[i]) for i in range(len(self._sockets))]
            self.step_cpu_s += time.thread_time() - cpu
            for i, packets, client in due:
                if client is not None and self._link_up(i):
                    for packet in packets:
                        self._send(self._sockets[i], packet, client)
            next_tick += period
            lag = time.monotonic() - next_tick
            if lag > MAX_LAG_S:
                self.behind_s += lag
                next_tick = time.monotonic()
            elif lag < 0:
                self._stop.wait(-lag)
