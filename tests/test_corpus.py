"""Models written the way people write them: inline operations (`x + y`, `keras.ops`, slicing),
a residual base nested in a transfer model, a transformer block with MultiHeadAttention, a
custom layer that states its output shape, tf.* calls in a Keras 2 `.h5`.

Each is dumped whole (`dump --all`) through the CLI, and every dataset is compared with what
Keras itself computes: a `keras.Model` from the inputs (or the nested model's inputs) to the
layer's or operation's own output, or the sub-layers applied by hand.
"""

import json

import h5py
import numpy as np
import pytest

from conftest import CUSTOM, custom_module, error_line

ATOL = 1e-5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import keras
    from keras import ops

    folder = tmp_path_factory.mktemp("corpus")
    L = keras.layers
    keras.utils.set_random_seed(7)
    rng = np.random.default_rng(7)

    # A hand-written residual base (`x + shortcut`, keras.ops.relu), frozen inside a classifier.
    bin_ = keras.Input((8, 8, 3))
    y = L.Conv2D(4, 3, padding="same", activation="relu", name="c1")(bin_)
    y = L.Conv2D(4, 3, padding="same", name="c2")(y)
    y = ops.relu(y + L.Conv2D(4, 1, name="shortcut")(bin_))
    y = L.Conv2D(4, 3, padding="same", name="c3")(y) + y
    base = keras.Model(bin_, y, name="resbase")
    base.trainable = False
    xin = keras.Input((8, 8, 3), name="image")
    z = base(L.Rescaling(1 / 255.0, name="pre")(xin), training=False)
    z = L.GlobalAveragePooling2D(name="gap")(z)
    keras.Model(xin, L.Dense(3, name="head")(z), name="transfer").save(folder / "transfer.keras")
    np.save(folder / "images.npy", rng.uniform(0, 255, (5, 8, 8, 3)).astype("float32"))

    # A transformer encoder block on int32 token ids.
    tokens = keras.Input((6,), dtype="int32", name="tokens")
    h = L.Embedding(30, 8, name="embed")(tokens)
    att = L.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(h, h)
    h = L.LayerNormalization(name="ln1")(h + att)
    ff = L.Dense(8, name="ff2")(L.Dense(16, activation="relu", name="ff1")(h))
    h = L.LayerNormalization(name="ln2")(h + ff)
    cls = h[:, 0, :]
    keras.Model(tokens, L.Dense(2, name="cls_head")(cls), name="encoder").save(folder / "encoder.keras")
    np.save(folder / "tokens.npy", rng.integers(0, 30, (5, 6)).astype("int32"))

    # The same with padding (mask_zero) and a causal mask: Keras' fused attention and its
    # explicit path (which returns the scores) differ on fully masked rows, and the pooling
    # after `+` (which drops the mask) reads those rows.
    tokens = keras.Input((6,), dtype="int32", name="tokens")
    h = L.Embedding(30, 8, mask_zero=True, name="embed")(tokens)
    att = L.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(h, h, use_causal_mask=True)
    h = L.GlobalAveragePooling1D(name="pool")(L.LayerNormalization(name="ln")(h + att))
    keras.Model(tokens, L.Dense(2, name="head")(h), name="padded").save(folder / "padded.keras")
    padded = rng.integers(1, 30, (5, 6)).astype("int32")
    padded[:, 4:] = 0
    padded[0, 2:] = 0
    np.save(folder / "padded.npy", padded)

    # keras.ops: slicing, concatenation, reshape, activations, one op over two branches.
    vin = keras.Input((10,), name="x")
    v = L.Dense(10, name="d1")(vin)
    left, right = v[:, :4], v[:, 4:]
    w = ops.concatenate([ops.sigmoid(left), ops.tanh(right)], axis=-1)
    w = ops.mean(ops.reshape(w, (-1, 2, 5)), axis=1)
    w = w * ops.softmax(L.Dense(5, name="gate")(vin)) * 2.0
    keras.Model(vin, L.Dense(3, name="out")(w), name="opsy").save(folder / "ops.keras")
    np.save(folder / "x10.npy", rng.normal(size=(5, 10)).astype("float32"))

    # A custom layer that states its output shape, with sub-layers.
    cin = keras.Input((5,), name="x")
    c = custom_module().StatedBlock(4, name="stated")(cin)
    keras.Model(cin, L.Dense(2, name="head")(c), name="stated_model").save(folder / "stated.keras")
    np.save(folder / "x5.npy", rng.normal(size=(5, 5)).astype("float32"))
    return folder


