"""String-valued layers and the API's edges left after issue 22's fixes (items 9 and 14):
string datasets stored as variable-length UTF-8 (no statistics) and read back by `summary`,
`diff`, `merge` and the API; a ragged value (TextVectorization's inner StringLookup) left out
of --all with a reason; keras-hub models in memory; errors in the API's words; the option
actually at fault named for every output path.

Every value is computed again here, by Keras calling the model (or a sub-model, or a layer
by hand) on tf.constant strings.
"""

import json

import h5py
import numpy as np
import pytest

from conftest import error_line
from tensorprobe import errors

TEXTS = ["the cat sat", "a dog ran far away", "héllo wörld", "zebra", "", "the dog"]
TOKENS = [["cat", "dog", "bird"], ["héllo", "cat", "cat"], ["zz", "dog", "héllo"], ["", "cat", "dog"]]


@pytest.fixture(scope="module")
def string_models(tmp_path_factory):
    """A TextVectorization classifier on `Input((), "string")`, and a StringLookup to ids and
    back to tokens (a string output) on `Input((3,), "string")`."""
    import keras

    L = keras.layers
    folder = tmp_path_factory.mktemp("string_models")
    keras.utils.set_random_seed(21)
    text = keras.Input((), dtype="string", name="text")
    tv = L.TextVectorization(max_tokens=20, output_sequence_length=5, name="tv")
    tv.adapt(["the cat sat", "a dog ran far away", "héllo wörld"])
    e = L.Embedding(20, 3, name="emb")(tv(text))
    keras.Model(text, L.Dense(2, name="head")(L.GlobalAveragePooling1D(name="gap")(e)),
                name="classifier").save(folder / "classifier.keras")
    toks = keras.Input((3,), dtype="string", name="toks")
    vocabulary = ["cat", "dog", "héllo"]
    ids = L.StringLookup(vocabulary=vocabulary, name="ids")(toks)
    back = L.StringLookup(vocabulary=vocabulary, invert=True, name="tokens")(ids)
    keras.Model(toks, [ids, back], name="lookup").save(folder / "lookup.keras")
    toks = keras.Input((3,), dtype="string", name="toks")  # the same ids, back to swapped words
    ids = L.StringLookup(vocabulary=vocabulary, name="ids")(toks)
    back = L.StringLookup(vocabulary=["dog", "cat", "héllo"], invert=True, name="tokens")(ids)
    keras.Model(toks, [ids, back], name="lookup").save(folder / "swapped.keras")
    toks = keras.Input((3,), dtype="string", name="toks")  # a SparseTensor its symbolic output calls dense
    hot = L.StringLookup(vocabulary=vocabulary, output_mode="multi_hot", sparse=True, name="hot")(toks)
    keras.Model(toks, L.Dense(2, name="d")(hot), name="sparse").save(folder / "sparse.keras")
    np.save(folder / "texts.npy", np.array(TEXTS))
    np.save(folder / "tokens.npy", np.array(TOKENS))
    return folder


def _keras(model_path, keras_model, layer, values):
    """What Keras computes for `layer` (a sub-model of the loaded file) on tf.constant strings."""
    import keras
    import tensorflow as tf

    model = keras_model(str(model_path))
    sub = keras.Model(model.inputs, model.get_layer(layer).output)
    return np.asarray(sub(tf.constant(values)))


