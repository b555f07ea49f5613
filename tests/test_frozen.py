"""TensorFlow 1 frozen graphs (.pb, .pbtxt): `tensors`, `layers` and `dump` on a graph built here
with tf.compat.v1 (two placeholders, variable scopes, reference and resource variables), frozen
with graph_util.convert_variables_to_constants. Every value is checked against a
tf.compat.v1.Session run of the graph before freezing, which reads the variables themselves."""

import json

import h5py
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from conftest import error_line

v1 = tf.compat.v1
TOL = {"atol": 1e-5, "rtol": 1e-5}
# The tensors the Session computes for the tests to compare with.
FETCHES = ["conv1/Relu:0", "flatten/Reshape:0", "dense/Relu:0", "dense_1/BiasAdd:0", "probs:0"]


def _two_input_graph():
    """image -> conv1 (reference variables) -> pool -> flatten, concat with meta, dense and
    dense_1 (resource variables) -> probs. Returns the tf.Graph."""
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(5)
        image = v1.placeholder(tf.float32, (None, 8, 8, 3), name="image")
        meta = v1.placeholder(tf.float32, (None, 4), name="meta")
        init = v1.random_normal_initializer(stddev=0.5)
        with v1.variable_scope("conv1"):
            kernel = v1.get_variable("kernel", (3, 3, 3, 4), initializer=init, use_resource=False)
            bias = v1.get_variable("bias", (4,), initializer=init, use_resource=False)
            h = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(image, kernel, 1, "SAME"), bias), name="Relu")
        h = tf.nn.max_pool2d(h, 2, 2, "VALID", name="pool")
        with v1.name_scope("flatten"):
            h = tf.reshape(h, [-1, 64], name="Reshape")
        h = tf.concat([h, meta], axis=1, name="concat")
        with v1.variable_scope("dense"):
            w = v1.get_variable("kernel", (68, 5), initializer=init, use_resource=True)
            b = v1.get_variable("bias", (5,), initializer=init, use_resource=True)
            h = tf.nn.relu(tf.nn.bias_add(tf.matmul(h, w), b), name="Relu")
        with v1.variable_scope("dense_1"):
            w = v1.get_variable("kernel", (5, 3), initializer=init, use_resource=True)
            b = v1.get_variable("bias", (3,), initializer=init, use_resource=True)
            logits = tf.nn.bias_add(tf.matmul(h, w), b)
        tf.nn.softmax(logits, name="probs")
    return graph


