"""The spiking actor as a NIR graph (Neuromorphic Intermediate Representation, https://neuroir.org), and back.

The graph is a chain, one Affine and one LIF node per layer (docs/nir.md says what it means and who reads it):

    input(obs_dim) -> layer0.affine -> layer0.lif -> layer1.affine -> layer1.lif -> readout.affine -> output(4)

NIR's LIF is continuous in time: tau dv/dt = (v_leak - v) + r I, a spike when v > v_threshold, then v = v_reset.
Forward Euler at the control period dt makes that

    v[t] = (1 - dt/tau) v[t-1] + (dt/tau) (v_leak + r I[t])

which is our membrane update U[t] = beta U[t-1] + W x[t] + b with tau = dt / (1 - beta), r = tau / dt and
v_leak = 0 (snnTorch exports its Leaky neuron the same way, at a fixed dt of 1e-4). What a LIF node cannot
state goes into metadata, which NIR asks backends not to rely on:

* the reset: ours subtracts the threshold one step after the spike (U[t] = ... - S[t-1] theta) and never sets
  the membrane to a value; NIR's LIF resets to v_reset at once. v_reset is written 0 (snnTorch's "zero" reset).
* beta = 1 (no leak) would need tau = inf: 1 - beta is written as 2^-40 instead (see INTEGRATOR_LEAK).
* trained betas outside [0, 1]: the network clips them, the LIF node states the clipped value and its metadata
  keeps the trained one, so that an import gives back the model file bit for bit.
* the readout tanh: NIR has no tanh node; the Output node's metadata says it.

The graph metadata holds dt [s], the reset and readout semantics, and the model file's manifest (JSON).
"""

from __future__ import annotations

import json
from pathlib import Path

import nir
import numpy as np

from ..io.model_file import ModelFileError, load_model, save_model, write_atomically

GRAPH_FORMAT = "snn_controller.nir/1"
# 1 - beta written for a neuron without leak (beta = 1): tau = dt 2^40 stays finite, and a backend stepping in
# float32 computes 1 - dt/tau = 1 exactly (float64: a leak of 1e-12 per step). No trained float32 beta below 1
# is that close to 1 (the float32 gap below 1 is 2^-24), so every other beta is written as it is.
INTEGRATOR_LEAK = 2.0 ** -40
RESET = ("subtractive, one step late: U[t] = beta U[t-1] + W x[t] + b - S[t-1] v_threshold, S[t] = U[t] > "
         "v_threshold; the membrane is never set to v_reset (written 0), unlike NIR's LIF")
READOUT = "tanh(readout.affine(spikes of the last LIF layer)) every step: real-valued actions in [-1, 1], no spikes"
TIMING = ("one NIR time step = one control step of dt seconds, forward Euler; an Affine node and the LIF node it "
          "feeds act in the same step (no synaptic delay)")


def lif_time_constants(beta: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """(tau, r) of NIR LIF neurons that step like ours with decay ``beta`` (clipped to [0, 1]) under Euler at dt."""
    leak = np.maximum(1.0 - np.clip(np.asarray(beta, np.float64), 0.0, 1.0), INTEGRATOR_LEAK)
    return dt / leak, 1.0 / leak


def to_nir(tensors: dict[str, np.ndarray], manifest: dict, where: str = "model") -> nir.NIRGraph:
    """The NIR graph of a spiking model file's (validated) tensors and manifest."""
    arch = manifest["architecture"]
    if arch["type"] != "lif_actor":
        raise ModelFileError(f"{where}: architecture {arch['type']!r} is not a spiking network; "
                             "NIR export needs a spiking (lif_actor) model")
    dt = float(manifest["dt"])
    nodes = {"input": nir.Input(input_type=np.array([arch["obs_dim"]]))}
    for i in range(len(arch["hidden"])):
        trained_beta = tensors[f"layers.{i}.beta"]
        theta = np.asarray(tensors[f"layers.{i}.theta"], np.float64)
        tau, r = lif_time_constants(trained_beta, dt)
        nodes[f"layer{i}.affine"] = nir.Affine(weight=tensors[f"layers.{i}.linear.weight"],
                                               bias=tensors[f"layers.{i}.linear.bias"])
        nodes[f"layer{i}.lif"] = nir.LIF(tau=tau, r=r, v_leak=np.zeros_like(tau), v_threshold=theta,
                                         v_reset=np.zeros_like(theta),
                                         metadata={"reset": RESET, "trained_beta": trained_beta})
    nodes["readout.affine"] = nir.Affine(weight=tensors["readout.weight"], bias=tensors["readout.bias"])
    nodes["output"] = nir.Output(output_type=np.array([arch["action_dim"]]), metadata={"activation": "tanh"})
    names = list(nodes)
    metadata = {"format": GRAPH_FORMAT, "dt": dt, "time_unit": "s", "timing": TIMING, "reset": RESET,
                "readout": READOUT, "manifest": json.dumps(manifest, sort_keys=True)}
    return nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])), metadata=metadata)


