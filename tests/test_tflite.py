"""TFLite files: `tensors`, `layers` and `dump` on files converted here with
tf.lite.TFLiteConverter (float32, full int8 with a representative dataset, dynamic range, a
fixed batch of 1 with two inputs), and on files that are not TFLite or that the interpreter
cannot run. Every value is checked against an independent computation: Keras itself for float
files, and for every tensor an interpreter run written here, inputs quantized and outputs
dequantized by hand; the tensor list against the flatbuffer read by TensorFlow's own reader."""

import contextlib
import io
import json
import warnings

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, error_line

RESOLVER = tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
ROWS = 5


def _convert(converter):
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter's notes on statistics and deprecations
        return converter.convert()


def _tiny():
    """A nested model with each way a layer ends up in a TFLite file: a Conv2D with its own
    ReLU (one op); a Conv2D and a ReLU layer (fused: the conv leaves no tensor); a Conv2D, a
    BatchNormalization with real statistics and a ReLU (all three fused); the same with a
    Conv2D without bias and a BatchNormalization without shift (folded into the weights, it
    leaves no name at all); an Add; a ZeroPadding2D, DepthwiseConv2D, BatchNormalization and
    ReLU6 (one DEPTHWISE_CONV_2D); and a Dense with softmax (the output, renamed after the
    signature)."""
    L = keras.layers
    image = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="conv_a")(image)
    x = L.Conv2D(4, 3, padding="same", name="conv_b")(x)
    x = L.ReLU(name="relu_b")(x)
    y = L.Conv2D(4, 1, name="conv_c")(x)
    y = L.BatchNormalization(name="bn_c")(y)
    y = L.ReLU(name="relu_c")(y)
    y = L.Conv2D(4, 1, use_bias=False, name="conv_d")(y)
    y = L.BatchNormalization(name="bn_d")(y)
    y = L.ReLU(name="relu_d")(y)
    x = L.Add(name="add")([x, y])
    x = L.ZeroPadding2D(1, name="pad_e")(x)
    x = L.DepthwiseConv2D(3, use_bias=False, name="dw_e")(x)
    x = L.BatchNormalization(name="bn_e")(x)
    features = keras.Model(image, L.ReLU(6.0, name="relu_e")(x), name="features")
    outer = keras.Input((8, 8, 3), name="image")
    z = L.GlobalAveragePooling2D(name="gap")(features(outer))
    z = L.Dense(6, activation="tanh", name="fc")(z)
    model = keras.Model(outer, L.Dense(3, activation="softmax", name="probs")(z), name="tiny")
    rng = np.random.default_rng(5)
    for name in ("bn_c", "bn_e"):
        features.get_layer(name).set_weights([rng.uniform(0.5, 1.5, 4), rng.normal(0, 0.3, 4),
                                              rng.normal(0, 0.3, 4), rng.uniform(0.5, 2.0, 4)])
    # a scale but no shift (beta = moving mean = 0, as in an untrained model): folded into
    # conv_d's weights, with no bias to carry its name
    features.get_layer("bn_d").set_weights([rng.uniform(0.5, 1.5, 4), np.zeros(4), np.zeros(4),
                                            rng.uniform(0.5, 2.0, 4)])
    return model


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    """name -> path of the TFLite files, SavedModels and inputs these tests use, built once."""
    folder = tmp_path_factory.mktemp("tflite")
    keras.utils.set_random_seed(11)
    rng = np.random.default_rng(12)
    paths = {}

    tiny = _tiny()
    tiny.save(folder / "tiny.keras")
    tiny.export(str(folder / "tiny_export"), verbose=False)
    x = rng.uniform(-1, 1, (ROWS, 8, 8, 3)).astype("float32")
    np.save(folder / "x.npy", x)

    def representative():
        for _ in range(16):
            yield [rng.uniform(-1, 1, (1, 8, 8, 3)).astype("float32")]

    paths["float"] = _write(folder / "tiny_float.tflite", tf.lite.TFLiteConverter.from_keras_model(tiny))
    int8 = tf.lite.TFLiteConverter.from_keras_model(tiny)
    int8.optimizations = [tf.lite.Optimize.DEFAULT]
    int8.representative_dataset = representative
    int8.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    int8.inference_input_type = int8.inference_output_type = tf.int8
    paths["int8"] = _write(folder / "tiny_int8.tflite", int8)
    dynamic = tf.lite.TFLiteConverter.from_keras_model(tiny)
    dynamic.optimizations = [tf.lite.Optimize.DEFAULT]
    paths["dynamic"] = _write(folder / "tiny_dynamic.tflite", dynamic)

    transfer = keras.saving.load_model(ROOT / "sample_models" / "transfer.keras", compile=False)
    transfer.export(str(folder / "transfer_export"), verbose=False)
    paths["transfer_float"] = _write(folder / "transfer.tflite", tf.lite.TFLiteConverter.from_keras_model(transfer))

    def transfer_samples():
        for _ in range(8):
            yield [rng.uniform(0, 1, (1, 32, 32, 3)).astype("float32")]

    t8 = tf.lite.TFLiteConverter.from_keras_model(transfer)
    t8.optimizations = [tf.lite.Optimize.DEFAULT]
    t8.representative_dataset = transfer_samples
    paths["transfer_int8"] = _write(folder / "transfer_int8.tflite", t8)  # float input and output

    a = keras.Input((4,), name="a", batch_size=1)
    b = keras.Input((3,), name="b", batch_size=1)
    head = keras.layers.Dense(2, activation="tanh", name="head")(keras.layers.Concatenate(name="cat")([a, b]))
    pair = keras.Model([a, b], head, name="pair")
    paths["pair"] = _write(folder / "pair.tflite", tf.lite.TFLiteConverter.from_keras_model(pair))
    pair_inputs = {"a": rng.normal(size=(ROWS, 4)).astype("float32"), "b": rng.normal(size=(ROWS, 3)).astype("float32")}
    np.savez(folder / "pair.npz", **pair_inputs)

    @tf.function(input_signature=[tf.TensorSpec([None, 3, 3], tf.float32)])
    def determinant(m):
        return tf.linalg.det(m)

    custom = tf.lite.TFLiteConverter.from_concrete_functions([determinant.get_concrete_function()], determinant)
    custom.allow_custom_ops = True
    paths["custom_op"] = _write(folder / "custom_op.tflite", custom)
    whole = paths["float"].read_bytes()
    (folder / "truncated.tflite").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.tflite").write_text("these are notes, not a model\n")

    return {**paths, "folder": folder, "tiny": tiny, "pair_model": pair, "x": x, "x.npy": folder / "x.npy",
            "pair_inputs": pair_inputs, "pair.npz": folder / "pair.npz", "truncated": folder / "truncated.tflite",
            "notes": folder / "notes.tflite", "tiny_export": folder / "tiny_export",
            "transfer_export": folder / "transfer_export"}


