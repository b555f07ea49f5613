"""Models written the ordinary way, every command a user runs on them (the sweep of issue 29's
follow-up): each test computes its values with Keras/TF/numpy itself."""

import json

import h5py
import numpy as np
import pytest

from tests.conftest import error_line


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    """A text classifier (Embedding mask_zero) and a Masking + LSTM model: Keras adds its
    mask computation (not_equal, any) to the graph as bool-valued op nodes."""
    import keras

    L = keras.layers
    keras.utils.set_random_seed(3)
    folder = tmp_path_factory.mktemp("masked")
    tok = keras.Input((6,), dtype="int32", name="tok")
    out = L.Dense(2, name="cls")(L.GlobalAveragePooling1D(name="gap")(L.Embedding(20, 4, mask_zero=True, name="emb")(tok)))
    keras.Model(tok, out).save(folder / "txt.keras")
    tokens = np.random.default_rng(0).integers(1, 20, (3, 6)).astype("int32")
    tokens[:, 4:] = 0
    np.save(folder / "tok.npy", tokens)

    seq = keras.Input((5, 2), name="seq")
    h = L.LSTM(3, name="lstm")(L.Masking(0.0, name="mask")(seq))
    rnn = keras.Model(seq, L.Dense(2, name="o")(h))
    rnn.save(folder / "rnn.keras")
    x = np.random.default_rng(1).random((2, 5, 2)).astype("float32")
    x[0, 3:] = 0
    np.save(folder / "seq.npy", x)
    return folder, tokens, x, rnn, op_path(folder / "txt.keras", "NotEqual"), op_path(folder / "rnn.keras", "Any")


def op_path(model, class_name):
    """The path `layers` gives the one operation of `class_name` (Keras names the mask ops it
    makes while loading from its counter; tensorprobe renumbers them, not_equal_3 -> not_equal)."""
    from click.testing import CliRunner

    from tensorprobe.cli import cli

    rows = json.loads(CliRunner().invoke(cli, ["layers", str(model), "--json"]).stdout)
    (path,) = [row["path"] for row in rows if row["class"] == class_name]
    return path


def test_bool_mask_nodes_dump_and_summarise(masked, cli):
    """`dump --all` of a masked model wrote its bool mask datasets with bool min/max and then
    refused its own file as 'damaged' (store.check_statistics took a bool for a doctored number)."""
    folder, tokens, x, rnn, not_equal, any_ = masked
    out = folder / "txt.h5"
    result = cli("dump", "-m", str(folder / "txt.keras"), "--all", "-o", str(out), str(folder / "tok.npy"))
    assert result.exit_code == 0, result.stderr
    with h5py.File(out) as f:
        ds = f[f"activations/{not_equal}"]
        np.testing.assert_array_equal(ds[()], tokens != 0)
        assert ds.attrs["min"] == False and ds.attrs["max"] == True  # noqa: E712
    result = cli("summary", str(out))
    assert result.exit_code == 0, result.stderr
    assert not_equal in result.stdout

    out = folder / "rnn.h5"
    result = cli("dump", "-m", str(folder / "rnn.keras"), "--all", "-o", str(out), str(folder / "seq.npy"))
    assert result.exit_code == 0, result.stderr
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f[f"activations/{any_}"][()], np.any(x != 0, axis=-1))
        import keras
        lstm = keras.Model(rnn.inputs, rnn.get_layer("lstm").output)(x)
        np.testing.assert_allclose(f["activations/lstm"][()], np.asarray(lstm), atol=1e-6)
    assert cli("diff", str(out), str(out)).exit_code == 0


