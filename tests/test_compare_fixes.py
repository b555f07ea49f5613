"""`compare` across runtimes: inputs fed by name (a Keras model against its export, whose
signature sorts them), default criteria by the two models' precisions, layers fused away in a
TFLite file, metric thresholds checked before any model is loaded. Every value is computed
again here, by Keras, the export's own signature or TensorFlow's TFLite interpreter."""

import json

import numpy as np
import pytest

from conftest import error_line


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import keras
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("compare_fixes")
    L = keras.layers
    keras.utils.set_random_seed(7)
    # Two inputs of the same shape, declared zeta first: the export's signature sorts them
    # (alpha, zeta), and feeding by position would run, with wrong values.
    zeta, alpha = keras.Input((3,), name="zeta"), keras.Input((3,), name="alpha")
    h = L.Concatenate(name="cat")([L.Dense(4, name="dz")(zeta), L.Dense(4, name="da")(alpha)])
    two = keras.Model([zeta, alpha], L.Dense(2, name="head")(h), name="two")
    two.save(folder / "two.keras")
    two.export(folder / "two_export", verbose=False)
    (folder / "two.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(two).convert())
    # the same weights under other input names: only positions can pair them
    p, q = keras.Input((3,), name="p"), keras.Input((3,), name="q")
    h = L.Concatenate(name="cat")([L.Dense(4, name="dz")(p), L.Dense(4, name="da")(q)])
    renamed = keras.Model([p, q], L.Dense(2, name="head")(h), name="renamed")
    renamed.set_weights(two.get_weights())
    renamed.save(folder / "renamed.keras")
    rng = np.random.default_rng(7)
    np.savez(folder / "two.npz", zeta=rng.normal(size=(5, 3)).astype("float32"),
             alpha=rng.normal(size=(5, 3)).astype("float32"))

    # Conv2D -> BatchNormalization -> ReLU: fused into one op by the converter; a Dropout
    # that leaves nothing in the file.
    x = keras.Input((8, 8, 3), name="image")
    y = L.Conv2D(4, 3, name="conv")(x)
    y = L.BatchNormalization(name="bn")(y)
    y = L.Activation("relu", name="act")(y)
    y = L.Dropout(0.3, name="drop")(y)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    fuse = keras.Model(x, L.Dense(3, name="head")(y), name="fuse")
    bn = fuse.get_layer("bn")
    bn.moving_mean.assign(np.linspace(-1, 1, 4).astype("float32"))
    bn.beta.assign(np.linspace(0.1, 0.4, 4).astype("float32"))
    fuse.save(folder / "fuse.keras")
    images = rng.normal(size=(6, 8, 8, 3)).astype("float32")
    np.save(folder / "images.npy", images)
    (folder / "fuse.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(fuse).convert())
    converter = tf.lite.TFLiteConverter.from_keras_model(fuse)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([images[i:i + 1]] for i in range(len(images)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    (folder / "fuse_int8.tflite").write_bytes(converter.convert())
    # one kernel value moved: a real difference, which the float default must find
    kernel, bias = fuse.get_layer("conv").get_weights()
    kernel[1, 1, 0, 2] += 0.05
    fuse.get_layer("conv").set_weights([kernel, bias])
    fuse.save(folder / "fuse_moved.keras")
    return folder


def run_json(cli, *args):
    r = cli("compare", *args, "--json")
    return r, json.loads(r.stdout) if r.stdout else None


def tflite_tensor(path, name, x):
    """The tensor `name` of the TFLite file for the batch `x`, from TensorFlow's interpreter
    (dequantized when it is quantized), float64."""
    import tensorflow as tf

    # without XNNPACK, which would compute the fused ops its own way and keep no intermediate
    interpreter = tf.lite.Interpreter(
        model_path=str(path), experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    (inp,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    detail = next(d for d in interpreter.get_tensor_details() if d["name"] == name)
    value = interpreter.get_tensor(detail["index"]).astype(np.float64)
    scale, zero = detail["quantization"]
    return (value - zero) * scale if scale else value


def keras_value(path, layer, x):
    import keras

    model = keras.saving.load_model(path)
    return np.asarray(keras.Model(model.inputs, model.get_layer(layer).output)(x), np.float64)


def test_export_inputs_are_fed_by_name(cli, files, tmp_path):
    import keras
    import tensorflow as tf

    arrays = dict(np.load(files / "two.npz"))
    export = tf.saved_model.load(str(files / "two_export"))
    serve = export.signatures["serving_default"]
    assert sorted(serve.structured_input_signature[1]) == ["alpha", "zeta"]
    model = keras.saving.load_model(files / "two.keras")
    expected = np.asarray(model([arrays["zeta"], arrays["alpha"]]), np.float64)
    swapped = np.asarray(next(iter(serve(zeta=tf.constant(arrays["alpha"]),
                                         alpha=tf.constant(arrays["zeta"])).values())), np.float64)
    assert np.abs(swapped - expected).max() > 0.1  # feeding by position would show

    r, result = run_json(cli, files / "two.keras", files / "two_export", files / "two.npz",
                         "--save-b", tmp_path / "b.h5")
    assert r.exit_code == 0, r.stderr
    assert result["inputs_by_position"] is None
    assert {(i["a"], i["b"]) for i in result["inputs"]} == {("zeta", "zeta"), ("alpha", "alpha")}
    assert [p["status"] for p in result["pairs"]] == ["ok"] * 4
    import h5py

    with h5py.File(tmp_path / "b.h5") as f:
        np.testing.assert_allclose(f["activations/head"][()], expected, rtol=1e-6, atol=1e-6)

    # a TFLite file of the same model: its inputs by name too
    r, result = run_json(cli, files / "two.keras", files / "two.tflite", files / "two.npz", "-l", "dz", "-l", "da")
    assert r.exit_code == 0, r.stderr
    assert {(i["a"], i["b"]) for i in result["inputs"]} == {("zeta", "zeta"), ("alpha", "alpha")}
    pairs = {p["path"]: p for p in result["pairs"]}
    for path, name in (("dz", "zeta"), ("da", "alpha")):
        a = keras_value(files / "two.keras", path, [arrays["zeta"], arrays["alpha"]])
        w, b = model.get_layer(path).get_weights()
        assert pairs[path]["max_abs"] == pytest.approx(np.abs(a - (arrays[name] @ w + b)).max(), abs=1e-6)
        assert pairs[path]["max_abs"] < 1e-5


def test_inputs_matched_by_position_when_names_differ(cli, files):
    r = cli("compare", files / "two.keras", files / "renamed.keras", files / "two.npz")
    assert r.exit_code == 0, r.stderr
    assert r.stderr.splitlines() == ["warning: inputs matched by position, as their names differ: "
                                     "A zeta -> B p, A alpha -> B q"]
    assert "inputs matched by position, as their names differ: A zeta -> B p, A alpha -> B q" in r.stdout
    r, result = run_json(cli, files / "two.keras", files / "renamed.keras", files / "two.npz")
    assert result["inputs"] == [{"a": "zeta", "b": "p"}, {"a": "alpha", "b": "q"}]
    assert all(p["max_abs"] == 0 for p in result["pairs"])  # the same weights, the same kernels


def test_float_tflite_default_is_float32_rounding(cli, files):
    x = np.load(files / "images.npy")
    r, result = run_json(cli, files / "fuse.keras", files / "fuse.tflite", files / "images.npy", "-l", "act")
    assert r.exit_code == 0, r.stderr
    assert result["metric"] == "scaled:0.0001" and result["precision"] == {"a": "float32", "b": "float32"}
    assert result["criterion"] == "scaled:0.0001 (max |A - B| <= X max |B|; the default for A float32, B float32)"
    act = next(p for p in result["pairs"] if p["path"] == "act")
    a, b = keras_value(files / "fuse.keras", "act", x), tflite_tensor(files / "fuse.tflite", act["node_b"], x)
    assert act["max_abs"] == pytest.approx(np.abs(a - b).max(), rel=1e-6)
    assert act["max_abs_b"] == pytest.approx(np.abs(b).max(), rel=1e-6)
    assert 0 < act["max_abs"] <= 1e-4 * act["max_abs_b"]  # rounding, not exact: allclose would fail it
    r, strict = run_json(cli, files / "fuse.keras", files / "fuse.tflite", files / "images.npy", "-l", "act",
                         "--metric", "allclose")
    assert strict["metric"] == "allclose" and strict["rtol"] == 1e-5 and strict["atol"] == 1e-8
    assert strict["criterion"].startswith("rtol 1e-05, atol 1e-08 (")

    # a weight moved by 0.05 is found by the same default, at the layer it changes
    r, result = run_json(cli, files / "fuse_moved.keras", files / "fuse.tflite", files / "images.npy", "-l", "act")
    assert r.exit_code == 1 and result["first_divergence"] == "act"
    act = next(p for p in result["pairs"] if p["path"] == "act")
    a = keras_value(files / "fuse_moved.keras", "act", x)
    assert act["max_abs"] == pytest.approx(np.abs(a - b).max(), rel=1e-6)
    assert act["max_abs"] > 1e-4 * np.abs(b).max()


def test_int8_default_is_snr(cli, files):
    x = np.load(files / "images.npy")
    r, result = run_json(cli, files / "fuse.keras", files / "fuse_int8.tflite", files / "images.npy", "-l", "act")
    assert r.exit_code == 0, r.stderr
    assert result["metric"] == "snr:20" and result["precision"] == {"a": "float32", "b": "int8"}
    assert result["criterion"] == "snr:20 (SNR >= X dB; the default for A float32, B int8)"
    act = next(p for p in result["pairs"] if p["path"] == "act")
    a, b = keras_value(files / "fuse.keras", "act", x), tflite_tensor(files / "fuse_int8.tflite", act["node_b"], x)
    snr = 10 * np.log10((b * b).sum() / ((a - b) ** 2).sum())
    assert act["snr_db"] == pytest.approx(snr, rel=1e-6) and 20 <= snr < 80
    r, strict = run_json(cli, files / "fuse.keras", files / "fuse_int8.tflite", files / "images.npy",
                         "-l", "act", "--atol", "1e-6")
    assert r.exit_code == 1 and strict["metric"] == "allclose" and strict["atol"] == 1e-6
    assert strict["rtol"] == 1e-5 and strict["first_divergence"] == "act"


def test_fused_layers_are_listed_as_fused(cli, files):
    r, result = run_json(cli, files / "fuse.keras", files / "fuse.tflite", files / "images.npy")
    fused = result["fused_in_b"]
    assert fused["conv"] == "act" and fused["bn"] == "act"
    assert "conv" not in result["only_in_a"] and "bn" not in result["only_in_a"]
    assert "drop" in result["only_in_a"]  # a Dropout leaves nothing in the file: absent, not fused
    r = cli("compare", files / "fuse.keras", files / "fuse.tflite", files / "images.npy")
    lines = r.stdout.splitlines()
    k = next(i for i, line in enumerate(lines) if line.startswith("fused in B ("))
    assert lines[k].startswith(f"fused in B ({len(fused)} layers: the converter merged their ops into")
    assert "  conv, bn -> act" in lines[k + 1:k + 1 + len(fused)]
    k = lines.index(f"only in A ({len(result['only_in_a'])} layer{'s' if len(result['only_in_a']) > 1 else ''}):")
    assert "drop" in lines[k + 1].split(", ")[0].split()


def test_long_lists_fold_between_names():
    from tensorprobe.report import _folded

    names = [f"block{i}/conv{j}" for i in range(12) for j in range(3)]
    lines = _folded(names, 60)
    assert all(len(line) <= 60 and line.startswith("  ") for line in lines) and len(lines) > 5
    assert " ".join(lines).replace(",", " ").split() == names


@pytest.mark.parametrize("args, message", [
    (("--metric", "cosine:2"), "--metric 'cosine:2': a cosine similarity lies in [-1, 1]"),
    (("--metric", "cosine:-1.01"), "--metric 'cosine:-1.01': a cosine similarity lies in [-1, 1]"),
    (("--metric", "snr:nan"), "--metric 'snr:nan': 'nan' is not a finite number"),
    (("--metric", "snr:inf"), "--metric 'snr:inf': 'inf' is not a finite number"),
    (("--metric", "scaled:-1e-4"), "--metric 'scaled:-1e-4': the scaled tolerance must be >= 0"),
    (("--metric", "snr:"), "--metric 'snr:': '' is not a finite number"),
    (("--metric", "psnr:3"), "--metric 'psnr:3': expected allclose, scaled:X"),
    (("--metric", "snr:30", "--atol", "1e-3"), "--rtol/--atol set the allclose rule, --metric 'snr:30' another"),
    (("--match", "("), "--match '(': not a valid regular expression"),
])
def test_metric_ranges_are_usage_errors_before_loading(cli, tmp_path, args, message):
    """The models are not even loadable: the option is refused first, with exit status 2."""
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"not a model")
    r = cli("compare", bad, bad, tmp_path / "x.npy", *args)
    assert r.exit_code == 2
    assert error_line(r).startswith(f"error: {message}")


def test_rtol_atol_ranges(cli, tmp_path):
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"not a model")
    for option, value in (("--rtol", "-1"), ("--atol", "inf"), ("--atol", "nan")):
        r = cli("compare", bad, bad, tmp_path / "x.npy", option, value)
        assert r.exit_code == 2 and option in r.stderr and "finite number >= 0" in r.stderr


def test_thresholds_at_their_limits_are_accepted(cli, files):
    for metric in ("cosine:-1", "cosine:1", "snr:-10", "scaled:0"):
        r, result = run_json(cli, files / "two.keras", files / "two_export", files / "two.npz", "--metric", metric)
        assert r.exit_code == 0, (metric, r.stderr)  # the export is exact: every criterion passes
        assert result["metric"] == metric and result["criterion"].endswith("; given)")


def test_mixed_precision_keras_gets_the_snr_default():
    """A mixed_float16 model against the same weights in float32 (in-memory models)."""
    import keras

    import tensorprobe

    L = keras.layers
    keras.utils.set_random_seed(3)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        i = keras.Input((6,), name="v")
        half = keras.Model(i, L.Dense(3, name="out")(L.Dense(8, activation="relu", name="hidden")(i)))
    finally:
        keras.config.set_dtype_policy(previous)
    i = keras.Input((6,), name="v")
    full = keras.Model(i, L.Dense(3, name="out")(L.Dense(8, activation="relu", name="hidden")(i)))
    full.set_weights(half.get_weights())
    x = np.random.default_rng(3).normal(size=(16, 6)).astype("float32")
    result = tensorprobe.compare(half, full, x)
    assert result["precision"] == {"a": "float16", "b": "float32"} and result["metric"] == "snr:20"
    a, b = np.asarray(half(x), np.float64), np.asarray(full(x), np.float64)
    out = next(p for p in result["pairs"] if p["path"] == "out")
    assert out["snr_db"] == pytest.approx(10 * np.log10((b * b).sum() / ((a - b) ** 2).sum()), rel=1e-6)
    assert out["status"] == "ok" and result["match"] is True