def _write(path, converter):
    path.write_bytes(_convert(converter))
    return path


def _interpreter(path):
    """The test's own interpreter: every tensor kept, no default delegate."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tf.lite.Interpreter(model_content=path.read_bytes(), experimental_preserve_all_tensors=True,
                                   experimental_op_resolver_type=RESOLVER)


def _dequantize(q, parameters):
    """(q - zero_point) * scale, per tensor or per channel along quantized_dimension."""
    scales = np.asarray(parameters["scales"], dtype=np.float32)
    zeros = np.asarray(parameters["zero_points"]).astype(np.float32)
    if scales.size > 1:
        shape = [1] * q.ndim
        shape[parameters["quantized_dimension"]] = scales.size
        scales, zeros = scales.reshape(shape), zeros.reshape(shape)
    else:
        scales, zeros = scales[0], zeros[0]
    return (q.astype(np.float32) - zeros) * scales


def _reference(path, inputs, batch):
    """Every tensor with a batch axis after running `inputs` ({input name: rows}) through
    `path`, `batch` rows at a time (fixed-batch files: their own batch): index -> (name,
    value as stored, value dequantized by hand)."""
    interpreter = _interpreter(path)
    signature = interpreter.get_signature_runner().get_input_details()
    details = interpreter.get_input_details()
    rows = len(next(iter(inputs.values())))
    fixed = details[0]["shape_signature"][0] != -1
    step = int(details[0]["shape"][0]) if fixed else batch
    found = {}
    for start in range(0, rows, step):
        if not fixed:
            for d in details:
                interpreter.resize_tensor_input(d["index"], [min(step, rows - start), *d["shape"][1:]])
        interpreter.allocate_tensors()
        for name, d in signature.items():
            x = inputs[name][start:start + step]
            scale, zero = d["quantization"]
            if scale:
                info = np.iinfo(d["dtype"])
                x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(d["dtype"])
            interpreter.set_tensor(d["index"], x)
        interpreter.invoke()
        for d in interpreter.get_tensor_details():
            signature_shape = d["shape_signature"]
            if len(signature_shape) == 0 or (signature_shape[0] != -1 and not fixed):
                continue
            if fixed and (d["index"] >= _tensor_count(path) or signature_shape[0] != step):
                continue
            value = interpreter.get_tensor(d["index"])
            real = _dequantize(value, d["quantization_parameters"]) if len(d["quantization_parameters"]["scales"]) \
                else value
            name, stored, dequantized = found.get(d["index"], (d["name"], [], []))
            found[d["index"]] = (name, stored + [value], dequantized + [real])
    return {i: (name, np.concatenate(s), np.concatenate(r)) for i, (name, s, r) in found.items()}


def _flatbuffer(path):
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))


def _tensor_count(path):
    return len(_flatbuffer(path).subgraphs[0].tensors)


def _json(result):
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _datasets(path):
    """dataset path -> (array, attributes) of a dump."""
    found = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and not name.startswith("inputs/"):
                found[name] = (obj[...], dict(obj.attrs))
        f.visititems(visit)
    return found


def _close(actual, expected, rtol):
    """Within `rtol` of the largest magnitude of `expected`."""
    scale = float(np.abs(expected).max())
    assert actual.shape == expected.shape
    assert float(np.abs(actual - expected).max()) <= rtol * scale, (float(np.abs(actual - expected).max()), scale)


# --- tensors -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["float", "int8", "dynamic", "transfer_int8", "pair"])
def test_tensors_lists_every_tensor_of_the_flatbuffer(cli, lite, kind):
    """Every tensor the file holds (then the interpreter's own scratch tensors), in execution
    order, with its producer's op type, dtype, shape signature and quantization: as
    TensorFlow's flatbuffer reader finds them."""
    from tensorflow.lite.tools import flatbuffer_utils

    # the interpreter's own tensors come after them (tests/test_tflite_fixes.py)
    listed = [t for t in _json(cli("tensors", lite[kind], "--json")) if t["op"] != "SCRATCH"]
    model = _flatbuffer(lite[kind])
    graph = model.subgraphs[0]
    assert sorted(t["index"] for t in listed) == list(range(len(graph.tensors)))
    producer = {}
    for position, op in enumerate(graph.operators):
        for i in op.outputs:
            producer[i] = (position, flatbuffer_utils.opcode_to_name(model, op.opcodeIndex))
    positions = [producer[t["index"]][0] for t in listed if t["index"] in producer]
    assert positions == sorted(positions)  # execution order
    for t in listed:
        stored = graph.tensors[t["index"]]
        assert t["name"] == stored.name.decode()
        expected_op = producer[t["index"]][1] if t["index"] in producer else \
            "INPUT" if t["index"] in graph.inputs else "CONST"
        assert t["op"] == expected_op
        assert t["dtype"] == flatbuffer_utils.type_to_name(stored.type).lower().replace("bool", "bool")
        signature = stored.shapeSignature if stored.shapeSignature is not None else stored.shape
        assert t["shape"] == [None if d == -1 else int(d) for d in signature]
        q = stored.quantization
        if q is None or q.scale is None or len(q.scale) == 0:
            assert t["quantization"] is None
        else:
            scales = [float(s) for s in q.scale]
            assert t["quantization"]["scale"] == (scales if len(scales) > 1 else scales[0])
            zeros = [int(z) for z in q.zeroPoint]
            assert t["quantization"]["zero_point"] == (zeros if len(zeros) > 1 else zeros[0])
            assert t["quantization"]["quantized_dimension"] == q.quantizedDimension


def test_tensors_table_shows_quantization_and_filters(cli, lite):
    result = cli("tensors", lite["int8"], "--op", "conv_2d")
    assert result.exit_code == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "CONV_2D" in line]
    assert len(rows) == 4  # conv_a, conv_b (+ relu_b), conv_c (+ bn_c, relu_c), conv_d (+ relu_d)
    assert all("scale " in row and "zero point " in row for row in rows)
    weights = cli("tensors", lite["int8"], "--filter", r"conv_a_1/convolution$")
    # per-channel weights: 4 output channels of conv_a, on axis 0
    assert "4 scales " in weights.stdout and "on axis 0, zero point 0" in weights.stdout, weights.stdout
    assert "tensors: " in weights.stdout.splitlines()[-1]
    unknown = cli("tensors", lite["int8"], "--op", "Conv2D")
    assert unknown.exit_code == 2
    assert "did you mean 'CONV_2D'" in error_line(unknown)


