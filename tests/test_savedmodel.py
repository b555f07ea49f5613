"""SavedModel folders and graph tensors: `layers`, `tensors` and `dump --tensor/--layer` on
the four kinds of SavedModel (Keras 3 export, Keras 2 save_format="tf", a tf.Module, a custom
layer), and on Keras files through their traced forward pass. Every dumped value is checked
against an independent computation: the SavedModel's own signature, a Keras sub-model, or a
hand computation with the layer's weights."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, error_line

TOL = {"atol": 1e-5, "rtol": 1e-5}


@keras.saving.register_keras_serializable(package="tensorprobe_tests")
class Gate(keras.layers.Layer):
    """Scales its input by a gate that it computes inside `call` and does not return."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="random_normal", name="w")

    def call(self, x):
        gate = keras.ops.sigmoid(x * self.w)
        return x * gate + 1.0


class TwoInputs(tf.Module):
    """A plain tf.Module: two inputs and a variable; `single` is a one-input signature."""

    def __init__(self):
        super().__init__()
        self.w = tf.Variable(np.linspace(-1.0, 1.0, 12).reshape(3, 4).astype("float32"), name="w")

    @tf.function(input_signature=[tf.TensorSpec((None, 4), tf.float32, name="a"),
                                  tf.TensorSpec((None, 3), tf.float32, name="b")])
    def pair(self, a, b):
        with tf.name_scope("proj"):
            h = tf.matmul(b, self.w)  # returned by no one: reached with `dump --tensor`
        return {"out": tf.nn.relu(h + a)}

    @tf.function(input_signature=[tf.TensorSpec((None, 3), tf.float32, name="x")])
    def single(self, x):
        return {"y": tf.tanh(tf.matmul(x, self.w))}


@pytest.fixture(scope="session")
def saved(zoo, tmp_path_factory):
    """name -> path of the SavedModels (and inputs) these tests use, built once."""
    folder = tmp_path_factory.mktemp("saved")
    keras.saving.load_model(zoo["transfer.keras"], compile=False).export(
        str(folder / "transfer_export"), verbose=False)
    keras.saving.load_model(zoo["shared.keras"], compile=False).export(
        str(folder / "shared_export"), verbose=False)

    keras.utils.set_random_seed(7)
    inp = keras.Input((6,), name="features")
    h = keras.layers.Dense(5, activation="relu", name="dense")(inp)
    gated = keras.Model(inp, Gate(name="gate")(h), name="gated")
    gated.save(folder / "gated.keras")
    gated.export(str(folder / "gated_export"), verbose=False)

    module = TwoInputs()
    signatures = {"pair": module.pair.get_concrete_function(), "single": module.single.get_concrete_function()}
    tf.saved_model.save(module, str(folder / "module"),
                        signatures={"serving_default": signatures["pair"], "single": signatures["single"]})
    tf.saved_model.save(module, str(folder / "module_no_default"), signatures=signatures)
    (folder / "not_a_savedmodel").mkdir()

    subprocess.run(
        [sys.executable, str(ROOT / "tests" / "make_keras2_savedmodel.py"), str(folder)],
        check=True, capture_output=True, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"},
    )
    rng = np.random.default_rng(11)
    np.save(folder / "images12.npy", rng.uniform(0, 1, (5, 12, 12, 3)).astype("float32"))
    np.save(folder / "features6.npy", rng.normal(size=(4, 6)).astype("float32"))
    np.save(folder / "x3.npy", rng.normal(size=(5, 3)).astype("float32"))
    return {p.name: p for p in folder.iterdir()}


def signature_output(path, name="serving_default", **inputs):
    """What the SavedModel's own signature returns, as TensorFlow runs it."""
    loaded = tf.saved_model.load(str(path))  # keep it: the function reads its variables
    fn = loaded.signatures[name]
    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}


def datasets(path):
    with h5py.File(path, "r") as f:
        found = {}
        f.visititems(lambda n, o: found.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return found


def attrs(path, name):
    with h5py.File(path, "r") as f:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f[name].attrs.items()}


# Keras 3 `model.export()`: a graph whose name scopes are the nested layers

