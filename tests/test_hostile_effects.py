"""Hostile Keras 2 files and TFLite files that act outside the computation (issue 29, item 2,
beyond graph formats): tf_keras' op layers (TFOpLambda, SlicingOpLambda, ClassMethod) call
TensorFlow functions by name, so an `.h5` can make loading call `io.write_file` on stored
constants, name a Python function (`io.gfile.remove`, `load_op_library`), or build ops that
print or list files when the model runs; a `.tflite` converted with Select TF ops can hold
`FlexWriteFile`. Each is refused without --unsafe and never acts. The Keras 2 files are built
here with tf_keras in a subprocess (and edited as a hostile file would be); nothing is
downloaded."""

import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import tensorflow as tf

from conftest import error_line

REFUSAL = "; pass --unsafe only if you trust this file"

BUILD = r"""
import os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
import tf_keras as keras

folder, pattern = sys.argv[1], sys.argv[2]
keras.utils.set_random_seed(2)
L = keras.layers

x = keras.Input((4,), name="x")
h = L.Dense(3, name="d")(x)
base = keras.Model(x, L.Dense(2, name="head")(tf.nn.relu(h)), name="tfop")
base.save(os.path.join(folder, "base.h5"))
base.save(os.path.join(folder, "base_savedmodel"), save_format="tf")

printed = tf.compat.v1.Print(h, [h], "printed by the model")
keras.Model(x, L.Dense(2, name="head")(printed), name="prints").save(os.path.join(folder, "print.h5"))

# the number of files matching `pattern`, added to every value: the model lists a folder when run
first = tf.strings.as_string(h)[0, 0]
count = tf.size(tf.io.matching_files(tf.strings.regex_replace(first, "^.*$", pattern)))
keras.Model(x, h + tf.cast(count, "float32"), name="lists").save(os.path.join(folder, "listing.h5"))
"""


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """name -> path: tf_keras files (an ordinary one with an op layer, one that prints when
    run, one that lists `listed/*.txt` when run: three files there), and an input."""
    folder = tmp_path_factory.mktemp("effects")
    listed = folder / "listed"
    listed.mkdir()
    for i in range(3):
        (listed / f"f{i}.txt").write_text("x")
    subprocess.run([sys.executable, "-c", BUILD, str(folder), str(listed / "*.txt")], check=True,
                   capture_output=True, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
    np.save(folder / "x.npy", np.random.default_rng(0).normal(size=(5, 4)).astype("float32"))
    return {p.name: p for p in folder.iterdir()}


def crafted(base, out, edit):
    """A copy of the .h5 `base` whose model config `edit(layers)` changed, as a hostile file's."""
    shutil.copy(base, out)
    with h5py.File(out, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        edit(config["config"]["layers"])
        f.attrs["model_config"] = json.dumps(config)
    return out


def op_layer(name, function, node, kind="TFOpLambda", **config):
    return {"class_name": kind, "name": name, "inbound_nodes": [node],
            "config": {"name": name, "trainable": True, "dtype": "float32", "function": function, **config}}


def test_op_layer_on_stored_constants_is_refused_and_writes_nothing(cli, made, tmp_path):
    marker = tmp_path / "written_at_load.txt"
    path = crafted(made["base.h5"], tmp_path / "load.h5", lambda layers: layers.insert(2, op_layer(
        "w", "io.write_file", ["_CONSTANT_VALUE", -1, str(marker), {"contents": "loaded"}])))
    for args in (["layers", path], ["dump", "-m", path, made["x.npy"], "--all", "-o", tmp_path / "o.h5"]):
        result = cli(*args)
        assert result.exit_code == 1
        assert error_line(result) == (f"error: {path}: layers that call TensorFlow functions while loading: 'w' "
                                      f"(TFOpLambda io.write_file called on stored constants alone){REFUSAL}")
        assert not marker.exists()
    assert not (tmp_path / "o.h5").exists()
    # what it would have done: tf_keras calls io.write_file while loading (then fails on its result)
    result = cli("layers", path, "--unsafe")
    assert result.exit_code == 1
    assert error_line(result).startswith(f"error: {path}: cannot load this Keras 2 model: ")
    assert marker.read_text() == "loaded"


def test_keras2_savedmodel_op_layer_on_stored_constants_is_refused(cli, made, tmp_path):
    """The same layer in a Keras 2 SavedModel's keras_metadata.pb, which tf_keras rebuilds the
    model from."""
    from tf_keras.protobuf import saved_metadata_pb2

    marker = tmp_path / "written_at_load.txt"
    folder = tmp_path / "load_savedmodel"
    shutil.copytree(made["base_savedmodel"], folder)
    meta = saved_metadata_pb2.SavedMetadata()
    meta.ParseFromString((folder / "keras_metadata.pb").read_bytes())
    (model,) = [n for n in meta.nodes if n.node_path == "root"]
    config = json.loads(model.metadata)
    config["config"]["layers"].insert(2, op_layer(
        "w", "io.write_file", ["_CONSTANT_VALUE", -1, str(marker), {"contents": "loaded"}]))
    model.metadata = json.dumps(config)
    (folder / "keras_metadata.pb").write_bytes(meta.SerializeToString())
    result = cli("layers", folder)
    assert result.exit_code == 1
    assert error_line(result) == (f"error: {folder}: layers that call TensorFlow functions while loading: 'w' "
                                  f"(TFOpLambda io.write_file called on stored constants alone){REFUSAL}")
    assert not marker.exists()
    cli("layers", folder, "--unsafe")  # what it would have done
    assert marker.read_text() == "loaded"


@pytest.mark.parametrize("kind, symbol, extra, shown", [
    ("TFOpLambda", "io.gfile.remove", {}, "TFOpLambda io.gfile.remove"),
    ("TFOpLambda", "load_op_library", {}, "TFOpLambda load_op_library"),
    ("ClassMethod", None, {"cls_symbol": "io.gfile.remove", "method_name": "__call__"},
     "ClassMethod io.gfile.remove.__call__"),
])
def test_op_layer_naming_a_python_function_is_refused(cli, made, tmp_path, kind, symbol, extra, shown):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")

    def edit(layers):
        layer = op_layer("f", symbol, ["d", 0, 0, {}], kind, **extra)
        if symbol is None:
            del layer["config"]["function"]
        layers.insert(2, layer)

    path = crafted(made["base.h5"], tmp_path / "python.h5", edit)
    result = cli("layers", path)
    assert result.exit_code == 1
    assert error_line(result) == (f"error: {path}: layers that call TensorFlow functions while loading: "
                                  f"'f' ({shown}, not a TensorFlow op){REFUSAL}")
    assert victim.read_text() == "keep me"


def test_ordinary_op_layers_load_and_run(cli, made, tmp_path):
    """tf_keras' own op layers (tf.nn.relu) pass both checks: the values are tf_keras' own."""
    out = tmp_path / "base_dump.h5"
    result = cli("dump", "-m", made["base.h5"], made["x.npy"], "--all", "-o", out)
    assert result.exit_code == 0, result.stderr
    with h5py.File(made["base.h5"]) as f:
        kernel, bias = (f[f"model_weights/d/d/{n}:0"][()] for n in ("kernel", "bias"))
    x = np.load(made["x.npy"])
    with h5py.File(out) as f:
        np.testing.assert_allclose(f["activations/tf.nn.relu"][()], np.maximum(x @ kernel + bias, 0), rtol=1e-5)


def test_op_that_prints_is_refused_before_it_runs(cli, made, tmp_path):
    path = made["print.h5"]
    listed = cli("layers", path)  # listed without running
    assert listed.exit_code == 0, listed.stderr
    out = tmp_path / "print_dump.h5"
    result = cli("dump", "-m", path, made["x.npy"], "--all", "-o", out)
    assert result.exit_code == 1
    assert error_line(result) == (f"error: {path}: the graph holds ops that act outside the computation: "
                                  f"Print (node tf.compat.v1.Print/Print){REFUSAL}")
    assert not out.exists()
    # the model's traced tensor graph (--tensor) is checked too; `tensors` still lists it
    assert "Print" in cli("tensors", path).stdout
    result = cli("dump", "-m", path, made["x.npy"], "--tensor-match", "head", "-o", out)
    assert result.exit_code == 1
    assert error_line(result) == (f"error: {path}: the graph holds ops that act outside the computation: "
                                  f"Print (node prints/tf.compat.v1.Print/Print){REFUSAL}")
    assert cli("dump", "-m", path, made["x.npy"], "--all", "-o", out, "--unsafe").exit_code == 0


LISTING_LAYERS = ("d", "tf.__operators__.add")  # its string-valued layers are not dumped


def test_op_that_lists_files_runs_only_with_unsafe(cli, made, tmp_path):
    path, out = made["listing.h5"], tmp_path / "listing_dump.h5"
    layers = [arg for name in LISTING_LAYERS for arg in ("--layer", name)]
    result = cli("dump", "-m", path, made["x.npy"], *layers, "-o", out)
    assert result.exit_code == 1
    assert error_line(result) == (f"error: {path}: the graph holds ops that act outside the computation: "
                                  f"MatchingFiles (node tf.io.matching_files/MatchingFiles){REFUSAL}")
    assert not out.exists()
    result = cli("dump", "-m", path, made["x.npy"], "--layer", "d", "--gradients", "--target", "sum", "-o", out)
    assert result.exit_code == 1  # the gradients' function is checked too
    assert "MatchingFiles (node tf.io.matching_files/MatchingFiles)" in error_line(result)
    assert not out.exists()
    result = cli("dump", "-m", path, made["x.npy"], *layers, "-o", out, "--unsafe")
    assert result.exit_code == 0, result.stderr
    with h5py.File(out) as f:  # d plus the number of files it found: 3
        np.testing.assert_array_equal(f["activations/tf.__operators__.add"][()], f["activations/d"][()] + 3.0)


def test_the_api_refuses_it_too(made):
    import tensorprobe
    from tensorprobe.errors import UnsafeModelError

    x = np.load(made["x.npy"])
    with pytest.raises(UnsafeModelError, match=r"MatchingFiles \(node tf\.io\.matching_files/MatchingFiles\)"):
        tensorprobe.activations(str(made["listing.h5"]), x, layers=LISTING_LAYERS)
    values = tensorprobe.activations(tensorprobe.load(str(made["listing.h5"]), unsafe=True), x, layers=LISTING_LAYERS)
    np.testing.assert_array_equal(values["tf.__operators__.add"], values["d"] + 3.0)


def test_the_check_reads_the_function_library():
    """A traced function's effects in a function it calls are found (effects.checker)."""
    from tensorprobe.backends.tfgraph import effects
    from tensorprobe.errors import UnsafeModelError

    @tf.function
    def inner(x):
        tf.print(x)
        return x + 1.0

    @tf.function(input_signature=[tf.TensorSpec((None, 2), tf.float32)])
    def outer(x):
        return inner(x)

    function = outer.get_concrete_function()
    assert function.graph.as_graph_def().library.function, "the call must stay a call of a library function"
    with pytest.raises(UnsafeModelError, match=r"PrintV2 \(node [^)]+ in function __inference_inner_\d+\)"):
        effects.checker("m.h5", unsafe=False)(function)
    assert effects.checker("m.h5", unsafe=True) is None


def test_tflite_with_select_tf_ops_is_refused_and_writes_nothing(cli, made, tmp_path):
    marker = tmp_path / "written_by_flex.txt"

    class Writes(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((1, 4), tf.float32)])
        def f(self, x):
            done = tf.io.write_file(str(marker), tf.strings.as_string(x[0, 0]))
            tf.print(x)
            with tf.control_dependencies([done]):
                return x * 2.0

    module = Writes()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.f.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    path = tmp_path / "flex.tflite"
    path.write_bytes(converter.convert())
    ops = {op["op_name"] for op in tf.lite.Interpreter(model_path=str(path))._get_ops_details()}
    assert {"FlexWriteFile", "FlexPrintV2"} <= ops
    np.save(tmp_path / "x.npy", np.ones((1, 4), "float32"))
    for args in (["layers", path], ["dump", "-m", path, tmp_path / "x.npy", "--all", "-o", tmp_path / "o.h5"],
                 ["layers", path, "--unsafe"]):
        result = cli(*args)
        assert result.exit_code == 1
        flex = ", ".join(sorted(op for op in ops if op.startswith("Flex")))
        assert error_line(result) == (f"error: {path}: holds Select TensorFlow (Flex) ops, which tensorprobe's "
                                      f"TFLite interpreter does not run: {flex}")
    assert not marker.exists()


def test_op_layer_on_a_keras_tensor_is_only_built_while_loading(cli, made, tmp_path):
    """With a Keras tensor among its inputs, tf_keras builds the op layer's ops in a scratch
    graph while loading, and runs nothing: io.write_file on the model's own string tensor
    passes the config check, and even with --unsafe loading writes no file (it fails on the
    op's result, which is no tensor)."""
    marker = tmp_path / "written_while_building.txt"

    def edit(layers):
        at = next(i for i, layer in enumerate(layers) if layer["name"] == "tf.__operators__.getitem") + 1
        layers.insert(at, op_layer("w", "io.write_file", ["_CONSTANT_VALUE", -1, str(marker),
                                                          {"contents": ["tf.__operators__.getitem", 0, 0]}]))

    path = crafted(made["listing.h5"], tmp_path / "build.h5", edit)
    for unsafe in ((), ("--unsafe",)):
        result = cli("layers", path, *unsafe)
        assert result.exit_code == 1
        assert error_line(result).startswith(f"error: {path}: cannot load this Keras 2 model: ")
        assert not marker.exists()