def dump_all(cli, model, inputs, out, *extra):
    r = cli("dump", "-q", "-m", model, "--all", "-b", "2", "-o", out, inputs, *extra)
    assert r.exit_code == 0, r.stderr
    found = {}
    with h5py.File(out, "r") as f:
        f["activations"].visititems(
            lambda name, obj: found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
        )
    return found


def submodel_value(keras, inputs, tensor, x):
    return np.asarray(keras.Model(inputs, tensor)(x, training=False))


def layer_records(cli, model, *extra):
    r = cli("layers", model, "--json", *extra)
    assert r.exit_code == 0, r.stderr
    return {d["path"]: d for d in json.loads(r.stdout)}


def test_residual_base_with_inline_ops(cli, corpus, tmp_path):
    import keras

    model_file = corpus / "transfer.keras"
    model = keras.saving.load_model(model_file)
    base = model.get_layer("resbase")
    adds = [op.name for op in base.operations if type(op).__name__ == "Add"]
    assert len(adds) == 2
    records = layer_records(cli, model_file)
    for name in adds:
        rec = records[f"resbase/{name}"]
        assert (rec["class"], rec["index"], rec["output_shape"], rec["params"]) == ("Add", None, [None, 8, 8, 4], 0)
    assert records["resbase/c3"]["index"] == "2.4"  # positions in `.layers`, operations aside

    x = np.load(corpus / "images.npy")
    values = dump_all(cli, model_file, corpus / "images.npy", tmp_path / "a.h5")
    reaching = submodel_value(keras, model.inputs, model.get_layer("pre").output, x)
    # a nested model selected with its layers keeps its own output under __output__
    expected = {"resbase/__output__": np.asarray(base(reaching, training=False))}
    for op in base.operations[1:]:
        expected[f"resbase/{op.name}"] = submodel_value(keras, base.inputs, op.output, reaching)
    for op in model.operations[1:]:
        if op is not base:
            expected[op.name] = submodel_value(keras, model.inputs, op.output, x)
    assert sorted(values) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(values[name], value, atol=ATOL, err_msg=name)


def test_transformer_block_attention_internals(cli, corpus, tmp_path):
    import keras

    model_file = corpus / "encoder.keras"
    model = keras.saving.load_model(model_file)
    for _ in range(3):  # Keras names unnamed sub-layers from a process-wide counter...
        keras.layers.Softmax()
    records = layer_records(cli, model_file)
    # ...and the paths do not depend on it
    assert records["mha/softmax"]["output_shape"] == [None, 2, 6, 6]
    assert records["mha/softmax"]["name"] != "softmax"
    assert records["mha/query"]["output_shape"] == [None, 6, 2, 4]
    assert records["mha/attention_output"]["output_shape"] == [None, 6, 8]
    assert records["mha/softmax"]["reach"] == "runtime"

    tokens = np.load(corpus / "tokens.npy")
    values = dump_all(cli, model_file, corpus / "tokens.npy", tmp_path / "a.h5")
    mha = model.get_layer("mha")
    h = np.asarray(model.get_layer("embed")(tokens))
    output, scores = mha(h, h, return_attention_scores=True)
    by_hand = {
        "mha/softmax": scores,
        "mha/query": mha.query_dense(h),
        "mha/key": mha.key_dense(h),
        "mha/value": mha.value_dense(h),
        "mha/attention_output": output,
    }
    for name, value in by_hand.items():
        np.testing.assert_allclose(values[name], np.asarray(value), atol=ATOL, err_msg=name)
    # the attention probabilities sum to one over the keys
    np.testing.assert_allclose(values["mha/softmax"].sum(axis=-1), 1.0, atol=1e-5)
    for op in model.operations[1:]:
        name = "mha/__output__" if op is mha else op.name
        np.testing.assert_allclose(values[name], submodel_value(keras, model.inputs, op.output, tokens),
                                   atol=ATOL, err_msg=name)
    assert "mha/dropout" not in values  # never runs at inference: listed, with no output
    assert records["mha/dropout"]["output_shape"] is None