def test_doctored_bool_statistic_still_refused(masked, cli, tmp_path):
    """A bool is a min/max only for bool data: a float dataset's min = True is still damage."""
    folder, *_, not_equal, any_ = masked
    out = tmp_path / "d.h5"
    assert cli("dump", "-m", str(folder / "txt.keras"), "--all", "-o", str(out), str(folder / "tok.npy")).exit_code == 0
    with h5py.File(out, "a") as f:
        f["activations/gap"].attrs["min"] = True
        f[f"activations/{not_equal}"].attrs["mean"] = True
    result = cli("summary", str(out))
    assert result.exit_code == 1
    assert error_line(result).startswith(f"error: '{out}' is a damaged dump: dataset /activations/")


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """keras-hub's ViTBackbone from its constructor: its position embedding is computed from
    constant position ids, shape (1, patches, dim), and added to every sample by broadcasting."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(4)
    folder = tmp_path_factory.mktemp("vit")
    model = keras_hub.models.ViTBackbone(image_shape=(16, 16, 3), patch_size=8, num_layers=1, num_heads=2,
                                         hidden_dim=8, mlp_dim=16)
    model.save(folder / "vit.keras")
    x = np.random.default_rng(2).random((3, 16, 16, 3)).astype("float32")
    np.save(folder / "x.npy", x)
    return folder, model, x


def test_layer_output_shared_by_every_sample_is_stored_per_row(vit, cli):
    """`dump --all` of a ViT failed with "layer '.../position_embedding' returned 1 rows for a
    batch of 3": the layer's output has a leading 1 where the input has its batch axis (the
    same value for every sample). Each row now holds that value, as Keras broadcasts it."""
    folder, model, x = vit
    out = folder / "vit.h5"
    result = cli("dump", "-m", str(folder / "vit.keras"), "--all", "-o", str(out), "--batch-size", "2",
                 str(folder / "x.npy"))
    assert result.exit_code == 0, result.stderr
    patching = model.get_layer("vit_patching_and_embedding")
    position = np.asarray(patching.position_embedding(patching.position_ids))
    assert position.shape == (1, 5, 8)
    import keras
    embedded = np.asarray(keras.Model(model.inputs, patching.output)(x))
    with h5py.File(out) as f:
        acts = f["activations"]
        np.testing.assert_array_equal(acts["vit_patching_and_embedding/position_embedding"][()],
                                      np.broadcast_to(position, (3, 5, 8)))
        np.testing.assert_allclose(acts["vit_patching_and_embedding/__output__"][()], embedded, atol=1e-6)
    assert cli("summary", str(out)).exit_code == 0

    import tensorprobe
    values = tensorprobe.activations(str(folder / "vit.keras"), x[:2], layers=["position_embedding"])
    np.testing.assert_array_equal(values["vit_patching_and_embedding/position_embedding"],
                                  np.broadcast_to(position, (2, 5, 8)))


def test_bool_mask_nodes_shard_and_merge(masked, cli, tmp_path):
    """Shards of a masked model merge (their bool statistics pass the same check), and the
    merged mask equals numpy's."""
    folder, tokens, x, rnn, not_equal, any_ = masked
    for k in range(2):
        result = cli("dump", "-m", str(folder / "rnn.keras"), "--all", "--shard", f"{k}/2",
                     "-o", str(tmp_path / f"s{k}.h5"), str(folder / "seq.npy"))
        assert result.exit_code == 0, result.stderr
    merged = tmp_path / "all.h5"
    result = cli("merge", str(tmp_path / "s0.h5"), str(tmp_path / "s1.h5"), "-o", str(merged))
    assert result.exit_code == 0, result.stderr
    with h5py.File(merged) as f:
        np.testing.assert_array_equal(f[f"activations/{any_}"][()], np.any(x != 0, axis=-1))
        assert f[f"activations/{any_}"].attrs["min"] == False  # noqa: E712  (row 0 is padded)
    assert cli("summary", str(merged)).exit_code == 0


def test_int64_token_ids_feed_an_int32_input(masked, cli, tmp_path):
    """NumPy's default integer is int64; token ids saved as such were refused by an int32
    Embedding input ("cannot be cast safely"). They feed it when their values fit, as Keras
    takes them; a value outside int32 is refused, naming the file and the row."""
    import keras

    folder, tokens, *_ = masked
    ids = tmp_path / "ids.npy"
    np.save(ids, tokens.astype(np.int64))
    out = tmp_path / "t.h5"
    result = cli("dump", "-m", str(folder / "txt.keras"), "-l", "emb", "-l", "cls", "-o", str(out), str(ids))
    assert result.exit_code == 0, result.stderr
    model = keras.models.load_model(folder / "txt.keras")
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["activations/emb"][()], np.asarray(model.get_layer("emb")(tokens)))
        np.testing.assert_allclose(f["activations/cls"][()], np.asarray(model(tokens)), atol=1e-6)

    over = tokens.astype(np.int64)
    over[1, 2] = 2**40
    np.save(ids, over)
    result = cli("dump", "-m", str(folder / "txt.keras"), "-l", "emb", "-o", str(tmp_path / "o.h5"), str(ids))
    assert result.exit_code == 1
    assert error_line(result) == (f"error: {ids}: row 1 holds 1099511627776, outside the range of input 'tok' "
                                  "(int32: -2147483648 to 2147483647)")
    assert not (tmp_path / "o.h5").exists()
