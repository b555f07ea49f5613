"""The Python API itself (not through the CLI): values against Keras, in-memory models and
inputs, gradients, SavedModel tensors, the same bytes as the CLI, errors in the API's words."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

import tensorprobe
from conftest import ROOT

SAMPLES = ROOT / "sample_models"


@pytest.fixture(scope="module")
def x():
    return np.load(SAMPLES / "input.npy")


@pytest.fixture(scope="module")
def transfer():
    import keras

    return keras.saving.load_model(SAMPLES / "transfer.keras")


def nested_value(model, name, x):
    import keras

    base = model.get_layer("vgg16")
    return np.asarray(keras.Model(base.inputs, base.get_layer(name).output)(x))


def test_import_is_light():
    code = "import sys, tensorprobe; print(sorted(m for m in ('tensorflow', 'keras', 'h5py') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_load_lists_what_the_cli_lists(cli):
    model = tensorprobe.load(SAMPLES / "transfer.keras")
    r = cli("layers", SAMPLES / "transfer.keras", "--json")
    assert model.layers() == json.loads(r.stdout)
    assert model.inputs == [{"name": "image", "shape": [None, 32, 32, 3], "dtype": "float32"}]
    r = cli("tensors", SAMPLES / "transfer.keras", "--json")
    assert model.tensors() == json.loads(r.stdout)


def test_activations_of_a_nested_layer_equal_keras(x, transfer):
    acts = tensorprobe.activations(tensorprobe.load(SAMPLES / "transfer.keras"), x, layers=["block1_conv2"])
    assert list(acts) == ["vgg16/block1_conv2"]
    np.testing.assert_allclose(acts["vgg16/block1_conv2"], nested_value(transfer, "block1_conv2", x), atol=1e-5)


def test_activations_of_an_in_memory_model_and_one_sample(x, transfer):
    acts = tensorprobe.activations(transfer, x[0], layers=["vgg16/block2_conv1", "fc1"], batch_size=1)
    assert acts["vgg16/block2_conv1"].shape == (1, 16, 16, 16)
    np.testing.assert_allclose(acts["vgg16/block2_conv1"], nested_value(transfer, "block2_conv1", x[:1]), atol=1e-4)
    import keras

    fc1 = keras.Model(transfer.inputs, transfer.get_layer("fc1").output)(x[:1])
    np.testing.assert_allclose(acts["fc1"], np.asarray(fc1), atol=1e-4)


def test_gradients_equal_a_gradient_tape(x, transfer):
    import keras
    import tensorflow as tf

    acts = tensorprobe.activations(SAMPLES / "transfer.keras", x, layers=["fc1"], gradients="class:1")
    fc1 = tf.constant(keras.Model(transfer.inputs, transfer.get_layer("fc1").output)(x))
    with tf.GradientTape() as tape:
        tape.watch(fc1)
        y = fc1
        for name in ("bn", "dropout", "predictions"):
            y = transfer.get_layer(name)(y, training=False)
        score = tf.reduce_sum(y[:, 1])
    assert sorted(acts) == ["fc1", "gradients/fc1"]
    np.testing.assert_allclose(acts["gradients/fc1"], tape.gradient(score, fc1).numpy(), atol=1e-6)


def test_dict_inputs_and_a_savedmodel_tensor(tmp_path):
    import keras

    two = keras.saving.load_model(SAMPLES / "two_inputs.keras")
    arrays = dict(np.load(SAMPLES / "two_inputs.npz"))
    acts = tensorprobe.activations(two, arrays, all_layers=True)
    for name, value in acts.items():
        expected = keras.Model(two.inputs, two.get_layer(name).output)(arrays)
        np.testing.assert_allclose(value, np.asarray(expected), atol=1e-5, err_msg=name)

    export = tmp_path / "export"
    keras.saving.load_model(SAMPLES / "transfer.keras").export(export, verbose=False)
    model = tensorprobe.load(export)
    name = "StatefulPartitionedCall/transfer_1/vgg16_1/block1_conv2_1/Relu:0"
    assert name in [t["name"] for t in model.tensors()]
    x = np.load(SAMPLES / "input.npy")
    acts = tensorprobe.activations(model, x, tensors=[name])
    transfer = keras.saving.load_model(SAMPLES / "transfer.keras")
    np.testing.assert_allclose(acts[f"tensors/{name}"], nested_value(transfer, "block1_conv2", x), atol=1e-5)


def test_api_and_cli_write_the_same_datasets(cli, tmp_path):
    by_cli, by_api = tmp_path / "cli.h5", tmp_path / "api.h5"
    r = cli("dump", "-q", "-m", SAMPLES / "transfer.keras", "--match", "block1", "-l", "fc1", "--gradients",
            "--compression", "gzip:1", "-b", "3", "-o", by_cli, SAMPLES / "input.npy")
    assert r.exit_code == 0, r.stderr
    summary = tensorprobe.dump(SAMPLES / "transfer.keras", str(SAMPLES / "input.npy"), by_api,
                               match="block1", layers=["fc1"], gradients="top", compression="gzip:1",
                               batch_size=3)
    assert summary["samples"] == 4 and summary["complete"] is True
    with h5py.File(by_cli) as a, h5py.File(by_api) as b:
        names = []
        a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        assert "gradients/fc1" in names and "activations/vgg16/block1_conv2" in names
        for name in names:
            if a[name].dtype.kind == "O":  # strings: /inputs/source
                assert a[name][()].tolist() == b[name][()].tolist()
            else:
                assert a[name][()].tobytes() == b[name][()].tobytes(), name
        assert a.attrs["options_fingerprint"] == b.attrs["options_fingerprint"]
    r = cli("summary", by_api, "--json")
    assert json.loads(r.stdout)["datasets"] == summary["datasets"]

    with tensorprobe.open_dump(by_api) as dump:
        assert dump.names == [d["name"] for d in summary["datasets"]]
        np.testing.assert_array_equal(dump["gradients/fc1"][:2], h5py.File(by_cli)["gradients/fc1"][:2])
        assert dump.attrs["samples"] == 4
    result = tensorprobe.diff(by_cli, by_api)
    r = cli("diff", by_cli, by_api, "--json")
    assert result == json.loads(r.stdout) | {}  # the same record
    assert result["match"] is True


def test_errors_name_the_api_arguments(x, tmp_path):
    with pytest.raises(tensorprobe.TensorprobeError) as e:
        tensorprobe.activations(SAMPLES / "transfer.keras", x, layers=["block1_conv"])
    assert str(e.value).startswith("layers 'block1_conv': no such layer; did you mean 'vgg16/block1_conv1'")
    with pytest.raises(tensorprobe.TensorprobeError, match="^nothing selected: give layers NAME"):
        tensorprobe.activations(SAMPLES / "transfer.keras", x)
    (tmp_path / "taken.h5").write_bytes(b"mine")
    with pytest.raises(tensorprobe.TensorprobeError, match="^output '.*taken.h5' exists"):
        tensorprobe.dump(SAMPLES / "transfer.keras", x, tmp_path / "taken.h5", layers=["fc1"])
    assert (tmp_path / "taken.h5").read_bytes() == b"mine"
    with pytest.raises(tensorprobe.TensorprobeError, match="does not fit input 'image'"):
        tensorprobe.activations(SAMPLES / "transfer.keras", np.zeros((2, 8)), layers=["fc1"])


def test_progress_bar_goes_to_stderr_only(tmp_path):
    """`progress=True` draws on stderr (forced to a terminal here); stdout stays the caller's."""
    code = (
        "import numpy as np, tensorprobe\n"
        f"x = np.load({str(SAMPLES / 'input.npy')!r})\n"
        f"s = tensorprobe.dump({str(SAMPLES / 'transfer.keras')!r}, x, {str(tmp_path / 'p.h5')!r}, "
        "layers=['fc1'], batch_size=1, progress=True)\n"
    )
    env = {**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3", "FORCE_COLOR": "1", "TTY_COMPATIBLE": "1",
           "TERM": "xterm-256color",
           "COLUMNS": "100"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert "dumping" in r.stderr and "4/4" in r.stderr