def test_all_on_a_text_model_and_the_string_input_layer(cli, string_models, keras_model, tmp_path):
    model = string_models / "classifier.keras"
    out = tmp_path / "all.h5"
    r = cli("dump", "-m", model, "--all", "-b", "4", "-o", out, string_models / "texts.npy")
    assert r.exit_code == 0, r.stderr
    with h5py.File(out, "r") as f:
        # tv/string_lookup (a ragged value) is left out; the InputLayer is never part of --all
        assert sorted(f["activations"]) == ["emb", "gap", "head", "tv"]
        np.testing.assert_array_equal(f["activations/tv"][()], _keras(model, keras_model, "tv", TEXTS))
        np.testing.assert_allclose(f["activations/head"][()], _keras(model, keras_model, "head", TEXTS),
                                   rtol=1e-6, atol=1e-7)
    out = tmp_path / "text.h5"
    r = cli("dump", "-m", model, "-l", "text", "-l", "tv", "-b", "4", "-o", out, string_models / "texts.npy")
    assert r.exit_code == 0, r.stderr
    expected = _keras(model, keras_model, "text", TEXTS)  # Keras' own value of the input layer: bytes
    assert expected.dtype == object and expected[2] == "héllo wörld".encode()
    with h5py.File(out, "r") as f:
        ds = f["activations/text"]
        assert h5py.check_string_dtype(ds.dtype).encoding == "utf-8" and ds.shape == (6,)
        assert ds[()].tolist() == expected.tolist()
        assert ds.asstr()[()].tolist() == TEXTS
        assert not {"min", "max", "mean", "std", "zeros_fraction", "nan_count"} & set(ds.attrs)
        from tensorprobe import store

        assert store.content_digest(f) == f.attrs["data_sha256"]  # strings digested alike when written
    r = cli("summary", out, "--json")
    assert r.exit_code == 0, r.stderr
    records = {d["name"]: d for d in json.loads(r.stdout)["datasets"]}
    assert records["text"]["dtype"] == "string" and records["text"]["sample_shape"] == []
    assert "min" not in records["text"] and records["tv"]["max"] == int(_keras(model, keras_model, "tv", TEXTS).max())
    r = cli("summary", out)
    assert r.exit_code == 0 and "text" in r.stdout and "string" in r.stdout


def test_string_output_of_a_string_lookup(cli, string_models, keras_model, tmp_path):
    model = string_models / "lookup.keras"
    out = tmp_path / "lookup.h5"
    r = cli("dump", "-m", model, "--all", "-b", "3", "-o", out, string_models / "tokens.npy")
    assert r.exit_code == 0, r.stderr
    tokens = _keras(model, keras_model, "tokens", TOKENS)
    assert tokens[2, 0] == b"[UNK]"  # an out-of-vocabulary word, as Keras maps it
    with h5py.File(out, "r") as f:
        assert sorted(f["activations"]) == ["ids", "tokens"]
        assert f["activations/tokens"].shape == (4, 3)
        assert f["activations/tokens"][()].tolist() == tokens.tolist()
        np.testing.assert_array_equal(f["activations/ids"][()], _keras(model, keras_model, "ids", TOKENS))


def test_a_ragged_runtime_layer_has_no_output_and_says_why(cli, string_models, keras_model, tmp_path):
    import tensorflow as tf

    model = string_models / "classifier.keras"
    # what Keras hands on inside TextVectorization: its StringLookup maps the split tokens to
    # a RaggedTensor; TextVectorization itself pads it to the dense (N, 5) ids it returns
    tv = keras_model(str(model)).get_layer("tv")
    inner = tv._lookup_layer(tf.strings.split(tf.strings.lower(tf.constant(TEXTS[:2]))))
    assert isinstance(inner, tf.RaggedTensor) and inner.row_lengths().numpy().tolist() == [3, 5]
    r = cli("dump", "-m", model, "-l", "tv/string_lookup", "-o", tmp_path / "a.h5", string_models / "texts.npy")
    assert r.exit_code == 2
    assert error_line(r) == ("error: --layer 'tv/string_lookup' has no output: its value is a tf.RaggedTensor, "
                             "which has no array of one shape to store; dump 'tv', which makes it dense, instead")
    r = cli("dump", "-m", model, "--match", "string_lookup", "-o", tmp_path / "a.h5", string_models / "texts.npy")
    assert r.exit_code == 2
    assert error_line(r) == "error: --match 'string_lookup' matches no layer path that has an output"
    assert not (tmp_path / "a.h5").exists()


