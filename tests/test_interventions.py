"""Interventions: tensorprobe.run with tensorprobe.edits, and `tensorprobe run`. Every value is
checked against a computation made here another way: the model rebuilt by
keras.models.clone_model with a layer inserted, layers called by hand on an array edited in
NumPy, Keras' own forward pass."""

import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import tensorprobe
from conftest import error_line
from tensorprobe import edits

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny models, built once: a CNN with a nested functional block, a transformer block, a
    model whose nested part has an output nobody reads; their inputs."""
    import keras

    L = keras.layers
    folder = tmp_path_factory.mktemp("interventions")
    keras.utils.set_random_seed(7)

    block_in = keras.Input((6, 6, 4))
    b = L.Conv2D(4, 3, padding="same", activation="relu", name="conv_a")(block_in)
    b = L.Conv2D(5, 3, padding="same", name="conv_b")(b)
    block = keras.Model(block_in, b, name="block")
    x = keras.Input((6, 6, 3), name="image")
    h = L.Conv2D(4, 3, padding="same", activation="relu", name="stem")(x)
    h = block(h)
    h = L.GlobalAveragePooling2D(name="gap")(h)
    cnn = keras.Model(x, L.Dense(4, name="predictions")(h), name="cnn")

    t = keras.Input((5, 8), name="tokens")
    a = L.MultiHeadAttention(2, 4, name="attn")(t, t)
    r1 = L.LayerNormalization(name="ln1")(L.Add(name="res1")([t, a]))
    f = L.Dense(8, name="ffn")(L.Dense(16, activation="relu", name="ffn_up")(r1))
    r2 = L.LayerNormalization(name="ln2")(L.Add(name="res2")([r1, f]))
    transformer = keras.Model(t, L.Dense(3, name="predictions")(L.GlobalAveragePooling1D(name="pool")(r2)),
                              name="transformer")

    two_in = keras.Input((4,))
    two = keras.Model(two_in, [L.Dense(3, name="used")(two_in), L.Dense(2, name="unused")(two_in)], name="two")
    v = keras.Input((4,), name="v")
    used, _ = two(v)
    branch = keras.Model(v, L.Dense(2, name="head")(used), name="branch")

    paths = {"cnn": folder / "cnn.keras", "transformer": folder / "transformer.keras"}
    cnn.save(paths["cnn"])
    transformer.save(paths["transformer"])
    rng = np.random.default_rng(11)
    data = {"images": rng.normal(size=(6, 6, 6, 3)).astype("float32"),
            "corrupt": rng.normal(size=(6, 6, 6, 3)).astype("float32"),
            "tokens": rng.normal(size=(4, 5, 8)).astype("float32")}
    for name, array in data.items():
        paths[name] = folder / f"{name}.npy"
        np.save(paths[name], array)
    return {"cnn": cnn, "transformer": transformer, "branch": branch, "paths": paths, **data}


def times_zero_after(model, name):
    """The model rebuilt with keras.models.clone_model, sharing its layers (and weights), with a
    Rescaling(0) inserted after every call of the layer `name` at any depth."""
    import keras

    def call(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        return keras.layers.Rescaling(0.0)(out) if layer.name == name else out

    return keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call, recursive=True)


@pytest.mark.parametrize("model_name, data, layer", [("cnn", "images", "block/conv_a"),
                                                     ("transformer", "tokens", "ffn_up")])
def test_zero_ablation_equals_the_model_rebuilt_with_a_layer_that_multiplies_by_zero(models, model_name, data,
                                                                                      layer):
    model, x = models[model_name], models[data]
    result = tensorprobe.run(models["paths"][model_name], x, edits={layer: edits.zero()})
    reference = np.asarray(times_zero_after(model, layer.split("/")[-1])(x, training=False))
    np.testing.assert_allclose(result.outputs["predictions"], reference, rtol=1e-5, atol=1e-6)
    clean = np.asarray(model(x, training=False))
    assert not np.allclose(reference, clean)  # the ablation moved the output
    assert result.change["predictions"]["max_abs_change"] == pytest.approx(np.abs(reference - clean).max(),
                                                                           rel=1e-4)
    assert result.change["predictions"]["top_class_changed"] == int(
        np.sum(reference.argmax(1) != clean.argmax(1)))
    original = keras_submodel(model, layer)(x, training=False)
    assert result.applied == {layer: {"calls": 1, "max_abs_change": pytest.approx(np.abs(original).max())}}


def keras_submodel(model, path):
    """The output of the layer at `path` by Keras: a keras.Model to it, or for `block/NAME` the
    stem's output fed to a keras.Model inside the nested block."""
    import keras

    if "/" not in path:
        return keras.Model(model.inputs, model.get_layer(path).output)
    inner = model.get_layer(path.split("/")[0])
    head = keras.Model(model.inputs, model.get_layer("stem").output)  # what the block reads
    tail = keras.Model(inner.inputs, inner.get_layer(path.split("/")[1]).output)
    return lambda x, training=False: tail(head(x, training=training), training=training)


