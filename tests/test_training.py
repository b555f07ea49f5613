"""During training: tensorprobe.keras.ProbeCallback's file (values, gradients, statistics,
histograms against an offline recomputation on weights saved at the same steps), reading it
while fit runs, MirroredStrategy, and tensorprobe.submodel in custom training loops."""

import json
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from conftest import BIN, ROOT, error_line

STATS = ("min", "max", "mean", "std", "zeros_fraction", "nan_count", "inf_count")


def numpy_stats(a):
    """The statistics of `a` as NumPy computes them (finite values; zeros over all)."""
    a = np.asarray(a, np.float64)
    finite = a[np.isfinite(a)]
    some = finite.size > 0
    return {"min": finite.min() if some else np.nan, "max": finite.max() if some else np.nan,
            "mean": finite.mean() if some else np.nan, "std": finite.std() if some else np.nan,
            "zeros_fraction": np.count_nonzero(a == 0) / a.size, "nan_count": np.isnan(a).sum(),
            "inf_count": np.isinf(a).sum()}


class WeightSaver:
    """A second callback: the model's weights at the start and at each iteration that is a
    multiple of `every` (with steps_per_execution 1, when ProbeCallback records)."""

    def __init__(self, every):
        import keras

        saver = self

        class Saver(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                saver.weights[int(self.model.optimizer.iterations.numpy())] = self.model.get_weights()

            def on_train_batch_end(self, batch, logs=None):
                step = int(self.model.optimizer.iterations.numpy())
                if step % every == 0:
                    saver.weights[step] = self.model.get_weights()

        self.weights = {}
        self.callback = Saver()


def small_cnn(keras, seed=3):
    keras.utils.set_random_seed(seed)
    L = keras.layers
    return keras.Sequential([keras.Input((6, 6, 2), name="img"), L.Conv2D(3, 3, activation="relu", name="conv"),
                             L.Flatten(name="flat"), L.Dense(4, activation="tanh", name="hidden"),
                             L.Dense(2, name="out")], name="cnn")


def data(rows=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, 6, 6, 2)).astype("float32"), rng.normal(size=(rows, 2)).astype("float32")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small CNN fitted (jit_compile on) with the callback recording every 2 steps, values
    and gradients, and the weights saved at those steps by a second callback."""
    import keras

    import tensorprobe.keras as tk

    model = small_cnn(keras)
    model.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=True)
    x, y = data()
    path = tmp_path_factory.mktemp("train") / "probe.h5"
    saver = WeightSaver(2)
    probe = tk.ProbeCallback(layers=["conv", "hidden", "out"], x=x[:5], y=y[:5], every=2, output=path,
                             values=True, gradients=True)
    model.fit(x, y, batch_size=4, epochs=2, callbacks=[saver.callback, probe], verbose=0, shuffle=False)
    return {"model": model, "path": path, "weights": saver.weights, "x": x[:5], "y": y[:5]}


def offline(keras, weights, x, y):
    """Each layer's activation and the gradient of the mean MSE with respect to it, by a
    clone of the model on `weights`: activations from keras.Model(inputs, layer.output),
    gradients from a GradientTape over the layers called by hand."""
    import tensorflow as tf

    clone = small_cnn(keras, seed=9)
    clone.set_weights(weights)
    acts = {name: keras.Model(clone.inputs, clone.get_layer(name).output)(x).numpy()
            for name in ("conv", "hidden", "out")}
    with tf.GradientTape(persistent=True) as tape:
        conv = clone.get_layer("conv")(x)
        tape.watch(conv)
        hidden = clone.get_layer("hidden")(clone.get_layer("flat")(conv))
        tape.watch(hidden)
        out = clone.get_layer("out")(hidden)
        tape.watch(out)
        loss = tf.reduce_mean(tf.reduce_mean(tf.square(out - y), axis=-1))
    grads = {name: tape.gradient(loss, t).numpy() for name, t in (("conv", conv), ("hidden", hidden), ("out", out))}
    return acts, grads


def test_recorded_values_and_gradients_are_the_offline_ones_at_each_step(trained):
    import keras

    with h5py.File(trained["path"], "r") as f:
        steps = list(f["steps"][:])
        assert steps == [0, 2, 4, 6, 8, 10, 12]  # 6 batches an epoch, 2 epochs: step 0 and every 2
        assert sorted(trained["weights"]) == steps
        assert f.attrs["kind"] == "training" and f.attrs["status"] == "finished"
        for k, step in enumerate(steps):
            acts, grads = offline(keras, trained["weights"][step], trained["x"], trained["y"])
            for name in acts:
                np.testing.assert_allclose(f[f"activations/{name}"][k], acts[name], rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(f[f"gradients/{name}"][k], grads[name], rtol=1e-4, atol=1e-7)
        # the model trained: its last record is not its first
        assert not np.allclose(f["activations/out"][0], f["activations/out"][-1])


def test_statistics_and_histograms_are_numpys_over_the_recorded_values(trained):
    with h5py.File(trained["path"], "r") as f:
        bins = int(f.attrs["histogram_bins"])
        for name in ("conv", "hidden", "out"):
            for group, prefix in (("activations", ""), ("gradients", "gradient_")):
                for k in range(f["steps"].shape[0]):
                    values = f[f"{group}/{name}"][k]
                    expected = numpy_stats(values)
                    for stat in STATS:
                        assert f[f"stats/{name}/{prefix}{stat}"][k] == pytest.approx(expected[stat], rel=1e-9,
                                                                                     abs=1e-12), (name, stat, k)
                    finite = values[np.isfinite(values)].astype(np.float64)
                    counts, edges = np.histogram(finite, bins=bins)
                    np.testing.assert_allclose(f[f"histograms/{name}/{prefix}edges"][k], edges, rtol=1e-12)
                    assert list(f[f"histograms/{name}/{prefix}counts"][k]) == list(counts)
        assert f["stats/conv/zeros_fraction"][0] > 0  # the relu's zeros are counted


def test_summary_of_a_training_file(trained, cli):
    result = cli("summary", trained["path"], "--json")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert (record["kind"], record["steps"], record["first_step"], record["last_step"]) == ("training", 7, 0, 12)
    assert [s["name"] for s in record["statistics"]] == ["conv", "hidden", "out"]
    with h5py.File(trained["path"], "r") as f:
        for s in record["statistics"]:
            assert s["last"]["mean"] == f[f"stats/{s['name']}/mean"][-1]
            assert s["gradient_last"]["std"] == f[f"stats/{s['name']}/gradient_std"][-1]
        assert s["sample_shape"] == [2] and s["layer_class"] == "Dense"
    table = cli("summary", trained["path"])
    assert table.exit_code == 0, table.stderr
    assert ": 7 steps (0 to 12) recorded from <in-memory cnn>, statistics at the last step" in table.stdout
    assert "gradients/hidden" in table.stdout and "status" in table.stdout


def test_open_dump_reads_a_training_file_by_hdf5_path(trained):
    import tensorprobe

    with tensorprobe.open_dump(trained["path"]) as dump, h5py.File(trained["path"], "r") as f:
        assert dump.attrs["kind"] == "training"
        assert "stats/hidden/mean" in dump and "histograms/out/gradient_counts" in dump
        np.testing.assert_array_equal(dump["stats/hidden/mean"][:], f["stats/hidden/mean"][:])
        assert dump.summary()["steps"] == 7


def test_plot_over_steps(trained, cli, tmp_path):
    picture = tmp_path / "hidden.png"  # matplotlib: the test extra installs it
    result = cli("plot", trained["path"], "--layer", "hidden", "--over-steps", "-o", picture)
    assert result.exit_code == 0, result.stderr
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    wrong = cli("plot", trained["path"], "--layer", "nope", "--over-steps", "-o", tmp_path / "x.png")
    assert wrong.exit_code == 2
    assert error_line(wrong) == (f"error: --layer 'nope': '{trained['path']}' records no such layer; "
                                 "it records conv, hidden, out")
    samples = cli("plot", trained["path"], "--layer", "hidden", "--hist", "-o", tmp_path / "z.png")
    assert samples.exit_code == 2
    assert error_line(samples) == (f"error: '{trained['path']}' is a training file (ProbeCallback's): draw a "
                                   "layer's statistics with --over-steps")
    both = cli("plot", trained["path"], "--layer", "hidden", "--over-steps", "--hist", "-o", tmp_path / "y.png")
    assert both.exit_code == 2 and "--hist and --over-steps draw different pictures; give one" in both.stderr


def test_plot_over_steps_refuses_a_dump(trained, cli, tmp_path):
    import tensorprobe

    acts = tmp_path / "acts.h5"
    tensorprobe.dump(trained["model"], trained["x"], acts, layers=["hidden"])
    result = cli("plot", acts, "--layer", "hidden", "--over-steps", "-o", tmp_path / "p.png")
    assert result.exit_code == 2
    assert error_line(result) == (f"error: --over-steps: '{acts}' is a dump, not a training file "
                                  "(tensorprobe.keras.ProbeCallback writes those)")


def diverging(keras):
    """A linear regression whose SGD steps blow up: NaN by the fourth step."""
    keras.utils.set_random_seed(1)
    L = keras.layers
    model = keras.Sequential([keras.Input((3,)), L.Dense(3, name="h"), L.Dense(1, name="out")], name="div")
    model.compile(keras.optimizers.SGD(0.5), "mse")
    rng = np.random.default_rng(0)
    return model, rng.normal(size=(16, 3)).astype("float32") * 10, rng.normal(size=(16, 1)).astype("float32") * 100


def test_on_nonfinite_stop_stops_at_the_first_step_with_nan_or_inf(tmp_path):
    import keras

    import tensorprobe.keras as tk

    model, x, y = diverging(keras)
    saver = WeightSaver(1)
    path = tmp_path / "div.h5"
    probe = tk.ProbeCallback(layers=["h", "out"], x=x[:4], output=path, on_nonfinite="stop")
    model.fit(x, y, batch_size=4, epochs=10, callbacks=[saver.callback, probe], verbose=0, shuffle=False)
    # offline: the first saved step at which a layer, in model order, holds a NaN or Inf
    first = None
    for step in sorted(saver.weights):
        clone, _, _ = diverging(keras)
        clone.set_weights(saver.weights[step])
        bad = [name for name in ("h", "out")
               if not np.isfinite(keras.Model(clone.inputs, clone.get_layer(name).output)(x[:4]).numpy()).all()]
        if bad:
            first = (step, bad[0])
            break
    assert first is not None and first[0] > 0
    assert int(model.optimizer.iterations.numpy()) == first[0]  # no step after it
    with h5py.File(path, "r") as f:
        assert list(f["steps"][:]) == list(range(first[0] + 1))
        assert (int(f.attrs["first_nonfinite_step"]), f.attrs["first_nonfinite_layer"]) == first
        assert f.attrs["first_nonfinite_group"] == "activations"
        assert f.attrs["status"] == (f"stopped: NaN or Inf in layer '{first[1]}' at step {first[0]} "
                                     f"(recorded in {path})")


def test_on_nonfinite_warn_and_raise(tmp_path):
    import keras

    import tensorprobe
    import tensorprobe.keras as tk
    from tensorprobe.errors import NonFiniteError

    model, x, y = diverging(keras)
    path = tmp_path / "warn.h5"
    with pytest.warns(RuntimeWarning, match=r"NaN or Inf in layer '\w+' at step 3 "):
        model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False,
                  callbacks=[tk.ProbeCallback(layers=["h", "out"], x=x[:4], output=path)])
    with h5py.File(path, "r") as f:
        assert list(f["steps"][:]) == list(range(9)) and int(f.attrs["first_nonfinite_step"]) == 3
        assert f.attrs["status"] == "finished"
    model, x, y = diverging(keras)
    path = tmp_path / "raise.h5"
    with pytest.raises(NonFiniteError, match=r"^NaN or Inf in layer '\w+' at step 3 "):
        model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False,
                  callbacks=[tk.ProbeCallback(layers=["h", "out"], x=x[:4], output=path, on_nonfinite="raise")])
    with h5py.File(path, "r") as f:
        assert list(f["steps"][:]) == [0, 1, 2, 3] and f.attrs["status"].startswith("failed: NaN or Inf")
    with tensorprobe.open_dump(path) as dump:  # the run died: its file reads, with the steps recorded
        assert (dump.summary()["steps"], dump.summary()["last_step"]) == (4, 3)


def test_every_counts_optimizer_iterations_with_steps_per_execution(tmp_path):
    import keras

    import tensorprobe.keras as tk

    model = small_cnn(keras)
    model.compile("sgd", "mse", steps_per_execution=3)
    x, y = data(rows=40)
    path = tmp_path / "spe.h5"
    model.fit(x, y, batch_size=4, epochs=1, verbose=0,
              callbacks=[tk.ProbeCallback(layers=["hidden"], x=x[:3], every=2, output=path)])
    with h5py.File(path, "r") as f:
        # fit calls back after iterations 3, 6, 9, 10: each passed a multiple of 2 but 10 (after 9)
        assert list(f["steps"][:]) == [0, 3, 6, 9, 10]


def test_max_bytes_stops_values_and_statistics_go_on(tmp_path):
    import keras

    import tensorprobe.keras as tk

    model = small_cnn(keras)
    model.compile("sgd", "mse")
    x, y = data()
    path = tmp_path / "cap.h5"
    record = 3 * 4 * 4 * 3 * 4 + 3 * 4 * 4  # conv (3, 4, 4, 3) and hidden (3, 4) float32, one step
    model.fit(x, y, batch_size=4, epochs=1, verbose=0,
              callbacks=[tk.ProbeCallback(layers=["conv", "hidden"], x=x[:3], output=path, values=True,
                                          max_bytes=2 * record + 10)])
    with h5py.File(path, "r") as f:
        assert f["steps"].shape == (7,) and f["stats/hidden/mean"].shape == (7,)
        assert f["activations/conv"].shape == (2, 3, 4, 4, 3) and f["activations/hidden"].shape == (2, 3, 4)
        assert f.attrs["values_stopped"] == (f"values stopped before step 2: storing them would pass "
                                             f"max_bytes={2 * record + 10}; statistics go on")
        # the values kept are the first steps' (their statistics are in the series)
        assert f["stats/hidden/max"][1] == pytest.approx(float(f["activations/hidden"][1].max()))


@pytest.mark.parametrize("kwargs, message", [
    ({"every": 0}, "every: expected a whole number of optimizer steps >= 1, not 0"),
    ({"on_nonfinite": "ignore"}, "on_nonfinite 'ignore': choose from warn, stop, raise"),
    ({"gradients": True}, "y: gradients=True differentiates the loss on x and y; give y"),
    ({"max_bytes": "1M"}, "max_bytes caps the values stored with values=True; statistics take no room worth capping"),
    ({"layers": ()}, "no layer selected: give layers=[...] or match=REGEX"),
    ({"output": "probe.npy"}, "output 'probe.npy': the output is an HDF5 file, not NumPy (.npy); "
                              "name it .h5 or .hdf5"),
])
def test_arguments_are_checked_when_the_callback_is_made(kwargs, message):
    import tensorprobe.keras as tk
    from tensorprobe.errors import UsageError

    arguments = {"layers": ["d"], "x": np.zeros((1, 2), "float32"), **kwargs}
    with pytest.raises(UsageError) as e:
        tk.ProbeCallback(**arguments)
    assert str(e.value) == message


def test_an_existing_output_is_refused_and_a_bad_layer_named_at_fit(tmp_path):
    import keras

    import tensorprobe.keras as tk
    from tensorprobe.errors import OutputExistsError, UnknownLayerError, UsageError

    path = tmp_path / "old.h5"
    path.write_bytes(b"")
    with pytest.raises(OutputExistsError, match=r"^output '.*old.h5' exists"):
        tk.ProbeCallback(layers=["hidden"], x=np.zeros((1, 6, 6, 2), "float32"), output=path)
    model = small_cnn(keras)
    model.compile("sgd", "mse")
    x, y = data(rows=4)
    with pytest.raises(UnknownLayerError) as e:
        model.fit(x, y, verbose=0, callbacks=[tk.ProbeCallback(layers=["hiden"], x=x[:1], output=tmp_path / "n.h5")])
    assert str(e.value) == "layers 'hiden': no such layer; did you mean 'hidden'? (`tensorprobe layers MODEL` lists them)"
    with pytest.raises(UsageError) as e:
        model.fit(x, y, verbose=0, callbacks=[tk.ProbeCallback(layers=["hidden"], x=x[:2], y=y[:3], gradients=True,
                                                               output=tmp_path / "n.h5")])
    assert str(e.value) == "y: 3 rows of labels for the 2 rows of the probe batch x"
    assert not (tmp_path / "n.h5").exists()


def test_summary_reads_the_file_from_another_process_while_fit_runs(tmp_path):
    import os

    import keras

    import tensorprobe.keras as tk

    path = tmp_path / "live.h5"
    seen = {}

    class Reader(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            step = int(self.model.optimizer.iterations.numpy())
            if step in (4, 5):
                env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
                done = subprocess.run([str(BIN), "summary", str(path), "--json"], capture_output=True, text=True,
                                      env=env, timeout=120)
                assert done.returncode == 0, done.stderr
                seen[step] = json.loads(done.stdout)

    model = small_cnn(keras)
    model.compile("sgd", "mse")
    x, y = data()
    probe = tk.ProbeCallback(layers=["hidden"], x=x[:3], every=2, output=path)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[probe, Reader()])
    with h5py.File(path, "r") as f:
        means = list(f["stats/hidden/mean"][:])
    for step in (4, 5):  # the steps recorded so far: 0, 2, 4
        assert (seen[step]["steps"], seen[step]["last_step"], seen[step]["status"]) == (3, 4, "running")
        assert seen[step]["statistics"][0]["last"]["mean"] == means[2]


MIRRORED = textwrap.dedent('''
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import tensorprobe.keras as tk

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 5)).astype("float32"), rng.normal(size=(16, 2)).astype("float32")

    def build():
        keras.utils.set_random_seed(4)
        return keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="relu", name="h"),
                                 keras.layers.Dense(2, name="out")])

    with strategy.scope():
        model = build()
        model.compile(keras.optimizers.SGD(0.1), "mse")
    weights = {}

    class Saver(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            weights[0] = self.model.get_weights()

        def on_train_batch_end(self, batch, logs=None):
            weights[int(self.model.optimizer.iterations.numpy())] = self.model.get_weights()

    probe = tk.ProbeCallback(layers=["h", "out"], x=x[:4], y=y[:4], output=sys.argv[1], values=True,
                             gradients=True)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False, callbacks=[Saver(), probe])
    import h5py
    worst = 0.0
    with h5py.File(sys.argv[1], "r") as f:
        steps = [int(s) for s in f["steps"][:]]
        for k, step in enumerate(steps):
            clone = build()
            clone.set_weights(weights[step])
            for name in ("h", "out"):
                expected = keras.Model(clone.inputs, clone.get_layer(name).output)(x[:4]).numpy()
                worst = max(worst, float(np.abs(f["activations/" + name][k] - expected).max()))
            with tf.GradientTape() as tape:
                out = clone(x[:4])
                tape.watch(out)
                loss = tf.reduce_mean(tf.reduce_mean(tf.square(out - y[:4]), axis=-1))
            worst = max(worst, float(np.abs(f["gradients/out"][k] - tape.gradient(loss, out).numpy()).max()))
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "steps": steps, "worst": worst,
                      "distributed": type(model.trainable_variables[0]).__name__}))
''')


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    """In a subprocess: logical devices must be set before TensorFlow initialises its own."""
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", MIRRORED, str(tmp_path / "mirrored.h5")], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert result["steps"] == [0, 1, 2, 3, 4]
    assert result["worst"] < 1e-5


# ---- tensorprobe.submodel ---------------------------------------------------------------------

def test_submodel_of_a_nested_transfer_model_values_gradients_weights():
    import keras
    import tensorflow as tf

    import tensorprobe

    model = keras.saving.load_model(ROOT / "sample_models" / "transfer.keras")
    sub = tensorprobe.submodel(ROOT / "sample_models" / "transfer.keras", layers=["block1_conv2"])
    assert sub.output_keys == ["vgg16/block1_conv2", "predictions"]
    sub = tensorprobe.submodel(model, layers=["block1_conv2", "fc1"])
    assert {id(v) for v in sub.trainable_variables} == {id(v) for v in model.trainable_variables}
    assert {id(v) for v in sub.weights} == {id(v) for v in model.weights}
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    vgg = model.get_layer("vgg16")
    inner = keras.Model(vgg.inputs, vgg.get_layer("block1_conv2").output)
    fc1 = keras.Model(model.inputs, model.get_layer("fc1").output)
    got = sub(x)
    assert sorted(got) == ["fc1", "predictions", "vgg16/block1_conv2"]
    np.testing.assert_allclose(got["vgg16/block1_conv2"], inner(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["fc1"], fc1(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["predictions"], model(x), rtol=1e-5, atol=1e-6)
    xt = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xt)
        mine = tf.function(lambda t: sub(t))(xt)
        theirs_inner, theirs_out = inner(xt), model(xt)
        loss_mine = tf.reduce_sum(tf.square(mine["vgg16/block1_conv2"])) + tf.reduce_sum(mine["predictions"])
        loss_theirs = tf.reduce_sum(tf.square(theirs_inner)) + tf.reduce_sum(theirs_out)
    np.testing.assert_allclose(tape.gradient(loss_mine, xt), tape.gradient(loss_theirs, xt), rtol=1e-4, atol=1e-6)
    for a, b in zip(tape.gradient(loss_mine, model.trainable_variables),
                    tape.gradient(loss_theirs, model.trainable_variables)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def attention_model(keras):
    keras.utils.set_random_seed(5)
    L = keras.layers
    inp = keras.Input((4, 6), name="tokens")
    z = L.Dense(6, name="proj")(inp) * 2.0 + 1.0  # inline operations: `multiply`, `add`
    a = L.MultiHeadAttention(num_heads=2, key_dim=3, name="mha")(z, z)
    model = keras.Model(inp, L.Dense(2, name="head")(L.Flatten(name="flat")(a)), name="attn")
    return model, z._keras_history.operation.name  # `add`, or `add_K` after other models in the process


def test_submodel_reaches_inline_operations_and_attention_scores():
    import keras
    import tensorflow as tf

    import tensorprobe

    model, add = attention_model(keras)
    # MultiHeadAttention's softmax: `mha/softmax`, or `mha/softmax_K` after other models in the process
    softmax = next(layer["path"] for layer in tensorprobe.load(model).layers()
                   if layer["path"].startswith("mha/") and layer["class"] == "Softmax")
    sub = tensorprobe.submodel(model, layers=[add, softmax])
    x = tf.constant(np.random.default_rng(1).normal(size=(3, 4, 6)).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        got = sub(x)
        mine = tf.reduce_sum(got[softmax] * tf.range(4, dtype=tf.float32)) + tf.reduce_sum(got["head"])
        z = model.get_layer("proj")(x) * 2.0 + 1.0  # by hand
        attended, scores = model.get_layer("mha")(z, z, return_attention_scores=True)
        out = model.get_layer("head")(model.get_layer("flat")(attended))
        theirs = tf.reduce_sum(scores * tf.range(4, dtype=tf.float32)) + tf.reduce_sum(out)
    assert got[softmax].shape == (3, 2, 4, 4)
    np.testing.assert_allclose(got[add], z, rtol=1e-6)
    np.testing.assert_allclose(got[softmax], scores, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["head"], out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tape.gradient(mine, x), tape.gradient(theirs, x), rtol=1e-4, atol=1e-6)


def test_submodel_gradient_with_respect_to_a_returned_activation():
    import keras
    import tensorflow as tf

    import tensorprobe

    model, add = attention_model(keras)
    sub = tensorprobe.submodel(model, layers=[add])
    x = tf.constant(np.random.default_rng(2).normal(size=(2, 4, 6)).astype("float32"))
    with tf.GradientTape() as tape:
        got = sub(x, watch=tape.watch)
        loss = tf.reduce_sum(tf.square(got["head"]))
    mine = tape.gradient(loss, got[add])
    z = tf.constant(model.get_layer("proj")(x) * 2.0 + 1.0)  # the rest of the model, by hand, from z
    with tf.GradientTape() as tape:
        tape.watch(z)
        out = model.get_layer("head")(model.get_layer("flat")(model.get_layer("mha")(z, z)))
        loss = tf.reduce_sum(tf.square(out))
    np.testing.assert_allclose(mine, tape.gradient(loss, z), rtol=1e-4, atol=1e-6)


def nested_model(keras, seed):
    keras.utils.set_random_seed(seed)
    L = keras.layers
    inner = keras.Sequential([keras.Input((5,)), L.Dense(4, activation="relu", name="enc1"),
                              L.Dense(3, name="enc2")], name="encoder")
    inp = keras.Input((5,), name="x")
    return keras.Model(inp, L.Dense(2, name="head")(inner(inp)), name="outer")


def test_submodel_in_a_custom_training_loop_whose_loss_uses_a_nested_activation():
    """The loss adds an activity penalty on encoder/enc1 (inside the nested model, which
    Keras' own Model(inputs, layer.output) cannot reach); each step's loss and weights equal
    a second model trained by an independent loop that calls the layers by hand."""
    import keras
    import tensorflow as tf

    import tensorprobe

    model, twin = nested_model(keras, 6), nested_model(keras, 7)
    twin.set_weights(model.get_weights())
    sub = tensorprobe.submodel(model, layers=["encoder/enc1"])
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(8, 5)).astype("float32"), rng.normal(size=(8, 2)).astype("float32")
    optimizer, twin_optimizer = keras.optimizers.SGD(0.05), keras.optimizers.SGD(0.05)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            out = sub(x, training=True)
            loss = tf.reduce_mean(tf.square(out["head"] - y)) + 0.1 * tf.reduce_mean(tf.square(out["encoder/enc1"]))
        optimizer.apply(tape.gradient(loss, sub.trainable_variables), sub.trainable_variables)
        return loss

    encoder = twin.get_layer("encoder")
    for _ in range(3):
        loss = step(x, y)
        with tf.GradientTape() as tape:
            h = encoder.get_layer("enc1")(x)
            out = twin.get_layer("head")(encoder.get_layer("enc2")(h))
            expected = tf.reduce_mean(tf.square(out - y)) + 0.1 * tf.reduce_mean(tf.square(h))
        twin_optimizer.apply(tape.gradient(expected, twin.trainable_variables), twin.trainable_variables)
        assert float(loss) == pytest.approx(float(expected), rel=1e-5)
        for a, b in zip(model.get_weights(), twin.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(model.get_weights()[0], nested_model(keras, 6).get_weights()[0])  # it trained


def test_submodel_errors():
    import keras

    import tensorprobe
    from tensorprobe.errors import UnknownLayerError, UsageError

    model = nested_model(keras, 6)
    with pytest.raises(UnknownLayerError) as e:
        tensorprobe.submodel(model, layers=["enc3"])
    assert str(e.value).startswith("layers 'enc3': no such layer; did you mean")
    with pytest.raises(UsageError) as e:
        tensorprobe.submodel(model)
    assert str(e.value) == "no layer selected: give layers NAME, match REGEX or all_layers"
    with pytest.raises(UsageError) as e:
        tensorprobe.submodel(model, layers=["enc1"])([np.zeros((1, 5)), np.zeros((1, 5))])
    assert str(e.value) == "the model takes 1 input (x), not 2"
    with pytest.raises(UsageError) as e:
        tensorprobe.submodel(model, layers=["enc1"])({"y": np.zeros((1, 5))})
    assert str(e.value) == "the model's inputs are x; got y"
    with pytest.raises(UsageError) as e:
        tensorprobe.submodel(ROOT / "sample_models" / "transfer.keras", layers=["nope"], match="conv").source
    assert str(e.value).startswith("layers 'nope': no such layer")


def test_submodel_refuses_a_model_that_is_not_keras(tmp_path):
    import tensorflow as tf

    import tensorprobe
    from tensorprobe.errors import UsageError

    folder = tmp_path / "graph_only"
    module = tf.Module()
    module.f = tf.function(lambda x: {"y": x * 2.0}, input_signature=[tf.TensorSpec((None, 5), tf.float32)])
    tf.saved_model.save(module, str(folder), signatures=module.f)
    with pytest.raises(UsageError) as e:
        tensorprobe.submodel(folder, layers=["head"])
    assert str(e.value) == f"model: a sub-model is built from a Keras model; '{folder}' holds a graph"
