"""Integer, bool and string data on the way in and out: statistics of integer and bool
datasets (issue 22 item 8), text inputs (issue 22 item 9), and .npy headers checked before
anything runs (issue 29 item 16).

Every value is computed again here: by NumPy over the dataset itself, or by Keras calling
the model (or a sub-model of it) on the same inputs.
"""

import json

import h5py
import numpy as np
import pytest

from conftest import error_line


@pytest.fixture(scope="module")
def int_models(tmp_path_factory):
    """An argmax head, an int32 input with an Embedding, and a uint64 input cast to float."""
    import keras

    L = keras.layers
    folder = tmp_path_factory.mktemp("int_models")
    keras.utils.set_random_seed(11)
    x = keras.Input((4,), name="x")
    h = L.Dense(5, name="d")(x)
    keras.Model(x, keras.ops.argmax(h, axis=-1), name="argmax_head").save(folder / "argmax.keras")
    ids = keras.Input((3,), dtype="int32", name="ids")
    e = L.Embedding(10, 2, name="emb")(ids)
    keras.Model(ids, L.Flatten(name="flat")(e), name="int_input").save(folder / "int_input.keras")
    big = keras.Input((3,), dtype="uint64", name="big")
    keras.Model(big, L.Dense(2, name="d")(keras.ops.cast(big, "float32")), name="u64").save(folder / "u64.keras")
    rng = np.random.default_rng(5)
    np.save(folder / "x.npy", rng.normal(size=(7, 4)).astype("float32"))
    np.save(folder / "ids.npy", rng.integers(0, 10, (6, 3)).astype("int32"))
    u64 = np.array([[2**64 - 1, 0, 5], [2**63 + 3, 7, 1], [2**53 + 1, 2, 2**64 - 2]], np.uint64)
    np.save(folder / "u64.npy", u64)
    return folder


def _check_stats(ds, values):
    """A dataset's statistics attributes against NumPy over its own values: min and max exact
    and in the data's own type, mean and std in float64."""
    assert ds.attrs["min"].dtype == values.dtype and ds.attrs["min"] == values.min()
    assert ds.attrs["max"].dtype == values.dtype and ds.attrs["max"] == values.max()
    wide = values.astype(np.float64)
    assert ds.attrs["mean"] == pytest.approx(wide.mean(), rel=1e-12)
    assert ds.attrs["std"] == pytest.approx(wide.std(), rel=1e-12)
    assert ds.attrs["zeros_fraction"] == pytest.approx(np.count_nonzero(values == 0) / values.size)
    assert ds.attrs["nan_count"] == 0 and ds.attrs["inf_count"] == 0
    if values.ndim >= 2:
        flat = values.reshape(-1, values.shape[-1])
        np.testing.assert_array_equal(ds.attrs["channel_min"], flat.min(axis=0))
        np.testing.assert_array_equal(ds.attrs["channel_max"], flat.max(axis=0))
        assert ds.attrs["channel_min"].dtype == values.dtype
        np.testing.assert_allclose(ds.attrs["channel_mean"], flat.astype(np.float64).mean(axis=0), rtol=1e-12)


def test_argmax_head_is_written_with_integer_statistics(cli, int_models, keras_model, tmp_path):
    import keras

    out = tmp_path / "a.h5"
    r = cli("dump", "-m", int_models / "argmax.keras", "--all", "-b", "3", "-o", out, int_models / "x.npy")
    assert r.exit_code == 0, r.stderr
    model = keras_model(str(int_models / "argmax.keras"))
    x = np.load(int_models / "x.npy")
    expected = np.asarray(model(x))
    dense = np.asarray(keras.Model(model.inputs, model.get_layer("d").output)(x))
    with h5py.File(out, "r") as f:
        names = sorted(f["activations"])
        assert names == ["argmax", "d"]
        head = f["activations/argmax"][()]
        np.testing.assert_array_equal(head, expected)
        np.testing.assert_array_equal(head, dense.argmax(axis=-1))
        _check_stats(f["activations/argmax"], head)
    summary = json.loads(cli("summary", out, "--json").stdout)
    record = {d["name"]: d for d in summary["datasets"]}["argmax"]
    assert (record["min"], record["max"]) == (int(expected.min()), int(expected.max()))
    assert type(record["min"]) is int