def test_patching_a_runs_own_activations_changes_nothing_bit_for_bit(models, tmp_path):
    paths = models["paths"]
    clean = tmp_path / "clean.h5"
    tensorprobe.dump(paths["cnn"], models["images"], clean, layers=["block/conv_a", "stem"])
    result = tensorprobe.run(paths["cnn"], models["images"], edits={"block/conv_a": edits.patch_from(clean),
                                                                     "stem": edits.patch_from(clean)})
    unedited = tensorprobe.activations(paths["cnn"], models["images"], layers=["predictions"])["predictions"]
    assert result.outputs["predictions"].tobytes() == unedited.tobytes()
    assert result.change["predictions"] == {"max_abs_change": 0.0, "top_class_changed": 0}
    assert result.applied == {"block/conv_a": {"calls": 1, "max_abs_change": 0.0},
                              "stem": {"calls": 1, "max_abs_change": 0.0}}


def test_patching_a_layer_that_cuts_the_graph_reproduces_the_clean_output(models, tmp_path):
    paths = models["paths"]
    clean = tmp_path / "clean.h5"
    tensorprobe.dump(paths["cnn"], models["images"], clean, layers=["gap", "predictions"])
    result = tensorprobe.run(paths["cnn"], models["corrupt"], edits={"gap": edits.patch_from(clean)},
                             layers=["gap"], batch_size=4)  # two batches: rows 0-3, then 4-5
    with h5py.File(clean, "r") as f:
        assert result.outputs["predictions"].tobytes() == f["activations/predictions"][:].tobytes()
        assert result.activations["gap"].tobytes() == f["activations/gap"][:].tobytes()
    np.testing.assert_allclose(result.outputs["predictions"], models["cnn"](models["images"], training=False),
                               rtol=1e-5, atol=1e-6)
    corrupt = np.asarray(models["cnn"](models["corrupt"], training=False))
    assert result.change["predictions"]["max_abs_change"] == pytest.approx(
        np.abs(result.outputs["predictions"] - corrupt).max(), rel=1e-4)


def test_channels_and_positions_edits_equal_the_edit_by_hand(models):
    import keras

    model, x = models["transformer"], models["tokens"]
    channels, positions = [1, 5, -1], [0, 3]
    result = tensorprobe.run(model, x, edits={"ffn": edits.scale(3.0, channels=channels, positions=positions)},
                             layers=["ffn"])
    ln1, ffn = keras.Model(model.inputs, [model.get_layer("ln1").output, model.get_layer("ffn").output])(x)
    edited = np.array(ffn)
    rows = np.array(positions)[:, None]
    edited[:, rows, channels] *= 3.0
    rest = model.get_layer("res2")([ln1, edited])
    out = model.get_layer("predictions")(model.get_layer("pool")(model.get_layer("ln2")(rest)))
    np.testing.assert_allclose(result.activations["ffn"], edited, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.outputs["predictions"], out, rtol=1e-5, atol=1e-5)
    untouched = np.ones(edited.shape, bool)
    untouched[:, rows, channels] = False
    assert np.array_equal(result.activations["ffn"][untouched], np.asarray(ffn)[untouched])


