"""keras-hub backbones built from their constructors (small, random weights, no download):
a BERT encoder with dict inputs and padding, and a Gemma decoder with rotary embeddings.
Every value is checked against Keras: sub-models from the backbone's inputs, attention
scores from calling the attention layer by hand, blocks recomputed from their sub-layers."""

import json

import h5py
import numpy as np
import pytest

ATOL = 1e-5


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    import keras
    import keras_hub

    folder = tmp_path_factory.mktemp("hub")
    keras.utils.set_random_seed(3)
    bert = keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16,
        max_sequence_length=8,
    )
    bert.save(folder / "bert.keras")
    gemma = keras_hub.models.GemmaBackbone(
        vocabulary_size=50, num_layers=2, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=8, intermediate_dim=16, head_dim=4,
    )
    gemma.save(folder / "gemma.keras")

    rng = np.random.default_rng(3)
    ids = rng.integers(1, 50, (3, 6)).astype("int32")
    mask = np.ones_like(ids)
    mask[0, 4:] = 0  # padded sequences of different lengths
    mask[1, 5:] = 0
    ids[mask == 0] = 0
    np.savez(folder / "bert.npz", token_ids=ids, segment_ids=(np.arange(6) >= 3).astype("int32")[None].repeat(3, 0),
             padding_mask=mask)
    np.savez(folder / "gemma.npz", token_ids=ids, padding_mask=mask)
    return folder


def load(path):
    import keras

    return keras.saving.load_model(path)


def feeds(path):
    return {k: v for k, v in np.load(path).items()}


def read_all(path):
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: found.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return found


def test_bert_layers_lists_blocks_inputs_and_outputs(cli, hub):
    r = cli("layers", hub / "bert.keras", "--json")
    assert r.exit_code == 0, r.stderr
    rows = {d["path"]: d for d in json.loads(r.stdout)}
    attention = "transformer_layer_0/self_attention_layer"
    assert rows[f"{attention}/softmax"]["output_shape"] == [None, 2, None, None]
    assert rows[f"{attention}/query"]["output_shape"] == [None, None, 2, 4]
    assert rows["transformer_layer_1"]["output_shape"] == [None, None, 8]
    r = cli("layers", hub / "bert.keras")
    assert "inputs:  padding_mask (None, None) int32, segment_ids (None, None) int32, token_ids" in r.stdout
    assert "outputs: pooled_output (None, 8) float32, sequence_output (None, None, 8) float32" in r.stdout


def test_bert_dump_blocks_and_attention(cli, hub, tmp_path):
    import keras

    out = tmp_path / "bert.h5"
    attention = "transformer_layer_0/self_attention_layer"
    r = cli("dump", "-q", "-m", hub / "bert.keras", "-l", "embeddings_layer_norm", "-l", "transformer_layer_0",
            "-l", "transformer_layer_1", "-l", f"{attention}/softmax", "-l", f"{attention}/query",
            "-l", f"{attention}/key", "-l", f"{attention}/value", "-o", out, hub / "bert.npz")
    assert r.exit_code == 0, r.stderr
    values = read_all(out)
    bert = load(hub / "bert.keras")
    x = feeds(hub / "bert.npz")
    for name in ("embeddings_layer_norm", "transformer_layer_1"):
        expected = keras.Model(bert.inputs, bert.get_layer(name).output)(x)
        np.testing.assert_allclose(values[f"activations/{name}"], np.asarray(expected), atol=ATOL, err_msg=name)
    block0 = keras.Model(bert.inputs, bert.get_layer("transformer_layer_0").output)(x)
    np.testing.assert_allclose(values["activations/transformer_layer_0/__output__"], np.asarray(block0), atol=ATOL)

    # the attention by hand: BERT masks the padded keys only
    h = keras.Model(bert.inputs, bert.get_layer("embeddings_dropout").output)(x)
    mha = bert.get_layer("transformer_layer_0")._self_attention_layer
    key_mask = np.broadcast_to(x["padding_mask"][:, None, :], (3, 6, 6)).astype(bool)
    _, scores = mha(h, h, attention_mask=key_mask, return_attention_scores=True)
    np.testing.assert_allclose(values[f"activations/{attention}/softmax"], np.asarray(scores), atol=ATOL)
    assert np.all(values[f"activations/{attention}/softmax"][0, :, :, 4:] == 0)  # padded keys get nothing
    for part, dense in (("query", mha.query_dense), ("key", mha.key_dense), ("value", mha.value_dense)):
        np.testing.assert_allclose(values[f"activations/{attention}/{part}"], np.asarray(dense(h)), atol=ATOL)


