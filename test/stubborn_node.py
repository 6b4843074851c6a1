"""A stand-in node for runner tests, no ROS: ``-p exit_after:=S`` exits 0 after S seconds;
without it, it ignores SIGINT and SIGTERM and waits to be killed."""

import signal
import sys
import time

args = dict(a.split(":=", 1) for a in sys.argv[1:] if ":=" in a)
if "exit_after" in args:
    print("ready", flush=True)
    time.sleep(float(args["exit_after"]))
    sys.exit(0)
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while True:
    time.sleep(1)