def test_set_add_mean_and_a_callable_equal_numpy(models, tmp_path):
    import keras

    model, x = models["transformer"], models["tokens"]
    ffn_model = keras.Model(model.inputs, model.get_layer("ffn").output)
    ffn = np.asarray(ffn_model(x))
    value = np.linspace(-1, 1, 8).astype("float32")
    got = tensorprobe.run(model, x, edits={"ffn": edits.set(value, positions=[2])}, layers=["ffn"], baseline=False)
    expected = ffn.copy()
    expected[:, 2] = value
    np.testing.assert_allclose(got.activations["ffn"], expected, rtol=1e-6)
    assert got.change is None
    got = tensorprobe.run(model, x, edits={"ffn": edits.add(0.5, channels=[0])}, layers=["ffn"])
    expected = ffn.copy()
    expected[..., 0] += 0.5
    np.testing.assert_allclose(got.activations["ffn"], expected, rtol=1e-6)
    got = tensorprobe.run(model, x, edits={"ffn": lambda t: t * t}, layers=["ffn"])
    np.testing.assert_allclose(got.activations["ffn"], ffn * ffn, rtol=1e-5)
    other = tmp_path / "other.h5"
    tensorprobe.dump(model, models["tokens"][::-1] * 2, other, layers=["ffn"])
    mean = np.asarray(ffn_model(models["tokens"][::-1] * 2)).astype("float64").mean(axis=0)
    got = tensorprobe.run(model, x, edits={"ffn": edits.mean_from(other)}, layers=["ffn"])
    np.testing.assert_allclose(got.activations["ffn"], np.broadcast_to(mean, ffn.shape), rtol=1e-5)


def _softmax_path(model):
    """The path of MultiHeadAttention's softmax (`attn/softmax`, or `attn/softmax_N`: Keras
    numbers the layers it makes by what the process built before)."""
    return next(layer["path"] for layer in tensorprobe.load(model).layers()
                if layer["path"].startswith("attn/") and layer["class"] == "Softmax")


def test_an_attention_probability_edit_equals_the_layer_by_hand(models):
    """MultiHeadAttention computed by hand (Keras' own sub-layers and equations) with its
    softmax probabilities edited: head 1's attention sent to the first key."""
    import keras

    model, x = models["transformer"], models["tokens"]
    attn = model.get_layer("attn")

    def first_key(p):  # p: (batch, heads, queries, keys)
        import tensorflow as tf

        head = tf.one_hot(tf.zeros(tf.shape(p)[:-1], tf.int32), tf.shape(p)[-1], dtype=p.dtype)
        return tf.concat([p[:, :1], head[:, 1:]], axis=1)

    softmax = _softmax_path(model)
    result = tensorprobe.run(model, x, edits={softmax: first_key}, layers=["attn"])
    q = attn._query_dense(x) * (1.0 / np.sqrt(4.0))
    k, v = attn._key_dense(x), attn._value_dense(x)
    probs = np.array(keras.ops.softmax(keras.ops.einsum(attn._dot_product_equation, k, q), axis=-1))
    probs[:, 1] = 0.0
    probs[:, 1, :, 0] = 1.0
    by_hand = attn._output_dense(keras.ops.einsum(attn._combine_equation, probs, v))
    np.testing.assert_allclose(result.activations["attn"], by_hand, rtol=1e-5, atol=1e-6)
    assert result.applied[softmax]["calls"] == 1


