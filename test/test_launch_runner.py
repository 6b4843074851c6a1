"""The launch runner at work: Ctrl-C and SIGTERM stop every node cleanly (the recorder's bag is
complete); a node that dies stops the rest, and the runner says which one and why."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from snn_controller.ros.launch import LaunchRunner, parse_launch
from test_recorder import closed_summary, read_independently, wait_for

STARTED = re.compile(r"\[launch\] started (\S+) \(pid (\d+)\)")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Launch:
    """``snnctl launch`` in its own session, its output collected; always stopped at the end."""

    def __init__(self, env, *args):
        self.proc = subprocess.Popen([sys.executable, "-m", "snn_controller.cli", "launch", *args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def pids(self) -> dict[str, int]:
        return {name: int(pid) for name, pid in STARTED.findall(self.output)}

    def finish(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self.reader.join(5)
        return code

    def cleanup(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for pid in self.pids().values():  # never leave a node behind, whatever failed
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_stopping_the_runner_stops_every_node_and_the_bag_is_complete(ros_env, tmp_path, sig):
    """sim_pid.launch.yaml with its recorder (a bag split every 2 s): SIGINT (Ctrl-C) or SIGTERM to
    snnctl launch stops every node, exit 0; the bag holds, to the last one, what the recorder
    received."""
    bag = tmp_path / "bag"
    launch = Launch(ros_env, "sim_pid.launch.yaml", "record:=true", f"bag:={bag}", "bag_max_duration:=2")
    try:
        # DDS discovery can take seconds on a loaded machine: wait for the recorder's subscriptions
        wait_for(lambda: all(f"subscribed to {t} " in launch.output for t in ("/cf1/odom", "/cf2/cmd_motors_stamped")),
                 90, "the recorder's subscriptions", lambda: launch.output[-3000:])
        # two split boundaries later, at least one whole 2 s file was recorded after the subscriptions
        # (the next boundary can come right after them)
        n = len(list(bag.glob("*.mcap")))
        wait_for(lambda: (bag / f"bag_{n + 1}.mcap").exists(), 60, "2 s more of flight", lambda: launch.output[-3000:])
        assert set(launch.pids()) == {"sim_bridge", "pid_controller", "mission_sequencer", "flight_recorder"}
        os.kill(launch.proc.pid, sig)
        assert launch.finish(60) == 0, launch.output[-3000:]
        assert not [name for name, pid in launch.pids().items() if alive(pid)], "a node outlived the runner"
        assert "died" not in launch.output and "still running" not in launch.output, launch.output[-3000:]
        summary = closed_summary(launch.output)
        messages = read_independently(bag)
        assert len(summary["files"]) >= 2
        for topic, count in summary["received"].items():
            got = [m for m in messages if m[0] == topic]
            assert len(got) == count == summary["written"][topic], topic
            assert not got or got[-1][1] == summary["last_receive_ns"][topic], topic
        assert all(summary["received"].get(t, 0) > 100 for t in ("/cf1/odom", "/cf2/cmd_motors_stamped")), \
            launch.output[-5000:]
    finally:
        launch.cleanup()


def test_a_node_that_dies_stops_the_rest_and_the_runner_says_which_and_why(ros_env, tmp_path):
    """mission_sequencer given a mission file that does not exist exits with code 2: snnctl launch
    names it, gives its exit code and the last lines of its stderr, stops the recorder, and exits 1."""
    f = tmp_path / "dies.launch.yaml"
    f.write_text(f"""
launch:
  - node: {{pkg: snn_controller, exec: flight_recorder, name: flight_recorder,
           param: [{{name: output, value: "{tmp_path / 'bag'}"}}]}}
  - node: {{pkg: snn_controller, exec: mission_sequencer, name: mission_sequencer,
           param: [{{name: mission, value: "{tmp_path / 'no_such_mission.yaml'}"}}]}}
