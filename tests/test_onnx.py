"""ONNX files: recognised by content, `layers`, `tensors`, `dump` and `compare` on a tf2onnx
conversion of a nested Keras CNN (BatchNormalization with real statistics, a residual Add,
an inline op) and on a file named as torch.onnx names nodes, built with onnx.helper (float16
and integer tensors, an If node whose branches compute tensors, a fixed-batch copy). Every
value is checked against onnx.reference.ReferenceEvaluator on the same graph, or Keras."""

import json
import subprocess
import sys

import h5py
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from conftest import error_line

ROWS = 5


def _keras_cnn():
    """A nested CNN: a `features` model (convolutions, BatchNormalization with real
    statistics, a residual Add, pooling) inside `cnn`, with an inline op and a Dense head,
    every weight random (tf2onnx leaves out an Add of zeros)."""
    import keras

    L = keras.layers
    keras.utils.set_random_seed(7)
    image = keras.Input((10, 10, 3), name="image")
    x = L.Conv2D(6, 3, padding="same", activation="relu", name="block1_conv1")(image)
    y = L.Conv2D(6, 3, padding="same", use_bias=False, name="block1_conv2")(x)  # as ResNets do
    y = L.BatchNormalization(name="block1_bn")(y)
    x = L.Add(name="block1_add")([x, y])
    x = L.MaxPooling2D(name="block1_pool")(x)
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="block2_conv1")(x)
    features = keras.Model(image, x, name="features")
    outer = keras.Input((10, 10, 3), name="image")
    z = features(outer)
    z = L.GlobalAveragePooling2D(name="gap")(z)
    z = z * 2.0
    z = L.Dense(4, activation="relu", name="fc")(z)
    model = keras.Model(outer, L.Dense(3, activation="softmax", name="probs")(z), name="cnn")
    rng = np.random.default_rng(5)
    for layer in (*features.layers, model.get_layer("fc"), model.get_layer("probs")):
        if isinstance(layer, (L.Conv2D, L.Dense)):  # biases too: tf2onnx drops an Add of zeros
            layer.set_weights([rng.normal(scale=0.4, size=w.shape).astype("float32") for w in layer.get_weights()])
    bn = features.get_layer("block1_bn")
    gamma, beta, _, _ = bn.get_weights()
    bn.set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype("float32"), rng.normal(size=beta.shape).astype("float32"),
                    rng.normal(size=6).astype("float32"), rng.uniform(0.5, 2, 6).astype("float32")])
    return model


def _convert(saved_model, output):
    subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved_model), "--output",
                    str(output), "--opset", "17"], check=True, capture_output=True)