def test_export_layers_are_the_keras_layers_by_name_scope(cli, zoo, saved, keras_model):
    r = cli("layers", saved["transfer_export"], "--json")
    assert r.exit_code == 0, r.stderr
    got = {layer["path"]: layer for layer in json.loads(r.stdout)}
    model = keras_model(zoo["transfer.keras"])
    base = model.get_layer("vgg16")
    # every layer that computes something in inference (Input and Dropout leave no op)
    expected = {l.name: l for l in model.layers if type(l).__name__ not in ("InputLayer", "Dropout")}
    expected |= {f"vgg16/{l.name}": l for l in base.layers if type(l).__name__ != "InputLayer"}
    assert set(got) == set(expected)
    for path, layer in expected.items():
        assert got[path]["params"] == layer.count_params(), path
        assert got[path]["output_shape"] == [None, *layer.output.shape[1:]], path
        assert got[path]["trainable"] is None
    assert got["vgg16/block1_conv2"]["index"] == "0.1" and got["vgg16/block1_conv2"]["depth"] == 1
    assert got["vgg16"]["class"] == "MaxPool" and got["predictions"]["class"] == "Softmax"
    r = cli("layers", saved["transfer_export"])
    assert r.exit_code == 0, r.stderr
    assert "signature serving_default (tensorflow " in r.stdout
    assert "params:  11,573 total (frozen variables)" in r.stdout


def test_export_dump_nested_layers_and_root_attributes(cli, zoo, saved, keras_model, tmp_path):
    out = tmp_path / "a.h5"
    r = cli("dump", "-m", saved["transfer_export"], "-l", "vgg16/block1_conv2", "-l", "block3_pool",
            "-l", "predictions", "-b", "3", "-o", out, zoo["images7.npy"])
    assert r.exit_code == 0, r.stderr
    x = np.load(zoo["images7.npy"])
    base = keras_model(zoo["transfer.keras"]).get_layer("vgg16")
    got = datasets(out)
    for name in ("block1_conv2", "block3_pool"):
        expected = keras.Model(base.inputs, base.get_layer(name).output)(x)
        np.testing.assert_allclose(got[f"activations/vgg16/{name}"], expected, **TOL)
    np.testing.assert_allclose(got["activations/predictions"],
                               signature_output(saved["transfer_export"], image=x)["output_0"], **TOL)
    a = attrs(out, "/")
    assert a["model_format"] == "savedmodel" and a["loader"] == f"tensorflow {tf.__version__}"
    assert a["keras_version"] == "" and a["model"] == str(saved["transfer_export"])
    assert a["model_sha256"] == folder_sha256(saved["transfer_export"])
    ds = attrs(out, "activations/vgg16/block1_conv2")
    assert ds["layer"] == "vgg16/block1_conv2" and ds["layer_class"] == "Relu"