def test_int32_input_layer_dumped_with_exact_statistics(cli, int_models, tmp_path):
    out = tmp_path / "a.h5"
    r = cli("dump", "-m", int_models / "int_input.keras", "-l", "ids", "-l", "emb", "-b", "4", "-o", out,
            int_models / "ids.npy")
    assert r.exit_code == 0, r.stderr
    ids = np.load(int_models / "ids.npy")
    with h5py.File(out, "r") as f:
        assert f["activations/ids"].dtype == np.int32
        np.testing.assert_array_equal(f["activations/ids"][()], ids)
        _check_stats(f["activations/ids"], ids)


def test_uint64_extremes_exact_in_writer_summary_api_and_merge(cli, int_models, tmp_path):
    """2**64 - 1 and 2**53 + 1 are not float64 numbers: they must survive as themselves."""
    import tensorprobe

    u64 = np.load(int_models / "u64.npy")
    model = int_models / "u64.keras"
    summary = tensorprobe.dump(model, u64, tmp_path / "api.h5", layers=["big"], batch_size=2)
    record = {d["name"]: d for d in summary["datasets"]}["big"]
    assert record["max"] == 2**64 - 1 and record["min"] == 0
    assert record["channel_max"] == [2**64 - 1, 7, 2**64 - 2]
    assert record["channel_min"] == [2**53 + 1, 0, 1]
    with tensorprobe.open_dump(tmp_path / "api.h5") as d:
        np.testing.assert_array_equal(d["big"][()], u64)
        assert d.summary()["datasets"][0]["channel_min"] == [2**53 + 1, 0, 1]
    with h5py.File(tmp_path / "api.h5", "r") as f:
        _check_stats(f["activations/big"], u64)

    shards = []
    for k in range(2):
        shard = tmp_path / f"part{k}.h5"
        r = cli("dump", "-m", model, "-l", "big", "--shard", f"{k}/2", "-o", shard, int_models / "u64.npy")
        assert r.exit_code == 0, r.stderr
        shards.append(shard)
    r = cli("merge", *shards, "-o", tmp_path / "merged.h5")
    assert r.exit_code == 0, r.stderr
    with h5py.File(tmp_path / "merged.h5", "r") as f:
        _check_stats(f["activations/big"], u64)


def test_int64_and_bool_statistics_in_batches():
    """RunningStats over batches of one row: int64 extremes exact, bool min/max bools."""
    from tensorprobe.stats import RunningStats

    info = np.iinfo(np.int64)
    cases = [np.array([[info.min, 3], [5, info.max], [info.max - 1, -2]]),
             np.array([[True, False], [True, True], [False, True]]),
             np.arange(24, dtype=np.int8).reshape(3, 2, 4) - 12]
    for values in cases:
        st = RunningStats()
        for row in values:
            st.update(row[np.newaxis])
        result, channels = st.result(), st.channel_result()
        assert result["min"] == values.min() and result["max"] == values.max()
        assert np.asarray(result["min"]).dtype == values.dtype
        assert result["mean"] == pytest.approx(values.astype(np.float64).mean(), rel=1e-12)
        assert result["std"] == pytest.approx(values.astype(np.float64).std(), rel=1e-12)
        flat = values.reshape(-1, values.shape[-1])
        np.testing.assert_array_equal(channels["channel_min"], flat.min(axis=0))
        np.testing.assert_array_equal(channels["channel_max"], flat.max(axis=0))


# ---------------------------------------------------------------- text inputs (issue 22 item 9)

