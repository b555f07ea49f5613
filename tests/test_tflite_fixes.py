"""TFLite files, issue 22 items 4 and 16 and issue 29 item 16: the op of a layer whose output
the converter renamed (a logits classifier's last FULLY_CONNECTED) is that layer's, not the
one before it; the interpreter's scratch tensors (unnamed, or sharing one name) are listed
and picked by index; a cyclic graph is refused when it is loaded. Values are checked
against Keras' own sub-models and against an interpreter run written here."""

import contextlib
import io
import json
import warnings

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import error_line

RESOLVER = tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
ROWS = 5


def _convert(converter):
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return converter.convert()


def _classifier():
    """Conv2D -> GlobalAveragePooling2D -> Dense logits: the FULLY_CONNECTED is the model's
    output, renamed after the signature; the layer before it is a MEAN."""
    L = keras.layers
    image = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(40, 3, activation="relu", name="conv")(image)
    x = L.Conv2D(40, 3, name="conv2")(x)  # 40*3*3*40 weights: quantized by dynamic range too
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(image, L.Dense(10, name="logits")(x), name="clf")


def _pair():
    """Two inputs, a Concatenate and a linear Dense head whose op is the output, renamed."""
    L = keras.layers
    a = keras.Input((4,), name="a")
    b = keras.Input((3,), name="b")
    cat = L.Concatenate(name="cat")([a, b])
    return keras.Model([a, b], L.Dense(2, name="head")(cat), name="pair")  # linear: its op is the output


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tflite_fixes")
    keras.utils.set_random_seed(21)
    rng = np.random.default_rng(22)
    clf, pair = _classifier(), _pair()
    found = {"folder": folder, "clf": clf, "pair_model": pair}

    def write(name, converter):
        found[name] = folder / f"{name}.tflite"
        found[name].write_bytes(_convert(converter))

    write("float", tf.lite.TFLiteConverter.from_keras_model(clf))
    clf.export(str(folder / "clf_export"), verbose=False)
    write("from_export", tf.lite.TFLiteConverter.from_saved_model(str(folder / "clf_export")))

    def representative():
        for _ in range(8):
            yield [rng.uniform(-1, 1, (1, 8, 8, 3)).astype("float32")]

    int8 = tf.lite.TFLiteConverter.from_keras_model(clf)
    int8.optimizations = [tf.lite.Optimize.DEFAULT]
    int8.representative_dataset = representative
    int8.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    int8.inference_input_type = int8.inference_output_type = tf.int8
    write("int8", int8)
    hybrid = tf.lite.TFLiteConverter.from_keras_model(clf)
    hybrid.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic range: int8 weights, float activations
    write("hybrid", hybrid)
    write("pair", tf.lite.TFLiteConverter.from_keras_model(pair))

    found["x"] = rng.uniform(-1, 1, (ROWS, 8, 8, 3)).astype("float32")
    np.save(folder / "x.npy", found["x"])
    found["pair_inputs"] = {"a": rng.normal(size=(ROWS, 4)).astype("float32"),
                            "b": rng.normal(size=(ROWS, 3)).astype("float32")}
    np.savez(folder / "pair.npz", **found["pair_inputs"])
    return found


def _interpreter(path, rows=None):
    """The test's own interpreter: every tensor kept, no default delegate, allocated for
    `rows` samples (the file's own batch when None)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_content=path.read_bytes(), experimental_preserve_all_tensors=True,
                                          experimental_op_resolver_type=RESOLVER, num_threads=1)
    if rows is not None:
        for d in interpreter.get_input_details():
            interpreter.resize_tensor_input(d["index"], [rows, *d["shape"][1:]], strict=True)
    interpreter.allocate_tensors()
    return interpreter


def _run(path, inputs):
    """The test's interpreter after one run of all rows of `inputs` ({signature input name:
    real values}), quantized by hand for an integer input."""
    rows = len(next(iter(inputs.values())))
    interpreter = _interpreter(path, rows)
    for name, d in interpreter.get_signature_runner().get_input_details().items():
        x = inputs[name]
        scale, zero = d["quantization"]
        if scale:
            x = np.clip(np.round(x / scale) + zero, -128, 127).astype(d["dtype"])
        interpreter.set_tensor(d["index"], x)
    interpreter.invoke()
    return interpreter


def _real(interpreter, index):
    """A tensor's value after the run, dequantized by hand when it is quantized."""
    value = interpreter.get_tensor(index)
    d = next(d for d in interpreter.get_tensor_details() if d["index"] == index)
    scale, zero = d["quantization"]
    return (value.astype(np.float32) - zero) * np.float32(scale) if scale else value


def _index_of(interpreter, name):
    [d] = [d for d in interpreter.get_tensor_details() if d["name"] == name]
    return d["index"]


def _json(result):
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _datasets(path):
    found = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and not name.startswith("inputs/"):
                found[name] = (obj[...], dict(obj.attrs))
        f.visititems(visit)
    return found


def _close(actual, expected, rtol=1e-5):
    assert actual.shape == expected.shape
    error = float(np.abs(actual - expected).max())
    assert error <= rtol * float(np.abs(expected).max()), error


def _keras(model, name, inputs):
    return keras.Model(model.inputs, model.get_layer(name).output)(inputs).numpy()