# --- layers --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["transfer_float", "transfer_int8"])
def test_layers_have_the_savedmodel_paths(cli, lite, kind):
    """The layers found in the tensor names are those the SavedModel's name scopes give, in
    the same order, with the same output shapes."""
    tflite = _json(cli("layers", lite[kind], "--json"))
    saved = _json(cli("layers", lite["transfer_export"], "--json"))
    assert [layer["path"] for layer in tflite] == [layer["path"] for layer in saved]
    assert [layer["output_shape"] for layer in tflite] == [layer["output_shape"] for layer in saved]
    assert {layer["reach"] for layer in tflite} == {"graph"}


@pytest.mark.parametrize("kind", ["float", "int8", "dynamic"])
def test_layers_fused_into_a_neighbour_are_listed_as_fused(cli, lite, kind):
    tflite = {layer["path"]: layer for layer in _json(cli("layers", lite[kind], "--json"))}
    saved = [layer["path"] for layer in _json(cli("layers", lite["tiny_export"], "--json"))]
    # the BatchNormalization folded into conv_d's weights leaves no name: the one path missing
    assert [p for p in saved if p not in tflite] == ["features/bn_d"]
    assert list(tflite) == [p for p in saved if p in tflite]
    fused = {p: layer["fused_into"] for p, layer in tflite.items() if layer["reach"] == "fused"}
    assert fused == {"features/conv_b": "features/relu_b", "features/conv_c": "features/relu_c",
                     "features/bn_c": "features/relu_c", "features/conv_d": "features/relu_d",
                     "features/pad_e": "features/relu_e", "features/dw_e": "features/relu_e",
                     "features/bn_e": "features/relu_e"}
    assert tflite["features/conv_b"]["calls"] == 0 and tflite["features/conv_b"]["output_shape"] is None
    assert tflite["features/relu_b"]["class"] == "CONV_2D"
    assert tflite["probs"]["class"] == "SOFTMAX"  # the renamed model output is the Dense's
    assert tflite["features"]["output_shape"] == [None, 8, 8, 4]

    table = cli("layers", lite[kind])
    assert table.exit_code == 0, table.stderr
    assert "features/conv_b [fused into features/relu_b]" in table.stdout
    assert any(line.startswith("[fused]: ") for line in table.stdout.splitlines())
    notes = [line for line in table.stdout.splitlines() if line.startswith("note:    ")]
    assert "BatchNormalization" in notes[0]
    # the renamed output (SOFTMAX; in the int8 file, a DEQUANTIZE after it) goes to `probs`, and says so
    assert notes[1].startswith("note:    StatefulPartitionedCall") and "given to probs, the layer the op reads" in notes[1]
    assert len(notes) == 2


