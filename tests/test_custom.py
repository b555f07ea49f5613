"""Custom layers, tf.function calls, subclassed models, dict outputs and training mode.
Every value is recomputed here by hand from the layers' own weights, in NumPy."""

import json

import h5py
import numpy as np
import pytest

from conftest import CUSTOM, error_line


def weights(layer):
    return [np.asarray(w, dtype=np.float64) for w in layer.weights]


def dense(layer, x):
    w, b = weights(layer)
    return x @ w + b


def read(path, name):
    with h5py.File(path, "r") as f:
        return f[name][()]


@pytest.fixture(scope="module")
def x6():
    return np.random.default_rng(11).normal(size=(7, 6)).astype(np.float32)


@pytest.fixture
def x6_file(x6, tmp_path):
    np.save(tmp_path / "x6.npy", x6)
    return tmp_path / "x6.npy"


def test_subclassed_model_lists_runtime_layers(cli, zoo):
    r = cli("layers", zoo["subclassed.keras"], "--custom-objects", CUSTOM, "--json")
    assert r.exit_code == 0, r.stderr
    rows = {d["path"]: d for d in json.loads(r.stdout)}
    assert list(rows) == ["block", "block/inner1", "block/inner2", "head"]
    assert {d["reach"] for d in rows.values()} == {"runtime"}
    assert rows["block/inner1"]["output_shape"] == [None, 5]
    assert rows["block"]["output_shape"] == [[None, 5], [None, 5]]
    assert rows["block/inner1"]["index"] == "0.0"
    r = cli("layers", zoo["subclassed.keras"], "--custom-objects", CUSTOM)
    assert "block/inner1 [runtime]" in r.stdout and "[runtime]: " in r.stdout


def test_subclassed_model_dumps_inner_layers(cli, zoo, keras_model, x6, x6_file, tmp_path):
    out = tmp_path / "a.h5"
    r = cli("dump", "-m", zoo["subclassed.keras"], "--custom-objects", CUSTOM, "-l", "block/inner1",
            "-l", "block", "-l", "head", "-b", "3", "-o", out, x6_file)
    assert r.exit_code == 0, r.stderr
    model = keras_model(zoo["subclassed.keras"], custom=True)
    block = model.get_layer("block")
    x = x6.astype(np.float64)
    x1 = np.maximum(dense(block.inner1, x), 0)
    y = dense(block.inner2, x1)
    np.testing.assert_allclose(read(out, "activations/block/__output__/output_0"), y, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(read(out, "activations/block/__output__/output_1"), x1, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(read(out, "activations/block/inner1"), x1, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(read(out, "activations/head"), dense(model.get_layer("head"), y + x1),
                               atol=1e-5, rtol=1e-5)


def test_tf_function_call_and_dict_outputs(cli, zoo, keras_model, x6, x6_file, tmp_path):
    out = tmp_path / "a.h5"
    r = cli("dump", "-m", zoo["custom_functional.keras"], "--custom-objects", CUSTOM,
            "-l", "graph_block/dense", "-l", "dict_block", "-o", out, x6_file)
    assert r.exit_code == 0, r.stderr
    model = keras_model(zoo["custom_functional.keras"], custom=True)
    inner = dense(model.get_layer("graph_block").dense, x6.astype(np.float64))
    np.testing.assert_allclose(read(out, "activations/graph_block/dense"), inner, atol=1e-5, rtol=1e-5)
    p = dense(model.get_layer("dict_block").proj, 2.0 * inner)
    np.testing.assert_allclose(read(out, "activations/dict_block/sum"), p + 1.0, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(read(out, "activations/dict_block/prod"), p * 3.0, atol=1e-5, rtol=1e-5)


def test_gradient_with_respect_to_a_runtime_layer(cli, zoo, keras_model, x6, x6_file, tmp_path):
    import tensorflow as tf

    out = tmp_path / "g.h5"
    r = cli("dump", "-m", zoo["subclassed.keras"], "--custom-objects", CUSTOM, "-l", "block/inner1",
            "--gradients", "--target", "sum", "-o", out, x6_file)
    assert r.exit_code == 0, r.stderr
    model = keras_model(zoo["subclassed.keras"], custom=True)
    block = model.get_layer("block")
    x1 = tf.constant(np.maximum(dense(block.inner1, x6.astype(np.float64)), 0).astype(np.float32))
    with tf.GradientTape() as tape:  # the rest of the forward pass, by hand
        tape.watch(x1)
        w2, b2 = block.inner2.weights
        wh, bh = model.get_layer("head").weights
        score = tf.reduce_sum((x1 @ w2 + b2 + x1) @ wh + bh, axis=1)
    np.testing.assert_allclose(read(out, "gradients/block/inner1"), tape.gradient(score, x1).numpy(),
                               atol=1e-5, rtol=1e-5)


def test_inference_and_training_modes(cli, zoo, keras_model, x6, x6_file, tmp_path):
    model = keras_model(zoo["modes.keras"])
    bn = model.get_layer("bn")
    gamma, beta, mean, var = weights(bn)
    pre = dense(model.get_layer("pre"), x6.astype(np.float64))

    r = cli("dump", "-m", zoo["modes.keras"], "-l", "bn", "-l", "drop", "-o", tmp_path / "i.h5", x6_file)
    assert r.exit_code == 0, r.stderr
    expected = gamma * (pre - mean) / np.sqrt(var + bn.epsilon) + beta
    np.testing.assert_allclose(read(tmp_path / "i.h5", "activations/bn"), expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(read(tmp_path / "i.h5", "activations/drop"), expected, atol=1e-5, rtol=1e-5)
    with h5py.File(tmp_path / "i.h5") as f:
        assert not bool(f.attrs["training"])

    r = cli("dump", "-m", zoo["modes.keras"], "-l", "bn", "-l", "drop", "--training", "-b", "7",
            "-o", tmp_path / "t.h5", x6_file)
    assert r.exit_code == 0, r.stderr
    batch_mean, batch_var = pre.mean(axis=0), pre.var(axis=0)
    expected = gamma * (pre - batch_mean) / np.sqrt(batch_var + bn.epsilon) + beta
    np.testing.assert_allclose(read(tmp_path / "t.h5", "activations/bn"), expected, atol=1e-4, rtol=1e-4)
    dropped = read(tmp_path / "t.h5", "activations/drop")
    kept = dropped != 0
    assert 0.2 < kept.mean() < 0.8
    np.testing.assert_allclose(dropped[kept], expected[kept] / 0.5, atol=1e-4, rtol=1e-4)
    with h5py.File(tmp_path / "t.h5") as f:
        assert bool(f.attrs["training"])


def test_missing_custom_class_names_it_and_the_option(cli, zoo, tmp_path):
    r = cli("layers", zoo["subclassed.keras"])
    assert r.exit_code == 1
    line = error_line(r)
    assert "Subclassed" in line and "--custom-objects" in line


def test_broken_custom_objects_file(cli, zoo, tmp_path):
    (tmp_path / "broken.py").write_text("def oops(:\n")
    r = cli("layers", zoo["subclassed.keras"], "--custom-objects", tmp_path / "broken.py")
    assert r.exit_code == 1
    assert "broken.py" in error_line(r) and "SyntaxError" in error_line(r)