def _torch_style(path, batch="N", seed=0):
    """A model named as torch.onnx names nodes (`/module/path/OpType`, outputs
    `<node>_output_0`): two conv blocks under `backbone`, a pooling, a Gemm, a float16 branch,
    an integer output and an If whose branches compute tensors of their own."""
    rng = np.random.default_rng(seed)

    def init(name, *shape):
        return numpy_helper.from_array(rng.normal(size=shape).astype("float32"), name)

    def node(op, inputs, output, name, **attrs):
        return helper.make_node(op, inputs, [output], name=name, **attrs)

    def info(name, dtype, shape):
        return helper.make_tensor_value_info(name, dtype, shape)

    then_graph = helper.make_graph(
        [node("Mul", ["/fc/Gemm_output_0", "/fc/Gemm_output_0"], "/gate/then/Mul_output_0", "/gate/then/Mul"),
         node("Neg", ["/gate/then/Mul_output_0"], "/gate/then/Neg_output_0", "/gate/then/Neg")],
        "then", [], [info("/gate/then/Neg_output_0", TensorProto.FLOAT, [batch, 5])])
    else_graph = helper.make_graph(
        [node("Abs", ["/fc/Gemm_output_0"], "/gate/else/Abs_output_0", "/gate/else/Abs")],
        "else", [], [info("/gate/else/Abs_output_0", TensorProto.FLOAT, [batch, 5])])
    nodes = [
        node("Conv", ["input", "backbone.layer1.conv.weight", "backbone.layer1.conv.bias"],
             "/backbone/layer1/conv/Conv_output_0", "/backbone/layer1/conv/Conv", pads=[1, 1, 1, 1]),
        node("Relu", ["/backbone/layer1/conv/Conv_output_0"], "/backbone/layer1/relu/Relu_output_0",
             "/backbone/layer1/relu/Relu"),
        node("Conv", ["/backbone/layer1/relu/Relu_output_0", "backbone.layer2.conv.weight"],
             "/backbone/layer2/conv/Conv_output_0", "/backbone/layer2/conv/Conv"),
        node("Sigmoid", ["/backbone/layer2/conv/Conv_output_0"], "/backbone/layer2/act/Sigmoid_output_0",
             "/backbone/layer2/act/Sigmoid"),
        node("GlobalAveragePool", ["/backbone/layer2/act/Sigmoid_output_0"], "/pool/GlobalAveragePool_output_0",
             "/pool/GlobalAveragePool"),
        node("Flatten", ["/pool/GlobalAveragePool_output_0"], "/Flatten_output_0", "/Flatten"),
        node("Gemm", ["/Flatten_output_0", "fc.weight", "fc.bias"], "/fc/Gemm_output_0", "/fc/Gemm", transB=1),
        node("Cast", ["/fc/Gemm_output_0"], "/half/Cast_output_0", "/half/Cast", to=TensorProto.FLOAT16),
        node("Mul", ["/half/Cast_output_0", "/half/Cast_output_0"], "/half/Mul_output_0", "/half/Mul"),
        node("ArgMax", ["/fc/Gemm_output_0"], "classes", "/ArgMax", axis=1, keepdims=0),
        node("ReduceSum", ["/fc/Gemm_output_0"], "/gate/ReduceSum_output_0", "/gate/ReduceSum", keepdims=0),
        node("Constant", [], "/gate/Constant_output_0", "/gate/Constant",
             value=numpy_helper.from_array(np.array(0.0, "float32"))),
        node("Greater", ["/gate/ReduceSum_output_0", "/gate/Constant_output_0"], "/gate/Greater_output_0",
             "/gate/Greater"),
        node("If", ["/gate/Greater_output_0"], "gated", "/gate/If", then_branch=then_graph, else_branch=else_graph),
    ]
    weights = [init("backbone.layer1.conv.weight", 4, 3, 3, 3), init("backbone.layer1.conv.bias", 4),
               init("backbone.layer2.conv.weight", 6, 4, 3, 3), init("fc.weight", 5, 6), init("fc.bias", 5)]
    graph = helper.make_graph(
        nodes, "torch_jit", [info("input", TensorProto.FLOAT, [batch, 3, 6, 6])],
        [info("/half/Mul_output_0", TensorProto.FLOAT16, [batch, 5]), info("classes", TensorProto.INT64, [batch]),
         info("gated", TensorProto.FLOAT, [batch, 5])], weights)
    model = helper.make_model(graph, producer_name="pytorch", producer_version="2.5.0",
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import keras

    folder = tmp_path_factory.mktemp("onnx")
    model = _keras_cnn()
    model.save(folder / "cnn.keras")
    model.export(folder / "cnn_sm", verbose=False)
    _convert(folder / "cnn_sm", folder / "cnn.onnx")
    # a copy with one weight of block2_conv1 changed: the first divergence there
    perturbed = onnx.load(folder / "cnn.onnx")
    weight = next(t for t in perturbed.graph.initializer if "block2_conv1" in t.name and len(t.dims) == 4)
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] += 0.5
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(perturbed, folder / "perturbed.onnx")
    _torch_style(folder / "torch.onnx")
    _torch_style(folder / "torch1.onnx", batch=1)
    rng = np.random.default_rng(3)
    np.save(folder / "x.npy", rng.normal(size=(ROWS, 10, 10, 3)).astype("float32"))
    np.save(folder / "xt.npy", rng.normal(size=(ROWS, 3, 6, 6)).astype("float32"))
    del keras
    return {p.name: p for p in folder.iterdir()}


def _reference(path, names, x):
    """The values of tensors `names` by onnx.reference.ReferenceEvaluator, for the whole batch."""
    model = onnx.load(path)
    feed = {model.graph.input[0].name: x}
    return dict(zip(names, ReferenceEvaluator(model).run(names, feed)))