def test_attention_with_padding_and_causal_masks(cli, corpus, tmp_path):
    import keras

    model_file = corpus / "padded.keras"
    model = keras.saving.load_model(model_file)
    tokens = np.load(corpus / "padded.npy")
    values = dump_all(cli, model_file, corpus / "padded.npy", tmp_path / "a.h5")
    mha = model.get_layer("mha")
    h = model.get_layer("embed")(tokens)  # eager: carries the padding mask
    _, scores = mha(h, h, use_causal_mask=True, return_attention_scores=True)
    np.testing.assert_allclose(values["mha/softmax"], np.asarray(scores), atol=ATOL)
    assert np.all(values["mha/softmax"][:, :, 0, 1:] == 0)  # causal: the first query sees itself
    for op in model.operations[1:]:
        name = "mha/__output__" if op is mha else op.name
        expected = submodel_value(keras, model.inputs, op.output, tokens)
        np.testing.assert_allclose(values[name], expected, atol=ATOL, err_msg=name)


def test_attention_softmax_alone_and_its_gradient(cli, corpus, tmp_path):
    """Only what -l asks for is computed, and gradients flow through the attention scores."""
    import keras
    import tensorflow as tf

    model_file = corpus / "encoder.keras"
    out = tmp_path / "g.h5"
    r = cli("dump", "-q", "-m", model_file, "-l", "mha/softmax", "--gradients", "--target", "sum",
            "-o", out, corpus / "tokens.npy")
    assert r.exit_code == 0, r.stderr
    model = keras.saving.load_model(model_file)
    mha = model.get_layer("mha")
    tokens = np.load(corpus / "tokens.npy")
    h = tf.constant(model.get_layer("embed")(tokens))
    q, k, v = mha.query_dense(h), mha.key_dense(h), mha.value_dense(h)
    logits = tf.einsum("bshd,bthd->bhts", k, q * (1 / np.sqrt(4.0)))
    scores = tf.nn.softmax(logits, axis=-1)
    with tf.GradientTape() as tape:
        tape.watch(scores)
        att = mha.output_dense(tf.einsum("bhts,bshd->bthd", scores, v))
        y = model.get_layer("ln1")(h + att)
        y = model.get_layer("ln2")(y + model.get_layer("ff2")(model.get_layer("ff1")(y)))
        total = tf.reduce_sum(model.get_layer("cls_head")(y[:, 0, :]))
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(f["activations/mha/softmax"][()], scores.numpy(), atol=ATOL)
        np.testing.assert_allclose(f["gradients/mha/softmax"][()], tape.gradient(total, scores).numpy(),
                                   atol=1e-4)


def test_keras_ops_slicing_concatenation_two_branches(cli, corpus, tmp_path):
    import keras

    model_file = corpus / "ops.keras"
    model = keras.saving.load_model(model_file)
    records = layer_records(cli, model_file)
    kinds = {records[op.name]["class"] for op in model.operations}
    assert {"GetItem", "Concatenate", "Reshape", "Mean", "Sigmoid", "Tanh", "Softmax", "Multiply"} <= kinds
    x = np.load(corpus / "x10.npy")
    values = dump_all(cli, model_file, corpus / "x10.npy", tmp_path / "a.h5")
    assert len(values) == len(model.operations) - 1
    for op in model.operations[1:]:
        np.testing.assert_allclose(values[op.name], submodel_value(keras, model.inputs, op.output, x),
                                   atol=ATOL, err_msg=op.name)
    # by hand, independently of Keras' graph: the first slice is the Dense layer's first 4 units
    d1 = model.get_layer("d1")
    kernel, bias = (np.asarray(w, np.float64) for w in d1.weights)
    first_slice = [op.name for op in model.operations if type(op).__name__ == "GetItem"][0]
    np.testing.assert_allclose(values[first_slice], (x @ kernel + bias)[:, :4], atol=ATOL)


