"""Layers of SavedModels found in their name scopes when the scopes carry no Keras 3 `_N`
suffix: tf.keras 2.x models saved without keras_metadata.pb (`model.save(dir,
save_format="tf")` with the file removed, and `tf.saved_model.save(model, dir)`), and Keras 3
exports whose model scope holds ops of its own (inline ops). Every dumped value is checked
against Keras itself: tf_keras rebuilding the same model from its full SavedModel, a
sub-model from the inputs, or a sub-layer applied by hand."""

import json
import os
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest

from conftest import ROOT, error_line

TOL = {"atol": 1e-5, "rtol": 1e-5}
PREFIX = "StatefulPartitionedCall/model_1/"


@pytest.fixture(scope="session")
def graphs(tmp_path_factory):
    """name -> path of the SavedModels (and inputs) these tests use, built once."""
    folder = tmp_path_factory.mktemp("keras2_graphs")
    subprocess.run(
        [sys.executable, str(ROOT / "tests" / "make_keras2_graphs.py"), str(folder)],
        check=True, capture_output=True, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"},
    )
    # Keras 3, inline ops in the model's scope and in a nested model's (keras-hub's backbones
    # read like this: `bert_backbone_1/strided_slice` beside `transformer_layer_0_1/...`)
    keras.utils.set_random_seed(6)
    L = keras.layers
    block_in = keras.Input((3, 4))
    y = L.Dense(4, name="proj")(block_in)
    block = keras.Model(block_in, y * 2.0 + block_in, name="block")
    x = keras.Input((3, 4), name="tokens")
    h = block(L.Dense(4, name="dense")(x))
    h = h + L.MultiHeadAttention(2, 2, name="mha")(h, h)
    first = h[:, 0, :]
    joined = keras.ops.concatenate([first, keras.ops.relu(h[:, 1, :])], axis=-1)
    inline = keras.Model(x, L.Dense(2, name="head")(joined), name="inline")
    inline.export(str(folder / "inline_export"), verbose=False)
    inline.save(folder / "inline.keras")

    rng = np.random.default_rng(12)
    np.save(folder / "images.npy", rng.uniform(0, 1, (5, 6, 6, 3)).astype("float32"))
    np.savez(folder / "pairs.npz", a=rng.normal(size=(4, 5)).astype("float32"),
             b=rng.normal(size=(4, 5)).astype("float32"))
    np.save(folder / "tokens.npy", rng.normal(size=(4, 3, 4)).astype("float32"))
    return {p.name: p for p in folder.iterdir()}


@pytest.fixture(scope="session")
def reference(graphs):
    """The tf_keras model rebuilt from the full SavedModel (keras_metadata.pb kept)."""
    import tf_keras

    return tf_keras.models.load_model(str(graphs["keras2_full"]), compile=False)


