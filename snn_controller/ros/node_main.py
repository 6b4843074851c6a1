"""Common main() for the nodes: clean shutdown on SIGINT and SIGTERM."""

from __future__ import annotations

import signal
import sys


def run(node_factory, args=None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from ..config import ConfigError

    signal.signal(signal.SIGTERM, signal.default_int_handler)
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
        if rclpy.ok():
            raise
        # Ctrl-C shut the context down while a callback ran (its publish then fails): a clean stop
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return code