@pytest.fixture(scope="session")
def frozen(tmp_path_factory):
    """name -> path of the graphs and inputs, plus 'expected' (tensor name -> Session value),
    'graph' (the unfrozen tf.Graph) and 'graph_def' (the frozen GraphDef)."""
    folder = tmp_path_factory.mktemp("frozen")
    graph = _two_input_graph()
    rng = np.random.default_rng(11)
    image = rng.normal(size=(6, 8, 8, 3)).astype("float32")
    meta = rng.normal(size=(6, 4)).astype("float32")
    with v1.Session(graph=graph) as session:
        session.run(v1.global_variables_initializer())
        values = session.run(FETCHES, {"image:0": image, "meta:0": meta})
        graph_def = v1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), ["probs"])
        sizes = {v.op.name: int(np.prod(v.shape)) for v in v1.global_variables()}
    (folder / "frozen.pb").write_bytes(graph_def.SerializeToString())
    (folder / "frozen.pbtxt").write_text(text_format.MessageToString(graph_def))
    (folder / "unfrozen.pb").write_bytes(graph.as_graph_def().SerializeToString())
    data = graph_def.SerializeToString()
    (folder / "truncated.pb").write_bytes(data[: len(data) // 2])
    text = text_format.MessageToString(graph_def)
    (folder / "truncated.pbtxt").write_text(text[: len(text) // 2])
    (folder / "not_a_graph.pb").write_text("hello\n")
    unregistered = tf.compat.v1.GraphDef()
    unregistered.CopyFrom(graph_def)
    unregistered.node.add(name="custom", op="NoSuchOpAnywhere", input=["probs"])
    (folder / "unregistered.pb").write_bytes(unregistered.SerializeToString())

    free = tf.Graph()  # a placeholder made without a shape
    with free.as_default():
        tf.tanh(v1.placeholder(tf.float32, None, name="anything"), name="out")
    (folder / "free_rank.pb").write_bytes(free.as_graph_def().SerializeToString())
    scalar = tf.Graph()  # a TF 1 `keep_prob`
    with scalar.as_default():
        x = v1.placeholder(tf.float32, (None, 4), name="x")
        tf.multiply(x, v1.placeholder(tf.float32, (), name="keep_prob"), name="out")
    (folder / "scalar.pb").write_bytes(scalar.as_graph_def().SerializeToString())

    module = tf.Module()
    module.f = tf.function(lambda x: {"y": 2.0 * x}, input_signature=[tf.TensorSpec((None, 2), tf.float32)])
    tf.saved_model.save(module, str(folder / "saved"), signatures=module.f.get_concrete_function())

    np.save(folder / "image.npy", image)
    np.save(folder / "meta.npy", meta)
    np.savez(folder / "keys_with_colon.npz", **{"image:0": image, "meta": meta})
    return {**{p.name: p for p in folder.iterdir()}, "expected": dict(zip(FETCHES, values)),
            "graph": graph, "graph_def": graph_def, "sizes": sizes}


@pytest.mark.parametrize("name", ["frozen.pb", "frozen.pbtxt"])
def test_tensors_lists_every_tensor(cli, frozen, name):
    result = cli("tensors", frozen[name], "--json")
    assert result.exit_code == 0, result.stderr
    listed = json.loads(result.stdout)
    names = [t["name"] for t in listed]
    # every output of every node of the frozen GraphDef (each op here has one output)
    assert sorted(names) == sorted(f"{node.name}:0" for node in frozen["graph_def"].node)
    # in topological order: each op after the ops it reads
    position = {n.rpartition(":")[0]: i for i, n in enumerate(names)}
    for node in frozen["graph_def"].node:
        for source in node.input:
            assert position[source.split(":")[0].lstrip("^")] < position[node.name]
    # shapes and dtypes as the unfrozen graph states them (variables aside: they became Const)
    original = frozen["graph"]
    by_name = {t["name"]: t for t in listed}
    for name_ in ["image:0", "meta:0", *FETCHES, "concat:0", "pool:0"]:
        t = original.get_tensor_by_name(name_)
        assert by_name[name_]["shape"] == t.shape.as_list()
        assert by_name[name_]["dtype"] == t.dtype.name
        assert by_name[name_]["op"] == t.op.type
    assert by_name["dense/kernel:0"]["op"] == "Const"


def test_tensors_table_names_the_graph(cli, frozen):
    result = cli("tensors", frozen["frozen.pbtxt"], "--op", "relu")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{frozen['frozen.pbtxt']}: frozen graph (GraphDef, text format)"
    assert "inputs:  image (None, 8, 8, 3) float32 -> image:0, meta (None, 4) float32 -> meta:0" in lines
    assert "outputs: probs <- probs:0" in lines
    assert "tensors: 2 of 28 shown" in lines


@pytest.mark.parametrize("name", ["frozen.pb", "frozen.pbtxt"])
def test_dump_tensors_equal_the_session(cli, frozen, tmp_path, name):
    out = tmp_path / "t.h5"
    result = cli("dump", "-m", frozen[name], "-t", "dense/Relu:0", "-t", "conv1/Relu", "-t", "probs",
                 "--input", f"image={frozen['image.npy']}", "--input", f"meta:0={frozen['meta.npy']}",
                 "-o", out, "-q")
    assert result.exit_code == 0, result.stderr
    with h5py.File(out, "r") as f:
        assert sorted(f["tensors"].keys()) == ["conv1", "dense", "probs:0"]
        for tensor in ["dense/Relu:0", "conv1/Relu:0", "probs:0"]:
            np.testing.assert_allclose(f[f"tensors/{tensor}"][()], frozen["expected"][tensor], **TOL)
        assert f["tensors/dense/Relu:0"].attrs["layer"] == "dense"
        assert f["tensors/probs:0"].attrs["layer"] == ""  # outside every scope
        assert f.attrs["model_format"] == ("frozen_graph_text" if name.endswith("txt") else "frozen_graph")


def test_npz_keys_with_and_without_colon(cli, frozen, tmp_path):
    out = tmp_path / "t.h5"
    result = cli("dump", "-m", frozen["frozen.pb"], "--tensor-match", "^dense_1/BiasAdd:0$",
                 frozen["keys_with_colon.npz"], "-o", out, "-q")
    assert result.exit_code == 0, result.stderr
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(f["tensors/dense_1/BiasAdd:0"][()], frozen["expected"]["dense_1/BiasAdd:0"],
                                   **TOL)


def test_layers_are_the_scopes(cli, frozen):
    result = cli("layers", frozen["frozen.pb"], "--json")
    assert result.exit_code == 0, result.stderr
    layers = json.loads(result.stdout)
    assert [(la["path"], la["class"], la["depth"]) for la in layers] == [
        ("conv1", "Relu", 0), ("flatten", "Reshape", 0), ("dense", "Relu", 0), ("dense_1", "BiasAdd", 0)]
    original = frozen["graph"]
    for layer, output in zip(layers, ["conv1/Relu:0", "flatten/Reshape:0", "dense/Relu:0", "dense_1/BiasAdd:0"]):
        assert layer["output_shape"] == original.get_tensor_by_name(output).shape.as_list()
        expected = sum(size for var, size in frozen["sizes"].items() if var.startswith(layer["path"] + "/"))
        assert layer["params"] == expected


def test_dump_layers_equal_the_session(cli, frozen, tmp_path):
    out = tmp_path / "l.h5"
    result = cli("dump", "-m", frozen["frozen.pbtxt"], "-l", "dense", "-l", "conv1", "-l", "dense_1",
                 "--input", f"image:0={frozen['image.npy']}", "--input", f"meta={frozen['meta.npy']}",
                 "-o", out, "-q")
    assert result.exit_code == 0, result.stderr
    with h5py.File(out, "r") as f:
        assert sorted(f["activations"].keys()) == ["conv1", "dense", "dense_1"]
        for layer, tensor in [("conv1", "conv1/Relu:0"), ("dense", "dense/Relu:0"),
                              ("dense_1", "dense_1/BiasAdd:0")]:
            np.testing.assert_allclose(f[f"activations/{layer}"][()], frozen["expected"][tensor], **TOL)


@pytest.mark.parametrize("name, message", [
    ("truncated.pb", "truncated.pb: damaged or incomplete frozen graph (Error parsing message"),
    ("truncated.pbtxt", "truncated.pbtxt: damaged or incomplete frozen graph ("),
    ("unfrozen.pb", "unfrozen.pb: the graph holds 6 variables ('conv1/kernel', 'conv1/bias', 'dense/kernel', "
                    "...), so it is not frozen"),
    ("saved_model.pb", "saved_model.pb: is a SavedModel's saved_model.pb (a SavedModel proto), not a frozen "
                       "graph; pass the folder that holds it: "),
    ("not_a_graph.pb", "not_a_graph.pb: not a model file tensorprobe reads (a .keras zip archive, an HDF5 .h5 "
                       "file, a SavedModel folder, a TensorFlow 1 frozen graph .pb or .pbtxt, a TensorFlow "
                       "Lite .tflite file, or an ONNX .onnx file)"),
    ("unregistered.pb", "unregistered.pb: cannot import the graph: Op type not registered 'NoSuchOpAnywhere'"),
])
def test_bad_files_get_one_error_line(cli, frozen, name, message):
    path = frozen["saved"] / "saved_model.pb" if name == "saved_model.pb" else frozen[name]
    for command in (["tensors", path], ["layers", path]):
        result = cli(*command)
        assert result.exit_code == 1, result.stderr
        assert message in error_line(result)
        assert result.stdout == ""
    if name == "saved_model.pb":
        assert error_line(result).endswith(f": {frozen['saved']}")


def test_signature_is_a_usage_error(cli, frozen, tmp_path):
    result = cli("dump", "-m", frozen["frozen.pb"], "--signature", "serving_default", "-t", "probs",
                 frozen["keys_with_colon.npz"], "-o", tmp_path / "x.h5")
    assert result.exit_code == 2
    assert "is a model file; signatures belong to SavedModel folders" in error_line(result)
    assert not (tmp_path / "x.h5").exists()


def test_wrong_input_name_lists_the_placeholders(cli, frozen, tmp_path):
    result = cli("dump", "-m", frozen["frozen.pb"], "-t", "probs", "--input", f"img={frozen['image.npy']}",
                 "--input", f"meta={frozen['meta.npy']}", "-o", tmp_path / "x.h5")
    assert result.exit_code == 2
    assert error_line(result) == ("error: --input 'img=...': the model has no input 'img'; its inputs are "
                                  "image (None, 8, 8, 3) float32, meta (None, 4) float32")


def test_placeholder_without_shape(cli, frozen, tmp_path):
    """Listed with an unknown shape; a dump cannot tell its batch axis, and says so."""
    result = cli("tensors", frozen["free_rank.pb"], "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"name": "anything:0", "op": "Placeholder", "dtype": "float32", "shape": None},
        {"name": "out:0", "op": "Tanh", "dtype": "float32", "shape": None},
    ]
    result = cli("dump", "-m", frozen["free_rank.pb"], "-t", "out", frozen["meta.npy"], "-o", tmp_path / "x.h5")
    assert result.exit_code == 1
    assert error_line(result) == ("error: input 'anything' has no known shape, not even a rank, so tensorprobe "
                                  "cannot tell its batch axis from a sample's")
    assert not (tmp_path / "x.h5").exists()


def test_scalar_placeholder(cli, frozen, tmp_path):
    result = cli("dump", "-m", frozen["scalar.pb"], "-t", "out", "--input", f"x={frozen['meta.npy']}",
                 "--input", f"keep_prob={frozen['meta.npy']}", "-o", tmp_path / "x.h5")
    assert result.exit_code == 1
    assert error_line(result) == "error: input 'keep_prob' is a scalar (shape ()), with no batch axis to feed samples along"
    assert not (tmp_path / "x.h5").exists()