def _datasets(path):
    with h5py.File(path, "r") as f:
        found = {}
        f.visititems(lambda name, obj: found.__setitem__(name, (obj[()], dict(obj.attrs)))
                     if isinstance(obj, h5py.Dataset) and not name.startswith("inputs/") else None)
        return found


# ---- recognised by content ----------------------------------------------------------------

def test_recognised_by_content_and_not_taken_for_tensorflow_files(files, tmp_path):
    from tensorprobe.backends import detect
    from tensorprobe.backends.onnx.protobuf import is_model_proto
    from tensorprobe.backends.tfgraph.protobuf import protobuf_kind

    renamed = tmp_path / "model.bin"
    renamed.write_bytes(files["cnn.onnx"].read_bytes())
    assert detect.detect_format(renamed) == "onnx"
    assert detect.detect_format(files["torch.onnx"]) == "onnx"
    for name in ("cnn.onnx", "torch.onnx"):
        assert protobuf_kind(files[name].read_bytes()[:1 << 16]) is None
    saved_model_pb = (files["cnn_sm"] / "saved_model.pb").read_bytes()
    assert not is_model_proto(saved_model_pb[:1 << 16])
    assert detect.detect_format(files["cnn_sm"]) == "savedmodel"

    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.identity(tf.compat.v1.placeholder(tf.float32, (None, 3), name="x"), name="y")
    frozen = tmp_path / "frozen.pb"
    frozen.write_bytes(graph.as_graph_def().SerializeToString())
    assert not is_model_proto(frozen.read_bytes())
    assert detect.detect_format(frozen) == "frozen_graph"
    assert not is_model_proto(files["cnn.keras"].read_bytes()[:1 << 16])
    cut = tmp_path / "cut.onnx"  # the first bytes only: the graph field never begins
    cut.write_bytes(files["cnn.onnx"].read_bytes()[:12])
    assert not is_model_proto(cut.read_bytes())


def test_damaged_file_is_one_error_line(files, tmp_path, cli):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(files["cnn.onnx"].read_bytes()[:-40])
    result = cli("layers", cut)
    assert result.exit_code == 1
    assert error_line(result).startswith(f"error: {cut}: damaged or incomplete ONNX file (")


def test_a_node_reading_a_tensor_nothing_makes_is_refused(tmp_path, cli):
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "nowhere"], ["y"], name="/add/Add")], "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])])
    path = tmp_path / "broken.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    result = cli("tensors", path)
    assert result.exit_code == 1
    assert error_line(result) == (f"error: {path}: node '/add/Add' (Add) reads 'nowhere', which no node, input or "
                                  "initializer of the graph makes: the file is damaged or incomplete")