def folder_sha256(folder):
    """The README's rule: sorted '<sha256 of file>  <relative path>' lines, hashed."""
    lines = []
    for p in sorted(Path(folder).rglob("*"), key=lambda p: p.relative_to(folder).as_posix()):
        if p.is_file():
            lines.append(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(folder).as_posix()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def test_export_dump_tensor_pre_activation_and_final_output(cli, zoo, saved, keras_model, tmp_path):
    out = tmp_path / "t.h5"
    bias_add = "StatefulPartitionedCall/transfer_1/vgg16_1/block1_conv2_1/BiasAdd:0"
    softmax = "StatefulPartitionedCall/transfer_1/predictions_1/Softmax"  # an op name: its :0
    r = cli("dump", "-m", saved["transfer_export"], "--tensor", bias_add, "--tensor", softmax,
            "-b", "4", "-o", out, zoo["images7.npy"])
    assert r.exit_code == 0, r.stderr
    x = np.load(zoo["images7.npy"])
    base = keras_model(zoo["transfer.keras"]).get_layer("vgg16")
    conv1 = keras.Model(base.inputs, base.get_layer("block1_conv1").output)(x)
    kernel, bias = base.get_layer("block1_conv2").get_weights()
    expected = tf.nn.conv2d(conv1, kernel, strides=1, padding="SAME") + bias  # before the ReLU
    got = datasets(out)
    assert set(got) == {"inputs/source", f"tensors/{bias_add}", f"tensors/{softmax}:0"}
    np.testing.assert_allclose(got[f"tensors/{bias_add}"], expected, **TOL)
    assert got[f"tensors/{bias_add}"].min() < 0  # really the pre-activation
    np.testing.assert_allclose(got[f"tensors/{softmax}:0"],
                               signature_output(saved["transfer_export"], image=x)["output_0"], **TOL)
    a = attrs(out, f"tensors/{bias_add}")
    assert a["tensor"] == bias_add and a["op_type"] == "BiasAdd" and a["layer"] == "vgg16/block1_conv2"
    assert a["min"] == pytest.approx(float(expected.numpy().min()), rel=1e-6)


def test_tensors_lists_the_frozen_graph_in_topological_order(cli, saved):
    r = cli("tensors", saved["transfer_export"], "--json")
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    listed = json.loads(r.stdout)
    assert all(set(t) == {"name", "op", "dtype", "shape"} for t in listed)
    # an independent freeze of the same signature
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    loaded = tf.saved_model.load(str(saved["transfer_export"]))
    graph = convert_variables_to_constants_v2(loaded.signatures["serving_default"]).graph
    ops = graph.get_operations()
    assert {t["name"] for t in listed} == {t.name for op in ops for t in op.outputs}
    position = {t["name"]: i for i, t in enumerate(listed)}
    for op in ops:
        for out in op.outputs:
            assert all(position[i.name] < position[out.name] for i in op.inputs), op.name
    by_name = {t["name"]: t for t in listed}
    relu = by_name["StatefulPartitionedCall/transfer_1/vgg16_1/block1_conv2_1/Relu:0"]
    assert relu == {"name": relu["name"], "op": "Relu", "dtype": "float32", "shape": [None, 32, 32, 8]}
    assert by_name["image:0"]["op"] == "Placeholder"

    r = cli("tensors", saved["transfer_export"], "--op", "biasadd", "--op", "Relu",
            "--filter", "block1_", "--json")
    assert r.exit_code == 0, r.stderr
    assert [t["name"].split("/")[-2:] for t in json.loads(r.stdout)] == [
        ["block1_conv1_1", "BiasAdd:0"], ["block1_conv1_1", "Relu:0"],
        ["block1_conv2_1", "BiasAdd:0"], ["block1_conv2_1", "Relu:0"],
    ]
    r = cli("tensors", saved["transfer_export"], "--op", "Conv2D")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].rstrip().endswith("signature 'serving_default'")
    assert "inputs:  image (None, 32, 32, 3) float32 -> image:0" in lines
    assert "tensors: 7 of" in lines[-1]


def test_shared_layer_in_an_export_has_one_output_per_call(cli, zoo, saved, keras_model, tmp_path):
    out = tmp_path / "s.h5"
    r = cli("dump", "-m", saved["shared_export"], "-l", "shared", "-o", out, zoo["vec4.npy"])
    assert r.exit_code == 0, r.stderr
    model = keras_model(zoo["shared.keras"])
    x = np.load(zoo["vec4.npy"]).astype(np.float64)
    w, b = (np.asarray(v, dtype=np.float64) for v in model.get_layer("shared").weights)
    pw, pb = (np.asarray(v, dtype=np.float64) for v in model.get_layer("pre").weights)
    got = datasets(out)
    np.testing.assert_allclose(got["activations/shared/call_0"], x @ w + b, **TOL)
    np.testing.assert_allclose(got["activations/shared/call_1"], (x @ pw + pb) @ w + b, **TOL)


# A custom layer's internal tensor, in the export and in the .keras file (traced)

def test_tensor_inside_a_custom_layer_call(cli, saved, tmp_path):
    model = keras.saving.load_model(saved["gated.keras"], compile=False)
    x = np.load(saved["features6.npy"])
    dense = keras.Model(model.inputs, model.get_layer("dense").output)(x).numpy().astype(np.float64)
    w = np.asarray(model.get_layer("gate").w, dtype=np.float64)
    gate = 1 / (1 + np.exp(-dense * w))  # computed in Gate.call, never returned
    for source, prefix in ((saved["gated_export"], "StatefulPartitionedCall/"), (saved["gated.keras"], "")):
        r = cli("tensors", source, "--filter", "gate", "--op", "Sigmoid", "--json")
        assert r.exit_code == 0, r.stderr
        name = f"{prefix}gated_1/gate_1/Sigmoid:0"
        assert [t["name"] for t in json.loads(r.stdout)] == [name]
        out = tmp_path / f"g{len(prefix)}.h5"
        r = cli("dump", "-m", source, "--tensor", name, "-l", "gate", "-o", out, saved["features6.npy"])
        assert r.exit_code == 0, r.stderr
        got = datasets(out)
        np.testing.assert_allclose(got[f"tensors/{name}"], gate, **TOL)
        np.testing.assert_allclose(got["activations/gate"], dense * gate + 1.0, **TOL)
        assert attrs(out, f"tensors/{name}")["layer"] == "gate"
    expected = signature_output(saved["gated_export"], features=x)["output_0"]
    np.testing.assert_allclose(dense * gate + 1.0, expected, **TOL)