def test_a_sparse_value_is_stored_dense(cli, string_models, keras_model, tmp_path):
    import keras
    import tensorflow as tf

    path = string_models / "sparse.keras"
    model = keras_model(str(path))
    hot = keras.Model(model.inputs, model.get_layer("hot").output)(tf.constant(TOKENS))
    assert isinstance(hot, tf.SparseTensor)  # what Keras hands to the Dense layer
    out = tmp_path / "sparse.h5"
    r = cli("dump", "-m", path, "--all", "-o", out, string_models / "tokens.npy")
    assert r.exit_code == 0, r.stderr
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["activations/hot"][()], tf.sparse.to_dense(hot).numpy())
        np.testing.assert_allclose(f["activations/d"][()], np.asarray(model(tf.constant(TOKENS))), rtol=1e-6,
                                   atol=1e-7)


def test_diff_counts_unequal_strings(cli, string_models, keras_model, tmp_path):
    model = string_models / "lookup.keras"
    other = [list(row) for row in TOKENS]
    other[1][2], other[3][0] = "dog", "héllo"
    np.save(tmp_path / "other.npy", np.array(other))
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    for out, inputs in ((a, string_models / "tokens.npy"), (b, tmp_path / "other.npy"), (c, string_models / "tokens.npy")):
        r = cli("dump", "-m", model, "-l", "tokens", "-o", out, inputs)
        assert r.exit_code == 0, r.stderr
    r = cli("diff", a, c, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["datasets"][0]["status"] == "match"
    r = cli("diff", a, b, "--json")
    assert r.exit_code == 1, r.stderr
    row = json.loads(r.stdout)["datasets"][0]
    ta, tb = _keras(model, keras_model, "tokens", TOKENS), _keras(model, keras_model, "tokens", other)
    unequal = np.argwhere(ta != tb)
    assert row["status"] == "values" and row["dtype_a"] == row["dtype_b"] == "string"
    assert row["outside_tolerance"] == len(unequal) == 2 and row["outside_fraction"] == len(unequal) / ta.size
    assert row["max_abs_error"] is None and row["max_rel_error"] is None
    first = unequal[0]
    assert row["worst"] == {"sample": int(first[0]), "position": [int(first[1])],
                            "a": ta[tuple(first)].decode(), "b": tb[tuple(first)].decode()}
    r = cli("diff", a, b)
    assert r.exit_code == 1
    assert (f"first difference: tokens ({100 * 2 / 12:.3g}% of values unequal; worst at 1, (2,): "
            f"'{ta[1, 2].decode()}' in A, '{tb[1, 2].decode()}' in B)") in r.stdout


def test_shards_of_string_datasets_merge(cli, string_models, tmp_path):
    model = string_models / "classifier.keras"
    whole = tmp_path / "whole.h5"
    r = cli("dump", "-m", model, "-l", "text", "-l", "tv", "-o", whole, string_models / "texts.npy")
    assert r.exit_code == 0, r.stderr
    for k in (0, 1):
        r = cli("dump", "-m", model, "-l", "text", "-l", "tv", "--shard", f"{k}/2", "-o", tmp_path / f"s{k}.h5",
                string_models / "texts.npy")
        assert r.exit_code == 0, r.stderr
    for extra in ((), ("--copy",)):
        merged = tmp_path / f"merged{len(extra)}.h5"
        r = cli("merge", tmp_path / "s0.h5", tmp_path / "s1.h5", "-o", merged, *extra)
        assert r.exit_code == 0, r.stderr
        with h5py.File(merged, "r") as f:
            assert f["activations/text"].asstr()[()].tolist() == TEXTS
        r = cli("diff", merged, whole)
        assert r.exit_code == 0, r.stdout + r.stderr


def test_api_returns_and_reads_strings(string_models, keras_model, tmp_path):
    import tensorprobe

    model = string_models / "lookup.keras"
    acts = tensorprobe.activations(model, np.array(TOKENS), layers="tokens")
    expected = _keras(model, keras_model, "tokens", TOKENS)
    assert acts["tokens"].dtype == object and acts["tokens"].tolist() == expected.tolist()
    out = tmp_path / "api.h5"
    tensorprobe.dump(model, np.array(TOKENS), out, layers=["tokens", "ids"])
    with tensorprobe.open_dump(out) as dump:
        assert dump["tokens"][:].tolist() == expected.tolist()
    assert tensorprobe.diff(out, out)["match"] is True


@pytest.fixture(scope="module")
def bert():
    """A tiny keras-hub BertBackbone built from its constructor, and an input batch."""
    import keras_hub
    import keras

    keras.utils.set_random_seed(22)
    model = keras_hub.models.BertBackbone(vocabulary_size=30, num_layers=1, num_heads=2, hidden_dim=4,
                                          intermediate_dim=8, max_sequence_length=6)
    x = {"token_ids": np.array([[1, 2, 3, 4, 0, 0], [5, 6, 7, 8, 9, 1]], "int32"),
         "segment_ids": np.array([[0, 0, 0, 1, 1, 1], [0] * 6], "int32"),
         "padding_mask": np.array([[1, 1, 1, 1, 0, 0], [1] * 6], "int32")}
    return model, x


def test_keras_hub_model_in_memory(bert, tmp_path):
    import keras

    import tensorprobe

    model, x = bert
    assert type(model).__module__.startswith("keras_hub")
    names = ["embeddings_layer_norm", "transformer_layer_0"]
    acts = tensorprobe.activations(model, x, layers=names)
    for name in names:
        expected = keras.Model(model.inputs, model.get_layer(name).output)(x)
        np.testing.assert_allclose(acts[name], np.asarray(expected), rtol=1e-5, atol=1e-6)
    out = tmp_path / "bert.h5"
    summary = tensorprobe.dump(model, x, out, layers=names)
    assert summary["samples"] == 2
    with tensorprobe.open_dump(out) as dump:
        np.testing.assert_array_equal(dump["transformer_layer_0"][:], acts["transformer_layer_0"])
    report = tensorprobe.compare(model, model, x, layers=names)
    assert report["match"] is True and [p["path"] for p in report["pairs"]] == names
    with pytest.raises(errors.UsageError) as e:
        tensorprobe.activations({"not": "a model"}, x, layers=names)
    assert str(e.value) == "model: expected a path or a keras.Model, not dict"


def test_preparation_errors_speak_the_api_words(string_models):
    import tensorprobe

    model, x = string_models / "classifier.keras", TEXTS
    cases = [
        (dict(size=(100000, 100000)), "size 100000x100000: 10,000,000,000 pixels, more than the limit of "
                                      "178,956,970 pixels; set TENSORPROBE_MAX_IMAGE_PIXELS to raise it (0 for none)"),
        (dict(resize="bogus"), "resize 'bogus': choose from stretch, crop, pad, none"),
        (dict(interpolation="cubic"), "interpolation 'cubic': choose from bilinear, nearest, bicubic, area, "
                                      "lanczos3, lanczos5, gaussian, mitchellcubic"),
        (dict(scale="1/255"), "scale '1/255': expected a number"),
        (dict(scale=2.0), "scale, offset and preprocess need floating-point inputs; input text (None,) string "
                          "is not"),
    ]
    for kwargs, message in cases:
        for call in (lambda: tensorprobe.activations(model, x, layers="tv", **kwargs),
                     lambda: tensorprobe.dump(model, x, "never.h5", layers="tv", **kwargs)):
            with pytest.raises(errors.UsageError) as e:
                call()
            assert str(e.value) == message


def test_the_output_at_fault_is_named(cli, string_models, keras_model, tmp_path):
    import tensorprobe

    model, texts = string_models / "classifier.keras", string_models / "texts.npy"
    taken = tmp_path / "taken.h5"
    taken.write_bytes(b"")
    for option in ("--save-a", "--save-b"):
        r = cli("compare", model, model, "-l", "tv", option, taken, texts)
        assert r.exit_code == 2
        assert error_line(r) == f"error: {option} '{taken}' exists; pass --overwrite to replace it"
        r = cli("compare", model, model, "-l", "tv", option, tmp_path / "gone" / "x.h5", texts)
        assert r.exit_code == 2
        assert error_line(r) == (f"error: {option} '{tmp_path / 'gone' / 'x.h5'}': folder "
                                 f"'{tmp_path / 'gone'}' does not exist")
    (tmp_path / "taken.json").write_text("{}")
    r = cli("compare", model, model, "-l", "tv", "--node-data", tmp_path / "taken.json", texts)
    assert error_line(r) == f"error: --node-data '{tmp_path / 'taken.json'}' exists; pass --overwrite to replace it"
    for argument in ("save_a", "save_b"):
        with pytest.raises(errors.OutputExistsError) as e:
            tensorprobe.compare(model, model, TEXTS, layers="tv", **{argument: taken})
        assert str(e.value) == f"{argument} '{taken}' exists; pass overwrite to replace it"
    saved = tmp_path / "b.h5"
    assert tensorprobe.compare(model, model, TEXTS, layers="tv", save_b=saved)["match"] is True
    with tensorprobe.open_dump(saved) as dump:
        np.testing.assert_array_equal(dump["tv"][:], _keras(model, keras_model, "tv", TEXTS))


def test_compare_counts_unequal_strings(cli, string_models, keras_model):
    a, b = string_models / "lookup.keras", string_models / "swapped.keras"
    r = cli("compare", a, b, "-l", "ids", "-l", "tokens", "--json", string_models / "tokens.npy")
    assert r.exit_code == 1, r.stderr
    pairs = {p["path"]: p for p in json.loads(r.stdout)["pairs"]}
    np.testing.assert_array_equal(_keras(a, keras_model, "ids", TOKENS), _keras(b, keras_model, "ids", TOKENS))
    assert pairs["ids"]["status"] == "ok" and pairs["ids"]["max_abs"] == 0
    ta, tb = _keras(a, keras_model, "tokens", TOKENS), _keras(b, keras_model, "tokens", TOKENS)
    unequal = np.argwhere(ta != tb)
    assert len(unequal) == 7  # every cat and dog
    tokens = pairs["tokens"]
    assert tokens["status"] == "differ" and tokens["outside_tolerance"] == len(unequal)
    assert (tokens["worst_sample"], tokens["worst_position"]) == (int(unequal[0][0]), [int(unequal[0][1])])
    assert tokens["max_abs"] is None and tokens["cosine"] is None and tokens["snr_db"] is None
    assert json.loads(r.stdout)["first_divergence"] == "tokens"
    r = cli("compare", a, b, "-l", "tokens", string_models / "tokens.npy")
    assert r.exit_code == 1 and "Traceback" not in r.stderr


def test_tf_keras_model_in_memory():
    import tf_keras

    import tensorprobe

    tf_keras.utils.set_random_seed(23)
    x = tf_keras.Input((3,), name="x")
    model = tf_keras.Model(x, tf_keras.layers.Dense(2, name="d")(tf_keras.layers.Dense(4, name="h")(x)))
    data = np.arange(6, dtype="float32").reshape(2, 3)
    loaded = tensorprobe.load(model)
    assert loaded.loader == f"tf_keras {tf_keras.__version__}"
    acts = tensorprobe.activations(model, data, layers="h")
    expected = tf_keras.Model(model.inputs, model.get_layer("h").output)(data)
    np.testing.assert_allclose(acts["h"], np.asarray(expected), rtol=1e-6, atol=1e-7)


def test_a_ragged_value_keras_declares_dense_is_named():
    import keras

    import tensorprobe

    tv = keras.layers.TextVectorization(max_tokens=20, ragged=True, name="tvr")
    tv.adapt(["the cat sat", "a dog ran far away"])
    text = keras.Input((), dtype="string", name="text")
    model = keras.Model(text, tv(text))
    assert model.output.ragged is False  # Keras' symbolic output, though the value is ragged
    import tensorflow as tf

    assert isinstance(model(tf.constant(["the cat", "a"])), tf.RaggedTensor)
    for kwargs in (dict(all_layers=True), dict(layers="tvr")):
        with pytest.raises(errors.UsageError) as e:
            tensorprobe.activations(model, ["the cat", "a"], **kwargs)
        assert str(e.value) == ("layer 'tvr' returns a tf.RaggedTensor (its symbolic output says dense), which "
                                "has no array of one shape to store; leave it out and dump the layer that makes "
                                "it dense")
