"""Model files: round trip, and a clear error for every way a file can be wrong."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from snn_controller.io.model_file import ModelFileError, load_model, save_model
from snn_controller.networks.files import actor_tensors, load_actor, save_actor
from snn_controller.networks.spiking import ActorArchitecture, SpikingActor

ARCH = ActorArchitecture(hidden=(16, 8))


@pytest.fixture
def model_path(tmp_path):
    torch.manual_seed(0)
    actor = SpikingActor(ARCH, slope=7.5)
    path = tmp_path / "m.safetensors"
    save_actor(actor, path, drone="cf21", dt=0.01, provenance={"method": "test", "seed": 3})
    return path


def _rewrite(path, tensors=None, manifest=None, metadata=None):
    """Rewrite the file with some parts replaced (read raw: the file may already be invalid)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        raw = {k: f.get_tensor(k) for k in f.keys()}
        raw_metadata = f.metadata()
    tensors = raw if tensors is None else tensors
    if metadata is None:
        metadata = raw_metadata if manifest is None else {"manifest": json.dumps(manifest)}
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)


def test_round_trip_keeps_weights_slope_and_manifest(model_path):
    actor, manifest = load_actor(model_path)
    assert actor.slope.item() == 7.5 and manifest["slope"] == 7.5
    assert manifest["drone"] == "cf21" and manifest["dt"] == 0.01
    assert manifest["provenance"] == {"method": "test", "seed": 3}
    assert manifest["observation_layout"][0] == "position_error:3"
    assert manifest["architecture"]["hidden"] == [16, 8]
    tensors, _ = load_model(model_path)
    for k, v in actor_tensors(actor).items():
        assert np.array_equal(tensors[k], v)
    assert not model_path.with_name(model_path.name + ".tmp").exists(), "atomic write leaves no temp file"


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="model file not found"):
        load_model(tmp_path / "nope.safetensors")


def test_corrupt_and_truncated_files(model_path, tmp_path):
    data = model_path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        load_model(tmp_path / "trunc.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        load_model(tmp_path / "junk.safetensors")
    (tmp_path / "pickle.safetensors").write_bytes(b"\x80\x04\x95" + b"cos\nsystem\n" * 4)  # a pickle: never run
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "pickle.safetensors")


def test_missing_or_broken_manifest(model_path):
    _rewrite(model_path, metadata={"other": "x"})
    with pytest.raises(ModelFileError, match="no manifest"):
        load_model(model_path)
    _rewrite(model_path, metadata={"manifest": "{not json"})
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(model_path)


def test_wrong_sizes(model_path):
    tensors, _ = load_model(model_path)
    tensors["layers.1.linear.weight"] = np.zeros((8, 15), np.float32)
    _rewrite(model_path, tensors=tensors)
    with pytest.raises(ModelFileError, match=r"'layers.1.linear.weight' has shape \(8, 15\).*needs \(8, 16\)"):
        load_model(model_path)


def test_missing_tensor_and_nan(model_path):
    tensors, _ = load_model(model_path)
    del tensors["layers.0.theta"]
    _rewrite(model_path, tensors=tensors)
    with pytest.raises(ModelFileError, match=r"missing \['layers.0.theta'\]"):
        load_model(model_path)


def test_nan_weights(tmp_path, model_path):
    tensors, manifest = load_model(model_path)
    tensors["readout.bias"] = np.array([0, np.nan, 0, 0], np.float32)
    _rewrite(model_path, tensors=tensors)
    with pytest.raises(ModelFileError, match="'readout.bias' contains NaN"):
        load_model(model_path)


def test_wrong_observation_layout_or_drone(model_path):
    _, manifest = load_model(model_path)
    bad = {**manifest, "observation_layout": ["position:3", "quaternion:4"]}
    _rewrite(model_path, manifest=bad)
    with pytest.raises(ModelFileError, match="observation layout"):
        load_model(model_path)
    _rewrite(model_path, manifest=manifest)
    with pytest.raises(ModelFileError, match="trained for drone 'cf21', not 'cf2x'"):
        load_model(model_path, drone="cf2x")
    bad = {**manifest, "architecture": {**manifest["architecture"], "obs_dim": 20}}
    _rewrite(model_path, manifest=bad)
    with pytest.raises(ModelFileError, match="obs_dim 20"):
        load_model(model_path)


def test_unknown_action_interface_is_refused(model_path):
    _, manifest = load_model(model_path)
    for action, match in (({"interface": "rates"}, "names no action interface"),
                          ({"interface": "ctbr", "max_rate_xy": 14.0}, "max_rate_xy and max_rate_z > 0")):
        _rewrite(model_path, manifest={**manifest, "action": action})
        with pytest.raises(ModelFileError, match=match):
            load_model(model_path)


def test_save_refuses_inconsistent_models(tmp_path):
    with pytest.raises(ModelFileError, match="manifest is missing 'drone'"):
        save_model(tmp_path / "x.safetensors", {}, {"architecture": {}, "observation_layout": [],
                                                     "action_layout": "", "dt": 0.01, "provenance": {}})
    assert not (tmp_path / "x.safetensors").exists()