def test_a_fused_layer_cannot_be_dumped(cli, lite, tmp_path):
    result = cli("dump", "-m", lite["float"], "--layer", "conv_b", "-o", tmp_path / "a.h5", lite["x.npy"])
    assert result.exit_code == 2
    assert "fused it into the op of 'features/relu_b'" in error_line(result)
    assert not (tmp_path / "a.h5").exists()


# --- values --------------------------------------------------------------------------------

def test_float_layers_equal_keras(cli, lite, tmp_path):
    """Every layer of the float file that has a tensor, against Keras' own layer output."""
    out = tmp_path / "float.h5"
    result = cli("dump", "-m", lite["float"], "--all", "-o", out, "-q", lite["x.npy"])
    assert result.exit_code == 0, result.stderr
    data = _datasets(out)
    tiny, x = lite["tiny"], lite["x"]
    features = tiny.get_layer("features")

    def keras_value(model, name):
        return keras.Model(model.inputs, model.get_layer(name).output)(x).numpy()

    expected = {f"activations/features/{n}": keras_value(features, n)
                for n in ("conv_a", "relu_b", "relu_c", "relu_d", "add", "relu_e")}
    expected["activations/features/__output__"] = features(x).numpy()
    expected.update({f"activations/{n}": keras_value(tiny, n) for n in ("gap", "fc", "probs")})
    assert sorted(data) == sorted(expected)
    for name, value in expected.items():
        _close(data[name][0], value, 1e-4)
        assert data[name][0].dtype == np.float32


