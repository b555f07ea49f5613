"""The Python API as Python users write it: a string is one layer name, a dump reads like a
mapping, outputs are named as the CLI requires, a list of arrays feeds a model's inputs in
order, pairs come as a dict or a list of tuples, and errors speak of the API's arguments.
Values are computed again here by Keras."""

import h5py
import numpy as np
import pytest

import tensorprobe
from conftest import ROOT

SAMPLES = ROOT / "sample_models"


@pytest.fixture(scope="module")
def x():
    return np.load(SAMPLES / "input.npy")


@pytest.fixture(scope="module")
def transfer():
    import keras

    return keras.saving.load_model(SAMPLES / "transfer.keras")


@pytest.fixture(scope="module")
def renamed(tmp_path_factory):
    """Two tiny models with the same weights, the last layer named differently."""
    import keras

    folder = tmp_path_factory.mktemp("api_fixes")
    L = keras.layers
    keras.utils.set_random_seed(11)
    a_in = keras.Input((5,), name="v")
    a = keras.Model(a_in, L.Dense(2, name="head")(L.Dense(3, name="hidden")(a_in)), name="a")
    b_in = keras.Input((5,), name="v")
    b = keras.Model(b_in, L.Dense(2, name="renamed")(L.Dense(3, name="hidden")(b_in)), name="b")
    b.set_weights(a.get_weights())
    a.save(folder / "a.keras")
    b.save(folder / "b.keras")
    values = np.random.default_rng(11).normal(size=(4, 5)).astype("float32")
    return folder, values, np.asarray(a(values), np.float64)


def fc1_of(model, x):
    import keras

    return np.asarray(keras.Model(model.inputs, model.get_layer("fc1").output)(x))


def test_a_string_is_one_tensor_name(renamed):
    import keras

    folder, values, _ = renamed
    model = tensorprobe.load(folder / "a.keras")
    name = next(t["name"] for t in model.tensors() if t["op"] == "MatMul" and "hidden" in t["name"])
    acts = tensorprobe.activations(model, values, tensors=name)
    assert list(acts) == [f"tensors/{name}"]
    kernel, _ = keras.saving.load_model(folder / "a.keras").get_layer("hidden").get_weights()
    np.testing.assert_allclose(acts[f"tensors/{name}"], values @ kernel, rtol=1e-5, atol=1e-6)


def test_a_string_is_one_layer_name(x, transfer, tmp_path):
    acts = tensorprobe.activations(SAMPLES / "transfer.keras", x, layers="fc1")
    assert list(acts) == ["fc1"]
    np.testing.assert_allclose(acts["fc1"], fc1_of(transfer, x), rtol=1e-5, atol=1e-5)
    as_list = tensorprobe.activations(SAMPLES / "transfer.keras", [x], layers="fc1")  # [array], as Keras takes it
    np.testing.assert_array_equal(as_list["fc1"], acts["fc1"])
    summary = tensorprobe.dump(SAMPLES / "transfer.keras", x, tmp_path / "one.h5", layers="fc1")
    assert [d["name"] for d in summary["datasets"]] == ["fc1"]
    result = tensorprobe.compare(SAMPLES / "transfer.keras", SAMPLES / "transfer.keras", x, layers="fc1")
    assert [p["path"] for p in result["pairs"]] == ["fc1"] and result["match"] is True
    with pytest.raises(tensorprobe.TensorprobeError, match="^layers: expected a name or a list of names, not int"):
        tensorprobe.activations(SAMPLES / "transfer.keras", x, layers=3)
    with pytest.raises(tensorprobe.TensorprobeError, match=r"^layers: expected names \(strings\), got 3"):
        tensorprobe.activations(SAMPLES / "transfer.keras", x, layers=["fc1", 3])


def test_a_dump_reads_like_a_mapping(x, transfer, tmp_path):
    out = tmp_path / "acts.h5"
    tensorprobe.dump(SAMPLES / "transfer.keras", x, out, layers=["block1_conv1", "fc1"], gradients="top")
    with h5py.File(out) as f:
        on_disk = []
        f.visititems(lambda n, o: on_disk.append(n) if isinstance(o, h5py.Dataset) else None)
    with tensorprobe.open_dump(out) as dump:
        assert list(dump) == dump.names == list(dump.keys())
        assert sorted(dump) == ["fc1", "gradients/fc1", "gradients/vgg16/block1_conv1", "vgg16/block1_conv1"]
        assert sorted(on_disk) == ["activations/fc1", "activations/vgg16/block1_conv1", "gradients/fc1",
                                   "gradients/vgg16/block1_conv1", "inputs/source"]
        assert len(dump) == 4
        assert "fc1" in dump and "gradients/fc1" in dump
        assert "vgg16" not in dump and "nope" not in dump and 3 not in dump  # a group, a stranger, not a name
        assert dump.get("nope") is None
        np.testing.assert_allclose(dump["fc1"][()], fc1_of(transfer, x), rtol=1e-5, atol=1e-5)
        assert {name: ds.shape for name, ds in dump.items()}["vgg16/block1_conv1"] == (4, 32, 32, 8)
        with pytest.raises(KeyError, match="'nope': no such dataset"):
            dump["nope"]


