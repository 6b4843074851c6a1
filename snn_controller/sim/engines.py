"""Physics engines behind one small interface: ``reset(state)``, ``step(actions)``, ``state``, ``time``, ``close()``.

- :class:`~snn_controller.sim.batched_engine.BatchedEngine`: N drones in torch tensors, RK4 (training engine).
- :class:`~snn_controller.sim.pybullet_engine.PybulletEngine`: the reference engine, DIRECT or GUI.

Actions are motor commands in [-1, 1]; the rotor speed command is w_cmd = (a + 1) / 2 (no mixer).
"""

from .batched_engine import BatchedEngine


def make_engine(kind: str, model, n: int, dt: float = 0.01, **kwargs):
    """Engine by name: ``batched`` or ``pybullet``."""
    if kind == "batched":
        return BatchedEngine(model, n, dt=dt, **kwargs)
    if kind == "pybullet":
        from .pybullet_engine import PybulletEngine

        return PybulletEngine(model, n, dt=dt, **kwargs)
    raise ValueError(f"unknown engine '{kind}'; choose 'batched' or 'pybullet'")


__all__ = ["BatchedEngine", "make_engine"]