def from_nir(graph: nir.NIRGraph, where: str = "NIR graph") -> tuple[dict[str, np.ndarray], dict]:
    """The model-file tensors and manifest of a graph that :func:`to_nir` wrote (the graph's parameters rule:
    metadata that disagrees with them is an error)."""
    metadata = graph.metadata or {}
    if metadata.get("format") != GRAPH_FORMAT or "manifest" not in metadata:
        raise ModelFileError(f"{where}: no {GRAPH_FORMAT} manifest in the graph metadata; import-nir reads the "
                             "graphs that `snnctl export --format nir` writes (it needs the model's layouts and dt)")
    manifest = json.loads(str(metadata["manifest"]))
    dt = float(metadata["dt"])
    if dt != manifest.get("dt"):
        raise ModelFileError(f"{where}: graph dt {dt} s differs from its manifest's dt {manifest.get('dt')} s")
    chain = _chain(graph, where)
    kinds = [type(graph.nodes[name]).__name__ for name in chain]
    n_layers = (len(chain) - 3) // 2
    if kinds != ["Input"] + ["Affine", "LIF"] * n_layers + ["Affine", "Output"] or n_layers < 1:
        raise ModelFileError(f"{where}: the graph is {' -> '.join(kinds)}, not the spiking actor's "
                             "Input -> (Affine -> LIF) x N -> Affine -> Output")
    tensors = {}
    for i in range(n_layers):
        affine, lif = graph.nodes[chain[1 + 2 * i]], graph.nodes[chain[2 + 2 * i]]
        tensors[f"layers.{i}.linear.weight"] = np.asarray(affine.weight, np.float32)
        tensors[f"layers.{i}.linear.bias"] = np.asarray(affine.bias, np.float32)
        tensors[f"layers.{i}.beta"] = _beta(lif, dt, f"{where}: node {chain[2 + 2 * i]!r}")
        tensors[f"layers.{i}.theta"] = np.asarray(lif.v_threshold, np.float32)
    readout = graph.nodes[chain[-2]]
    tensors["readout.weight"] = np.asarray(readout.weight, np.float32)
    tensors["readout.bias"] = np.asarray(readout.bias, np.float32)
    return tensors, manifest


def _chain(graph: nir.NIRGraph, where: str) -> list[str]:
    """The node names from the one Input to the end, if the graph is a single chain through all its nodes."""
    inputs = [name for name, node in graph.nodes.items() if isinstance(node, nir.Input)]
    if len(inputs) != 1:
        raise ModelFileError(f"{where}: the graph has {len(inputs)} Input nodes, the spiking actor one")
    successors: dict[str, list[str]] = {}
    for source, target in graph.edges:
        successors.setdefault(source, []).append(target)
    chain = inputs
    while successors.get(chain[-1]) and len(chain) <= len(graph.nodes):  # the bound stops at a cycle
        if len(successors[chain[-1]]) > 1:
            raise ModelFileError(f"{where}: node {chain[-1]!r} feeds {len(successors[chain[-1]])} nodes; "
                                 "the spiking actor is a chain")
        chain.append(successors[chain[-1]][0])
    if len(set(chain)) != len(chain) or len(chain) != len(graph.nodes) or len(graph.edges) != len(chain) - 1:
        raise ModelFileError(f"{where}: the graph is not one chain from its Input through all "
                             f"{len(graph.nodes)} nodes (a cycle, a branch or an unconnected node)")
    return chain


def _beta(lif: nir.LIF, dt: float, where: str) -> np.ndarray:
    """Our per-neuron beta of a LIF node, checked to be our neuron at dt."""
    tau, r = np.asarray(lif.tau, np.float64), np.asarray(lif.r, np.float64)
    if np.any(np.asarray(lif.v_leak) != 0) or np.any(np.asarray(lif.v_reset) != 0):
        raise ModelFileError(f"{where}: v_leak and v_reset must be 0 (the network has no leak potential and "
                             "resets by subtraction)")
    if not (np.all(tau >= dt * (1 - 1e-9)) and np.all(np.isfinite(tau))):
        raise ModelFileError(f"{where}: tau must be finite and at least dt = {dt} s (a beta in [0, 1])")
    if not np.allclose(r * dt / tau, 1.0, rtol=1e-9, atol=0):
        raise ModelFileError(f"{where}: r must be tau / dt (the input current enters the membrane with gain 1)")
    trained_beta = lif.metadata.get("trained_beta")
    if trained_beta is None:  # a graph without our metadata: beta as its tau states it
        return np.clip(1.0 - dt / tau, 0.0, 1.0).astype(np.float32)
    trained_beta = np.asarray(trained_beta, np.float32)
    if trained_beta.shape != tau.shape or not np.allclose(lif_time_constants(trained_beta, dt)[0], tau,
                                                          rtol=1e-9, atol=0):
        raise ModelFileError(f"{where}: its metadata trained_beta does not give its tau (was the graph edited? "
                             "remove the metadata to import the graph's tau)")
    return trained_beta


def export_nir(model_path, out_path) -> dict:
    """Write a spiking model file as a NIR file (HDF5); a summary of what was written."""
    tensors, manifest = load_model(model_path)
    graph = to_nir(tensors, manifest, where=str(model_path))
    write_atomically(Path(out_path), lambda tmp: nir.write(tmp, graph), "NIR file")
    betas = [np.clip(tensors[f"layers.{i}.beta"], 0.0, 1.0) for i in range(len(manifest["architecture"]["hidden"]))]
    return {"model": str(model_path), "out": str(out_path), "format": "nir", "nir_version": nir.__version__,
            "nodes": list(graph.nodes), "dt": manifest["dt"],
            "neurons_without_leak": int(sum((b == 1.0).sum() for b in betas))}


def import_nir(nir_path, out_path) -> dict:
    """Write the model file of a NIR file that :func:`export_nir` wrote; a summary."""
    path = Path(nir_path)
    if not path.is_file():
        raise ModelFileError(f"{path}: NIR file not found")
    try:
        graph = nir.read(path)
    except Exception as exc:  # h5py and nir raise many types for a file that is not a NIR graph
        raise ModelFileError(f"{path}: not a readable NIR file ({type(exc).__name__}: {exc})") from None
    tensors, manifest = from_nir(graph, str(path))
    save_model(out_path, tensors, manifest)
    return {"nir": str(path), "out": str(out_path), "architecture": manifest["architecture"], "dt": manifest["dt"],
            "drone": manifest["drone"]}
