"""`tensorprobe dump`: every value checked against an independent Keras computation."""

import hashlib
import json
from datetime import datetime

import h5py
import numpy as np
import pytest

from conftest import error_line


def submodel_values(model, layer_path, x, fed_by=None):
    """A layer's output computed by Keras itself: for a nested layer, the nested model's own
    sub-model applied to the input that reaches the nested model. `fed_by` names, for each
    nested model, the layer of its parent whose output it is called on (absent: the
    parent's input), as the test models were built."""
    import keras

    fed_by = fed_by or {}
    *outer_names, name = layer_path.split("/")
    container, value = model, x
    for nested_name in outer_names:
        feeder = fed_by.get(nested_name)
        if feeder is not None:
            reach = keras.Model(container.inputs, container.get_layer(feeder).output)
            value = reach(value, training=False)
        container = container.get_layer(nested_name)
    sub = keras.Model(container.inputs, container.get_layer(name).output)
    out = sub(value, training=False)
    return [np.asarray(o) for o in out] if isinstance(out, (list, tuple)) else np.asarray(out)


def read(path, name):
    with h5py.File(path, "r") as f:
        return f["activations"][name][()]


def test_nested_layer_from_env_model(cli, zoo, keras_model, tmp_path):
    out = tmp_path / "acts.h5"
    r = cli("dump", "--layer", "block1_conv2", "-o", out, zoo["input.npy"],
            env={"TENSORPROBE_MODEL": str(zoo["transfer.keras"])})
    assert r.exit_code == 0, r.stderr
    x = np.load(zoo["input.npy"])
    model = keras_model(zoo["transfer.keras"])
    expected = submodel_values(model, "vgg16/block1_conv2", x)
    got = read(out, "vgg16/block1_conv2")
    assert got.shape == (4, 32, 32, 8)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert r.stdout == ""
    assert "vgg16/block1_conv2" in r.stderr and f"wrote {out}" in r.stderr


def test_root_attributes_and_sources(cli, zoo, tmp_path):
    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", zoo["transfer.keras"], "-l", "predictions", "-o", out, zoo["input.npy"])
    assert r.exit_code == 0, r.stderr
    sha = hashlib.sha256(zoo["transfer.keras"].read_bytes()).hexdigest()
    with h5py.File(out, "r") as f:
        a = f.attrs
        assert a["format"] == "tensorprobe" and a["format_version"] == 1
        assert a["model"] == str(zoo["transfer.keras"]) and a["model_sha256"] == sha
        assert a["model_format"] == "keras" and a["loader"].startswith("keras 3.")
        assert bool(a["complete"]) is True and a["samples"] == 4
        created = datetime.fromisoformat(a["created"])
        assert created.utcoffset().total_seconds() == 0
        assert list(a["command"])[:2] == ["tensorprobe", "dump"]
        import keras
        import tensorflow as tf

        assert a["tensorflow_version"] == tf.__version__ and a["keras_version"] == keras.__version__
        sources = [s.decode() for s in f["inputs/source"][()]]
        assert sources == [f"{zoo['input.npy']}[{i}]" for i in range(4)]
        ds = f["activations/predictions"]
        assert ds.attrs["layer"] == "predictions" and ds.attrs["layer_class"] == "Dense"
        assert list(ds.attrs["sample_shape"]) == [5]
        assert ds.maxshape == (None, 5) and ds.chunks is not None


def test_statistics_match_numpy(cli, zoo, tmp_path):
    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", zoo["transfer.keras"], "-l", "block2_conv1", "-b", "3", "-o", out,
            zoo["images7.npy"])
    assert r.exit_code == 0, r.stderr
    with h5py.File(out, "r") as f:
        ds = f["activations/vgg16/block2_conv1"]
        v = ds[()].astype(np.float64)
        assert ds.attrs["min"] == pytest.approx(v.min())
        assert ds.attrs["max"] == pytest.approx(v.max())
        assert ds.attrs["mean"] == pytest.approx(v.mean(), rel=1e-9)
        assert ds.attrs["std"] == pytest.approx(v.std(), rel=1e-9)
        assert ds.attrs["zeros_fraction"] == pytest.approx(np.mean(v == 0))
        assert ds.attrs["nan_count"] == 0 and ds.attrs["inf_count"] == 0