def datasets(path):
    with h5py.File(path, "r") as f:
        found = {}
        f.visititems(lambda n, o: found.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return found


def expected_values(model, x):
    """path -> what tf_keras computes for each layer of model_1 on `x`."""
    import tf_keras

    def upto(m, name, value):
        return tf_keras.Model(m.inputs, m.get_layer(name).output)(value, training=False).numpy()

    base = model.get_layer("base")  # its `output` is its own model's, so it is applied here
    values = {l.name: upto(model, l.name, x) for l in model.layers if l.name not in ("image", "base")}
    values["base"] = base(values["conv2d_1"]).numpy()
    values["base/conv2d"] = base.get_layer("conv2d")(values["conv2d_1"]).numpy()
    values["base/max_pooling2d"] = base.get_layer("max_pooling2d")(values["base/conv2d"]).numpy()
    stacking = model.get_layer("harmonic_stacking")
    values["harmonic_stacking/proj"] = stacking.proj(values["gap"]).numpy()
    values["harmonic_stacking/gate"] = stacking.gate(values["gap"]).numpy()
    return values


NESTED = ["base/conv2d", "base/max_pooling2d", "harmonic_stacking/proj", "harmonic_stacking/gate"]


def dataset(path):
    """Where `dump` stores a layer's output: a layer that holds layers keeps its own beside them."""
    return f"activations/{path}/__output__" if any(p.startswith(path + "/") for p in NESTED) else f"activations/{path}"


@pytest.mark.parametrize("name", ["keras2_graph", "keras2_export"])
def test_keras2_layers_are_the_layers_by_their_own_names(cli, graphs, reference, name):
    r = cli("layers", graphs[name], "--json")
    assert r.exit_code == 0, r.stderr
    listed = json.loads(r.stdout)
    # model order: each layer, then what is inside it
    expected = []
    for layer in reference.layers[1:]:
        expected.append(layer.name)
        expected += [p for p in NESTED if p.startswith(layer.name + "/")]
    assert [layer["path"] for layer in listed] == expected
    assert "dense_1" in expected and "conv2d_1" in expected  # real names, kept as they are
    got = {layer["path"]: layer for layer in listed}
    stacking = reference.get_layer("harmonic_stacking")
    layers = {p: reference.get_layer(p) for p in expected if "/" not in p}
    layers |= {f"base/{l.name}": l for l in reference.get_layer("base").layers}
    layers |= {"harmonic_stacking/proj": stacking.proj, "harmonic_stacking/gate": stacking.gate}
    for path, layer in layers.items():
        assert got[path]["params"] == layer.count_params(), path
        shape = [None, layer.units] if path.startswith("harmonic_stacking/") else layer.output.shape
        assert got[path]["output_shape"] == [None, *shape[1:]], path
        assert got[path]["trainable"] is None and got[path]["calls"] == 1
    assert got["base/conv2d"]["index"] == "1.0" and got["harmonic_stacking/gate"]["depth"] == 1
    assert got["bn"]["class"] == "AddV2" and got["dense_1"]["class"] == "Softmax"
    r = cli("layers", graphs[name])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"{graphs[name]}: model_1, signature serving_default (tensorflow " \
        + r.stdout.splitlines()[0].rsplit("(tensorflow ", 1)[1]
    assert f"params:  {reference.count_params():,} total (frozen variables)" in r.stdout


def test_keras2_dump_every_layer_equals_tf_keras(cli, graphs, reference, tmp_path):
    out = tmp_path / "all.h5"
    r = cli("dump", "-m", graphs["keras2_graph"], "--all", "-b", "2", "-o", out, graphs["images.npy"])
    assert r.exit_code == 0, r.stderr
    expected = expected_values(reference, np.load(graphs["images.npy"]))
    got = datasets(out)
    assert set(got) == {"inputs/source"} | {dataset(p) for p in expected}
    for path, value in expected.items():
        np.testing.assert_allclose(got[dataset(path)], value, **TOL, err_msg=path)
    with h5py.File(out, "r") as f:
        assert f["activations/base/conv2d"].attrs["layer"] == "base/conv2d"
        assert f["activations/harmonic_stacking/gate"].attrs["layer_class"] == "Sigmoid"


def test_keras2_dump_nested_layers_by_name(cli, graphs, reference, tmp_path):
    """`-l conv2d` is `base/conv2d` (the top-level `conv2d_1` is another layer), `-l gate` the
    custom layer's sub-layer, and `dense_1` the output layer, not a second call of `dense`."""
    out = tmp_path / "some.h5"
    r = cli("dump", "-m", graphs["keras2_export"], "-l", "conv2d", "-l", "gate", "-l", "dense_1",
            "-l", "dense", "-o", out, graphs["images.npy"])
    assert r.exit_code == 0, r.stderr
    expected = expected_values(reference, np.load(graphs["images.npy"]))
    got = datasets(out)
    assert set(got) == {"inputs/source", "activations/base/conv2d", "activations/harmonic_stacking/gate",
                        "activations/dense", "activations/dense_1"}
    for path in ("base/conv2d", "harmonic_stacking/gate", "dense", "dense_1"):
        np.testing.assert_allclose(got[f"activations/{path}"], expected[path], **TOL, err_msg=path)
    np.testing.assert_allclose(got["activations/dense_1"].sum(axis=1), 1.0, rtol=1e-5)  # the softmax


def test_keras2_tensors_know_their_layer(cli, graphs, reference, tmp_path):
    """A tensor inside a layer's own sub-scope (BatchNormalization's `batchnorm`) belongs to
    the layer; one inside a custom layer's own ops to the custom layer."""
    out = tmp_path / "t.h5"
    bn_scale = PREFIX + "bn/batchnorm/mul_1:0"  # x * gamma / sqrt(var + eps), before the shift
    product = PREFIX + "harmonic_stacking/mul:0"
    r = cli("dump", "-m", graphs["keras2_graph"], "--tensor", bn_scale, "--tensor", product,
            "-o", out, graphs["images.npy"])
    assert r.exit_code == 0, r.stderr
    expected = expected_values(reference, np.load(graphs["images.npy"]))
    bn = reference.get_layer("bn")
    gamma, _, _, var = (np.asarray(w, dtype=np.float64) for w in bn.get_weights())
    got = datasets(out)
    np.testing.assert_allclose(got[f"tensors/{bn_scale}"],
                               expected["dense"] * gamma / np.sqrt(var + bn.epsilon), **TOL)
    np.testing.assert_allclose(got[f"tensors/{product}"], expected["harmonic_stacking"], **TOL)
    with h5py.File(out, "r") as f:
        assert f[f"tensors/{bn_scale}"].attrs["layer"] == "bn"
        assert f[f"tensors/{product}"].attrs["layer"] == "harmonic_stacking"


def test_keras2_layer_called_twice_has_one_output_per_call(cli, graphs, tmp_path):
    """tf.keras runs every call of a layer in the same scope; the calls on the two inputs of
    a Siamese net are still told apart, as call_0 and call_1, nested model included."""
    import tf_keras

    r = cli("layers", graphs["siamese_export"], "--json")
    assert r.exit_code == 0, r.stderr
    got = {layer["path"]: layer for layer in json.loads(r.stdout)}
    assert list(got) == ["encoder", "encoder/e1", "encoder/e2", "shared", "cat"]
    assert [got[p]["calls"] for p in got] == [2, 2, 2, 2, 1]
    out = tmp_path / "s.h5"
    r = cli("dump", "-m", graphs["siamese_export"], "-l", "e1", "-l", "shared", "-o", out, graphs["pairs.npz"])
    assert r.exit_code == 0, r.stderr
    model = tf_keras.models.load_model(str(graphs["siamese_full"]), compile=False)
    pairs = np.load(graphs["pairs.npz"])
    encoder = model.get_layer("encoder")
    e1 = tf_keras.Model(encoder.inputs, encoder.get_layer("e1").output)
    got = datasets(out)
    for call, side in enumerate("ab"):
        np.testing.assert_allclose(got[f"activations/encoder/e1/call_{call}"], e1(pairs[side]), **TOL)
        np.testing.assert_allclose(got[f"activations/shared/call_{call}"],
                                   model.get_layer("shared")(encoder(pairs[side])), **TOL)


def test_keras3_export_with_inline_ops_in_model_scopes(cli, graphs, tmp_path):
    """Ops of the model's own (`h + attention`, `x[:, 0]`, concatenate, relu) and of a nested
    model's (`y * 2.0 + x`) sit beside the layers' scopes; the layers are found all the same,
    and so are MultiHeadAttention's sub-layers beside its `einsum`, `einsum_1` scopes."""
    r = cli("layers", graphs["inline_export"], "--json")
    assert r.exit_code == 0, r.stderr
    listed = json.loads(r.stdout)
    mha_parts = ["query", "key", "value", "attention_output"]
    assert [layer["path"] for layer in listed] == [
        "dense", "block", "block/proj", "mha", *(f"mha/{p}" for p in mha_parts), "head"]
    model = keras.saving.load_model(graphs["inline.keras"], compile=False)
    mha = model.get_layer("mha")
    sublayers = [model.get_layer("block").get_layer("proj"), mha.query_dense, mha.key_dense, mha.value_dense,
                 mha.output_dense]
    expected = [model.get_layer(n).count_params() for n in ("dense", "block")] + [sublayers[0].count_params()]
    expected += [mha.count_params()] + [l.count_params() for l in sublayers[1:]]
    expected += [model.get_layer("head").count_params()]
    assert [layer["params"] for layer in listed] == expected
    assert listed[1]["class"] == "AddV2"  # the nested model's output is its inline `+`
    assert listed[4]["output_shape"] == [None, 3, 2, 2]  # (batch, tokens, heads, key_dim)
    out = tmp_path / "i.h5"
    r = cli("dump", "-m", graphs["inline_export"], "--all", "-o", out, graphs["tokens.npy"])
    assert r.exit_code == 0, r.stderr
    x = np.load(graphs["tokens.npy"])
    dense = keras.Model(model.inputs, model.get_layer("dense").output)(x)
    block = model.get_layer("block")
    got = datasets(out)
    np.testing.assert_allclose(got["activations/dense"], dense, **TOL)
    np.testing.assert_allclose(got["activations/block/proj"], block.get_layer("proj")(dense), **TOL)
    h = block(dense)
    np.testing.assert_allclose(got["activations/block/__output__"], h, **TOL)
    np.testing.assert_allclose(got["activations/mha/__output__"], mha(h, h), **TOL)
    for part, layer in zip(("query", "key", "value"), sublayers[1:]):
        np.testing.assert_allclose(got[f"activations/mha/{part}"], layer(h), **TOL, err_msg=part)
    np.testing.assert_allclose(got["activations/head"], model(x), **TOL)


def test_which_naming_a_savedmodel_follows(graphs):
    """The object graph says it: tf.keras 2.x layers (and their names) or none."""
    from tensorprobe.backends.tfgraph.savedmodel import keras2_layers

    assert keras2_layers(graphs["inline_export"]) is None
    layers, models = keras2_layers(graphs["keras2_graph"])
    assert models == {"model_1", "base"}
    assert {"conv2d_1", "conv2d", "dense", "dense_1", "proj", "gate"} <= layers
    assert keras2_layers(graphs["keras2_export"]) == (layers, models)


def test_keras2_graph_errors(cli, graphs, tmp_path):
    out = tmp_path / "e.h5"
    cases = [
        (["-l", "dense_2"], 2, "--layer 'dense_2': no such layer; did you mean 'dense_1'"),
        (["-l", "proj/kernel"], 2, "no such layer"),
        (["-l", "dense_1", "--gradients"], 2, "holds only a graph"),
    ]
    for args, code, message in cases:
        r = cli("dump", "-m", graphs["keras2_graph"], *args, "-o", out, graphs["images.npy"])
        assert r.exit_code == code, (args, r.stderr)
        assert message in error_line(r), (args, r.stderr)
    r = cli("dump", "-m", graphs["keras2_graph"], "-l", "dense", "-o", out, graphs["tokens.npy"])
    assert r.exit_code == 1 and str(graphs["tokens.npy"]) in error_line(r)
    assert not out.exists()


def test_tensors_of_a_keras2_h5_know_their_layer(cli, zoo, tmp_path):
    """A Keras 2 .h5 that tf_keras loads is traced with tf.keras names; its tensors' `layer`
    attribute follows them (`vgg16/block1_conv2`, not '')."""
    import tf_keras

    out = tmp_path / "h.h5"
    r = cli("dump", "-m", zoo["keras2_transfer.h5"], "--tensor-match", r"(block1_conv2|fc1)/Relu:0$",
            "-o", out, zoo["small16.npy"])
    assert r.exit_code == 0, r.stderr
    model = tf_keras.models.load_model(str(zoo["keras2_transfer.h5"]), compile=False)
    base = model.get_layer("vgg16")
    x = np.load(zoo["small16.npy"])
    conv = tf_keras.Model(base.inputs, base.get_layer("block1_conv2").output)(x)
    fc1 = tf_keras.Model(model.inputs, model.get_layer("fc1").output)(x, training=False)
    got = datasets(out)
    np.testing.assert_allclose(got["tensors/transfer/vgg16/block1_conv2/Relu:0"], conv, **TOL)
    np.testing.assert_allclose(got["tensors/transfer/fc1/Relu:0"], fc1, **TOL)
    with h5py.File(out, "r") as f:
        assert f["tensors/transfer/vgg16/block1_conv2/Relu:0"].attrs["layer"] == "vgg16/block1_conv2"
        assert f["tensors/transfer/fc1/Relu:0"].attrs["layer"] == "fc1"