def test_guards_unknown_path_unreached_branch_and_a_layer_that_never_runs(models):
    import keras

    with pytest.raises(tensorprobe.TensorprobeError) as e:
        tensorprobe.run(models["cnn"], models["images"], edits={"block/conv_c": edits.zero()})
    assert e.value.exit_code == 2
    assert str(e.value).startswith("edits 'block/conv_c': no such layer; did you mean")
    assert "block/conv_a" in str(e.value)

    with pytest.raises(tensorprobe.TensorprobeError) as e:
        tensorprobe.run(models["branch"], np.ones((2, 4), "float32"), edits={"two/unused": edits.zero()})
    assert str(e.value) == ("edits 'two/unused': the model's outputs (and the layers asked for) do not depend on "
                            "'two/unused', so the edit would change nothing")
    # asked for, the branch runs, and the edit applies to what is asked
    got = tensorprobe.run(models["branch"], np.ones((2, 4), "float32"), edits={"two/unused": edits.zero()},
                          layers=["two/unused"])
    assert np.array_equal(got.activations["two/unused"], np.zeros((2, 2), "float32"))

    # a MultiHeadAttention without dropout never calls its Dropout at inference
    t = keras.Input((3, 4))
    quiet = keras.Model(t, keras.layers.MultiHeadAttention(1, 2, name="mha")(t, t))
    dropout = f"mha/{quiet.get_layer('mha')._dropout_layer.name}"  # named by a counter over the process
    with pytest.raises(tensorprobe.TensorprobeError) as e:
        tensorprobe.run(quiet, np.ones((1, 3, 4), "float32"), edits={dropout: edits.zero()})
    assert e.value.exit_code == 2
    assert str(e.value) == (f"edits '{dropout}': layer '{dropout}' has no value to edit: it is never called in "
                            "the model's graph (for these inputs, in this mode); the edit would do nothing")

    with pytest.raises(tensorprobe.TensorprobeError, match=r"channels 9 is out of range: axis -1 of 'ffn' has 8"):
        tensorprobe.run(models["transformer"], models["tokens"], edits={"ffn": edits.zero(channels=[9])})
    with pytest.raises(tensorprobe.TensorprobeError, match="edits: give at least one"):
        tensorprobe.run(models["transformer"], models["tokens"], edits={})


def test_a_graph_format_refuses_edits(tmp_path, monkeypatch):
    sys.path.insert(0, str(TESTS))
    import numpy_backend
    from tensorprobe.backends import detect

    monkeypatch.setattr(detect, "REGISTRY", [*detect.REGISTRY, "numpy_backend"])
    rng = np.random.default_rng(0)
    path = tmp_path / "fake.npz"
    numpy_backend.save(path, w1=rng.normal(size=(6, 5)).astype("float32"), b1=np.zeros(5, "float32"),
                       w2=rng.normal(size=(5, 3)).astype("float32"), b2=np.zeros(3, "float32"))
    with pytest.raises(tensorprobe.TensorprobeError) as e:
        tensorprobe.run(path, np.ones((2, 6), "float32"), edits={"dense1": edits.zero()})
    assert e.value.exit_code == 2
    assert str(e.value).startswith("interventions need a Keras model; ")