def test_operation_by_name_and_errors(cli, corpus, tmp_path):
    import keras

    model = keras.saving.load_model(corpus / "ops.keras")
    concat = [op.name for op in model.operations if type(op).__name__ == "Concatenate"][0]
    out = tmp_path / "one.h5"
    r = cli("dump", "-q", "-m", corpus / "ops.keras", "-l", concat, "-o", out, corpus / "x10.npy")
    assert r.exit_code == 0, r.stderr
    with h5py.File(out, "r") as f:
        assert list(f["activations"]) == [concat]
        assert f[f"activations/{concat}"].attrs["layer_class"] == "Concatenate"
    r = cli("dump", "-q", "-m", corpus / "ops.keras", "-l", "concatenat", "-o", tmp_path / "x.h5",
            corpus / "x10.npy")
    assert r.exit_code == 2
    assert f"did you mean '{concat}'" in error_line(r)
    assert not (tmp_path / "x.h5").exists()


def test_custom_layer_stating_its_output_shape(cli, corpus, tmp_path):
    import keras

    model_file = corpus / "stated.keras"
    records = layer_records(cli, model_file, "--custom-objects", CUSTOM)
    assert records["stated/proj"]["output_shape"] == [None, 4]
    assert records["stated/norm"]["output_shape"] == [None, 4]
    values = dump_all(cli, model_file, corpus / "x5.npy", tmp_path / "a.h5", "--custom-objects", CUSTOM)
    objects = {k: v for k, v in vars(custom_module()).items() if isinstance(v, type)}
    model = keras.saving.load_model(model_file, custom_objects=objects)
    block = model.get_layer("stated")
    x = np.load(corpus / "x5.npy").astype(np.float64)
    kernel, bias = (np.asarray(w, np.float64) for w in block.proj.weights)
    proj = x @ kernel + bias
    np.testing.assert_allclose(values["stated/proj"], proj, atol=ATOL)
    gelu = np.asarray(keras.ops.gelu(proj.astype("float32")))
    mean, var = gelu.mean(-1, keepdims=True), gelu.var(-1, keepdims=True)
    gamma, beta = (np.asarray(w) for w in block.norm.weights)
    norm = (gelu - mean) / np.sqrt(var + block.norm.epsilon) * gamma + beta
    np.testing.assert_allclose(values["stated/norm"], norm, atol=1e-4)
    np.testing.assert_allclose(values["stated/__output__"], norm * 0.5, atol=1e-4)
    np.testing.assert_allclose(values["head"], np.asarray(model(x.astype("float32"))), atol=ATOL)


def test_keras2_h5_with_tf_op_layers(cli, zoo, tmp_path):
    import tf_keras

    model_file = zoo["keras2_tfop.h5"]
    records = layer_records(cli, model_file)
    assert records["tf.concat"]["class"] == "TFOpLambda"
    assert records["tf.__operators__.getitem"]["class"] == "SlicingOpLambda"
    x = np.random.default_rng(5).normal(size=(5, 10)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    values = dump_all(cli, model_file, tmp_path / "x.npy", tmp_path / "a.h5")
    model = tf_keras.models.load_model(model_file, compile=False)
    assert sorted(values) == sorted(layer.name for layer in model.layers[1:])
    for layer in model.layers[1:]:
        expected = tf_keras.Model(model.inputs, layer.output)(x)
        np.testing.assert_allclose(values[layer.name], np.asarray(expected), atol=ATOL, err_msg=layer.name)
