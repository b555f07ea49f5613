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
    x = L.Conv2D(128, 3, name="conv2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)  # 128 * 10 logits weights: over 1024, so the
    # dynamic-range file quantizes them too, and its FULLY_CONNECTED quantizes its input per sample
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
    assert (layers["gap"]["class"], layers["gap"]["output_shape"]) == ("MEAN", [None, 128])
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
        # and Keras' layer of that name, within what quantization changes (cosine over all values)
        expected = _keras(files["clf"], name, files["x"]).ravel()
        assert value.size == expected.size
        assert float(value.ravel() @ expected) / float(np.linalg.norm(value) * np.linalg.norm(expected)) > 0.95


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


# --- issue 22 item 16: the interpreter's own tensors, listed and picked by index -----------

def _stored(path):
    """How many tensors the file holds, by TensorFlow's own flatbuffer reader."""
    from tensorflow.lite.tools import flatbuffer_utils

    return len(flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes())).subgraphs[0].tensors)


@pytest.mark.parametrize("kind", ["int8", "hybrid", "float"])
def test_scratch_tensors_are_listed_by_index(cli, files, kind):
    listed = _json(cli("tensors", files[kind], "--json"))
    stored = _stored(files[kind])
    interpreter = _interpreter(files[kind])
    count = interpreter._interpreter.NumTensors(0)  # the interpreter's count, file's and its own
    assert sorted(t["index"] for t in listed) == list(range(count))
    assert [t["index"] for t in listed if t["op"] != "SCRATCH"] != [] and \
        {t["index"] for t in listed if t["op"] == "SCRATCH"} == set(range(stored, count))
    scratch = [t for t in listed if t["op"] == "SCRATCH"]
    assert [t["index"] for t in scratch] == sorted(t["index"] for t in scratch)  # after the file's, by index
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    for t in scratch:
        if t["index"] in details:  # allocated for the file's batch of 1: a batch axis shows as None
            d = details[t["index"]]
            assert (t["name"], t["dtype"]) == (d["name"], np.dtype(d["dtype"]).name)
            assert [1 if s is None else s for s in t["shape"]] == [int(s) for s in d["shape"]]
        else:  # a slot with no shape: get_tensor_details leaves it out
            assert t["shape"] is None and t["quantization"] is None
    table = cli("tensors", files[kind], "--op", "scratch")
    assert table.stdout.splitlines()[-1] == f"tensors: {len(scratch)} of {count} shown"


def test_scratch_tensors_sharing_a_name_are_picked_by_index(cli, files, tmp_path):
    listed = _json(cli("tensors", files["hybrid"], "--json"))
    row_sums = [t["index"] for t in listed if t["name"] == "Conv_row_sums"]
    assert len(row_sums) == 2  # one per hybrid Conv2D
    out = tmp_path / "x.h5"
    x = files["folder"] / "x.npy"
    result = cli("dump", "-m", files["hybrid"], "--tensor", "Conv_row_sums", "-o", out, x)
    assert result.exit_code == 2
    assert error_line(result) == (f"error: --tensor 'Conv_row_sums' is ambiguous: 2 tensors bear this name "
                                  f"(#{row_sums[0]}, #{row_sums[1]}); give one's number, '#N'")
    result = cli("dump", "-m", files["hybrid"], "--tensor", f"#{row_sums[1]}", "-o", out, x)
    assert result.exit_code == 2
    assert error_line(result) == (f"error: --tensor '#{row_sums[1]}' (Conv_row_sums): is a scratch tensor of the "
                                  "interpreter's kernels whose first axis does not follow the number of samples, so "
                                  "it has no batch axis")
    shapeless = next(t["index"] for t in listed if t["op"] == "SCRATCH" and t["shape"] is None)
    result = cli("dump", "-m", files["hybrid"], "--tensor", f"#{shapeless}", "-o", out, x)
    assert result.exit_code == 2
    assert error_line(result) == (f"error: --tensor '#{shapeless}': is a slot the interpreter reserved for its "
                                  "kernels and never gave a shape: it holds nothing")
    assert not out.exists()


def test_a_scratch_tensor_dumps_as_the_interpreter_holds_it(cli, files, tmp_path):
    """The hybrid FULLY_CONNECTED quantizes its input per sample: its scaling factors are a
    scratch tensor with one value per sample, (max(x, 0) - min(x, 0)) / 255 of the input."""
    x = files["x"]
    interpreter = _run(files["hybrid"], {"image": x})
    stored = _stored(files["hybrid"])
    batched = [d["index"] for d in interpreter.get_tensor_details()
               if d["index"] >= stored and d["dtype"] == np.float32 and list(d["shape"]) == [ROWS]]
    assert len(batched) == 1
    factors = batched[0]
    out = tmp_path / "scratch.h5"
    # batches of 2: the interpreter is resized (2, 2, then 1) and the scratch tensor with it
    result = cli("dump", "-m", files["hybrid"], "-l", "gap", "--tensor", f"#{factors}", "-b", 2, "-o", out, "-q",
                 files["folder"] / "x.npy")
    assert result.exit_code == 0, result.stderr
    data = _datasets(out)
    path = f"tensors/scratch#{factors}"
    assert sorted(data) == ["activations/gap", path]
    value, attrs = data[path]
    assert (attrs["tensor"], attrs["tensor_index"], attrs["op_type"]) == ("", factors, "SCRATCH")
    np.testing.assert_array_equal(value, interpreter.get_tensor(factors))
    gap = data["activations/gap"][0]
    _close(value, (np.maximum(gap.max(axis=1), 0) - np.minimum(gap.min(axis=1), 0)) / 255, 1e-6)

    summary = _json(cli("summary", out, "--json"))
    entry = next(d for d in summary["datasets"] if d["name"] == path)
    assert entry["sample_shape"] == [] and entry["min"] == pytest.approx(float(value.min()))
    copy = tmp_path / "copy.h5"
    copy.write_bytes(out.read_bytes())
    diff = cli("diff", out, copy)
    assert diff.exit_code == 0, diff.stderr
    assert any(line.split()[:1] == [path] and line.split()[-1] == "ok" for line in diff.stdout.splitlines())