def test_missing_extra_says_how_to_install(files, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    result = cli("tensors", files["torch.onnx"])
    assert result.exit_code == 1
    assert error_line(result) == (f"error: {files['torch.onnx']}: is an ONNX model; reading it needs onnx and "
                                  "onnxruntime, which are not installed (pip install 'tensorprobe[onnx]')")


# ---- layers and tensors -------------------------------------------------------------------

def test_layers_of_a_tf2onnx_conversion_are_the_keras_paths(files, cli):
    onnx_layers = json.loads(cli("layers", files["cnn.onnx"], "--json").stdout)
    keras_paths = _keras_layers(cli, files["cnn.keras"])
    assert [layer["path"] for layer in onnx_layers] == keras_paths
    by_path = {layer["path"]: layer for layer in onnx_layers}
    # tf2onnx folds the Conv2D into the BatchNormalization after it: one Conv node, in the
    # BatchNormalization's place, whose bias it carries
    assert (by_path["features/block1_conv2"]["reach"], by_path["features/block1_conv2"]["fused_into"]) == \
        ("fused", "features/block1_bn")
    assert by_path["features/block1_bn"]["class"] == "Conv"
    assert by_path["features/block1_conv1"]["output_shape"] == [None, 6, 10, 10]  # tf2onnx computes in NCHW
    assert by_path["probs"]["output_shape"] == [None, 3]
    assert by_path["fc"]["params"] == 8 * 4 + 4
    assert by_path["features/block1_bn"]["params"] == 6 * 6 * 3 * 3 + 6  # the folded weights, a bias


def _keras_layers(cli, path):
    """The paths of a Keras model's layers, as `tensorprobe layers` lists them: not its
    InputLayers, nor its inline ops (`x * 2.0`, no index), which no graph has as a layer."""
    listed = json.loads(cli("layers", path, "--json").stdout)
    return [layer["path"] for layer in listed if layer["class"] != "InputLayer" and layer["index"] is not None]


def test_layers_of_a_torch_style_file(files, cli):
    result = cli("layers", files["torch.onnx"], "--json")
    assert result.exit_code == 0, result.stderr
    layers = json.loads(result.stdout)
    assert [(layer["path"], layer["class"], layer["output_shape"]) for layer in layers] == [
        ("backbone", "Sigmoid", [None, 6, 4, 4]),
        ("backbone/layer1", "Relu", [None, 4, 6, 6]),
        ("backbone/layer1/conv", "Conv", [None, 4, 6, 6]),
        ("backbone/layer1/relu", "Relu", [None, 4, 6, 6]),
        ("backbone/layer2", "Sigmoid", [None, 6, 4, 4]),
        ("backbone/layer2/conv", "Conv", [None, 6, 4, 4]),
        ("backbone/layer2/act", "Sigmoid", [None, 6, 4, 4]),
        ("pool", "GlobalAveragePool", [None, 6, 1, 1]),
        ("fc", "Gemm", [None, 5]),
        ("half", "Mul", [None, 5]),
        ("gate", "If", [None, 5]),
    ]
    params = {layer["path"]: layer["params"] for layer in layers}
    assert params["backbone/layer1/conv"] == 4 * 3 * 3 * 3 + 4
    assert params["backbone"] == 4 * 3 * 3 * 3 + 4 + 6 * 4 * 3 * 3
    table = cli("layers", files["torch.onnx"]).stdout
    assert "inputs:  input (N, 3, 6, 6) float32" in table  # symbolic dimensions by name
    assert "outputs: /half/Mul_output_0 (N, 5) float16, classes (N,) int64, gated (N, 5) float32" in table


def test_tensors_every_node_output_in_topological_order(files, cli):
    model = onnx.load(files["cnn.onnx"])
    inferred = onnx.shape_inference.infer_shapes(model)
    kinds = {vi.name: vi.type.tensor_type.elem_type for vi in (*inferred.graph.value_info, *inferred.graph.output)}
    result = cli("tensors", files["cnn.onnx"], "--json")
    assert result.exit_code == 0, result.stderr
    listed = json.loads(result.stdout)
    expected = [(name, node.op_type) for node in model.graph.node for name in node.output]  # tf2onnx sorts them
    assert [(t["name"], t["op"]) for t in listed] == expected
    for t in listed:
        assert t["dtype"] == np.dtype(helper.tensor_dtype_to_np_dtype(kinds[t["name"]])).name
    convs = json.loads(cli("tensors", files["cnn.onnx"], "--op", "conv", "--json").stdout)
    assert [t["name"] for t in convs] == [n for n, op in expected if op == "Conv"]
    assert len(convs) == 3
    filtered = json.loads(cli("tensors", files["cnn.onnx"], "--filter", "block1_conv2", "--json").stdout)
    assert [t["name"] for t in filtered] == [n for n, _ in expected if "block1_conv2" in n]
    result = cli("tensors", files["cnn.onnx"], "--op", "Convv")
    assert result.exit_code == 2
    assert error_line(result) == "error: --op 'Convv': no op of this type in the graph; did you mean 'Conv'?"


def test_tensors_of_subgraphs_are_listed_as_such(files, cli):
    listed = json.loads(cli("tensors", files["torch.onnx"], "--json").stdout)
    inner = {t["name"]: t["subgraph"] for t in listed if t["subgraph"]}
    assert inner == {"/gate/then/Mul_output_0": "then_branch of If '/gate/If'",
                     "/gate/then/Neg_output_0": "then_branch of If '/gate/If'",
                     "/gate/else/Abs_output_0": "else_branch of If '/gate/If'"}
    by_name = {t["name"]: t for t in listed}
    assert (by_name["/half/Mul_output_0"]["dtype"], by_name["classes"]["dtype"]) == ("float16", "int64")
    assert by_name["gated"]["shape"] == [None, 5]


# ---- dump -----------------------------------------------------------------------------------

def test_dump_every_tensor_equals_the_reference_evaluator(files, cli, tmp_path):
    out = tmp_path / "t.h5"
    result = cli("dump", "-m", files["cnn.onnx"], "--tensor-match", ".", "-o", out, files["x.npy"])
    assert result.exit_code == 0, result.stderr
    x = np.load(files["x.npy"])
    listed = json.loads(cli("tensors", files["cnn.onnx"], "--json").stdout)
    batched = [t["name"] for t in listed if t["shape"] and t["shape"][0] is None]
    reference = _reference(files["cnn.onnx"], batched, x)
    found = _datasets(out)
    assert sorted(found) == sorted(f"tensors/{name}" for name in batched)
    for name in batched:
        values, attrs = found[f"tensors/{name}"]
        np.testing.assert_allclose(values, reference[name], rtol=1e-5, atol=1e-5)
        assert values.dtype == reference[name].dtype
        assert attrs["tensor"] == name


def test_dump_layers_of_a_torch_style_file_keep_their_dtype(files, cli, tmp_path):
    out = tmp_path / "l.h5"
    result = cli("dump", "-m", files["torch.onnx"], "--all", "--tensor", "classes", "--tensor", "/half/Cast",
                 "-o", out, files["xt.npy"])
    assert result.exit_code == 0, result.stderr
    x = np.load(files["xt.npy"])
    names = {"activations/backbone/layer1/conv": "/backbone/layer1/conv/Conv_output_0",
             "activations/backbone/layer2/act": "/backbone/layer2/act/Sigmoid_output_0",
             "activations/backbone/__output__": "/backbone/layer2/act/Sigmoid_output_0",
             "activations/pool": "/pool/GlobalAveragePool_output_0", "activations/fc": "/fc/Gemm_output_0",
             "activations/half": "/half/Mul_output_0", "activations/gate": "gated", "tensors/classes": "classes",
             "tensors/half/Cast_output_0": "/half/Cast_output_0"}
    reference = _reference(files["torch.onnx"], sorted(set(names.values())), x)
    found = _datasets(out)
    for dataset, name in names.items():
        values, _ = found[dataset]
        assert values.dtype == reference[name].dtype, dataset
        np.testing.assert_allclose(values, reference[name], rtol=1e-3 if values.dtype == "float16" else 1e-5,
                                   atol=1e-5)
    assert found["tensors/classes"][0].dtype == np.int64
    assert found["activations/half"][0].dtype == np.float16


def test_dump_a_fixed_batch_model_row_by_row(files, cli, tmp_path):
    out = tmp_path / "f.h5"
    result = cli("dump", "-m", files["torch1.onnx"], "--layer", "gate", "--layer", "backbone/layer1/conv",
                 "-o", out, files["xt.npy"])
    assert result.exit_code == 0, result.stderr
    x = np.load(files["xt.npy"])
    found = _datasets(out)
    for k in range(ROWS):  # batch 1: the If's condition is taken on each row alone
        reference = _reference(files["torch1.onnx"], ["gated", "/backbone/layer1/conv/Conv_output_0"], x[k:k + 1])
        np.testing.assert_allclose(found["activations/gate"][0][k:k + 1], reference["gated"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(found["activations/backbone/layer1/conv"][0][k:k + 1],
                                   reference["/backbone/layer1/conv/Conv_output_0"], rtol=1e-5, atol=1e-5)


def test_subgraph_tensor_and_constant_refused_by_name(files, cli, tmp_path):
    result = cli("dump", "-m", files["torch.onnx"], "--tensor", "/gate/then/Neg_output_0", "-o", tmp_path / "s.h5",
                 files["xt.npy"])
    assert result.exit_code == 2
    assert error_line(result) == ("error: --tensor '/gate/then/Neg_output_0': is computed inside the then_branch "
                                  "of If '/gate/If', a subgraph, not in the main graph; only that node's own "
                                  "outputs can be dumped")
    result = cli("dump", "-m", files["torch.onnx"], "--tensor", "/gate/Constant", "-o", tmp_path / "s.h5",
                 files["xt.npy"])
    assert result.exit_code == 2
    assert error_line(result) == ("error: --tensor '/gate/Constant' (/gate/Constant_output_0): does not depend "
                                  "on the inputs (a constant), so it has no batch axis")
    assert not (tmp_path / "s.h5").exists()


def test_tensors_in_chunks_bounded_by_memory_equal_one_session(files):
    from tensorprobe.backends.onnx import runner
    from tensorprobe.backends.onnx.backend import load_onnx

    graph = load_onnx(str(files["cnn.onnx"])).tensor_graph
    names = [t.name for t in graph.tensors if not graph.why_not_dumpable(t)]
    x = np.load(files["x.npy"])
    one_sample = max(runner._sample_bytes(graph.by_name[n]) for n in names)
    limit = 2 * one_sample * ROWS
    chunks = runner.chunks(graph, names, ROWS, limit)
    assert len(chunks) > 2 and [n for chunk in chunks for n in chunk] == names
    for chunk in chunks:
        assert sum(runner._sample_bytes(graph.by_name[n]) * ROWS for n in chunk) <= limit or len(chunk) == 1
    bounded = runner.extraction_function(graph, names, max_live_bytes=limit)([x])
    reference = _reference(files["cnn.onnx"], names, x)
    for name, values in zip(names, bounded):
        np.testing.assert_allclose(values, reference[name], rtol=1e-5, atol=1e-5)


# ---- compare --------------------------------------------------------------------------------

def test_compare_keras_with_its_onnx_conversion(files, cli):
    result = cli("compare", files["cnn.keras"], files["cnn.onnx"], files["x.npy"], "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["match"] is True and report["first_divergence"] is None
    keras_layers = _keras_layers(cli, files["cnn.keras"])
    paired = [pair["path"] for pair in report["pairs"]]
    assert len(paired) >= 0.9 * len(keras_layers), (paired, keras_layers)
    assert sorted(paired + list(report["fused_in_b"])) == sorted(keras_layers)
    assert report["fused_in_b"] == {"features/block1_conv2": "features/block1_bn"}
    assert all(pair["status"] == "ok" for pair in report["pairs"])

    import keras

    model = keras.saving.load_model(files["cnn.keras"])
    x = np.load(files["x.npy"])
    features = model.get_layer("features")
    conv1 = keras.Model(features.input, features.get_layer("block1_conv1").output)(x).numpy()
    converted = _reference(files["cnn.onnx"], [_conv_relu(files["cnn.onnx"], "block1_conv1")], x)
    np.testing.assert_allclose(np.moveaxis(next(iter(converted.values())), 1, -1), conv1, rtol=1e-4, atol=1e-5)


def _conv_relu(path, layer):
    """The name of the tensor a layer's Relu node makes in a tf2onnx conversion."""
    return next(n.output[0] for n in onnx.load(path).graph.node if f"/{layer}_1/" in n.name and n.op_type == "Relu")


def test_compare_names_the_perturbed_layer_first(files, cli):
    result = cli("compare", files["cnn.keras"], files["perturbed.onnx"], files["x.npy"], "--json")
    assert result.exit_code == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["first_divergence"] == "features/block2_conv1"
    statuses = {pair["path"]: pair["status"] for pair in report["pairs"]}
    assert [path for path, status in statuses.items() if status == "ok"][:4] == [
        "features/block1_conv1", "features/block1_bn", "features/block1_add", "features/block1_pool"]
    assert all(statuses[path] != "ok" for path in ("features/block2_conv1", "features", "gap", "fc"))


def test_an_onnx_dump_imports_no_tensorflow(files, tmp_path):
    """onnxruntime computes an ONNX model's values: TensorFlow is never imported (seconds saved)."""
    out = tmp_path / "d.h5"
    code = ("import sys; from tensorprobe.cli import main; sys.argv = ['tensorprobe', 'dump', '-m', sys.argv[1], "
            "'--all', '-o', sys.argv[2], sys.argv[3], '--quiet']\ntry:\n    main()\nexcept SystemExit as e:\n"
            "    assert e.code in (0, None), e.code\nprint('tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(files["torch.onnx"]), str(out), str(files["xt.npy"])],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False"
    with h5py.File(out, "r") as f:
        assert (f.attrs["model_format"], f.attrs["loader"]) == ("onnx", f"onnxruntime {_version('onnxruntime')}")
        assert f.attrs["onnx_version"] == onnx.__version__
        assert f.attrs["onnx_producer"] == "pytorch 2.5.0"
        assert "tensorflow_version" not in f.attrs


def _version(package):
    from importlib.metadata import version

    return version(package)