""")
    launch = Launch(ros_env, str(f), "--json")
    try:
        assert launch.finish(90) == 1, launch.output[-3000:]
        out = launch.output
        assert "[launch] mission_sequencer died: exit code 2; the last lines of its stderr:" in out, out[-3000:]
        assert f"[launch]   error: {tmp_path / 'no_such_mission.yaml'}: file not found" in out, out[-3000:]
        assert "[launch] stopping the other nodes" in out
        result = json.loads(out.strip().splitlines()[-1])
        assert result["failed"] == [["mission_sequencer", 2]], result
        assert result["failures"][0]["why"] == "exit code 2"
        assert not [name for name, pid in launch.pids().items() if alive(pid)]
    finally:
        launch.cleanup()


def test_a_node_killed_by_a_signal_is_named_with_the_signal(ros_env, tmp_path):
    f = tmp_path / "two.launch.yaml"
    f.write_text(f"""
launch:
  - node: {{pkg: snn_controller, exec: flight_recorder, name: flight_recorder,
           param: [{{name: output, value: "{tmp_path / 'bag'}"}}]}}
  - node: {{pkg: snn_controller, exec: mission_sequencer, name: mission_sequencer}}
""")
    output = io.StringIO()
    runner = LaunchRunner(parse_launch(f), env=ros_env, output=output)
    with runner:
        wait_for(lambda: "[flight_recorder] [INFO]" in output.getvalue() and "[mission_sequencer] [INFO]"
                 in output.getvalue(), 60, "both nodes up", output.getvalue)
        victim = next(n for n in runner.nodes if n.spec.executable == "mission_sequencer")
        os.killpg(victim.proc.pid, signal.SIGKILL)
        runner.wait(30)
        assert runner.failed() == [("mission_sequencer", -9)]
    text = output.getvalue()
    assert "[launch] mission_sequencer died: killed by signal SIGKILL" in text, text
    assert [(f["node"], f["why"]) for f in runner.failures()] == [("mission_sequencer", "killed by signal SIGKILL")]
    assert "flight_recorder: closed" in text, "the rest stopped cleanly: the recorder closed its bag"
    assert all(proc.poll() is not None for _, proc in runner.processes)


def test_a_node_that_ignores_sigint_and_sigterm_is_killed_and_named(monkeypatch, tmp_path):
    """One node ends by itself (exit 0): the runner stops the other, which ignores SIGINT and
    SIGTERM, so it is killed, and that is a failure."""
    from snn_controller.ros import NODES

    monkeypatch.setitem(NODES, "stubborn", "stubborn_node")
    f = tmp_path / "s.launch.yaml"
    f.write_text("launch:\n  - node: {pkg: snn_controller, exec: stubborn, name: stubborn}\n"
                 "  - node: {pkg: snn_controller, exec: stubborn, name: quitter, param: [{name: exit_after, value: 2}]}\n")
    output = io.StringIO()
    env = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    runner = LaunchRunner(parse_launch(f), env=env, output=output, timeout=0.5, term_timeout=0.5)
    with runner:
        wait_for(lambda: output.getvalue().count("] ready") == 2, 30, "both up", output.getvalue)
        runner.wait(30)
    text = output.getvalue()
    assert "[launch] quitter ended (exit code 0)" in text and "[launch] stopping the other nodes" in text, text
    assert "[launch] ['stubborn'] still running: sending SIGTERM" in text
    assert "[launch] ['stubborn'] still running: sending SIGKILL" in text
    assert [(f["node"], f["why"]) for f in runner.failures()] == [
        ("stubborn", "did not stop on SIGINT and SIGTERM: killed")]
    assert all(proc.poll() is not None for _, proc in runner.processes)


def test_no_node_outlives_a_killed_runner(ros_env):
    """SIGKILL gives the runner no chance to stop its nodes (each in its own session, so no signal
    to its group reaches them): they stop themselves, since they die with their parent."""
    launch = Launch(ros_env, "sim_pid.launch.yaml", "use_mission:=false")
    try:
        wait_for(lambda: len(launch.pids()) == 2, 60, "both nodes started", lambda: launch.output[-3000:])
        os.kill(launch.proc.pid, signal.SIGKILL)
        launch.proc.wait(10)
        wait_for(lambda: not any(alive(pid) for pid in launch.pids().values()), 30, "the nodes stopping",
                 lambda: str({name: alive(pid) for name, pid in launch.pids().items()}))
    finally:
        launch.cleanup()