@pytest.mark.parametrize("kind", ["float", "int8", "dynamic", "transfer_int8"])
def test_every_tensor_equals_an_interpreter_run(cli, lite, tmp_path, kind):
    """`--tensor-match .` stores every tensor with a batch axis, each equal to the test's own
    interpreter run (inputs quantized, outputs dequantized by hand), with its name, index and
    quantization as attributes; the batches of 2 resize the interpreter (2, 2, then 1)."""
    x = lite["x"] if not kind.startswith("transfer") else \
        np.random.default_rng(3).uniform(0, 1, (ROWS, 32, 32, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "tensors.h5"
    result = cli("dump", "-m", lite[kind], "--tensor-match", ".", "-b", 2, "-o", out, "-q", tmp_path / "x.npy")
    assert result.exit_code == 0, result.stderr
    reference = _reference(lite[kind], {"image": x}, batch=2)
    data = _datasets(out)
    assert sorted(attrs["tensor_index"] for _, attrs in data.values()) == sorted(reference)
    interpreter = _interpreter(lite[kind])
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    quantized = 0
    for path, (value, attrs) in data.items():
        index = int(attrs["tensor_index"])
        tensor_name, stored, dequantized = reference[index]
        assert attrs["tensor"] == tensor_name
        assert path == f"tensors/{tensor_name.split(';')[0]}#{index}"
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, dequantized)
        parameters = details[index]["quantization_parameters"]
        if len(parameters["scales"]):
            quantized += 1
            assert attrs["quantized_dtype"] == np.dtype(details[index]["dtype"]).name
            assert attrs["scale"] == np.float32(parameters["scales"][0])
            assert attrs["zero_point"] == parameters["zero_points"][0]
            assert attrs["quantized_dimension"] == parameters["quantized_dimension"]
        else:
            assert "scale" not in attrs
    assert (quantized > 0) == (kind in ("int8", "transfer_int8"))


def test_raw_quantized_keeps_the_integers(lite):
    """The backend's raw_quantized (the CLI's --raw-quantized) returns what the interpreter
    stores, as it stores it."""
    from tensorprobe.errors import UsageError
    from tensorprobe.backends.detect import OpenOptions, open_model

    graph = open_model(lite["int8"], OpenOptions(raw_quantized=True)).tensor_graph
    indices = [t.index for t in graph.tensors if t.op != "SCRATCH" and not graph.why_not_dumpable(t)]
    values = graph.extraction_function(indices)([lite["x"]])
    reference = _reference(lite["int8"], {"image": lite["x"]}, batch=ROWS)
    for index, value in zip(indices, values):
        assert value.dtype == np.int8
        np.testing.assert_array_equal(value, reference[index][1])
    with pytest.raises(UsageError, match="not a TFLite file"):
        open_model(lite["folder"] / "tiny.keras", OpenOptions(raw_quantized=True))


def test_per_channel_dequantisation(lite):
    """Per-channel weights dequantized along their quantized_dimension, as by hand; and the
    quantization of the real values gives the integers back."""
    from tensorprobe.backends.tflite.quantization import Quantization

    interpreter = _interpreter(lite["int8"])
    interpreter.allocate_tensors()
    per_channel = [d for d in interpreter.get_tensor_details() if len(d["quantization_parameters"]["scales"]) > 1]
    assert len(per_channel) >= 4  # the conv and dense weights and biases
    for d in per_channel:
        q = interpreter.get_tensor(d["index"])
        quantization = Quantization.of(d["dtype"], d["quantization_parameters"])
        assert quantization.per_channel
        np.testing.assert_array_equal(quantization.dequantize(q), _dequantize(q, d["quantization_parameters"]))
        if q.dtype == np.int8:
            np.testing.assert_array_equal(quantization.quantize(quantization.dequantize(q)), q)


def test_fixed_batch_two_inputs_from_npz(cli, lite, tmp_path):
    """A file with a fixed batch of 1 runs sample by sample; a .npz feeds its two inputs by
    name; values equal Keras and, exactly, a per-sample interpreter run."""
    out = tmp_path / "pair.h5"
    result = cli("dump", "-m", lite["pair"], "--all", "--tensor-match", ".", "-b", 2, "-o", out, "-q", lite["pair.npz"])
    assert result.exit_code == 0, result.stderr
    data = _datasets(out)
    inputs = lite["pair_inputs"]
    _close(data["activations/head"][0], lite["pair_model"]([inputs["a"], inputs["b"]]).numpy(), 1e-4)
    reference = _reference(lite["pair"], inputs, batch=1)
    tensors = {int(attrs["tensor_index"]): value for path, (value, attrs) in data.items() if path.startswith("tensors/")}
    assert sorted(tensors) == sorted(reference)
    for index, value in tensors.items():
        np.testing.assert_array_equal(value, reference[index][2])
    # the Dense's output is the model's, renamed after the signature
    output = _interpreter(lite["pair"]).get_output_details()[0]
    assert data["activations/head"][1]["tensor_index"] == output["index"]
    assert data["activations/head"][1]["tensor"] == output["name"]


def test_images_dump_like_the_keras_file(cli, lite, tmp_path):
    """The float file and the Keras file it came from, dumped from the same images with the
    same preparation, agree within 1e-4 relative, layer by layer."""
    images = ROOT / "sample_models" / "images"
    common = ["--layer", "vgg16/block1_conv2", "--layer", "fc1", "--layer", "predictions", "--scale", "1/255", "-q",
              str(images)]
    assert cli("dump", "-m", lite["transfer_float"], "-o", tmp_path / "lite.h5", *common).exit_code == 0
    assert cli("dump", "-m", ROOT / "sample_models" / "transfer.keras", "-o", tmp_path / "keras.h5", *common).exit_code == 0
    lite_data, keras_data = _datasets(tmp_path / "lite.h5"), _datasets(tmp_path / "keras.h5")
    assert sorted(lite_data) == sorted(keras_data)
    for name, (value, _) in keras_data.items():
        _close(lite_data[name][0], value, 1e-4)
    with h5py.File(tmp_path / "lite.h5", "r") as f:
        assert f.attrs["model_format"] == "tflite"
        assert f.attrs["loader"].startswith("tf.lite ")
        assert len(f["inputs/source"]) == len(keras_data["activations/fc1"][0])


# --- names ---------------------------------------------------------------------------------

def test_tensor_names_index_and_parts(cli, lite, tmp_path):
    """--tensor takes a tensor's exact name, `#INDEX`, or one part of a ';'-joined name."""
    listed = _json(cli("tensors", lite["float"], "--json"))
    fused = next(t for t in listed if "relu_b_1/Relu;" in t["name"])
    part = fused["name"].split(";")[0]
    for how in (fused["name"], f"#{fused['index']}", part):
        out = tmp_path / "t.h5"
        result = cli("dump", "-m", lite["float"], "--tensor", how, "-o", out, "--overwrite", "-q", lite["x.npy"])
        assert result.exit_code == 0, (how, result.stderr)
        [(path, (_, attrs))] = _datasets(out).items()
        assert attrs["tensor"] == fused["name"] and attrs["tensor_index"] == fused["index"]
        assert attrs["layer"] == "features/relu_b"
    weights = next(t for t in listed if t["op"] == "CONST")
    result = cli("dump", "-m", lite["float"], "--tensor", f"#{weights['index']}", "-o", tmp_path / "w.h5", lite["x.npy"])
    assert result.exit_code == 2
    assert "does not depend on the inputs" in error_line(result)


def test_signature_option(cli, lite):
    assert cli("layers", lite["float"], "--signature", "serving_default").exit_code == 0
    result = cli("layers", lite["float"], "--signature", "predict")
    assert result.exit_code == 2
    assert error_line(result).endswith("has no such signature; it has serving_default")


# --- bad files -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind, message", [
    ("truncated", "damaged or truncated TFLite file (The model is not a valid Flatbuffer buffer)"),
    ("notes", "not a TFLite model (no 'TFL3' flatbuffer identifier at bytes 4-8)"),
    ("custom_op", "the TFLite interpreter cannot run this model: Encountered unresolved custom op: MatrixDeterminant"),
])
@pytest.mark.parametrize("command", ["layers", "tensors", "dump"])
def test_bad_files_get_one_error_line(cli, lite, tmp_path, kind, message, command):
    args = [command, lite[kind]] if command != "dump" else \
        ["dump", "-m", lite[kind], "--tensor-match", ".", "-o", tmp_path / "out.h5", lite["x.npy"]]
    result = cli(*args)
    assert result.exit_code == 1
    line = error_line(result)
    assert line.startswith(f"error: {lite[kind]}: ")
    assert message in line
    assert not (tmp_path / "out.h5").exists()


def test_ops_of_the_interpreter_are_read_as_expected(lite):
    """tensorprobe reads the interpreter's ops through a private method; if a TensorFlow
    upgrade changes it, this fails here, loudly, rather than the listing going wrong."""
    from tensorprobe.backends.tflite.graph import _ops

    interpreter = _interpreter(lite["float"])
    ops = _ops(interpreter)
    model = _flatbuffer(lite["float"])
    assert [(op[2], op[3]) for op in ops] == [([i for i in o.inputs if i >= 0], list(o.outputs))
                                              for o in model.subgraphs[0].operators]
    assert {op[1] for op in ops} >= {"CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED", "SOFTMAX"}
