"""Common main() for the nodes: clean shutdown on SIGINT and SIGTERM."""

from __future__ import annotations

import signal
import sys


def run(node_factory, args=None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from ..config import ConfigError

    stop_signals = []

    def stop(signum, frame):
        stop_signals.append(signum)
        raise KeyboardInterrupt

    # Before rclpy.init, so rclpy's own handlers chain to this one.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = node_factory()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ConfigError, ValueError, FileExistsError) as exc:  # bad parameters: say what is wrong and exit non-zero
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except Exception:
        if rclpy.ok() and not stop_signals:
            raise
        # A stop signal came while a callback ran: its publish fails on the shut-down context, or the
        # KeyboardInterrupt raised inside rclpy's message conversion comes out as a RuntimeError
        # ("Unable to convert call argument"). Both are a clean stop.
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return code
