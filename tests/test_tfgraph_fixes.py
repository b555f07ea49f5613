"""Graph-format models, item by item: Keras 3 `model.export()` SavedModels of recurrent models
(issue 22 item 6). Every value is checked against the Keras model itself (a sub-model per
layer, or a layer called by hand)."""

import json

import h5py
import keras
import numpy as np
import pytest

from conftest import error_line

L = keras.layers


@pytest.fixture(scope="module")
def rnn(tmp_path_factory):
    """A masked LSTM -> GRU -> Bidirectional(LSTM) -> Dense model, its export and an input
    whose second sample is padded with zeros (masked steps)."""
    folder = tmp_path_factory.mktemp("rnn")
    keras.utils.set_random_seed(3)
    x = keras.Input((6, 3), name="x")
    h = L.Masking(name="mask")(x)
    h = L.LSTM(4, return_sequences=True, name="lstm")(h)
    h = L.GRU(4, return_sequences=True, name="gru")(h)
    h = L.Bidirectional(L.LSTM(3), name="bilstm")(h)
    model = keras.Model(x, L.Dense(2, name="head")(h), name="rnn")
    model.export(str(folder / "export"), verbose=False)
    data = np.random.default_rng(5).normal(size=(3, 6, 3)).astype("float32")
    data[1, 4:] = 0.0  # two masked steps
    np.save(folder / "x.npy", data)
    return {"model": model, "export": folder / "export", "x.npy": folder / "x.npy", "x": data}


def _keras_value(model, layer, x):
    return np.asarray(keras.Model(model.inputs, model.get_layer(layer).output)(x))


def _cells(model):
    """path -> cell of each recurrent layer (Bidirectional's included)."""
    bilstm = model.get_layer("bilstm")
    return {"lstm/lstm_cell": model.get_layer("lstm").cell, "gru/gru_cell": model.get_layer("gru").cell,
            "bilstm/forward_lstm/lstm_cell": bilstm.forward_layer.cell,
            "bilstm/backward_lstm/lstm_cell": bilstm.backward_layer.cell}


def test_rnn_export_layers_are_the_recurrent_layers(cli, rnn):
    r = cli("layers", rnn["export"], "--json")
    assert r.exit_code == 0, r.stderr
    got = {layer["path"]: layer for layer in json.loads(r.stdout)}
    model = rnn["model"]
    bilstm = model.get_layer("bilstm")
    expected = {name: model.get_layer(name) for name in ("mask", "lstm", "gru", "bilstm", "head")}
    expected |= {"bilstm/forward_lstm": bilstm.forward_layer, "bilstm/backward_lstm": bilstm.backward_layer}
    # with a mask, Keras' TensorFlow backend calls each cell once outside its loop (to shape the
    # masked outputs): that call is the cell's one output in the graph; its steps stay in the loop
    expected |= _cells(model)
    assert set(got) == set(expected)
    for path, layer in expected.items():
        assert got[path]["calls"] == 1, path
        assert got[path]["params"] == layer.count_params(), path
    for name in ("mask", "lstm", "gru", "bilstm", "head"):
        assert got[name]["output_shape"] == [None, *model.get_layer(name).output.shape[1:]], name
    assert got["bilstm/forward_lstm"]["output_shape"] == [None, 3]
    assert got["bilstm"]["class"] == "ConcatV2" and got["head"]["class"] == "BiasAdd"
    assert not any(layer["class"] in ("Enter", "Merge", "Switch", "Exit") for layer in got.values())
    r = cli("layers", rnn["export"])
    assert r.exit_code == 0, r.stderr
    assert "bilstm/forward_lstm" in r.stdout and "Traceback" not in r.stderr


