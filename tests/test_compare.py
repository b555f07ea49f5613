"""`tensorprobe compare`: two models on the same inputs, paired by layer path. Each number is
computed again here from the two models' own sub-models, in NumPy."""

import json

import numpy as np
import pytest

from conftest import ROOT, error_line

SAMPLES = ROOT / "sample_models"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import keras

    folder = tmp_path_factory.mktemp("compare")
    keras.saving.load_model(SAMPLES / "transfer.keras").export(folder / "export", verbose=False)

    # The same layer under another name, and a layout change (NCHW in A, NHWC in B).
    L = keras.layers
    keras.utils.set_random_seed(5)
    x = keras.Input((4, 4, 3), name="x")
    a = keras.Model(x, L.Dense(2, name="head")(L.Flatten(name="flat")(L.Permute((3, 1, 2), name="t")(x))), name="a")
    a.save(folder / "a.keras")
    y = keras.Input((4, 4, 3), name="x")
    t = L.Activation("linear", name="t")(y)
    b = keras.Model(y, L.Dense(2, name="renamed")(L.Flatten(name="flat")(L.Permute((3, 1, 2), name="nchw")(t))),
                    name="b")
    b.get_layer("renamed").set_weights(a.get_layer("head").get_weights())
    b.save(folder / "b.keras")
    np.save(folder / "x443.npy", np.random.default_rng(5).normal(size=(6, 4, 4, 3)).astype("float32"))
    return folder


def run_json(cli, *args):
    r = cli("compare", *args, "--json")
    return r, json.loads(r.stdout) if r.stdout else None


def sub(model, path, x):
    import keras

    if "/" in path:
        outer, name = path.split("/")
        base = model.get_layer(outer)
        return np.asarray(keras.Model(base.inputs, base.get_layer(name).output)(x), np.float64)
    return np.asarray(keras.Model(model.inputs, model.get_layer(path).output)(x, training=False), np.float64)


def test_keras_against_its_savedmodel_export(cli, models):
    r, result = run_json(cli, SAMPLES / "transfer.keras", models / "export", SAMPLES / "input.npy")
    assert r.exit_code == 0, r.stderr
    assert result["first_divergence"] is None and result["match"] is True
    assert result["only_in_a"] == ["dropout"] and result["only_in_b"] == []  # identity at inference
    paths = [p["path"] for p in result["pairs"]]
    assert paths[:3] == ["vgg16/block1_conv1", "vgg16/block1_conv2", "vgg16/block1_pool"]
    assert paths.index("vgg16") == paths.index("vgg16/block3_pool") + 1  # the nested model after its layers
    assert all(p["status"] == "ok" and p["max_abs"] <= 1e-5 for p in result["pairs"])


def test_moved_weight_is_the_first_divergence(cli, models):
    import keras

    r, result = run_json(cli, SAMPLES / "transfer.keras", SAMPLES / "transfer_tweaked.keras", SAMPLES / "input.npy")
    assert r.exit_code == 1
    assert result["first_divergence"] == "vgg16/block2_conv1"
    pairs = {p["path"]: p for p in result["pairs"]}
    assert [p["status"] for p in result["pairs"][:3]] == ["ok", "ok", "ok"]

    x = np.load(SAMPLES / "input.npy")
    a = sub(keras.saving.load_model(SAMPLES / "transfer.keras"), "vgg16/block2_conv1", x)
    b = sub(keras.saving.load_model(SAMPLES / "transfer_tweaked.keras"), "vgg16/block2_conv1", x)
    err = np.abs(a - b)
    p = pairs["vgg16/block2_conv1"]
    assert p["max_abs"] == pytest.approx(err.max(), rel=1e-6)
    assert p["mean_abs"] == pytest.approx(err.mean(), rel=1e-6)
    assert p["cosine"] == pytest.approx((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()), rel=1e-9)
    assert p["snr_db"] == pytest.approx(10 * np.log10((b * b).sum() / ((a - b) ** 2).sum()), rel=1e-6)
    nonzero = b != 0
    assert p["max_rel"] == pytest.approx((err[nonzero] / np.abs(b[nonzero])).max(), rel=1e-6)
    worst = np.unravel_index(np.argmax(err), err.shape)
    assert [p["worst_sample"], *p["worst_position"]] == [int(i) for i in worst]

    # a criterion on SNR: the same first divergence, or none below its SNR
    snr = p["snr_db"]
    r, result = run_json(cli, SAMPLES / "transfer.keras", SAMPLES / "transfer_tweaked.keras", SAMPLES / "input.npy",
                         "--metric", f"snr:{snr + 0.01:.3f}", "--match", "block2_conv1")
    assert r.exit_code == 1 and result["first_divergence"] == "vgg16/block2_conv1" and result["metric"].startswith("snr:")
    r, result = run_json(cli, SAMPLES / "transfer.keras", SAMPLES / "transfer_tweaked.keras", SAMPLES / "input.npy",
                         "--metric", f"snr:{snr - 0.01:.3f}", "--match", "block2_conv1")
    assert r.exit_code == 0 and result["first_divergence"] is None