def test_outputs_named_like_another_format_are_refused(cli, x, tmp_path, renamed):
    out = tmp_path / "acts.npy"
    with pytest.raises(tensorprobe.TensorprobeError) as e:
        tensorprobe.dump(SAMPLES / "transfer.keras", x, out, layers="fc1")
    assert str(e.value) == (f"output '{out}': the output is an HDF5 file, not NumPy (.npy); name it .h5 or .hdf5")
    assert e.value.exit_code == 2 and not out.exists()
    r = cli("dump", "-m", SAMPLES / "transfer.keras", "-l", "fc1", "-o", out, SAMPLES / "input.npy")
    assert r.exit_code == 2 and r.stderr.strip() == f"error: {e.value}".replace("error: output", "error: --output")
    folder, values, _ = renamed
    with pytest.raises(tensorprobe.TensorprobeError, match=r"^save_b '.*b\.json': the output is an HDF5 file"):
        tensorprobe.compare(folder / "a.keras", folder / "a.keras", values, save_b=tmp_path / "b.json")


def test_a_list_of_arrays_feeds_the_inputs_in_order(tmp_path):
    import keras

    model = keras.saving.load_model(SAMPLES / "two_inputs.keras")
    arrays = dict(np.load(SAMPLES / "two_inputs.npz"))
    image, meta = arrays["image"], arrays["meta"]
    expected = np.asarray(keras.Model(model.inputs, model.get_layer("merged").output)([image, meta]))
    for given in ([image, meta], (image, meta), {"meta": meta, "image": image}):
        acts = tensorprobe.activations(SAMPLES / "two_inputs.keras", given, layers="merged")
        np.testing.assert_allclose(acts["merged"], expected, rtol=1e-5, atol=1e-5)
    np.save(tmp_path / "image.npy", image)
    acts = tensorprobe.activations(SAMPLES / "two_inputs.keras", {"image": tmp_path / "image.npy", "meta": meta},
                                   layers="merged")
    np.testing.assert_allclose(acts["merged"], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(tensorprobe.TensorprobeError) as e:
        tensorprobe.activations(SAMPLES / "two_inputs.keras", [image], layers="merged")
    assert str(e.value) == ("x: a list of 1 items for the model's 2 inputs (image (None, 32, 32, 3) float32, "
                            "meta (None, 4) float32): give one array per input, in that order, or a dict "
                            "{input name: array or path}")
    with pytest.raises(tensorprobe.TensorprobeError, match=r"^x: the model has 2 inputs \(image .*\): give a list"):
        tensorprobe.activations(SAMPLES / "two_inputs.keras", image, layers="merged")
    with pytest.raises(tensorprobe.TensorprobeError) as e:
        tensorprobe.activations(SAMPLES / "two_inputs.keras", {"image": image, "metta": meta}, layers="merged")
    assert str(e.value).startswith("x['metta']: the model has no input 'metta'; its inputs are image")
    with pytest.raises(tensorprobe.TensorprobeError) as e:
        tensorprobe.activations(SAMPLES / "two_inputs.keras", {"image": image}, layers="merged")
    assert str(e.value).startswith("x: nothing given for 'meta'")


def test_pairs_as_a_dict_a_list_of_tuples_or_one_tuple(renamed):
    import keras

    folder, values, expected = renamed
    a, b = folder / "a.keras", folder / "b.keras"
    model = keras.saving.load_model(a)
    hidden = np.asarray(keras.Model(model.inputs, model.get_layer("hidden").output)(values))
    for pairs in ({"head": "renamed"}, [("head", "renamed")], ("head", "renamed"), ["head=renamed"]):
        result = tensorprobe.compare(a, b, values, pairs=pairs)
        assert [p["path"] for p in result["pairs"]] == ["hidden", "head"], pairs
        assert result["only_in_a"] == [] and result["only_in_b"] == [] and result["match"] is True
    result = tensorprobe.compare(a, b, values, pairs=[("head", "renamed")], save_b=folder / "b.h5", overwrite=True)
    with h5py.File(folder / "b.h5") as f:
        np.testing.assert_allclose(f["activations/renamed"][()], expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(f["activations/hidden"][()], hidden, rtol=1e-6, atol=1e-6)
    for bad in ([("head",)], [("head", 2)], [("head", "")]):
        with pytest.raises(tensorprobe.TensorprobeError, match=r"^pairs: expected \{A path: B path\}"):
            tensorprobe.compare(a, b, values, pairs=bad)


def test_errors_speak_the_api_words(renamed, x):
    folder, values, _ = renamed
    a = folder / "a.keras"
    cases = [
        (dict(metric="cosine:2"), "metric 'cosine:2': a cosine similarity lies in [-1, 1]"),
        (dict(rtol=-1), "rtol -1: expected a finite number >= 0"),
        (dict(atol=float("nan")), "atol nan: expected a finite number >= 0"),
        (dict(metric="snr:30", atol=1e-3), "--rtol/--atol"),
    ]
    for kwargs, message in cases:
        with pytest.raises(tensorprobe.TensorprobeError) as e:
            tensorprobe.compare(folder / "missing.keras", a, values, **kwargs)  # refused before loading
        expected = message.replace("--rtol/--atol", "rtol/atol")
        assert str(e.value).startswith(expected) and "--" not in str(e.value), str(e.value)
    with pytest.raises(tensorprobe.TensorprobeError) as e:
        tensorprobe.compare(a, SAMPLES / "transfer.keras", values)
    assert "--" not in str(e.value)
    with pytest.raises(tensorprobe.TensorprobeError) as e:
        tensorprobe.compare(a, SAMPLES / "two_inputs.keras", values)
    assert str(e.value).startswith("the models take different inputs: A 1 (v), B 2 (image, meta)")
    with pytest.raises(tensorprobe.TensorprobeError) as e:
        tensorprobe.compare(a, a, values, layers="head", match="(")
    assert str(e.value).startswith("match '(': not a valid regular expression")
    with pytest.raises(tensorprobe.TensorprobeError) as e:
        tensorprobe.activations(a, None, layers="head")
    assert str(e.value) == "no input given: give x"
