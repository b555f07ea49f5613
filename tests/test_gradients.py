"""`dump --gradients`, per-channel statistics and --fail-on-nonfinite, against an independent
tf.GradientTape written here: the model's layers applied by hand in inference mode."""

import h5py
import numpy as np
import pytest
import tensorflow as tf

from conftest import error_line

HEAD = ["gap", "fc1", "bn", "dropout", "predictions"]
BASE_AFTER = {  # the layers of the nested base after each one, in call order
    "block1_conv2": ["block1_pool", "block2_conv1", "block2_conv2", "block2_pool",
                     "block3_conv1", "block3_conv2", "block3_conv3", "block3_pool"],
}


def tape_gradient(model, layer_path, x, score, labels=None):
    """(activation, d score / d activation) with the forward pass written out by hand."""
    import keras
    import tensorflow as tf

    base = model.get_layer("vgg16")
    if layer_path.startswith("vgg16/"):
        name = layer_path.split("/")[1]
        activation = keras.Model(base.inputs, base.get_layer(name).output)(x)
        rest = [base.get_layer(n) for n in BASE_AFTER[name]] + [model.get_layer(n) for n in HEAD]
    else:
        activation = keras.Model(model.inputs, model.get_layer(layer_path).output)(x, training=False)
        rest = [model.get_layer(n) for n in HEAD[HEAD.index(layer_path) + 1:]]
    activation = tf.convert_to_tensor(activation)
    with tf.GradientTape() as tape:
        tape.watch(activation)
        y = activation
        for layer in rest:
            y = layer(y, training=False)
        s = score(y, labels)
    return activation.numpy(), tape.gradient(s, activation).numpy()


def read(path, group, name):
    with h5py.File(path, "r") as f:
        ds = f[group][name]
        return ds[()], dict(ds.attrs)


SCORES = {
    "class:3": lambda y, _: y[:, 3],
    "top": lambda y, _: tf.reduce_max(y, axis=1),
    "sum": lambda y, _: tf.reduce_sum(y, axis=1),
}


@pytest.mark.parametrize("target", ["class:3", "top", "sum"])
@pytest.mark.parametrize("layer", ["fc1", "vgg16/block1_conv2"])
def test_gradient_matches_an_independent_tape(cli, zoo, keras_model, tmp_path, target, layer):
    out = tmp_path / "g.h5"
    r = cli("dump", "-m", zoo["transfer.keras"], "-l", layer, "--gradients", "--target", target,
            "-b", "3", "-o", out, zoo["images7.npy"])
    assert r.exit_code == 0, r.stderr
    x = np.load(zoo["images7.npy"])
    act, grad = tape_gradient(keras_model(zoo["transfer.keras"]), layer, x, SCORES[target])
    got_act, _ = read(out, "activations", layer)
    got_grad, attrs = read(out, "gradients", layer)
    np.testing.assert_allclose(got_act, act, atol=1e-5, rtol=1e-5)
    assert np.abs(grad).max() > 0
    np.testing.assert_allclose(got_grad, grad, atol=1e-6, rtol=1e-4)
    assert attrs["target"] == target and attrs["target_output"] == "predictions"
    assert attrs["layer"] == layer.split("/")[-1] or attrs["layer"] == layer


@pytest.mark.parametrize("loss", ["categorical_crossentropy", "mse"])
def test_loss_target_with_labels(cli, zoo, keras_model, tmp_path, loss):
    rng = np.random.default_rng(7)
    labels = np.eye(5, dtype=np.float32)[rng.integers(0, 5, 7)]
    np.save(tmp_path / "labels.npy", labels)
    out = tmp_path / "g.h5"
    r = cli("dump", "-m", zoo["transfer.keras"], "-l", "fc1", "--gradients", "--target", f"loss:{loss}",
            "--labels", tmp_path / "labels.npy", "-b", "4", "-o", out, zoo["images7.npy"])
    assert r.exit_code == 0, r.stderr
    if loss == "mse":
        score = lambda y, t: tf.reduce_mean(tf.square(y - t), axis=1)  # noqa: E731
    else:
        score = lambda y, t: -tf.reduce_sum(t * tf.math.log(tf.clip_by_value(y, 1e-7, 1.0)), axis=1)  # noqa: E731
    _, grad = tape_gradient(keras_model(zoo["transfer.keras"]), "fc1", np.load(zoo["images7.npy"]),
                            score, tf.constant(labels))
    got, attrs = read(out, "gradients", "fc1")
    np.testing.assert_allclose(got, grad, atol=1e-6, rtol=1e-4)
    assert attrs["target"] == f"loss:{loss}"