def test_bert_gradient_of_a_block_for_one_output(cli, hub, tmp_path):
    import keras
    import tensorflow as tf

    out = tmp_path / "g.h5"
    r = cli("dump", "-q", "-m", hub / "bert.keras", "-l", "transformer_layer_0", "--gradients",
            "--target", "sum", "--target-output", "sequence_output", "-o", out, hub / "bert.npz")
    assert r.exit_code == 0, r.stderr
    bert = load(hub / "bert.keras")
    x = feeds(hub / "bert.npz")
    block0 = tf.constant(keras.Model(bert.inputs, bert.get_layer("transformer_layer_0").output)(x))
    with tf.GradientTape() as tape:
        tape.watch(block0)
        sequence = bert.get_layer("transformer_layer_1")(block0, padding_mask=x["padding_mask"])
        total = tf.reduce_sum(sequence)
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(f["gradients/transformer_layer_0"][()], tape.gradient(total, block0).numpy(),
                                   atol=1e-4)
        assert f["gradients/transformer_layer_0"].attrs["target_output"] == "sequence_output"
    r = cli("dump", "-q", "-m", hub / "bert.keras", "-l", "transformer_layer_0", "--gradients",
            "--target", "sum", "-o", tmp_path / "x.h5", hub / "bert.npz")
    assert r.exit_code == 2 and "pooled_output, sequence_output" in r.stderr


def test_bert_tensors_traced_with_dict_inputs(cli, hub):
    r = cli("tensors", hub / "bert.keras", "--op", "Softmax", "--json")
    assert r.exit_code == 0, r.stderr
    names = [t["name"] for t in json.loads(r.stdout)]
    assert len(names) == 2 and all(n.endswith("/Softmax:0") for n in names)


def test_gemma_decoder_block_and_its_attention(cli, hub, tmp_path):
    import keras
    from keras import ops

    out = tmp_path / "gemma.h5"
    attention = "decoder_block_0/attention"
    r = cli("dump", "-q", "-m", hub / "gemma.keras", "-l", "decoder_block_0", "-l", f"{attention}/softmax",
            "-l", "decoder_block_1", "-o", out, hub / "gemma.npz")
    assert r.exit_code == 0, r.stderr
    values = read_all(out)
    gemma = load(hub / "gemma.keras")
    x = feeds(hub / "gemma.npz")
    sub = lambda name: np.asarray(keras.Model(gemma.inputs, gemma.get_layer(name).output)(x))  # noqa: E731
    np.testing.assert_allclose(values["activations/decoder_block_1"], sub("decoder_block_1"), atol=ATOL)
    block_out = values["activations/decoder_block_0/__output__"]
    np.testing.assert_allclose(block_out, sub("decoder_block_0"), atol=ATOL)

    scores = values[f"activations/{attention}/softmax"]  # (batch, kv heads, groups, query, key)
    assert scores.shape == (3, 1, 2, 6, 6)
    np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(np.ones((6, 6)), 1)[None, None, None] * scores == 0)  # causal
    assert np.all(scores[0, ..., 4:] == 0)  # padded keys

    # the block recomputed from the dumped attention probabilities and its own sub-layers
    block = gemma.get_layer("decoder_block_0")
    scaled = [op for op in gemma.operations if type(op).__name__ == "Multiply"][0]  # embedding * sqrt(dim)
    h = np.asarray(keras.Model(gemma.inputs, scaled.output)(x))
    normalized = block.pre_attention_norm(h)
    v = block.attention.value_dense(normalized)
    vec = ops.reshape(ops.einsum("bkgts,bskh->btkgh", scores, v), (3, 6, 2, 4))
    attention_x = h + block.attention.output_dense(vec)
    n2 = block.pre_ffw_norm(attention_x)
    ffw = keras.activations.gelu(block.gating_ffw(n2), approximate=True) * block.gating_ffw_2(n2)
    np.testing.assert_allclose(block_out, np.asarray(block.ffw_linear(ffw) + attention_x), atol=1e-4)