def test_table_names_the_first_divergence(cli):
    r = cli("compare", SAMPLES / "transfer.keras", SAMPLES / "transfer_tweaked.keras", SAMPLES / "input.npy")
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert any(line.split()[:1] == ["vgg16/block2_conv1"] and line.rstrip().endswith("DIFFERS <- first") for line in lines)
    assert lines[-1].startswith("first divergence: vgg16/block2_conv1 (3 pairs before it within tolerance;")


def test_pairs_renamed_layers_and_layouts(cli, models, tmp_path):
    import keras

    args = (models / "a.keras", models / "b.keras", models / "x443.npy")
    r, result = run_json(cli, *args)
    assert result["only_in_a"] == ["head"] and result["only_in_b"] == ["nchw", "renamed"]
    t = next(p for p in result["pairs"] if p["path"] == "t")
    assert t["status"] == "ok" and "channels-first" in t["layout"] and t["shape"] == [4, 4, 3]
    assert r.exit_code == 0, r.stderr

    r, result = run_json(cli, *args, "--pair", "head=renamed", "--save-a", tmp_path / "a.h5",
                         "--save-b", tmp_path / "b.h5")
    assert r.exit_code == 0 and "head" not in result["only_in_a"]
    head = next(p for p in result["pairs"] if p["path"] == "head")
    x = np.load(models / "x443.npy")
    expected = np.asarray(keras.saving.load_model(models / "a.keras")(x))
    import h5py

    with h5py.File(tmp_path / "a.h5") as fa, h5py.File(tmp_path / "b.h5") as fb:
        np.testing.assert_allclose(fa["activations/head"][()], expected, atol=1e-5)
        np.testing.assert_allclose(fb["activations/renamed"][()], expected, atol=1e-5)
        assert fa.attrs["complete"] and fb.attrs["complete"]
    assert head["max_abs"] <= 1e-6


def test_keras2_h5_against_the_same_weights_in_keras3(cli, zoo, tmp_path):
    """A tf_keras file (loaded by tf_keras) against a Keras 3 model given its weights."""
    import keras
    import tf_keras

    old = tf_keras.models.load_model(zoo["keras2_transfer.h5"], compile=False)
    L = keras.layers
    inp = keras.Input((16, 16, 3))
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="block1_conv1")(inp)
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="block1_conv2")(x)
    x = L.MaxPooling2D(2, name="block1_pool")(x)
    x = L.Conv2D(6, 3, padding="same", activation="relu", name="block2_conv1")(x)
    base = keras.Model(inp, x, name="vgg16")
    outer = keras.Input((16, 16, 3), name="image")
    y = L.GlobalAveragePooling2D(name="gap")(base(outer))
    y = L.BatchNormalization(name="bn")(L.Dense(8, activation="relu", name="fc1")(y))
    new = keras.Model(outer, L.Dense(3, activation="softmax", name="predictions")(y), name="transfer")
    new.set_weights(old.get_weights())
    new.save(tmp_path / "keras3.keras")
    np.save(tmp_path / "x.npy", np.random.default_rng(2).uniform(0, 1, (5, 16, 16, 3)).astype("float32"))
    r, result = run_json(cli, zoo["keras2_transfer.h5"], tmp_path / "keras3.keras", tmp_path / "x.npy", "--atol", "1e-5")
    assert r.exit_code == 0, r.stderr
    assert {"vgg16/block2_conv1", "fc1", "bn", "predictions"} <= {p["path"] for p in result["pairs"]}


def test_usage_errors(cli, models):
    r = cli("compare", SAMPLES / "transfer.keras", models / "export", SAMPLES / "input.npy", "--metric", "snr")
    assert r.exit_code == 2 and "--metric 'snr'" in error_line(r)
    r = cli("compare", SAMPLES / "transfer.keras", models / "export", SAMPLES / "input.npy", "--pair", "fc1")
    assert r.exit_code == 2 and "A_PATH=B_PATH" in error_line(r)
    r = cli("compare", SAMPLES / "transfer.keras", models / "a.keras", SAMPLES / "input.npy")
    assert r.exit_code == 2 and "no layer path in common" in error_line(r)