def test_gradient_options_need_each_other(cli, zoo, tmp_path):
    base = ["dump", "-m", zoo["transfer.keras"], "-l", "fc1", "-o", tmp_path / "g.h5"]
    r = cli(*base, "--target", "sum", zoo["input.npy"])
    assert r.exit_code == 2 and "--gradients" in error_line(r)
    r = cli(*base, "--gradients", "--target", "loss:mse", zoo["input.npy"])
    assert r.exit_code == 2 and "--labels" in error_line(r)
    r = cli(*base, "--gradients", "--target", "class:99", zoo["input.npy"])
    assert r.exit_code == 2 and "class:99" in error_line(r)
    r = cli(*base, "--gradients", "--target", "bogus", zoo["input.npy"])
    assert r.exit_code == 2 and "--target 'bogus'" in error_line(r)
    r = cli(*base, "--gradients", "--target-output", "nope", zoo["input.npy"])
    assert r.exit_code == 2 and "predictions" in error_line(r)
    np.save(tmp_path / "short.npy", np.zeros((2, 5), np.float32))
    r = cli(*base, "--gradients", "--target", "loss:mse", "--labels", tmp_path / "short.npy", zoo["input.npy"])
    assert r.exit_code == 1 and "short.npy" in error_line(r)
    np.save(tmp_path / "wide.npy", np.zeros((4, 3), np.float32))  # 3 columns for 5 classes
    r = cli(*base, "--gradients", "--target", "loss:mse", "--labels", tmp_path / "wide.npy", zoo["input.npy"])
    assert r.exit_code == 1 and "error: " in error_line(r)
    assert not (tmp_path / "g.h5").exists()


def test_per_channel_statistics(cli, zoo, tmp_path):
    out = tmp_path / "a.h5"
    r = cli("dump", "-m", zoo["transfer.keras"], "-l", "block2_conv1", "-l", "fc1", "-b", "2", "-o", out,
            zoo["images7.npy"])
    assert r.exit_code == 0, r.stderr
    for name in ("vgg16/block2_conv1", "fc1"):
        v, attrs = read(out, "activations", name)
        flat = v.reshape(-1, v.shape[-1]).astype(np.float64)
        np.testing.assert_allclose(attrs["channel_min"], flat.min(axis=0))
        np.testing.assert_allclose(attrs["channel_max"], flat.max(axis=0))
        np.testing.assert_allclose(attrs["channel_mean"], flat.mean(axis=0), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(attrs["channel_std"], flat.std(axis=0), rtol=1e-9, atol=1e-12)


def test_fail_on_nonfinite_names_each_dataset_and_first_sample(cli, zoo, keras_model, tmp_path):
    """A NaN and an Inf fed through layers whose arithmetic IEEE 754 defines (a Dense without
    activation, an Add): a NaN stays NaN and an Inf gives Inf or NaN on every CPU, where a ReLU
    may turn a NaN into 0. The counts are Keras' own outputs' counts."""
    import keras

    x = np.load(zoo["vec4.npy"]).copy()
    x[2, 1] = np.nan
    x[4, 0] = np.inf
    np.save(tmp_path / "bad.npy", x)
    names = ["pre", "add"]  # in model order
    model = keras_model(zoo["shared.keras"])
    expected = keras.Model(model.inputs, [model.get_layer(n).output for n in names]).predict(x, verbose=0)
    out = tmp_path / "a.h5"
    args = ["dump", "-m", zoo["shared.keras"], "-l", "pre", "-l", "add", "-b", "3", "-o", out]
    r = cli(*args, "--fail-on-nonfinite", "-q", tmp_path / "bad.npy")
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    with h5py.File(out, "r") as f:  # the dump itself is finished and complete
        assert bool(f.attrs["complete"])
        for line, name, want in zip(lines, names, expected):
            bad_rows = np.flatnonzero(~np.isfinite(want).all(axis=1))
            assert bad_rows.tolist() == [2, 4]  # the NaN row and the Inf row, through the defined arithmetic
            nans, infs, first = int(np.isnan(want).sum()), int(np.isinf(want).sum()), int(bad_rows[0])
            assert line == (f"error: activations/{name} holds {nans} NaN and {infs} Inf values, first in "
                            f"sample {first} ({tmp_path / 'bad.npy'}[{first}])")
            ds = f["activations"][name]
            np.testing.assert_array_equal(np.isnan(ds[()]), np.isnan(want))
            assert ds.attrs["first_nonfinite_sample"] == first
            assert (ds.attrs["nan_count"], ds.attrs["inf_count"]) == (nans, infs)
    r = cli(*args, "--overwrite", "-q", tmp_path / "bad.npy")
    assert r.exit_code == 0 and r.stderr == ""