TEXTS = ["the cat sat", "a dog ran far away", "", "héllo wörld", "dog\rcat", "the the the"]


@pytest.fixture(scope="module")
def text_models(tmp_path_factory):
    """A TextVectorization classifier on `Input((), "string")`, a StringLookup on
    `Input((1,), "string")`, and a float model to refuse text."""
    import keras

    L = keras.layers
    folder = tmp_path_factory.mktemp("text_models")
    keras.utils.set_random_seed(12)
    text = keras.Input((), dtype="string", name="text")
    tv = L.TextVectorization(max_tokens=20, output_sequence_length=5, name="tv")
    tv.adapt(["the cat sat", "a dog ran far away", "héllo wörld"])
    e = L.Embedding(20, 3, name="emb")(tv(text))
    keras.Model(text, L.Dense(2, name="head")(L.GlobalAveragePooling1D(name="gap")(e)),
                name="classifier").save(folder / "classifier.keras")
    word = keras.Input((1,), dtype="string", name="word")
    keras.Model(word, L.StringLookup(vocabulary=["cat", "dog", "héllo wörld"], name="lookup")(word),
                name="lookup").save(folder / "lookup.keras")
    return folder


def _keras_text(model_path, keras_model, layer, texts, shape=()):
    import keras
    import tensorflow as tf

    model = keras_model(str(model_path))
    sub = keras.Model(model.inputs, model.get_layer(layer).output)
    return np.asarray(sub(tf.reshape(tf.constant(texts), (-1, *shape))))


def test_text_file_lines_crlf_empty_lines_bom(cli, text_models, keras_model, tmp_path):
    """CRLF ends like LF, a final newline adds no sample, empty lines are samples, a BOM is
    not text, a lone CR stays inside its line."""
    path = tmp_path / "texts.txt"
    body = "\r\n".join(TEXTS[:4]) + "\n" + "\n".join(TEXTS[4:]) + "\n"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    out = tmp_path / "a.h5"
    r = cli("dump", "-m", text_models / "classifier.keras", "-l", "tv", "-l", "head", "-b", "4", "-o", out, path)
    assert r.exit_code == 0, r.stderr
    with h5py.File(out, "r") as f:
        assert [s.decode() for s in f["inputs/source"][()]] == [f"{path}[{i}]" for i in range(len(TEXTS))]
        np.testing.assert_array_equal(f["activations/tv"][()],
                                      _keras_text(text_models / "classifier.keras", keras_model, "tv", TEXTS))
        np.testing.assert_allclose(f["activations/head"][()],
                                   _keras_text(text_models / "classifier.keras", keras_model, "head", TEXTS),
                                   rtol=1e-6, atol=1e-7)
        _check_stats(f["activations/tv"], f["activations/tv"][()])


def test_string_arrays_and_stdin_feed_a_text_input(cli, text_models, keras_model, tmp_path):
    expected = _keras_text(text_models / "classifier.keras", keras_model, "tv", TEXTS)
    unicode, utf8 = np.array(TEXTS), np.array([t.encode("utf-8") for t in TEXTS])
    assert unicode.dtype.kind == "U" and utf8.dtype.kind == "S"
    for name, array in (("u.npy", unicode), ("s.npy", utf8)):
        np.save(tmp_path / name, array)
        out = tmp_path / f"{name}.h5"
        r = cli("dump", "-m", text_models / "classifier.keras", "-l", "tv", "-b", "4", "-o", out, tmp_path / name)
        assert r.exit_code == 0, r.stderr
        with h5py.File(out, "r") as f:
            np.testing.assert_array_equal(f["activations/tv"][()], expected)
    out = tmp_path / "stdin.h5"
    r = cli("dump", "-m", text_models / "classifier.keras", "-l", "tv", "-o", out, "-",
            input=(tmp_path / "u.npy").read_bytes())
    assert r.exit_code == 0, r.stderr
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["activations/tv"][()], expected)
        assert f["inputs/source"][0].decode() == "<stdin>[0]"