def test_keras_file_pre_activation_by_tracing(cli, zoo, keras_model, tmp_path):
    out = tmp_path / "k.h5"
    r = cli("dump", "-m", zoo["transfer.keras"], "--tensor", "fc1_1/BiasAdd", "-l", "fc1", "-o", out,
            zoo["input.npy"])
    assert r.exit_code == 0, r.stderr
    model = keras_model(zoo["transfer.keras"])
    x = np.load(zoo["input.npy"])
    gap = keras.Model(model.inputs, model.get_layer("gap").output)(x).numpy().astype(np.float64)
    kernel, bias = (np.asarray(v, dtype=np.float64) for v in model.get_layer("fc1").weights)
    got = datasets(out)
    np.testing.assert_allclose(got["tensors/transfer_1/fc1_1/BiasAdd:0"], gap @ kernel + bias, **TOL)
    np.testing.assert_allclose(got["activations/fc1"], np.maximum(gap @ kernel + bias, 0), **TOL)
    with h5py.File(out, "r") as f:  # layers first, then tensors, in the order attribute
        assert f["activations/fc1"].attrs["order"] == 0
        assert f["tensors/transfer_1/fc1_1/BiasAdd:0"].attrs["order"] == 1


def test_keras_file_with_a_while_loop(cli, zoo, keras_model, tmp_path):
    """An LSTM runs in a while loop: the loop's output is reachable, its body per step is not."""
    out = tmp_path / "l.h5"
    r = cli("dump", "-m", zoo["multi.keras"], "--tensor", "multi_1/cat_1/concat:0", "-o", out, zoo["seq54.npy"])
    assert r.exit_code == 0, r.stderr
    x = np.load(zoo["seq54.npy"])
    np.testing.assert_allclose(datasets(out)["tensors/multi_1/cat_1/concat:0"],
                               keras_model(zoo["multi.keras"])(x, training=False), **TOL)
    r = cli("tensors", zoo["multi.keras"], "--filter", "while/.*lstm_cell_1/Tanh", "--json")
    inside = json.loads(r.stdout)[0]["name"]
    r = cli("dump", "-m", zoo["multi.keras"], "--tensor", inside, "-o", tmp_path / "m.h5", zoo["seq54.npy"])
    assert r.exit_code == 2 and "inside a while loop" in error_line(r)


# A tf.Module with two inputs and a variable

def test_module_tensors_and_no_layer_structure(cli, saved):
    r = cli("tensors", saved["module"], "--json")
    assert r.exit_code == 0, r.stderr
    by_name = {t["name"]: t for t in json.loads(r.stdout)}
    assert by_name["a:0"] == {"name": "a:0", "op": "Placeholder", "dtype": "float32", "shape": [None, 4]}
    assert by_name["b:0"]["shape"] == [None, 3]
    assert by_name["StatefulPartitionedCall/proj/MatMul:0"]["op"] == "MatMul"
    r = cli("layers", saved["module"], "--json")
    assert r.exit_code == 0 and r.stdout.strip() == "[]"
    assert "no layer structure" in r.stderr and str(saved["module"]) in r.stderr
    r = cli("layers", saved["module"])
    assert r.exit_code == 0 and r.stdout == "" and "no layer structure" in r.stderr


def test_module_two_inputs_extraction_from_python(saved):
    """The extraction function itself, with two arrays in the documented order (the
    signature's inputs sorted by name), and its error for arrays of the wrong shape."""
    from tensorprobe.backends.tfgraph import tensors
    from tensorprobe.backends.detect import open_model

    graph = open_model(saved["module"]).tensor_graph
    assert [s.name for s in graph.inputs] == ["a", "b"]
    names = ["StatefulPartitionedCall/proj/MatMul:0", "StatefulPartitionedCall/Relu:0"]
    run = tensors.extraction_function(graph, names)
    rng = np.random.default_rng(2)
    a = rng.normal(size=(6, 4)).astype("float32")
    b = rng.normal(size=(6, 3)).astype("float32")
    h, out = run([a, b])
    w = np.linspace(-1.0, 1.0, 12).reshape(3, 4)
    np.testing.assert_allclose(h, b.astype(np.float64) @ w, **TOL)
    np.testing.assert_allclose(out, signature_output(saved["module"], a=a, b=b)["out"], **TOL)
    from tensorprobe.errors import InputError

    with pytest.raises(InputError, match="input 'b'"):
        run([a, a])