# --- issue 29 item 16: a cyclic graph is refused when it is loaded -------------------------

@pytest.fixture(scope="module")
def cyclic(files):
    """A chain of four ops (FULLY_CONNECTED, TANH, FULLY_CONNECTED, TANH...) whose second op
    is made to read the output of the fourth: shapes agree, so the interpreter prepares and
    runs it, reading a tensor before it is computed."""
    from tensorflow.lite.tools import flatbuffer_utils

    L = keras.layers
    x = keras.Input((4,), name="x")
    y = L.Activation("sigmoid", name="s1")(L.Dense(4, activation="tanh", name="d1")(x))
    y = L.Activation("sigmoid", name="s2")(L.Dense(4, activation="tanh", name="d2")(y))
    model = flatbuffer_utils.read_model_from_bytearray(
        bytearray(_convert(tf.lite.TFLiteConverter.from_keras_model(keras.Model(x, y)))))
    graph = model.subgraphs[0]
    ops = graph.operators
    assert [flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) for op in ops[:4]] == \
        ["FULLY_CONNECTED", "TANH", "LOGISTIC", "FULLY_CONNECTED"]
    later = int(ops[3].outputs[0])
    ops[1].inputs[0] = later
    path = files["folder"] / "cyclic.tflite"
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    np.save(files["folder"] / "v4.npy", np.ones((3, 4), "float32"))
    return path, later, graph.tensors[later].name.decode()


@pytest.mark.parametrize("command", [["layers"], ["tensors"], ["dump", "--all"], ["dump", "--tensor-match", "."]])
def test_a_cyclic_graph_is_refused_with_one_line(cli, files, cyclic, tmp_path, command):
    path, later, name = cyclic
    out = tmp_path / "c.h5"
    args = [command[0], path] if command[0] != "dump" else \
        ["dump", "-m", path, *command[1:], "-o", out, files["folder"] / "v4.npy"]
    result = cli(*args)
    assert result.exit_code == 1
    assert error_line(result) == (f"error: {path}: op 1 (TANH) reads tensor #{later} ('{name}'), which op 3 "
                                  "(FULLY_CONNECTED) makes after it: the graph is cyclic or its ops are out of "
                                  "order, so the tensor would be read before it is computed")
    assert not out.exists()


def test_file_tensors_without_a_name_of_their_own(cli, files, tmp_path):
    """A file whose output tensor is unnamed and whose MEAN bears the name of the
    FULLY_CONNECTED's output (edited in the flatbuffer): every command works, a name two
    tensors bear is ambiguous, `#N` picks each, and the values are the interpreter's."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(files["float"].read_bytes()))
    graph = model.subgraphs[0]
    output = int(graph.outputs[0])
    mean = next(int(op.outputs[0]) for op in graph.operators
                if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == "MEAN")
    conv2 = next(int(op.outputs[0]) for op in graph.operators if b"conv2" in graph.tensors[op.outputs[0]].name)
    shared = graph.tensors[conv2].name.decode()
    graph.tensors[output].name = b""
    graph.tensors[mean].name = shared.encode()
    path = tmp_path / "names.tflite"
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))

    layers = cli("layers", path)
    assert layers.exit_code == 0, layers.stderr
    assert f"note:    #{output} (FULLY_CONNECTED): no scope in the name, given to logits" in layers.stdout
    listed = cli("tensors", path)
    assert listed.exit_code == 0, listed.stderr
    assert f"outputs: output_0 <- #{output}" in listed.stdout.splitlines()
    x = files["folder"] / "x.npy"
    result = cli("dump", "-m", path, "--tensor", shared, "-o", tmp_path / "a.h5", x)
    assert result.exit_code == 2
    first, second = sorted([mean, conv2])
    assert error_line(result) == (f"error: --tensor '{shared}' is ambiguous: 2 tensors bear this name "
                                  f"(#{first}, #{second}); give one's number, '#N'")
    out = tmp_path / "b.h5"
    result = cli("dump", "-m", path, "--tensor", f"#{mean}", "--tensor", f"#{conv2}", "--tensor", f"#{output}",
                 "-l", "logits", "-o", out, "-q", x)
    assert result.exit_code == 0, result.stderr
    data = _datasets(out)
    expected = {f"tensors/{shared}#{mean}": mean, f"tensors/{shared}#{conv2}": conv2,
                f"tensors/tensor#{output}": output, "activations/logits": output}
    assert sorted(data) == sorted(expected)
    interpreter = _run(path, {"image": files["x"]})
    for name, index in expected.items():
        assert data[name][1]["tensor_index"] == index
        np.testing.assert_array_equal(data[name][0], interpreter.get_tensor(index))
    _close(data["activations/logits"][0], files["clf"](files["x"]).numpy())