def test_text_file_feeds_a_string_input_of_shape_one(cli, text_models, keras_model, tmp_path):
    words = ["dog", "cat", "bird", "héllo wörld"]
    path = tmp_path / "words.txt"
    path.write_text("\n".join(words), encoding="utf-8")  # no newline at the end
    out = tmp_path / "a.h5"
    r = cli("dump", "-m", text_models / "lookup.keras", "-l", "lookup", "-o", out, path)
    assert r.exit_code == 0, r.stderr
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(
            f["activations/lookup"][()], _keras_text(text_models / "lookup.keras", keras_model, "lookup", words, (1,)))
        assert f["activations/lookup"].shape == (4, 1)


def test_api_takes_lists_of_str_and_string_arrays(text_models, keras_model, tmp_path):
    import tensorprobe

    model = text_models / "classifier.keras"
    expected = _keras_text(model, keras_model, "tv", TEXTS)
    for x in (TEXTS, tuple(TEXTS), np.array(TEXTS), np.array(TEXTS, dtype=object)):
        acts = tensorprobe.activations(model, x, layers=["tv"], batch_size=4)
        np.testing.assert_array_equal(acts["tv"], expected)
    summary = tensorprobe.dump(model, TEXTS, tmp_path / "a.h5", layers=["tv"])
    assert summary["samples"] == len(TEXTS)
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert [s.decode() for s in f["inputs/source"][()]] == [f"<array>[{i}]" for i in range(len(TEXTS))]
        np.testing.assert_array_equal(f["activations/tv"][()], expected)
    # one str is still a path, as for every model
    path = tmp_path / "t.txt"
    path.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    np.testing.assert_array_equal(tensorprobe.activations(model, str(path), layers=["tv"])["tv"], expected)
    np.testing.assert_array_equal(tensorprobe.activations(model, [path], layers=["tv"])["tv"], expected)


def test_api_refuses_mixed_objects(text_models):
    import tensorprobe
    from tensorprobe.errors import InputError

    with pytest.raises(InputError, match=r"<array>: an array of Python objects \(bytes, str\) is taken only"):
        tensorprobe.activations(text_models / "classifier.keras", np.array(["a", b"b"], dtype=object),
                                layers=["tv"])


def test_text_refusals(cli, text_models, int_models, tmp_path):
    classifier = text_models / "classifier.keras"
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nnot \xff utf-8\n")
    r = cli("dump", "-m", classifier, "-l", "tv", "-o", tmp_path / "a.h5", bad)
    assert r.exit_code == 1
    assert error_line(r) == f"error: {bad}: line 2 is not UTF-8 text (invalid start byte at byte 4)"

    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    r = cli("dump", "-m", classifier, "-l", "tv", "-o", tmp_path / "a.h5", empty)
    assert error_line(r) == f"error: {empty}: the text file is empty: it holds no line, so no sample"

    long = tmp_path / "long.txt"
    long.write_bytes(b"x" * 101)
    r = cli("dump", "-m", classifier, "-l", "tv", "-o", tmp_path / "a.h5", long,
            env={"TENSORPROBE_MAX_ARRAY_BYTES": "100"})
    assert error_line(r) == (f"error: {long}: the text file holds 101 bytes, more than the limit of 100 bytes; set "
                             "TENSORPROBE_MAX_ARRAY_BYTES to raise it (0 for none), for a file you trust")

    np.save(tmp_path / "objects.npy", np.array(["a", "b"], dtype=object), allow_pickle=True)
    r = cli("dump", "-m", classifier, "-l", "tv", "-o", tmp_path / "a.h5", tmp_path / "objects.npy")
    assert error_line(r) == f"error: {tmp_path / 'objects.npy'}: holds Python objects, which are never unpickled"

    np.save(tmp_path / "numbers.npy", np.zeros(3, np.float32))
    r = cli("dump", "-m", classifier, "-l", "tv", "-o", tmp_path / "a.h5", tmp_path / "numbers.npy")
    assert error_line(r) == (f"error: {tmp_path / 'numbers.npy'}: dtype float32 cannot be fed to input 'text', "
                             "which takes strings: give a .txt file (one sample a line) or a .npy of strings")

    good = tmp_path / "good.txt"
    good.write_text("a b\n", encoding="utf-8")
    r = cli("dump", "-m", int_models / "argmax.keras", "--all", "-o", tmp_path / "a.h5", good)
    assert error_line(r) == f"error: {good}: a text file feeds only a string input; input x (None, 4) float32 is not one"
    np.save(tmp_path / "strings.npy", np.array([["a"] * 4]))
    r = cli("dump", "-m", int_models / "argmax.keras", "--all", "-o", tmp_path / "a.h5", tmp_path / "strings.npy")
    assert error_line(r) == (f"error: {tmp_path / 'strings.npy'}: holds strings (<U1), which cannot be fed to "
                             "input 'x' (float32); expected a numeric array")

    r = cli("dump", "-m", classifier, "-l", "tv", "--scale", "2", "-o", tmp_path / "a.h5", good)
    assert r.exit_code == 2
    assert error_line(r) == ("error: --scale, --offset and --preprocess need floating-point inputs; "
                             "input text (None,) string is not")
    assert not (tmp_path / "a.h5").exists()