def test_rnn_export_dump_matches_keras(cli, rnn, tmp_path):
    out = tmp_path / "rnn.h5"
    r = cli("dump", "-m", rnn["export"], "-l", "bilstm", "-l", "gru", "-l", "head", rnn["x.npy"], "-o", out)
    assert r.exit_code == 0, r.stderr
    model, x = rnn["model"], rnn["x"]
    with h5py.File(out, "r") as f:
        assert sorted(f["activations"]) == ["bilstm", "gru", "head"]
        for name in ("bilstm", "gru", "head"):
            np.testing.assert_allclose(f[f"activations/{name}"][()], _keras_value(model, name, x),
                                       rtol=1e-5, atol=1e-6, err_msg=name)


def test_rnn_export_dump_all_sub_layers_and_cells(cli, rnn, tmp_path):
    out = tmp_path / "all.h5"
    r = cli("dump", "-m", rnn["export"], "--all", rnn["x.npy"], "-o", out)
    assert r.exit_code == 0, r.stderr
    model, x = rnn["model"], rnn["x"]
    masked = _keras_value(model, "mask", x)
    gru = _keras_value(model, "gru", x)
    bilstm = model.get_layer("bilstm")
    mask = np.any(x != 0, axis=-1)  # what Masking passes on to the layers after it
    inputs_of = {"lstm/lstm_cell": masked, "gru/gru_cell": _keras_value(model, "lstm", x),
                 "bilstm/forward_lstm/lstm_cell": gru, "bilstm/backward_lstm/lstm_cell": gru}
    with h5py.File(out, "r") as f:
        for key, name in (("lstm/__output__", "lstm"), ("gru/__output__", "gru"), ("head", "head"),
                          ("bilstm/__output__", "bilstm"), ("mask", "mask")):
            np.testing.assert_allclose(f[f"activations/{key}"][()], _keras_value(model, name, x),
                                       rtol=1e-5, atol=1e-6, err_msg=name)
        for part, layer in (("forward_lstm", bilstm.forward_layer), ("backward_lstm", bilstm.backward_layer)):
            np.testing.assert_allclose(f[f"activations/bilstm/{part}/__output__"][()], np.asarray(layer(gru, mask=mask)),
                                       rtol=1e-5, atol=1e-6, err_msg=part)
        # the call that shapes the outputs: on the first step of the sequence as the layer gets it
        # (a backward layer's too, before it reverses it), from the initial (zero) states
        for path, cell in _cells(model).items():
            step = inputs_of[path][:, 0]
            states = [np.zeros((len(x), cell.units), "float32") for _ in np.atleast_1d(cell.state_size)]
            expected = np.asarray(cell(step, states if len(states) > 1 else states[0])[0])
            key = f"activations/{path}"
            np.testing.assert_allclose(f[key][()], expected, rtol=1e-5, atol=1e-6, err_msg=path)


def test_rnn_export_compare_with_keras(cli, rnn, tmp_path):
    path = tmp_path / "rnn.keras"
    rnn["model"].save(path)
    # the cells are left out: in the .keras file they run inside the loop (issue 22 item 5)
    r = cli("compare", path, rnn["export"], rnn["x.npy"], "--match", "^(mask|lstm|gru|bilstm|head)$|_lstm$", "--json")
    assert r.exit_code == 0, r.stderr
    pairs = {p["path"]: p for p in json.loads(r.stdout)["pairs"]}
    names = ["mask", "lstm", "gru", "bilstm/forward_lstm", "bilstm/backward_lstm", "bilstm", "head"]
    assert sorted(pairs) == sorted(names)
    assert all(pairs[name]["status"] == "ok" and pairs[name]["max_abs"] < 1e-6 for name in names), pairs


def test_loop_tensor_is_refused_with_its_reason(cli, rnn, tmp_path):
    r = cli("tensors", rnn["export"], "--json")
    names = [t["name"] for t in json.loads(r.stdout)]
    merge = next(n for n in names if "/gru_1/while/merge/" in n)
    r = cli("dump", "-m", rnn["export"], "-t", merge, rnn["x.npy"], "-o", tmp_path / "t.h5")
    assert r.exit_code == 2
    assert error_line(r) == (f"error: --tensor '{merge}': is computed inside a while loop, once per iteration; "
                             "only values that leave the loop can be fetched")
