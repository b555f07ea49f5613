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
