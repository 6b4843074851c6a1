"""An exported C module compiled for this machine and driven through ctypes: how the tests check it
against the numpy path and how ``snnctl bench policy`` times it. Needs a C compiler (gcc).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .c_module import export_c_module

# The brief's flags, plus the firmware's own worries: -Wconversion (its debug build) and
# -Wdouble-promotion (a double on a Cortex-M4's single-precision FPU is emulated in software).
CFLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-Wpedantic", "-Wconversion", "-Wdouble-promotion", "-O2")


def find_compiler() -> str | None:
    return shutil.which("gcc")


def compile_shared_library(c_file, out_dir) -> Path:
    """``PREFIX.c`` -> ``out_dir/libPREFIX.so`` with :data:`CFLAGS`; a failed build raises with gcc's message."""
    compiler = find_compiler()
    if compiler is None:
        raise OSError("no C compiler: gcc is not on PATH")
    c_file = Path(c_file)
    library = Path(out_dir) / f"lib{c_file.stem}.so"
    build = subprocess.run([compiler, *CFLAGS, "-fPIC", "-shared", "-o", str(library), str(c_file), "-lm"],
                           capture_output=True, text=True)
    if build.returncode != 0:
        raise OSError(f"{c_file}: gcc failed:\n{build.stderr}")
    return library


class CompiledPolicy:
    """The compiled module of one drone: ``step(obs (18,)) -> action (4,)`` and ``reset()``, like
    :class:`~snn_controller.networks.spiking_numpy.NumpySpikingActor` at batch 1; :attr:`state`
    exposes the membranes and spikes of the C state struct."""

    def __init__(self, library, prefix: str, hidden: list[int], obs_dim: int = 18, action_dim: int = 4):
        fields = []
        for i, n in enumerate(hidden):  # the header's struct, field by field
            fields += [(f"layer{i}_membrane", ctypes.c_float * n), (f"layer{i}_spikes", ctypes.c_uint8 * n)]
        self.State = type("State", (ctypes.Structure,), {"_fields_": fields})
        self.hidden = list(hidden)
        self.lib = ctypes.CDLL(str(library))
        pointer = ctypes.POINTER(ctypes.c_float)
        self._step = getattr(self.lib, f"{prefix}_step")
        self._step.argtypes = [ctypes.POINTER(self.State), pointer, pointer]
        self._step.restype = None
        self._reset = getattr(self.lib, f"{prefix}_reset")
        self._reset.argtypes = [ctypes.POINTER(self.State)]
        self._reset.restype = None
        init = getattr(self.lib, f"{prefix}_init")
        init.argtypes, init.restype = [ctypes.POINTER(self.State)], None
        self.state = self.State()
        self._obs = np.zeros(obs_dim, np.float32)
        self._action = np.zeros(action_dim, np.float32)
        # the call's arguments, built once: the bench times the step, not ctypes' argument conversion
        self._args = (ctypes.byref(self.state), self._obs.ctypes.data_as(pointer), self._action.ctypes.data_as(pointer))
        init(ctypes.byref(self.state))

    @classmethod
    def from_model(cls, model_path, build_dir, prefix: str = "snn_policy") -> "CompiledPolicy":
        """Export ``model_path`` into ``build_dir``, compile it there and load it."""
        arch = export_c_module(model_path, build_dir, prefix)["architecture"]
        library = compile_shared_library(Path(build_dir) / f"{prefix}.c", build_dir)
        return cls(library, prefix, arch["hidden"], arch["obs_dim"], arch["action_dim"])

    def reset(self) -> None:
        self._reset(ctypes.byref(self.state))

    def step(self, obs) -> np.ndarray:
        self._obs[:] = np.reshape(obs, -1)
        self._step(*self._args)
        return self._action.copy()

    def spikes(self) -> list[np.ndarray]:
        """Each layer's spikes of the last step, as 0/1 arrays."""
        return [np.ctypeslib.as_array(getattr(self.state, f"layer{i}_spikes")).copy() for i in range(len(self.hidden))]

    def membranes(self) -> list[np.ndarray]:
        return [np.ctypeslib.as_array(getattr(self.state, f"layer{i}_membrane")).copy()
                for i in range(len(self.hidden))]


def noop_policy(build_dir, hidden: list[int]) -> CompiledPolicy:
    """A compiled module whose init, reset and step do nothing, driven like the real one: its
    ``step`` costs what the ctypes call and the argument copies cost by themselves."""
    source = Path(build_dir) / "noop.c"
    source.write_text("".join(f"void noop_{name}(void *state{args});\n"
                              f"void noop_{name}(void *state{args}) {{ (void)state;{uses} }}\n"
                              for name, args, uses in (("init", "", ""), ("reset", "", ""),
                                                       ("step", ", const float *obs, float *action",
                                                        " (void)obs; (void)action;"))))
    return CompiledPolicy(compile_shared_library(source, build_dir), "noop", hidden)