# --- issue 22 item 4: the renamed output op is its own layer's -----------------------------

@pytest.mark.parametrize("kind", ["float", "from_export", "int8", "hybrid"])
def test_logits_dense_owns_its_fully_connected(cli, files, kind):
    layers = {layer["path"]: layer for layer in _json(cli("layers", files[kind], "--json"))}
    assert list(layers) == ["conv", "conv2", "gap", "logits"]
    assert {layer["reach"] for layer in layers.values()} == {"graph"}  # nothing fused away
    assert (layers["gap"]["class"], layers["gap"]["output_shape"]) == ("MEAN", [None, 40])
    assert (layers["logits"]["class"], layers["logits"]["output_shape"]) == ("FULLY_CONNECTED", [None, 10])
    kernel = files["clf"].get_layer("logits").kernel.shape
    assert layers["logits"]["params"] >= kernel[0] * kernel[1]
    assert layers["gap"]["params"] == 0
    table = cli("layers", files[kind])
    assert "[fused into" not in table.stdout
    note = [line for line in table.stdout.splitlines() if "no scope in the name" in line]
    assert len(note) == 1 and "given to logits, the layer the op's constants are named after" in note[0]


@pytest.mark.parametrize("kind", ["float", "from_export"])
def test_gap_and_logits_values_equal_keras_and_the_interpreter(cli, files, tmp_path, kind):
    out = tmp_path / "clf.h5"
    result = cli("dump", "-m", files[kind], "-l", "gap", "-l", "logits", "-o", out, "-q",
                 files["folder"] / "x.npy")
    assert result.exit_code == 0, result.stderr
    data = _datasets(out)
    assert sorted(data) == ["activations/gap", "activations/logits"]
    x = files["x"]
    interpreter = _run(files[kind], {"image": x})
    output = interpreter.get_output_details()[0]["index"]
    for name in ("gap", "logits"):
        value, attrs = data[f"activations/{name}"]
        _close(value, _keras(files["clf"], name, x))
        np.testing.assert_array_equal(value, interpreter.get_tensor(int(attrs["tensor_index"])))
    assert data["activations/logits"][1]["tensor_index"] == output
    assert data["activations/gap"][1]["op_type"] == "MEAN"
    np.testing.assert_array_equal(data["activations/gap"][0],
                                  interpreter.get_tensor(_index_of(interpreter, "clf_1/gap_1/Mean")))


@pytest.mark.parametrize("kind", ["int8", "hybrid"])
def test_quantized_gap_and_logits_equal_the_interpreter(cli, files, tmp_path, kind):
    out = tmp_path / "q.h5"
    result = cli("dump", "-m", files[kind], "-l", "gap", "-l", "logits", "-o", out, "-q", files["folder"] / "x.npy")
    assert result.exit_code == 0, result.stderr
    data = _datasets(out)
    interpreter = _run(files[kind], {"image": files["x"]})
    logits_index = int(data["activations/logits"][1]["tensor_index"])
    # the logits are the FULLY_CONNECTED's output (in the int8 file, before the DEQUANTIZE)
    ops = {int(o): op["op_name"] for op in interpreter._get_ops_details() for o in op["outputs"]}
    assert ops[logits_index] == "FULLY_CONNECTED"
    assert ops[int(data["activations/gap"][1]["tensor_index"])] == "MEAN"
    for name in ("gap", "logits"):
        value, attrs = data[f"activations/{name}"]
        np.testing.assert_array_equal(value, _real(interpreter, int(attrs["tensor_index"])))
        # and near Keras: within the quantization's error
        expected = _keras(files["clf"], name, files["x"])
        assert float(np.abs(value - expected).max()) <= 0.05 * float(np.abs(expected).max()) + 0.02


def test_concatenate_before_the_head_is_its_own_tensor(cli, files, tmp_path):
    layers = {layer["path"]: layer for layer in _json(cli("layers", files["pair"], "--json"))}
    assert (layers["cat"]["class"], layers["cat"]["output_shape"]) == ("CONCATENATION", [None, 7])
    assert (layers["head"]["class"], layers["head"]["reach"]) == ("FULLY_CONNECTED", "graph")
    out = tmp_path / "pair.h5"
    result = cli("dump", "-m", files["pair"], "-l", "cat", "-l", "head", "-o", out, "-q",
                 files["folder"] / "pair.npz")
    assert result.exit_code == 0, result.stderr
    data = _datasets(out)
    inputs = files["pair_inputs"]
    pair = files["pair_model"]
    np.testing.assert_array_equal(data["activations/cat"][0], np.concatenate([inputs["a"], inputs["b"]], axis=1))
    _close(data["activations/cat"][0], _keras(pair, "cat", [inputs["a"], inputs["b"]]))
    _close(data["activations/head"][0], pair([inputs["a"], inputs["b"]]).numpy())
    interpreter = _run(files["pair"], inputs)
    for name in ("cat", "head"):
        value, attrs = data[f"activations/{name}"]
        np.testing.assert_array_equal(value, interpreter.get_tensor(int(attrs["tensor_index"])))
    assert data["activations/head"][1]["tensor_index"] == interpreter.get_output_details()[0]["index"]