def test_module_two_inputs_from_the_cli(cli, saved, tmp_path):
    """The two-input signature fed from the command line, by --input NAME=PATH and by .npz."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(5, 4)).astype("float32")
    b = rng.normal(size=(5, 3)).astype("float32")
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    np.savez(tmp_path / "ab.npz", a=a, b=b)
    w = np.linspace(-1.0, 1.0, 12).reshape(3, 4)
    expected = signature_output(saved["module"], a=a, b=b)["out"]
    for feed in (["--input", f"a={tmp_path / 'a.npy'}", "--input", f"b={tmp_path / 'b.npy'}"],
                 [str(tmp_path / "ab.npz")]):
        out = tmp_path / "two.h5"
        r = cli("dump", "-m", saved["module"], "--tensor", "StatefulPartitionedCall/proj/MatMul:0",
                "--tensor", "StatefulPartitionedCall/Relu:0", "--overwrite", "-o", out, *feed)
        assert r.exit_code == 0, r.stderr
        got = datasets(out)
        np.testing.assert_allclose(got["tensors/StatefulPartitionedCall/proj/MatMul:0"], b.astype(np.float64) @ w, **TOL)
        np.testing.assert_allclose(got["tensors/StatefulPartitionedCall/Relu:0"], expected, **TOL)


def test_module_single_input_signature_from_the_cli(cli, saved, tmp_path):
    out = tmp_path / "m.h5"
    r = cli("dump", "-m", saved["module"], "--signature", "single", "--tensor-match", "MatMul:0$",
            "--tensor", "Identity:0", "-o", out, saved["x3.npy"])
    assert r.exit_code == 0, r.stderr
    x = np.load(saved["x3.npy"])
    w = np.linspace(-1.0, 1.0, 12).reshape(3, 4)
    got = datasets(out)
    assert set(got) == {"inputs/source", "tensors/StatefulPartitionedCall/MatMul:0", "tensors/Identity:0"}
    np.testing.assert_allclose(got["tensors/StatefulPartitionedCall/MatMul:0"], x.astype(np.float64) @ w, **TOL)
    np.testing.assert_allclose(got["tensors/Identity:0"], signature_output(saved["module"], "single", x=x)["y"], **TOL)
    assert attrs(out, "tensors/Identity:0")["layer"] == ""


# A Keras 2 SavedModel: loaded with tf_keras, every layer-level feature works

def test_keras2_savedmodel_layers_and_dump(cli, saved, tmp_path):
    import tf_keras

    path = saved["keras2_savedmodel"]
    r = cli("layers", path, "--json")
    assert r.exit_code == 0, r.stderr
    paths = [layer["path"] for layer in json.loads(r.stdout)]
    assert "vgg16/block1_conv2" in paths and "bn" in paths
    out = tmp_path / "k2.h5"
    relu = "StatefulPartitionedCall/transfer/vgg16/block1_conv2/Relu:0"
    r = cli("dump", "-m", path, "-l", "block1_conv2", "-l", "bn", "--tensor", relu,
            "--tensor", "Identity:0", "-b", "2", "-o", out, saved["images12.npy"])
    assert r.exit_code == 0, r.stderr
    model = tf_keras.models.load_model(str(path), compile=False)
    base = model.get_layer("vgg16")
    x = np.load(saved["images12.npy"])
    inner = tf_keras.Model(base.inputs, base.get_layer("block1_conv2").output)(x, training=False).numpy()
    got = datasets(out)
    np.testing.assert_allclose(got["activations/vgg16/block1_conv2"], inner, **TOL)
    np.testing.assert_allclose(got[f"tensors/{relu}"], inner, **TOL)
    head = tf_keras.Model(model.inputs, model.get_layer("bn").output)(x, training=False).numpy()
    np.testing.assert_allclose(got["activations/bn"], head, **TOL)
    np.testing.assert_allclose(got["tensors/Identity:0"],
                               signature_output(path, image=x)["predictions"], **TOL)
    a = attrs(out, "/")
    assert a["model_format"] == "savedmodel" and a["loader"] == f"tf_keras {tf_keras.__version__}"
    assert a["model_sha256"] == folder_sha256(path)


def test_keras2_savedmodel_lambda_is_refused_but_its_graph_is_listed(cli, saved):
    path = saved["keras2_lambda_savedmodel"]
    r = cli("layers", path)
    assert r.exit_code == 1
    line = error_line(r)
    assert "'double'" in line and "--unsafe" in line and str(path) in line
    r = cli("tensors", path, "--op", "Mul", "--json")  # the graph runs no Python code
    assert r.exit_code == 0, r.stderr
    assert [t["name"] for t in json.loads(r.stdout)] == ["StatefulPartitionedCall/lam/double/mul:0"]


# Errors: one line, exit 1 for file contents and 2 for the command line, nothing written

def test_folder_that_is_no_savedmodel(cli, zoo, saved, tmp_path):
    out = tmp_path / "o.h5"
    for args in (("layers", saved["not_a_savedmodel"]),
                 ("dump", "-m", saved["not_a_savedmodel"], "--tensor", "x:0", "-o", out, zoo["input.npy"])):
        r = cli(*args)
        assert r.exit_code == 1
        assert str(saved["not_a_savedmodel"]) in error_line(r) and "no SavedModel" in error_line(r)
    assert not out.exists()


def test_signature_errors(cli, zoo, saved, tmp_path):
    out = tmp_path / "o.h5"
    r = cli("dump", "-m", saved["module"], "--signature", "nope", "--tensor", "Identity:0", "-o", out,
            saved["x3.npy"])
    assert r.exit_code == 2
    line = error_line(r)
    assert "--signature 'nope'" in line and "serving_default, single" in line
    r = cli("tensors", saved["module_no_default"])
    assert r.exit_code == 2
    assert "--signature" in error_line(r) and "pair, single" in error_line(r)
    r = cli("tensors", zoo["transfer.keras"], "--signature", "serving_default")
    assert r.exit_code == 2 and "SavedModel" in error_line(r)
    assert not out.exists()


def test_tensor_selection_errors(cli, zoo, saved, tmp_path):
    out = tmp_path / "o.h5"
    model = saved["transfer_export"]
    cases = [
        (["--tensor", "block1_conv2/BiasAdd:0"],
         "no such tensor; did you mean 'StatefulPartitionedCall/transfer_1/vgg16_1/block1_conv2_1/BiasAdd:0'"),
        (["--tensor", "Relu"], "is ambiguous"),
        (["--tensor", "unknown:0"], "does not depend on the inputs"),
        (["--tensor-match", "zzz"], "matches no tensor"),
        (["--tensor", "image:0", "--gradients"], "--gradients"),
        (["-l", "fc1", "--gradients"], "holds only a graph"),
    ]
    for args, message in cases:
        r = cli("dump", "-m", model, *args, "-o", out, zoo["input.npy"])
        assert r.exit_code == 2, (args, r.stderr)
        assert message in error_line(r), (args, r.stderr)
    r = cli("tensors", model, "--op", "Rleu")
    assert r.exit_code == 2 and "did you mean 'Relu'" in error_line(r)
    assert not out.exists()


def test_wrong_input_shape_names_the_file(cli, zoo, saved, tmp_path):
    out = tmp_path / "o.h5"
    r = cli("dump", "-m", saved["transfer_export"], "--tensor", "image:0", "-o", out, zoo["vec6.npy"])
    assert r.exit_code == 1
    line = error_line(r)
    assert str(zoo["vec6.npy"]) in line and "(32, 32, 3)" in line
    assert not out.exists()


def test_storage_options_are_refused_where_they_would_not_apply(cli, saved, tmp_path):
    """Graph tensors are stored as computed: --dtype/--reduce are refused, not recorded unapplied."""
    out = tmp_path / "x.h5"
    r = cli("dump", "-m", saved["gated_export"], "-l", "gate", "--dtype", "float16", "-o", out, saved["features6.npy"])
    assert r.exit_code == 2 and "--dtype applies to the layers of a Keras model" in error_line(r)
    r = cli("dump", "-m", saved["gated.keras"], "-t", "gated_1/gate_1/Sigmoid:0", "--reduce", "mean", "-o", out,
            saved["features6.npy"])
    assert r.exit_code == 2 and "--reduce" in error_line(r) and "--tensor" in error_line(r)
    assert not out.exists()