def test_folders_pass_over_text_files(cli, text_models, tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "notes.txt").write_text("a\n", encoding="utf-8")
    r = cli("dump", "-m", text_models / "classifier.keras", "-l", "tv", "-o", tmp_path / "a.h5", folder)
    assert r.exit_code == 2
    assert error_line(r) == (f"error: input '{folder}': the folder holds no .npy, .npz or image file "
                             "(PNG, JPEG, BMP, GIF)")


# ---------------------------------------------------------------- forged headers, option values (issue 29 item 16)


def _forged_npy(path, shape_text):
    """A float32 .npy of 3x4 zeros whose header declares `shape_text` instead (padded to the
    same header length, as NumPy writes it)."""
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.zeros((3, 4), np.float32))
    data = buffer.getvalue()
    header_end = data.index(b"\n") + 1
    header = data[10:header_end].decode("latin1")
    forged = header.replace("(3, 4)", shape_text)
    forged = forged.rstrip("\n").rstrip(" ")
    forged = forged + " " * (header_end - 10 - len(forged) - 1) + "\n"
    assert len(forged) == header_end - 10, "the forged shape must fit the header's padding"
    path.write_bytes(data[:10] + forged.encode("latin1") + data[header_end:])
    return path


def test_negative_shape_in_a_header_is_refused_before_running(cli, int_models, tmp_path):
    path = _forged_npy(tmp_path / "neg.npy", "(-1, 4)")
    with pytest.raises(ValueError):  # NumPy itself cannot read it back
        np.load(path).reshape(-1)[0]
    out = tmp_path / "a.h5"
    r = cli("dump", "-m", int_models / "argmax.keras", "--all", "-o", out, path)
    assert r.exit_code == 1
    assert error_line(r) == (f"error: {path}: not a readable .npy file (its header declares the shape "
                             "(-1, 4), with a negative dimension)")
    assert not out.exists()


def test_named_input_without_a_name_shows_the_value_as_typed(cli, int_models, tmp_path):
    r = cli("dump", "-m", int_models / "argmax.keras", "--all", "--input", "x=a.npy", "--input", "=x",
            "-o", tmp_path / "a.h5")
    assert r.exit_code == 2
    assert error_line(r) == ("error: Invalid value for '--input': '=x': expected NAME=PATH, e.g. image=photos/ "
                             "(see 'cli dump --help')")  # CliRunner's program name
