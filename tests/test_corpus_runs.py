"""What the extraction function computes for models whose layers run in ways the walk must
respect: recurrent layers (their cells run inside a `while` loop), MultiHeadAttention held by
a block (its fused attention hides the probabilities), channels_first convolutions (which
TensorFlow's CPU kernels without oneDNN run only under XLA).

Every value is checked against Keras: sub-models from the inputs, layers called by hand on
what Keras feeds them, Keras' own predict.
"""

import json
import os
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from conftest import BIN, error_line

ATOL = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import keras
    import keras_hub
    import tf_keras

    folder = tmp_path_factory.mktemp("runs")
    L = keras.layers
    keras.utils.set_random_seed(11)
    rng = np.random.default_rng(11)

    # Recurrent layers over a masked sequence: their cells run once per time step in a loop.
    seq = keras.Input((7, 5), name="seq")
    x = L.Masking(name="mask")(seq)
    x = L.LSTM(6, return_sequences=True, name="lstm")(x)
    x = L.Bidirectional(L.GRU(4, return_sequences=True, name="gru"), name="bigru")(x)
    x = L.TimeDistributed(L.Dense(3, name="td_dense"), name="td")(x)
    x = L.SimpleRNN(3, name="srnn")(x)
    keras.Model(seq, L.Dense(2, name="head")(x), name="recurrent").save(folder / "rnn.keras")
    sequences = rng.normal(size=(5, 7, 5)).astype("float32")
    sequences[0, 4:] = 0  # padded: masked steps
    sequences[2, 6:] = 0
    np.save(folder / "seq.npy", sequences)

    frames = keras.Input((4, 6, 6, 2), name="frames")
    y = L.ConvLSTM2D(3, 3, return_sequences=True, name="clstm")(frames)
    y = L.TimeDistributed(L.GlobalAveragePooling2D(), name="pool")(y)
    keras.Model(frames, L.Dense(2, name="head")(L.Flatten(name="flat")(y))).save(folder / "clstm.keras")
    np.save(folder / "frames.npy", rng.normal(size=(3, 4, 6, 6, 2)).astype("float32"))

    # TimeDistributed over an open time axis: Keras loops over the axis when its size is known
    # and maps over the batch size when it is not (Keras 3.15).
    steps = keras.Input((None, 5), name="steps")
    t = L.TimeDistributed(L.Dense(3, name="step_dense"), name="td")(steps)
    keras.Model(steps, L.GlobalAveragePooling1D(name="avg")(t)).save(folder / "open_time.keras")

    T = tf_keras.layers
    old = tf_keras.Input((7, 5), name="seq")
    z = T.LSTM(6, return_sequences=True, name="lstm")(T.Masking(name="mask")(old))
    z = T.Bidirectional(T.GRU(4), name="bigru")(z)
    tf_keras.Model(old, T.Dense(2, name="head")(z)).save(folder / "rnn.h5")

    # A MultiHeadAttention held by a custom block, and by keras-hub blocks (fused by default).
    @keras.saving.register_keras_serializable(package="tp_test_runs")
    class AttentionBlock(L.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.mha = L.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")
            self.norm = L.LayerNormalization(name="norm")

        def call(self, x):
            return self.norm(x + self.mha(x, x))

    tokens = keras.Input((5, 8), name="x")
    h = AttentionBlock(name="block")(tokens)
    keras.Model(tokens, L.Dense(2, name="head")(h[:, 0])).save(folder / "block.keras")
    np.save(folder / "x58.npy", rng.normal(size=(4, 5, 8)).astype("float32"))

    keras_hub.models.ViTBackbone(image_shape=(16, 16, 3), patch_size=8, num_layers=2, num_heads=2,
                                 hidden_dim=8, mlp_dim=16).save(folder / "vit.keras")
    np.save(folder / "images.npy", rng.uniform(size=(3, 16, 16, 3)).astype("float32"))
    keras_hub.models.DistilBertBackbone(vocabulary_size=30, num_layers=2, num_heads=2, hidden_dim=8,
                                        intermediate_dim=16, max_sequence_length=6,
                                        dropout=0.0).save(folder / "distilbert.keras")
    ids = rng.integers(1, 30, (3, 6)).astype("int32")
    padding = np.ones_like(ids)
    padding[1, 4:] = 0
    ids[padding == 0] = 0
    np.savez(folder / "ids.npz", token_ids=ids, padding_mask=padding)
    keras_hub.models.WhisperBackbone(vocabulary_size=30, num_layers=1, num_heads=2, hidden_dim=8,
                                     intermediate_dim=16, num_mels=4, max_encoder_sequence_length=8,
                                     max_decoder_sequence_length=6).save(folder / "whisper.keras")
    np.savez(folder / "speech.npz", encoder_features=rng.normal(size=(2, 8, 4)).astype("float32"),
             decoder_token_ids=rng.integers(1, 30, (2, 6)).astype("int32"),
             decoder_padding_mask=np.array([[1] * 6, [1] * 4 + [0] * 2], "int32"))

    # channels_first convolutions and pooling, as on a (3, 32, 32) image.
    image = keras.Input((3, 32, 32), name="image")
    c = L.Conv2D(4, 3, padding="same", activation="relu", data_format="channels_first", name="conv")(image)
    c = L.MaxPooling2D(data_format="channels_first", name="pool")(c)
    c = L.Conv2DTranspose(2, 3, strides=2, data_format="channels_first", name="up")(c)
    c = L.DepthwiseConv2D(3, data_format="channels_first", name="dw")(c)
    c = L.GlobalAveragePooling2D(data_format="channels_first", name="gap")(c)
    keras.Model(image, L.Dense(3, name="head")(c)).save(folder / "nchw.keras")
    np.save(folder / "nchw.npy", rng.uniform(size=(3, 3, 32, 32)).astype("float32"))
    return folder


def read_all(path, group="activations"):
    found = {}
    with h5py.File(path, "r") as f:
        f[group].visititems(
            lambda name, obj: found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
        )
    return found


def dump_all(cli, model, inputs, out, *extra):
    r = cli("dump", "-q", "-m", model, "--all", "-b", "2", "-o", out, inputs, *extra)
    assert r.exit_code == 0, r.stderr
    return read_all(out)


def layer_records(cli, model):
    r = cli("layers", model, "--json")
    assert r.exit_code == 0, r.stderr
    return {d["path"]: d for d in json.loads(r.stdout)}


def submodel(keras, model, tensor, x):
    return np.asarray(keras.Model(model.inputs, tensor)(x, training=False))


# ---- recurrent layers --------------------------------------------------------------------------

def test_recurrent_layers_dumped_exactly_and_their_cells_left_out(cli, runs, tmp_path):
    import keras

    model_file = runs / "rnn.keras"
    model = keras.saving.load_model(model_file)
    x = np.load(runs / "seq.npy")
    values = dump_all(cli, model_file, runs / "seq.npy", tmp_path / "a.h5")

    cells = ["lstm/lstm_cell", "bigru/forward_gru/gru_cell", "bigru/backward_gru/gru_cell",
             "srnn/simple_rnn_cell"]
    expected = {}
    for op in model.operations[1:]:  # Masking's mask is computed by inline operations too
        name = f"{op.name}/__output__" if op.name in ("bigru", "td") else op.name
        expected[name] = submodel(keras, model, op.output, x)
    # the RNN layers inside Bidirectional, called by hand on what reaches it, with its mask
    lstm_out = expected["lstm"]
    mask = np.any(x != 0, axis=-1)
    bigru = model.get_layer("bigru")
    expected["bigru/forward_gru"] = np.asarray(bigru.forward_layer(lstm_out, mask=mask))
    expected["bigru/backward_gru"] = np.asarray(bigru.backward_layer(lstm_out, mask=mask))
    dense = model.get_layer("td").layer
    bigru_out = expected["bigru/__output__"]
    for k in range(7):
        expected[f"td/td_dense/call_{k}"] = np.asarray(dense(bigru_out[:, k]))
    assert sorted(values) == sorted(expected)  # no cell: their values exist only inside the loop
    for name, value in expected.items():
        np.testing.assert_allclose(values[name], value, atol=ATOL, err_msg=name)

    records = layer_records(cli, model_file)
    for cell in cells:  # listed as a layer with no output, like one that never runs
        assert (records[cell]["output_shape"], records[cell]["calls"], records[cell]["reach"]) == (None, 0, "runtime")
        assert records[cell]["params"] == records[cell.rsplit("/", 1)[0]]["params"]
    assert records["bigru/forward_gru"]["output_shape"] == [None, 7, 4]

    r = cli("dump", "-q", "-m", model_file, "-l", "lstm/lstm_cell", "-o", tmp_path / "c.h5", runs / "seq.npy")
    assert r.exit_code == 2
    assert error_line(r) == (
        "error: --layer 'lstm/lstm_cell' has no output: it runs inside a tf.while_loop or tf.cond of "
        "'lstm' (an RNN's cell runs once per time step), and no value inside one is an output of the "
        "model's graph; dump 'lstm' instead")
    r = cli("dump", "-q", "-m", model_file, "-l", "gru_cell", "-o", tmp_path / "c.h5", runs / "seq.npy")
    assert "is ambiguous" in error_line(r)
    r = cli("dump", "-q", "-m", model_file, "--match", "_cell$", "-o", tmp_path / "c.h5", runs / "seq.npy")
    assert (r.exit_code, error_line(r)) == (2, "error: --match '_cell$' matches no layer path that has an output")
    assert not (tmp_path / "c.h5").exists()


def test_recurrent_model_compared_with_a_copy(cli, runs, tmp_path):
    copy = tmp_path / "copy.keras"
    shutil.copy(runs / "rnn.keras", copy)
    r = cli("compare", runs / "rnn.keras", copy, runs / "seq.npy", "--json")
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    paths = [p["path"] for p in result["pairs"]]
    assert "lstm" in paths and "bigru/forward_gru" in paths and "head" in paths
    assert not [p for p in paths if p.endswith("_cell")]
    assert result["first_divergence"] is None
    assert all(p["max_abs"] == 0 for p in result["pairs"])


def test_conv_lstm_and_its_gradients(cli, runs, tmp_path):
    import keras
    import tensorflow as tf

    model_file = runs / "clstm.keras"
    model = keras.saving.load_model(model_file)
    x = np.load(runs / "frames.npy")
    out = tmp_path / "g.h5"
    r = cli("dump", "-q", "-m", model_file, "--all", "--gradients", "--target", "sum", "-o", out, runs / "frames.npy")
    assert r.exit_code == 0, r.stderr
    values, grads = read_all(out), read_all(out, "gradients")
    assert "clstm/conv_lstm_cell" not in values
    clstm = model.get_layer("clstm")
    assert layer_records(cli, model_file)["clstm/conv_lstm_cell"]["calls"] == 0
    np.testing.assert_allclose(values["clstm"], submodel(keras, model, clstm.output, x), atol=ATOL)
    with tf.GradientTape() as tape:  # the model's layers after clstm, by hand
        hidden = clstm(x)
        tape.watch(hidden)
        total = tf.reduce_sum(model.get_layer("head")(model.get_layer("flat")(model.get_layer("pool")(hidden))))
    np.testing.assert_allclose(grads["clstm"], tape.gradient(total, hidden).numpy(), atol=ATOL)


def test_time_distributed_over_an_open_time_axis(cli, runs, tmp_path):
    """Traced at the batch's own length, as Keras' eager call runs it (a graph traced with the
    axis open gives (5, 5, 3) for (5, 7, 5)); the sub-layer, run once per step, cannot be named."""
    import keras

    model_file = runs / "open_time.keras"
    model = keras.saving.load_model(model_file)
    x = np.load(runs / "seq.npy")
    out = tmp_path / "a.h5"
    r = cli("dump", "-q", "-m", model_file, "-l", "td", "-l", "avg", "-b", "2", "-o", out, runs / "seq.npy")
    assert r.exit_code == 0, r.stderr
    values = read_all(out)
    td = model.get_layer("td")
    np.testing.assert_allclose(values["td"], np.asarray(td(x)), atol=ATOL)
    np.testing.assert_allclose(values["avg"], np.asarray(model(x)), atol=ATOL)
    r = cli("dump", "-q", "-m", model_file, "-l", "td/step_dense", "-o", tmp_path / "b.h5", runs / "seq.npy")
    assert (r.exit_code, error_line(r)) == (2, (
        "error: layer 'td/step_dense' runs more often for these inputs than the 1 time(s) it ran when traced "
        "with the model's open input axes (how often depends on an input's size, as in a TimeDistributed); "
        "dump 'td' instead"))
    assert not (tmp_path / "b.h5").exists()


def test_keras2_h5_recurrent_layers(cli, runs, tmp_path):
    import tf_keras

    model_file = runs / "rnn.h5"
    model = tf_keras.models.load_model(model_file)
    x = np.load(runs / "seq.npy")
    values = dump_all(cli, model_file, runs / "seq.npy", tmp_path / "a.h5")
    assert sorted(values) == ["bigru/__output__", "bigru/backward_gru", "bigru/forward_gru", "head", "lstm", "mask"]
    for name in ("lstm", "head"):
        expected = tf_keras.Model(model.inputs, model.get_layer(name).output)(x, training=False)
        np.testing.assert_allclose(values[name], np.asarray(expected), atol=ATOL, err_msg=name)
    assert layer_records(cli, model_file)["lstm/lstm_cell"]["output_shape"] is None


# ---- MultiHeadAttention inside a block ---------------------------------------------------------

def layer_at(model, path):
    """The layer at a path of names, found from the model's own layers and sub-layers."""
    layer = model.get_layer(path.split("/")[0])
    for name in path.split("/")[1:]:
        layer = next(la for la in layer._flatten_layers(include_self=False, recursive=False) if la.name == name)
    return layer


def attention_by_hand(model, x, paths):
    """The attention probabilities of the MultiHeadAttention layers at `paths`, from calling
    each by hand (`return_attention_scores=True`) on what Keras feeds it in a forward pass of
    its own."""
    layers = [layer_at(model, path) for path in paths]
    fed = {}

    def spy(layer):
        original = type(layer).call

        def call(*args, **kwargs):
            fed[id(layer)] = (args, kwargs)
            return original(layer, *args, **kwargs)

        return call

    for layer in layers:
        layer.call = spy(layer)
    try:
        model(x, training=False)
    finally:
        for layer in layers:
            del layer.call
    scores = []
    for layer in layers:
        args, kwargs = fed[id(layer)]
        _, probabilities = type(layer).call(layer, *args, **{**kwargs, "return_attention_scores": True})
        scores.append(np.asarray(probabilities))
    return scores


@pytest.mark.parametrize("name, inputs", [("block", "x58.npy"), ("vit", "images.npy"),
                                          ("distilbert", "ids.npz"), ("whisper", "speech.npz")])
def test_attention_probabilities_of_a_nested_multi_head_attention(cli, runs, tmp_path, name, inputs):
    import keras

    model_file = runs / f"{name}.keras"
    model = keras.saving.load_model(model_file)
    records = layer_records(cli, model_file)
    softmax = [p for p, d in records.items() if p.endswith("/softmax") and d["class"] == "Softmax"]
    assert softmax and all(records[p]["calls"] == 1 and records[p]["depth"] >= 2 for p in softmax)
    last = [p for p, d in records.items() if d["depth"] == 0][-1]  # the layer computing the output
    out = tmp_path / "a.h5"
    args = [a for p in [*softmax, last] for a in ("-l", p)]
    r = cli("dump", "-q", "-m", model_file, *args, "-o", out, runs / inputs)
    assert r.exit_code == 0, r.stderr
    values = read_all(out)
    data = np.load(runs / inputs)
    x = dict(data) if isinstance(data, np.lib.npyio.NpzFile) else data
    for path, expected in zip(softmax, attention_by_hand(model, x, [p.rsplit("/", 1)[0] for p in softmax]),
                              strict=True):
        np.testing.assert_allclose(values[path], expected, atol=ATOL, err_msg=path)
        np.testing.assert_allclose(values[path].sum(axis=-1), 1.0, atol=1e-5)
    if name == "distilbert":  # a padded key has no weight
        assert np.all(values[softmax[0]][1, :, :, 4:] == 0)
    # the output stays Keras' own (fused attention)
    output = values[last] if last in values else values[f"{last}/__output__"]
    expected = model(x, training=False)
    if isinstance(expected, dict):  # Whisper: the decoder's output is computed last
        expected = expected["decoder_sequence_output"]
    np.testing.assert_allclose(output, np.asarray(expected), atol=ATOL)


def test_gradient_through_nested_attention_probabilities(cli, runs, tmp_path):
    import keras
    import tensorflow as tf

    model_file = runs / "block.keras"
    out = tmp_path / "g.h5"
    r = cli("dump", "-q", "-m", model_file, "-l", "block/mha/softmax", "--gradients", "--target", "sum",
            "-o", out, runs / "x58.npy")
    assert r.exit_code == 0, r.stderr
    model = keras.saving.load_model(model_file)
    block = model.get_layer("block")
    mha = block.mha
    x = tf.constant(np.load(runs / "x58.npy"))
    q, k, v = mha.query_dense(x), mha.key_dense(x), mha.value_dense(x)
    scores = tf.nn.softmax(tf.einsum("bshd,bthd->bhts", k, q * (1 / np.sqrt(4.0))), axis=-1)
    with tf.GradientTape() as tape:
        tape.watch(scores)
        h = block.norm(x + mha.output_dense(tf.einsum("bhts,bshd->bthd", scores, v)))
        total = tf.reduce_sum(model.get_layer("head")(h[:, 0]))
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(f["activations/block/mha/softmax"][()], scores.numpy(), atol=ATOL)
        np.testing.assert_allclose(f["gradients/block/mha/softmax"][()], tape.gradient(total, scores).numpy(),
                                   atol=1e-4)


# ---- channels_first convolutions ------------------------------------------------------------------

def nchw_expected(model, x):
    """Every layer's output from Keras' own predict, compiled with XLA (which runs channels_first
    convolutions on any CPU)."""
    import keras

    expected = {}
    for layer in model.layers[1:]:
        sub = keras.Model(model.inputs, layer.output)
        sub.compile(jit_compile=True)
        expected[layer.name] = sub.predict(x, verbose=0)
    return expected


def nchw_gradient(model, feature):
    """The gradient of the per-sample sum of the output with respect to dw's output."""
    import tensorflow as tf

    feature = tf.constant(feature)
    with tf.GradientTape() as tape:
        tape.watch(feature)
        total = tf.reduce_sum(model.get_layer("head")(model.get_layer("gap")(feature)))
    return tape.gradient(total, feature).numpy()


def test_channels_first_convolutions(cli, runs, tmp_path):
    import keras

    model_file = runs / "nchw.keras"
    model = keras.saving.load_model(model_file)
    x = np.load(runs / "nchw.npy")
    values = dump_all(cli, model_file, runs / "nchw.npy", tmp_path / "a.h5")
    expected = nchw_expected(model, x)
    assert sorted(values) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(values[name], value, atol=ATOL, err_msg=name)


def test_channels_first_convolutions_on_a_cpu_without_onednn(runs, tmp_path):
    """TensorFlow's CPU kernels without oneDNN (CPUs without AVX-512 VNNI, or
    TF_ENABLE_ONEDNN_OPTS=0) take NHWC only: the extraction function is compiled with XLA then,
    for dump, --gradients and compare."""
    import keras

    model_file = runs / "nchw.keras"
    model = keras.saving.load_model(model_file)
    x = np.load(runs / "nchw.npy")
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"}
    out = tmp_path / "a.h5"
    r = subprocess.run([BIN, "dump", "-q", "-m", model_file, "--all", "--gradients", "--target", "sum", "-b", "2",
                        "-o", out, runs / "nchw.npy"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    values, grads = read_all(out), read_all(out, "gradients")
    expected = nchw_expected(model, x)
    for name, value in expected.items():
        np.testing.assert_allclose(values[name], value, atol=ATOL, err_msg=name)
    np.testing.assert_allclose(grads["dw"], nchw_gradient(model, expected["dw"]), atol=ATOL)

    copy = tmp_path / "copy.keras"
    shutil.copy(model_file, copy)
    r = subprocess.run([BIN, "compare", model_file, copy, runs / "nchw.npy", "--json"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert [p["path"] for p in result["pairs"]] == [la.name for la in model.layers[1:]]
    assert all(p["max_abs"] == 0 for p in result["pairs"])