def test_batches_not_a_multiple_of_batch_size(cli, zoo, keras_model, tmp_path):
    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", zoo["transfer.h5"], "-l", "vgg16/block3_pool", "-l", "bn", "-b", "3",
            "-o", out, zoo["images7.npy"])
    assert r.exit_code == 0, r.stderr
    x = np.load(zoo["images7.npy"])
    model = keras_model(zoo["transfer.h5"])
    np.testing.assert_allclose(read(out, "vgg16/block3_pool"),
                               submodel_values(model, "vgg16/block3_pool", x), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(read(out, "bn"), submodel_values(model, "bn", x), atol=1e-5, rtol=1e-5)
    with h5py.File(out, "r") as f:
        assert f.attrs["loader"].startswith("keras 3.") and f.attrs["model_format"] == "h5"
        assert f["inputs/source"].shape == (7,)


def test_single_sample_and_several_files(cli, zoo, keras_model, tmp_path):
    out = tmp_path / "acts.h5"
    files = [zoo["one_image.npy"], zoo["input.npy"], zoo["one_image.npy"]]
    r = cli("dump", "-m", zoo["transfer.keras"], "-l", "fc1", "-b", "2", "-o", out, *files)
    assert r.exit_code == 0, r.stderr
    one, four = np.load(zoo["one_image.npy"]), np.load(zoo["input.npy"])
    x = np.concatenate([one[None], four, one[None]])
    np.testing.assert_allclose(read(out, "fc1"), submodel_values(keras_model(zoo["transfer.keras"]), "fc1", x),
                               atol=1e-5, rtol=1e-5)
    with h5py.File(out, "r") as f:
        sources = [s.decode() for s in f["inputs/source"][()]]
    expected = [str(zoo["one_image.npy"])] + [f"{zoo['input.npy']}[{i}]" for i in range(4)]
    assert sources == expected + [str(zoo["one_image.npy"])]


def test_all_layers(cli, zoo, keras_model, tmp_path):
    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", zoo["transfer.keras"], "--all", "-o", out, zoo["input.npy"])
    assert r.exit_code == 0, r.stderr
    model = keras_model(zoo["transfer.keras"])
    base = model.get_layer("vgg16")
    expected = {l.name for l in model.layers if type(l).__name__ != "InputLayer" and l is not base}
    expected |= {f"vgg16/{l.name}" for l in base.layers if type(l).__name__ != "InputLayer"}
    expected.add("vgg16/__output__")
    with h5py.File(out, "r") as f:
        found = set()
        f["activations"].visititems(lambda n, o: found.add(n) if isinstance(o, h5py.Dataset) else None)
        assert found == expected
        assert f["activations/vgg16/__output__"].attrs["layer"] == "vgg16"
    x = np.load(zoo["input.npy"])
    np.testing.assert_allclose(read(out, "vgg16/__output__"), np.asarray(base(x)), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(read(out, "predictions"), np.asarray(model(x, training=False)),
                               atol=1e-5, rtol=1e-5)


def test_match_and_index(cli, zoo, keras_model, tmp_path):
    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", zoo["transfer.keras"], "--match", "block1_", "-l", "3", "-o", out, zoo["input.npy"])
    assert r.exit_code == 0, r.stderr
    with h5py.File(out, "r") as f:
        assert sorted(f["activations/vgg16"]) == ["block1_conv1", "block1_conv2", "block1_pool"]
        model = keras_model(zoo["transfer.keras"])
        assert model.layers[3].name in f["activations"]  # index 3 is model.layers[3]
    r = cli("dump", "-m", zoo["transfer.keras"], "-l", "1.2", "-o", tmp_path / "b.h5", zoo["input.npy"])
    assert r.exit_code == 0, r.stderr
    base = keras_model(zoo["transfer.keras"]).get_layer("vgg16")
    assert base.layers[2].name == "block1_conv2"
    with h5py.File(tmp_path / "b.h5", "r") as f:
        assert list(f["activations/vgg16"]) == ["block1_conv2"]


def test_two_levels_of_nesting_and_ambiguous_name(cli, zoo, keras_model, tmp_path):
    out = tmp_path / "acts.h5"
    model = keras_model(zoo["deep.keras"])
    r = cli("dump", "-m", zoo["deep.keras"], "-l", "mid/inner/dense_x", "-l", "inner_out", "-o", out,
            zoo["vec8.npy"])
    assert r.exit_code == 0, r.stderr
    x = np.load(zoo["vec8.npy"])
    np.testing.assert_allclose(read(out, "mid/inner/dense_x"),
                               submodel_values(model, "mid/inner/dense_x", x, {"inner": "dense_x"}), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(read(out, "mid/inner/inner_out"),
                               submodel_values(model, "mid/inner/inner_out", x, {"inner": "dense_x"}), atol=1e-5, rtol=1e-5)
    r = cli("dump", "-m", zoo["deep.keras"], "-l", "dense_x", "-o", tmp_path / "b.h5", zoo["vec8.npy"])
    assert r.exit_code == 2
    line = error_line(r)
    assert "ambiguous" in line and "mid/dense_x" in line and "mid/inner/dense_x" in line


def test_shared_layer_gets_one_dataset_per_call(cli, zoo, keras_model, tmp_path):
    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", zoo["shared.keras"], "-l", "shared", "-o", out, zoo["vec4.npy"])
    assert r.exit_code == 0, r.stderr
    model = keras_model(zoo["shared.keras"])
    x = np.load(zoo["vec4.npy"]).astype(np.float64)
    w, b = (np.asarray(v, dtype=np.float64) for v in model.get_layer("shared").weights)
    pw, pb = (np.asarray(v, dtype=np.float64) for v in model.get_layer("pre").weights)
    np.testing.assert_allclose(read(out, "shared/call_0"), x @ w + b, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(read(out, "shared/call_1"), (x @ pw + pb) @ w + b, atol=1e-5, rtol=1e-5)


def test_layer_with_several_outputs(cli, zoo, keras_model, tmp_path):
    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", zoo["multi.keras"], "-l", "lstm", "-o", out, zoo["seq54.npy"])
    assert r.exit_code == 0, r.stderr
    expected = submodel_values(keras_model(zoo["multi.keras"]), "lstm", np.load(zoo["seq54.npy"]))
    assert len(expected) == 3
    for i, e in enumerate(expected):
        np.testing.assert_allclose(read(out, f"lstm/output_{i}"), e, atol=1e-5, rtol=1e-5)


def test_keras_applications_model_nested(cli, zoo, keras_model, tmp_path):
    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", zoo["app.keras"], "-l", "block_3_expand_relu", "-l", "predictions", "-o", out,
            zoo["images7.npy"])
    assert r.exit_code == 0, r.stderr
    model = keras_model(zoo["app.keras"])
    base = model.layers[1]
    x = np.load(zoo["images7.npy"])
    np.testing.assert_allclose(read(out, f"{base.name}/block_3_expand_relu"),
                               submodel_values(model, f"{base.name}/block_3_expand_relu", x),
                               atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(read(out, "predictions"), np.asarray(model(x, training=False)),
                               atol=1e-5, rtol=1e-4)


def test_keras2_h5_falls_back_to_tf_keras(cli, zoo, tmp_path):
    import tf_keras

    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", zoo["keras2_transfer.h5"], "-l", "block1_conv2", "-l", "bn", "-b", "2",
            "-o", out, zoo["small16.npy"])
    assert r.exit_code == 0, r.stderr
    model = tf_keras.models.load_model(zoo["keras2_transfer.h5"], compile=False)
    base = model.get_layer("vgg16")
    x = np.load(zoo["small16.npy"])
    inner = tf_keras.Model(base.inputs, base.get_layer("block1_conv2").output)
    np.testing.assert_allclose(read(out, "vgg16/block1_conv2"), inner(x, training=False).numpy(),
                               atol=1e-5, rtol=1e-5)
    head = tf_keras.Model(model.inputs, model.get_layer("bn").output)
    np.testing.assert_allclose(read(out, "bn"), head(x, training=False).numpy(), atol=1e-5, rtol=1e-5)
    with h5py.File(out, "r") as f:
        assert f.attrs["loader"] == f"tf_keras {tf_keras.__version__}"


def test_json_summary_on_stdout(cli, zoo, tmp_path):
    out = tmp_path / "acts.h5"
    r = cli("dump", "-m", zoo["transfer.keras"], "-l", "block1_pool", "-l", "gap", "--json", "-o", out,
            zoo["input.npy"])
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    summary = json.loads(r.stdout)
    assert summary["output"] == str(out) and summary["complete"] is True and summary["samples"] == 4
    by_path = {d["path"]: d for d in summary["datasets"]}
    assert set(by_path) == {"vgg16/block1_pool", "gap"}
    with h5py.File(out, "r") as f:
        v = f["activations/gap"][()]
    d = by_path["gap"]
    assert d["sample_shape"] == [16] and d["dtype"] == "float32"
    assert d["mib"] == pytest.approx(v.nbytes / 2**20)
    assert d["max"] == pytest.approx(float(v.max())) and d["std"] == pytest.approx(float(v.astype(float).std()))


def test_quiet_prints_nothing(cli, zoo, tmp_path):
    r = cli("dump", "-q", "-m", zoo["transfer.keras"], "-l", "gap", "-o", tmp_path / "a.h5", zoo["input.npy"])
    assert r.exit_code == 0 and r.stdout == "" and r.stderr == ""
    assert (tmp_path / "a.h5").is_file()


def test_integer_inputs_are_cast(cli, zoo, keras_model, tmp_path):
    x = np.random.default_rng(5).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    np.save(tmp_path / "u8.npy", x)
    r = cli("dump", "-m", zoo["transfer.keras"], "-l", "block1_conv1", "-o", tmp_path / "a.h5", tmp_path / "u8.npy")
    assert r.exit_code == 0, r.stderr
    expected = submodel_values(keras_model(zoo["transfer.keras"]), "vgg16/block1_conv1", x.astype(np.float32))
    np.testing.assert_allclose(read(tmp_path / "a.h5", "vgg16/block1_conv1"), expected, atol=1e-5, rtol=1e-5)


def test_unsafe_lambda_model(cli, zoo, tmp_path):
    r = cli("dump", "-m", zoo["lambda.keras"], "-l", "double", "-o", tmp_path / "a.h5", zoo["vec4.npy"])
    assert r.exit_code == 1
    assert "--unsafe" in error_line(r) and "double" in error_line(r)
    assert not (tmp_path / "a.h5").exists()
    r = cli("dump", "--unsafe", "-m", zoo["lambda.keras"], "-l", "double", "-o", tmp_path / "a.h5", zoo["vec4.npy"])
    assert r.exit_code == 0, r.stderr
    np.testing.assert_allclose(read(tmp_path / "a.h5", "double"), np.load(zoo["vec4.npy"]) * 2.0, rtol=1e-6)