def test_keras_hub_missing_is_named(hub):
    """In a process where keras-hub cannot be imported (as where it is not installed)."""
    import os
    import subprocess
    import sys

    code = ("import sys; sys.modules['keras_hub'] = None; from tensorprobe.cli import main; "
            "sys.argv = ['tensorprobe', 'layers', sys.argv[1]]; main()")
    r = subprocess.run([sys.executable, "-c", code, str(hub / "bert.keras")], capture_output=True, text=True,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert r.returncode == 1, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "Traceback" not in r.stderr
    assert "'BertBackbone'" in line and "pip install keras-hub" in line and str(hub / "bert.keras") in line


# Their SavedModel exports (`model.export`): layers found in the name scopes

@pytest.fixture(scope="module")
def exports(hub):
    """The backbones loaded from their .keras files and exported in this process, where Keras
    has already named other attention softmaxes: the exports' scopes hold counter-numbered
    names (`softmax_5`), which `layers` names as the .keras file does."""
    for name in ("bert", "gemma"):
        load(hub / f"{name}.keras").export(str(hub / f"{name}_export"), verbose=False)
    return hub


def block_paths(name):
    """The paths a user asks for: embeddings, blocks, attention projections and probabilities."""
    if name == "bert":
        inside = ("query", "key", "value", "softmax")
        return ["token_embedding", "position_embedding", "segment_embedding", "embeddings_layer_norm",
                *(f"transformer_layer_{i}{p}" for i in (0, 1)
                  for p in ("", *(f"/self_attention_layer/{q}" for q in inside)))]
    inside = ("query", "key", "value", "softmax", "rotary_embedding")
    return ["token_embedding", *(f"decoder_block_{i}{p}" for i in (0, 1)
                                 for p in ("", *(f"/attention/{q}" for q in inside)))]


@pytest.mark.parametrize("name", ["bert", "gemma"])
def test_export_layers_in_model_order_with_the_keras_paths(cli, exports, name):
    r = cli("layers", exports / f"{name}_export", "--json")
    assert r.exit_code == 0, r.stderr
    exported = {row["path"]: row for row in json.loads(r.stdout)}
    r = cli("layers", exports / f"{name}.keras", "--json")
    assert r.exit_code == 0, r.stderr
    in_keras = {row["path"]: row for row in json.loads(r.stdout)}

    # every layer of the export bears its .keras path; the ones it lacks compute nothing in
    # inference or are inline ops of the model (BERT's x[:, 0], Gemma's x * sqrt(dim))
    assert set(exported) <= set(in_keras)
    assert {in_keras[p]["class"] for p in set(in_keras) - set(exported)} <= {
        "InputLayer", "Dropout", "GetItem", "Multiply"}
    assert set(block_paths(name)) <= set(exported)
    for path in exported:
        assert exported[path]["output_shape"] == in_keras[path]["output_shape"], path
        assert exported[path]["calls"] == in_keras[path]["calls"], path

    # the model's layers in the model's order, each block's sub-layers inside it
    model = load(exports / f"{name}.keras")
    top = [layer.name for layer in model.layers if type(layer).__name__ not in ("InputLayer", "Dropout")]
    assert [p for p, row in exported.items() if row["depth"] == 0] == top
    block = "transformer_layer" if name == "bert" else "decoder_block"
    blocks = [p.split("/")[0] for p in exported if p.startswith(block)]
    assert blocks == sorted(blocks) and len(set(blocks)) == 2  # block 0 with all inside it, then block 1


def test_export_names_counter_numbered_sublayers_by_class(cli, exports):
    """What the rename undoes: Keras numbered block 1's softmax from its process-wide counter."""
    import re

    r = cli("tensors", exports / "bert_export", "--op", "Softmax", "--json")
    assert r.exit_code == 0, r.stderr
    names = [t["name"] for t in json.loads(r.stdout)]
    assert any(re.search(r"/transformer_layer_1_1/self_attention_layer_1/softmax_[1-9]\d*_1/Softmax:0$", n)
               for n in names), names
    r = cli("layers", exports / "bert_export")
    assert r.exit_code == 0, r.stderr
    assert "transformer_layer_1/self_attention_layer/softmax " in r.stdout
    assert not re.search(r"softmax_\d", r.stdout)


def test_export_dump_bert_blocks_and_attention(cli, exports, tmp_path):
    import keras

    out = tmp_path / "bert.h5"
    r = cli("dump", "-q", "-m", exports / "bert_export", "-l", "transformer_layer_0",
            "-l", "transformer_layer_0/self_attention_layer/softmax",
            "-l", "transformer_layer_1/self_attention_layer/softmax", "-o", out, exports / "bert.npz")
    assert r.exit_code == 0, r.stderr
    values = read_all(out)
    bert = load(exports / "bert.keras")
    x = feeds(exports / "bert.npz")  # keys not in the signature's (sorted) order: fed by name
    block0 = np.asarray(keras.Model(bert.inputs, bert.get_layer("transformer_layer_0").output)(x))
    np.testing.assert_allclose(values["activations/transformer_layer_0/__output__"], block0, atol=ATOL)

    # each block's attention by hand, on its input: BERT masks the padded keys only
    h = np.asarray(keras.Model(bert.inputs, bert.get_layer("embeddings_dropout").output)(x))
    key_mask = np.broadcast_to(x["padding_mask"][:, None, :], (3, 6, 6)).astype(bool)
    for i, block_input in enumerate((h, block0)):
        mha = bert.get_layer(f"transformer_layer_{i}")._self_attention_layer
        _, scores = mha(block_input, block_input, attention_mask=key_mask, return_attention_scores=True)
        dumped = values[f"activations/transformer_layer_{i}/self_attention_layer/softmax"]
        np.testing.assert_allclose(dumped, np.asarray(scores), atol=ATOL, err_msg=f"block {i}")
        assert np.all(dumped[0, :, :, 4:] == 0)


def test_export_dump_gemma_block_and_attention(cli, exports, tmp_path):
    import keras

    out = tmp_path / "gemma.h5"
    r = cli("dump", "-q", "-m", exports / "gemma_export", "-l", "decoder_block_0",
            "-l", "decoder_block_0/attention/softmax", "-l", "decoder_block_1/attention/softmax",
            "-o", out, exports / "gemma.npz")
    assert r.exit_code == 0, r.stderr
    values = read_all(out)
    gemma = load(exports / "gemma.keras")
    x = feeds(exports / "gemma.npz")
    block0 = keras.Model(gemma.inputs, gemma.get_layer("decoder_block_0").output)(x)
    np.testing.assert_allclose(values["activations/decoder_block_0/__output__"], np.asarray(block0), atol=ATOL)

    # the attention probabilities as Keras computes them in the model's own call: each
    # block's Softmax layer records what it returns (Gemma's attention has no
    # return_attention_scores)
    recorded = {}
    for i in (0, 1):
        softmax = gemma.get_layer(f"decoder_block_{i}").attention.softmax
        softmax.call = lambda *a, _call=softmax.call, _i=i, **k: recorded.setdefault(_i, _call(*a, **k))
    gemma(x)
    for i in (0, 1):
        dumped = values[f"activations/decoder_block_{i}/attention/softmax"]
        np.testing.assert_allclose(dumped, np.asarray(recorded[i]), atol=ATOL, err_msg=f"block {i}")
        assert np.all(dumped[0, ..., 4:] == 0) and np.all(np.triu(np.ones((6, 6)), 1) * dumped == 0)


def test_export_keeps_the_names_a_model_gives_its_layers(cli, tmp_path_factory):
    """The rename is for the sub-layers of a layer that computes (a custom layer's `call`):
    the layers of a model, nested Sequential included, keep their counter-numbered names,
    which their config holds."""
    import keras

    @keras.saving.register_keras_serializable(package="tensorprobe_tests")
    class Residual(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inner = keras.layers.Dense(4)  # auto-named from the counter: dense_N

        def call(self, x):
            return x + self.inner(x)

    folder = tmp_path_factory.mktemp("names")
    keras.utils.set_random_seed(5)
    for _ in range(2):  # whatever ran before, the names below are numbered
        keras.layers.Dense(1), keras.layers.LayerNormalization()
    x = keras.Input((4,), name="x")
    nested = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4), keras.layers.LayerNormalization()])
    model = keras.Model(x, keras.layers.Dense(2)(Residual(name="residual")(nested(x))), name="named")
    model.save(folder / "named.keras")
    model.export(str(folder / "named_export"), verbose=False)
    dense, norm = (layer.name for layer in nested.layers)
    head = model.layers[-1].name
    assert dense.startswith("dense_") and norm.startswith("layer_normalization_") and head.startswith("dense_")

    r = cli("layers", folder / "named_export", "--json")
    assert r.exit_code == 0, r.stderr
    exported = [row["path"] for row in json.loads(r.stdout)]
    assert exported == [nested.name, f"{nested.name}/{dense}", f"{nested.name}/{norm}", "residual",
                        "residual/dense", head]
    r = cli("layers", folder / "named.keras", "--json")
    assert r.exit_code == 0, r.stderr
    assert [row["path"] for row in json.loads(r.stdout) if row["class"] != "InputLayer"] == exported