@pytest.fixture(scope="module")
def tflite_files(tmp_path_factory):
    import keras
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("compare_tflite")
    model = keras.saving.load_model(SAMPLES / "transfer.keras")
    (folder / "f32.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    x = np.load(SAMPLES / "input.npy")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[i:i + 1]] for i in range(len(x)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    (folder / "int8.tflite").write_bytes(converter.convert())
    return folder


def test_keras_against_float_and_int8_tflite(cli, tflite_files, tmp_path):
    import h5py
    import keras

    r, result = run_json(cli, SAMPLES / "transfer.keras", tflite_files / "f32.tflite", SAMPLES / "input.npy",
                         "--rtol", "1e-4", "--atol", "1e-4")
    assert r.exit_code == 0, r.stderr
    assert result["only_in_a"] == ["dropout"] and len(result["pairs"]) == 15

    r, result = run_json(cli, SAMPLES / "transfer.keras", tflite_files / "int8.tflite", SAMPLES / "input.npy",
                         "--metric", "cosine:0.99")
    assert r.exit_code == 0, r.stderr
    # the report's numbers against the int8 file's own dequantized values (dump) and Keras
    out = tmp_path / "int8.h5"
    r2 = cli("dump", "-q", "-m", tflite_files / "int8.tflite", "-l", "vgg16/block2_conv1", "-l", "fc1", "-o", out,
             SAMPLES / "input.npy")
    assert r2.exit_code == 0, r2.stderr
    model = keras.saving.load_model(SAMPLES / "transfer.keras")
    x = np.load(SAMPLES / "input.npy")
    pairs = {p["path"]: p for p in result["pairs"]}
    with h5py.File(out) as f:
        for path in ("vgg16/block2_conv1", "fc1"):
            a, b = sub(model, path, x), f[f"activations/{path}"][()].astype(np.float64)
            p = pairs[path]
            assert p["max_abs"] == pytest.approx(np.abs(a - b).max(), rel=1e-6)
            assert p["snr_db"] == pytest.approx(10 * np.log10((b * b).sum() / ((a - b) ** 2).sum()), rel=1e-6)
            assert p["cosine"] == pytest.approx((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()), rel=1e-9)
            assert 0 < p["max_abs"] and p["status"] == "ok"
    r, result = run_json(cli, SAMPLES / "transfer.keras", tflite_files / "int8.tflite", SAMPLES / "input.npy",
                         "--metric", "allclose")
    assert r.exit_code == 1 and result["first_divergence"] == "vgg16/block1_conv1"  # allclose: int8 differs at once


def test_plot_of_the_errors(cli, tmp_path):
    from PIL import Image

    picture = tmp_path / "errors.png"
    r = cli("compare", "-q", SAMPLES / "transfer.keras", SAMPLES / "transfer_tweaked.keras", SAMPLES / "input.npy",
            "--plot", picture)
    assert r.exit_code == 1 and r.stdout == ""
    with Image.open(picture) as image:
        assert image.format == "PNG" and image.size == (600, 480)  # 6.0 x 4.8 inches at 100 dpi
    r = cli("compare", SAMPLES / "transfer.keras", SAMPLES / "transfer_tweaked.keras", SAMPLES / "input.npy",
            "--plot", tmp_path / "errors.jpg")
    assert r.exit_code == 2 and "--plot" in error_line(r) and not (tmp_path / "errors.jpg").exists()
    r = cli("compare", SAMPLES / "transfer.keras", SAMPLES / "transfer_tweaked.keras", SAMPLES / "input.npy",
            "--plot", picture)
    assert r.exit_code == 2 and "exists" in error_line(r)


def test_node_data_for_model_explorer(cli, models, tflite_files, tmp_path):
    """Keyed by model B's tensor names, as its graph names them; the values are the report's."""
    import tensorflow as tf

    out = tmp_path / "nodes.json"
    r, result = run_json(cli, SAMPLES / "transfer.keras", tflite_files / "int8.tflite", SAMPLES / "input.npy",
                         "--node-data", out)
    data = json.loads(out.read_text())
    interpreter = tf.lite.Interpreter(model_path=str(tflite_files / "int8.tflite"))
    names = {t["name"] for t in interpreter.get_tensor_details()}
    assert set(data["results"]) <= names  # a nested model's output is its last layer's tensor: one key
    assert set(data["results"]) == {p["node_b"] for p in result["pairs"]}
    assert result["metric"] == "snr:20"  # the default against an int8 file: the values are SNRs
    assert all(data["results"][p["node_b"]]["value"] == p["snr_db"] for p in result["pairs"])
    assert [g["stop"] for g in data["gradient"]] == [0, 1]

    out = tmp_path / "export_nodes.json"
    r, result = run_json(cli, SAMPLES / "transfer.keras", models / "export", SAMPLES / "input.npy",
                         "--node-data", out)
    data = json.loads(out.read_text())
    assert r.exit_code == 0
    assert "StatefulPartitionedCall/transfer_1/vgg16_1/block1_conv1_1/Relu:0" in data["results"]
    r = cli("compare", SAMPLES / "transfer.keras", models / "export", SAMPLES / "input.npy", "--node-data",
            tmp_path / "nodes.txt")
    assert r.exit_code == 2 and "--node-data" in error_line(r)