def test_cli_run_writes_outputs_and_layers_with_the_edits(cli, models, tmp_path):
    paths = models["paths"]
    out = tmp_path / "edited.h5"
    result = cli("run", "-m", paths["cnn"], paths["images"], "--zero", "block/conv_a:0,2-3", "--multiply",
                 "stem=0.5", "-l", "block/conv_a", "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["output"] == str(out)
    api = tensorprobe.run(paths["cnn"], models["images"], edits=[
        ("block/conv_a", edits.zero(channels=[0, 2, 3])), ("stem", edits.scale(0.5))], layers=["block/conv_a"])
    assert report["applied"] == api.applied
    assert report["change"] == api.change
    with h5py.File(out, "r") as f:
        assert sorted(f) == ["activations", "inputs", "outputs"]
        assert list(f["outputs"]) == ["predictions"]
        assert np.array_equal(f["outputs/predictions"][:], api.outputs["predictions"])
        conv_a = f["activations/block/conv_a"][:]
        assert np.array_equal(conv_a, api.activations["block/conv_a"])
        assert not conv_a[..., [0, 2, 3]].any() and conv_a[..., 1].any()
        assert json.loads(f.attrs["edits"]) == [
            {"layer": "block/conv_a", "edit": "zero() channels=[0, 2, 3]"}, {"layer": "stem", "edit": "scale(0.5)"}]
        assert json.loads(f.attrs["applied"]) == api.applied
        assert f.attrs["complete"]
    summary = tensorprobe.open_dump(out).summary()
    assert [d["name"] for d in summary["datasets"]] == ["block/conv_a", "outputs/predictions"]


def test_cli_run_reports_to_stderr_and_refuses_usage_errors(cli, models, tmp_path):
    paths = models["paths"]
    result = cli("run", "-m", paths["transformer"], paths["tokens"], "--zero", "ffn_up")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert "predictions" in result.stderr and "edited ffn_up: 1 call(s)" in result.stderr

    result = cli("run", "-m", paths["transformer"], paths["tokens"], "--zero", "ffn_upp")
    assert result.exit_code == 2
    assert error_line(result).startswith("error: --zero 'ffn_upp': no such layer; did you mean 'ffn_up'?")
    result = cli("run", "-m", paths["transformer"], paths["tokens"], "--multiply", "ffn=x")
    assert result.exit_code == 2
    assert error_line(result) == ("error: Invalid value for '--multiply': 'ffn=x': 'x' is not a number "
                                  "(see 'cli run --help')")  # CliRunner's program name
    result = cli("run", "-m", paths["transformer"], paths["tokens"])
    assert result.exit_code == 2
    assert error_line(result).startswith("error: no edit given: give --zero PATH")
    result = cli("run", "-m", paths["cnn"], paths["images"], "--patch", f"gap={tmp_path / 'none.h5'}")
    assert result.exit_code == 2
    assert error_line(result) == f"error: --patch 'gap': '{tmp_path / 'none.h5'}': no such file"
    few = tmp_path / "few.h5"
    tensorprobe.dump(paths["cnn"], models["images"][:2], few, layers=["gap"])
    result = cli("run", "-m", paths["cnn"], paths["images"], "--patch", f"gap={few}")
    assert result.exit_code == 2
    assert error_line(result) == (f"error: --patch 'gap': '{few}' holds 2 rows of 'gap', and the inputs are 6 "
                                  "rows: patching takes row i from row i")
    result = cli("run", "-m", paths["cnn"], paths["images"], "--patch", f"stem={few}")
    assert result.exit_code == 2
    assert error_line(result) == f"error: --patch 'stem': '{few}' holds no dataset 'stem' (dump it with --layer stem)"


def logit_diff(out, i, j):
    return out[:, i] - out[:, j]


def test_a_position_sweep_equals_the_loop_of_single_runs(models, tmp_path):
    model = models["transformer"]
    clean, corrupt = models["tokens"], models["tokens"][::-1] * 1.5
    softmax = _softmax_path(model)
    layers = [softmax, "ln1", "ffn_up", "ffn"]  # softmax: (batch, heads, queries, keys), 2 heads
    sweep = tensorprobe.patch(model, clean, corrupt, metric="logit_diff:0,2", layers=layers, positions=True,
                              batch_size=3)  # two batches: 3 rows, then 1
    assert sweep["layers"] == layers
    dump = tmp_path / "clean.h5"
    tensorprobe.dump(model, clean, dump, layers=layers)
    loop = np.full((len(layers), 5, len(clean)), np.nan)
    for j, layer in enumerate(layers):
        for p in range(2 if layer == softmax else 5):
            run = tensorprobe.run(model, corrupt, edits={layer: edits.patch_from(dump, positions=[p])},
                                  baseline=False)
            loop[j, p] = logit_diff(run.outputs["predictions"], 0, 2)
    np.testing.assert_allclose(sweep["per_input"], loop, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sweep["mean"], loop.mean(axis=2), rtol=1e-5, atol=1e-6)  # NaN where NaN
    clean_metric = logit_diff(np.asarray(model(clean)), 0, 2)
    corrupt_metric = logit_diff(np.asarray(model(corrupt)), 0, 2)
    np.testing.assert_allclose(sweep["clean"], clean_metric, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sweep["corrupt"], corrupt_metric, rtol=1e-5, atol=1e-6)
    recovered = (loop.mean(axis=2) - corrupt_metric.mean()) / (clean_metric.mean() - corrupt_metric.mean())
    np.testing.assert_allclose(sweep["recovered"], recovered, rtol=1e-4, atol=1e-5)
    # ln1 cuts the graph position by position only together; all of ln1 at once gives the clean run
    whole = tensorprobe.patch(model, clean, corrupt, metric="l2", layers=["ln1"])
    assert whole["mean"].shape == (1, 1)
    assert whole["mean"][0, 0] == pytest.approx(0.0, abs=1e-5)
    assert whole["recovered"][0, 0] == pytest.approx(1.0, abs=1e-5)


def test_cli_patch_writes_the_sweep_and_refuses_usage_errors(cli, models, tmp_path):
    paths = models["paths"]
    out, picture = tmp_path / "sweep.h5", tmp_path / "sweep.png"
    np.save(tmp_path / "corrupt.npy", models["tokens"][::-1] * 1.5)
    args = ["patch", "-m", paths["transformer"], "--clean", paths["tokens"], "--corrupt", tmp_path / "corrupt.npy"]
    result = cli(*args, "--match", "^(ln1|ffn)$", "--positions", "--metric", "prob:1", "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    api = tensorprobe.patch(paths["transformer"], models["tokens"], models["tokens"][::-1] * 1.5, metric="prob:1",
                            match="^(ln1|ffn)$", positions=True)
    assert report["layers"] == ["ln1", "ffn"]
    np.testing.assert_allclose(report["recovered"], api["recovered"], rtol=1e-6)
    with h5py.File(out, "r") as f:
        assert sorted(f["sweep"]) == ["clean", "corrupt", "layers", "prob", "prob_per_input", "recovered"]
        assert f["sweep/prob"].shape == (2, 5) and f["sweep/prob_per_input"].shape == (2, 5, 4)
        assert list(f["sweep/layers"].asstr()[:]) == ["ln1", "ffn"]
        np.testing.assert_allclose(f["sweep/prob"][:], api["mean"], rtol=1e-6)
        assert f.attrs["metric"] == "prob:1"
    result = cli(*args, "-l", "ffn", "--metric", "l2", "--plot", picture)  # matplotlib: the test extra's
    assert result.exit_code == 0, result.stderr
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ffn" in result.stderr and f"wrote {picture}" in result.stderr

    result = cli(*args, "-l", "ffn", "--metric", "logit_diff:0")
    assert result.exit_code == 2
    assert error_line(result) == "error: --metric 'logit_diff:0': expected logit_diff:I,J, prob:K, l2"
    result = cli(*args, "-l", "pool", "--positions", "--metric", "l2")
    assert result.exit_code == 2
    assert error_line(result).startswith("error: --positions: 'pool' has the shape (None, 8), with no sequence axis")


def test_a_shared_layer_is_edited_at_every_call_or_at_the_one_named(models):
    import keras

    L = keras.layers
    x = keras.Input((4,), name="x")
    shared, pre = L.Dense(3, name="shared"), L.Dense(4, name="pre")
    model = keras.Model(x, L.Add(name="add")([shared(x), shared(pre(x))]), name="shared_model")
    v = np.random.default_rng(5).normal(size=(3, 4)).astype("float32")
    first, second = np.asarray(shared(v)), np.asarray(shared(pre(v)))
    both = tensorprobe.run(model, v, edits={"shared": edits.scale(2.0)})
    np.testing.assert_allclose(both.outputs["add"], 2 * first + 2 * second, rtol=1e-5, atol=1e-6)
    assert both.applied["shared"]["calls"] == 2
    one = tensorprobe.run(model, v, edits={"shared/call_1": edits.zero()})
    np.testing.assert_allclose(one.outputs["add"], first, rtol=1e-5, atol=1e-6)
    assert one.applied == {"shared/call_1": {"calls": 1,
                                             "max_abs_change": pytest.approx(np.abs(second).max(), rel=1e-5)}}
    with pytest.raises(tensorprobe.TensorprobeError, match=r"'shared' is called 2 time\(s\) \(call_0 to call_1\)"):
        tensorprobe.run(model, v, edits={"shared/call_2": edits.zero()})


def test_an_edit_of_the_input_layer_is_what_the_model_reads(models):
    model, x = models["cnn"], models["images"]
    result = tensorprobe.run(model, x, edits={"image": edits.zero(channels=[1])})
    fed = x.copy()
    fed[..., 1] = 0
    np.testing.assert_allclose(result.outputs["predictions"], model(fed, training=False), rtol=1e-5, atol=1e-6)
